"""The Lua scripts: every step that must move a task and its record at once.

Each is a constant registered once by ``Broker``, with a KEYS/ARGV header.
A task record is a hash (``task:record:<id>``); its status is one of
queued, delayed, running and the final ones (succeeded, failed, timed_out,
canceled, killed). Times are Redis's clock (``TIME``), so nodes agree.
Some scripts build key names from prefixes and suffixes ARGV gives (from
``Keys``): REAP, DELETE_CHANNEL, NOTE_PIDS, CLAIM and ROUTE reach the record (CLAIM
and ROUTE also the heartbeat) of an entry they read; REAP, WAITING and COUNTS a channel's
high queue from its queue's key. Fine on one Redis, not on Cluster.

Redis does not roll back a script that fails half-way, so every script checks
what could make a later command fail (a key of another type, set by someone
else) before its first write, and then either refuses with an error reply
naming the key (``WRONGTYPE <key> holds a string, not a list``) or, for a
task's own record, answers with a return code: an error leaves Redis as it was.
Counters are read and written with HGET/HSET, never HINCRBY, which fails on a
field that is not a number.
"""

# Shared by the scripts below: is a status final? What time is it (unix s, to the us)?
_FINAL = "local final = {succeeded=1, failed=1, timed_out=1, canceled=1, killed=1}\n"
# An error reply for the first key that exists with another type than wanted, else nil:
# wrongtype(key1, 'list', key2, 'set', ...)
_TYPES = """
local function wrongtype(...)
  local want = {...}
  for i = 1, #want, 2 do
    local kind = redis.call('TYPE', want[i])['ok']
    if kind ~= 'none' and kind ~= want[i + 1] then
      return redis.error_reply('WRONGTYPE ' .. want[i] .. ' holds a ' .. kind .. ', not a '
                               .. want[i + 1])
    end
  end
end
local function is_hash(key)
  local kind = redis.call('TYPE', key)['ok']
  return kind == 'hash', kind == 'none'
end
-- a channel was deleted: the channels hash is there without it (no hash at all:
-- the settings were lost, and the nodes make the default channels again)
local function gone(channels, name)
  return redis.call('HEXISTS', channels, name) == 0 and redis.call('EXISTS', channels) == 1
end
local function number(key, field)
  return tonumber(redis.call('HGET', key, field) or '0') or 0
end
-- the list with the values after it added at its end (HSET's field-value pairs)
local function append(list, ...)
  for _, value in ipairs({...}) do list[#list + 1] = value end
  return list
end
"""
# Tell every node's listener that a channel queue got entries (ARGV gives the
# pub/sub channel; '' or none: tell nobody), and which node did it, if it says
# (that node woke its own channel already). Nodes also scan for queued work
# every second, so a message lost with a connection only delays a task.
_WAKE = """
local function wake(channel, queue, node)
  if channel and channel ~= '' then
    redis.call('PUBLISH', channel, node and (queue .. '\\n' .. node) or queue)
  end
end
"""
_CLOCK = ("local function clock()\n  local t = redis.call('TIME')\n"
          "  return t[1] .. '.' .. string.format('%06d', t[2])\nend\n")
# Dead letters: the trimmed-off counter must hold a number (checked before any
# write), the list keeps its newest ``most`` entries. ``bury`` makes the letter
# here (an entry of a channel that is gone) and closes the task's record with
# the reason. Needs _CLOCK and _TYPES.
_BURY = """
local function counter_bad(key)
  local bad = wrongtype(key, 'string')
  if bad then return bad end
  local n = redis.call('GET', key)
  if n and not tonumber(n) then
    return redis.error_reply('WRONGTYPE ' .. key .. ' holds a string that is not a number')
  end
end
local function push_dead(dead, counter, most, letter)
  local n = redis.call('LPUSH', dead, letter)
  most = tonumber(most)
  if n > most then
    redis.call('SET', counter, (tonumber(redis.call('GET', counter)) or 0) + n - most)
    redis.call('LTRIM', dead, 0, most - 1)
  end
end
local function bury(dead, counter, most, entry, reason, node, record, ttl)
  push_dead(dead, counter, most, cjson.encode({entry = entry, reason = reason, node = node,
                                               ts = tonumber(redis.call('TIME')[1])}))
  if record and is_hash(record) then
    redis.call('HSET', record, 'status', 'canceled', 'error', reason, 'finished_at', clock())
    redis.call('EXPIRE', record, ttl)
  end
end
"""
# The id of any entry, as ``task.locate`` finds it (nil: an id that is not a string);
# whether an entry is of high priority (it waits in its channel's high queue).
_ID = """
local function high(entry)
  local ok, task = pcall(cjson.decode, entry)
  return ok and type(task) == 'table' and task.priority == 'high'
end
local function id_of(entry)   -- as task.locate: id, task_id, or for a plain string its SHA-1
  local ok, task = pcall(cjson.decode, entry)
  if not (ok and type(task) == 'table') then return redis.sha1hex(entry):sub(1, 32) end
  local id = task.id
  if not id or id == cjson.null or id == '' then id = task.task_id end
  if not id or id == cjson.null or id == '' then return redis.sha1hex(entry):sub(1, 32) end
  if type(id) == 'string' then return id end
end
"""

# Route one task into its channel queue (or the delayed set) and create its
# record, honouring the distinct rule, and remove the entry it came from.
# Returns 1 queued, 2 delayed, 0 refused (distinct), 3 id in use by a live task,
# 4 the source entry was no longer in our staging list (nothing done), 5 the
# record's key holds another type (nothing done), 6 the channel was deleted
# (nothing done).
_ENQUEUE = """
-- KEYS[1] channel queue   KEYS[2] distinct flag   KEYS[3] delayed zset
-- KEYS[4] source list the entry is removed from (may not exist)   KEYS[5] task record
-- KEYS[6] channels hash
-- ARGV[1] task JSON       ARGV[2] flag TTL (s), 0 = not distinct
-- ARGV[3] source entry ('' = none)   ARGV[4] execute_at (unix s), 0 = now
-- ARGV[5] wake-up channel ('' = none)   ARGV[6] this node's id   ARGV[7] channel
-- ARGV[8..] record fields and values
-- ``into`` (ROUTE), {processing list, running set, node}: a task that is not delayed
-- goes there at once, started (the record fields must begin with its id); enqueue
-- then also returns the claim CLAIM would have made of it. ``known`` (ROUTE): its
-- caller has seen the queue hold a list (or nothing) and the channels hash the channel
local function enqueue(KEYS, ARGV, into, known)
  local hash, none = is_hash(KEYS[5])
  if not (hash or none) then return 5 end
  local bad = not known and wrongtype(KEYS[6], 'hash')
  if bad then return bad end
  if not known and gone(KEYS[6], ARGV[7]) then return 6 end
  local now = clock()
  local delayed = tonumber(ARGV[4]) > tonumber(now)
  bad = wrongtype(KEYS[4], 'list') or (delayed and wrongtype(KEYS[3], 'zset'))
    or (not delayed and not known and wrongtype(KEYS[1], 'list'))
  if bad then return bad end
  local status = hash and redis.call('HGET', KEYS[5], 'status')
  if status and (not final[status] or redis.call('HEXISTS', KEYS[5], 'parked') == 1) then
    return 3   -- the id belongs to a task not finished, or kept in a failed list
  end
  if ARGV[3] ~= '' and redis.call('LREM', KEYS[4], 1, ARGV[3]) == 0 then
    return 4   -- no longer ours: our node was reaped and the entry went back to the queue
  end
  if ARGV[2] ~= '0' and not redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[2]) then
    return 0
  end
  if hash then redis.call('DEL', KEYS[5]) end
  local fields = #ARGV >= 9 and {unpack(ARGV, 8)} or {}
  if into and not delayed then   -- what START would write, with the record's first fields
    redis.call('HSET', KEYS[5], unpack(append(fields, 'queued_at', now, 'status', 'running',
                                              'attempt', 1, 'node', into[3], 'started_at', now)))
    redis.call('LPUSH', into[1], ARGV[1])
    redis.call('SADD', into[2], ARGV[1])
    return 1, {ARGV[1], ARGV[9], 1, 0, 0, 0}
  end
  redis.call('HSET', KEYS[5], unpack(append(fields, 'queued_at', now,
                                            'status', delayed and 'delayed' or 'queued')))
  if delayed then
    redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
    return 2
  end
  -- a queue that held entries already has every node that may take them at work or
  -- told (the push that filled it was announced); the nodes' scan covers the rest
  if redis.call('LPUSH', KEYS[1], ARGV[1]) == 1 then wake(ARGV[5], KEYS[1], ARGV[6]) end
  return 1
end
"""
ENQUEUE = _FINAL + _CLOCK + _TYPES + _WAKE + _ENQUEUE + "return enqueue(KEYS, ARGV)\n"

# Make one firing of a schedule, once across all nodes: the firing time is
# claimed in the schedules' firings hash (the node that claims a later one than
# the hash holds wins), and the task is queued as ENQUEUE queues it; or, for a
# firing that is not to run (missed, or a command that cannot run: ARGV[3]) or
# whose previous run has not finished (overlap 'skip'), only noted. Returns
# {1, outcome}, or {0, ''} when the firing was made already; an error reply, with
# nothing written, for a key of another type.
FIRE = _FINAL + _CLOCK + _TYPES + _WAKE + _ENQUEUE + """
-- KEYS[1..6] as ENQUEUE   KEYS[7] the schedules' last firings (hash)
-- KEYS[8] the record of the schedule's previous run (KEYS[7] again: none)
-- ARGV[1] schedule   ARGV[2] firing time (unix s)
-- ARGV[3] 'run', or why it does not run (noted as its outcome)
-- ARGV[4] '1' = not while the previous run is queued, delayed or running
-- ARGV[5] the task's id   ARGV[6..] as ENQUEUE's ARGV
local bad = wrongtype(KEYS[7], 'hash')
if bad then return bad end
local last = redis.call('HGET', KEYS[7], ARGV[1])
local ok, made = pcall(cjson.decode, last or '')
made = ok and type(made) == 'table' and made or {}
local at = math.floor(tonumber(ARGV[2]))   -- whole seconds, as in the task id (cjson: 14 digits)
if tonumber(made.at) and tonumber(made.at) >= at then return {0, ''} end
local outcome = ARGV[3]
if ARGV[3] == 'run' then
  local before = KEYS[8] ~= KEYS[7] and is_hash(KEYS[8]) and redis.call('HGET', KEYS[8], 'status')
  if ARGV[4] == '1' and before and not final[before] then
    outcome = 'skipped: the previous run has not finished'
  else
    local code = enqueue({KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]},
                         {unpack(ARGV, 6)})
    if type(code) == 'table' then return code end   -- a key of another type
    outcome = ({[0] = 'refused: the same command is queued or running', 'queued', 'delayed',
                'refused: its id is in use', 'refused', 'refused: its record key holds '
                .. 'another type', 'refused: no such channel'})[code]
  end
end
-- the task is the last one it queued, whatever became of this firing
local queued = outcome == 'queued' or outcome == 'delayed'
redis.call('HSET', KEYS[7], ARGV[1], cjson.encode({at = at, outcome = outcome,
  task_id = queued and ARGV[5] or made.task_id}))
return {1, outcome}
"""

# Move up to ARGV[1] entries from one list to another (right to left), as
# many LMOVEs in one round trip: the prepare queue into a node's staging list.
TAKE = _TYPES + """
-- KEYS[1] source list   KEYS[2] destination list
-- ARGV[1] how many at most
local bad = wrongtype(KEYS[1], 'list', KEYS[2], 'list')
if bad then return bad end
local out = {}
for i = 1, tonumber(ARGV[1]) do
  local entry = redis.call('LMOVE', KEYS[1], KEYS[2], 'RIGHT', 'LEFT')
  if not entry then break end
  out[i] = entry
end
return out
"""

# Park an entry that cannot become a task, with its reason, taking it out of the
# list it sits in (a staging or processing list) and, for a claimed one, out of
# the running set. The dead-letter list keeps its newest ARGV[3] entries; the
# trimmed ones are counted. Returns 1, or 0 when the entry was no longer there.
DEAD = _CLOCK + _TYPES + _BURY + """
-- KEYS[1] dead-letter list   KEYS[2] source list (may not exist)
-- KEYS[3] running set (ARGV[4] = '2') or KEYS[2] again   KEYS[4] trimmed counter
-- ARGV[1] dead-letter record (JSON)   ARGV[2] source entry (it may be '')
-- ARGV[3] most entries kept
-- ARGV[4] '0' = no source, '1' = take it out of KEYS[2], '2' = and out of KEYS[3]
local bad = wrongtype(KEYS[1], 'list', KEYS[2], 'list', KEYS[4], 'string')
  or (ARGV[4] == '2' and wrongtype(KEYS[3], 'set')) or counter_bad(KEYS[4])
if bad then return bad end
if ARGV[4] ~= '0' and redis.call('LREM', KEYS[2], 1, ARGV[2]) == 0 then return 0 end
if ARGV[4] == '2' then redis.call('SREM', KEYS[3], ARGV[2]) end
push_dead(KEYS[1], KEYS[4], ARGV[3], ARGV[1])
return 1
"""

# A claimed task starts: it joins the running set and its record says so.
# Returns {attempt, redeliveries, kill requested (0/1), retries so far}.
_START = """
-- ``known``: the record's HMGET of READ, if the caller has it
local READ = {'status', 'attempt', 'redeliveries', 'kill_requested', 'retry_count'}
local function start(record, running, entry, node, known)
  local v = known or redis.call('HMGET', record, unpack(READ))
  local function n(i) return tonumber(v[i] or '0') or 0 end
  redis.call('SADD', running, entry)
  local attempt = n(2) + 1
  redis.call('HSET', record, 'attempt', attempt, 'status', 'running', 'node', node,
             'started_at', clock())
  redis.call('HDEL', record, 'finished_at', 'exit_code', 'signal', 'duration', 'error',
             'retry_at', 'pid')
  redis.call('PERSIST', record)
  return {attempt, n(3), v[4] and 1 or 0, n(5)}
end
"""

# Start a claimed entry if it names its id and its record waits for it (status
# queued: every task routed by a node): {entry, id, attempt, redeliveries, kill,
# retries}, or id '' for an entry left for START once the worker has read it (a
# bare Go command line, an id that is not a string, no record, or the record of
# another task: an entry pushed straight into the queue may reuse a finished
# task's id, and the worker may refuse it). Attempt -1: the record's key holds
# another type (not started).
_CLAIMED = """
local function claimed(entry, running, node, prefix)
  local ok, task = pcall(cjson.decode, entry)
  local id = ok and type(task) == 'table' and task.id
  if type(id) == 'string' and id ~= '' then
    local hash, none = is_hash(prefix .. id)
    local known = hash and redis.call('HMGET', prefix .. id, unpack(READ))
    if known and known[1] == 'queued' then
      local started = start(prefix .. id, running, entry, node, known)
      return {entry, id, started[1], started[2], started[3], started[4]}
    elseif not (hash or none) then
      return {entry, id, -1, 0, 0, 0}
    end
  end
  return {entry, '', 0, 0, 0, 0}
end
"""

# CLAIM's steps, shared with ROUTE (KEYS and ARGV as CLAIM's): the type checks; how
# many may be claimed (nil: the channel is paused), reading only; the claim itself.
_CLAIM = """
local function claim_bad(KEYS)
  return wrongtype(KEYS[1], 'list', KEYS[2], 'list', KEYS[3], 'set', KEYS[4], 'list')
end
-- ``pushed`` (ROUTE): the id whose record the push is about to write anew: a running
-- entry of that id holds a slot, as it will once the record has no node, or ours.
-- The third value: whether the settings hash holds the channel
local function room(KEYS, ARGV, pushed)
  local most, limit = tonumber(ARGV[1]), tonumber(ARGV[4] or '0')
  local settings = KEYS[5] and is_hash(KEYS[5]) and redis.call('HGET', KEYS[5], ARGV[6])
  if settings then   -- the JSON's top-level fields (user text in it has its quotes escaped)
    if string.find(settings, '"paused":%s*true') then return nil end
    limit = tonumber(string.match(settings, '"max_running":%s*(%d+)') or '0')
  end
  if limit > 0 then
    local busy = 0
    for _, member in ipairs(redis.call('SMEMBERS', KEYS[3])) do
      local id = id_of(member)
      local node = id and is_hash(ARGV[3] .. id) and redis.call('HGET', ARGV[3] .. id, 'node')
      -- no node known (an entry without a record): it holds its slot until it ends
      if not node or id == pushed or redis.call('EXISTS', ARGV[5] .. node) == 1 then
        busy = busy + 1
      end
    end
    most = math.min(most, limit - busy)
  end
  return most, limit, settings and true
end
local function take(KEYS, ARGV, most, limit)
  local out = {}
  for i = 1, most do
    local entry = redis.call('LMOVE', KEYS[4], KEYS[2], 'RIGHT', 'LEFT')
      or redis.call('LMOVE', KEYS[1], KEYS[2], 'RIGHT', 'LEFT')
    if not entry then break end
    out[i] = claimed(entry, KEYS[3], ARGV[2], ARGV[3])
    -- one START will start later holds its slot from now on
    if limit > 0 and out[i][2] == '' then redis.call('SADD', KEYS[3], entry) end
  end
  if ARGV[7] and (redis.call('LLEN', KEYS[4]) > 0 or redis.call('LLEN', KEYS[1]) > 0) then
    wake(ARGV[7], KEYS[1], ARGV[2])
  end
  return out
end
"""
_CLAIM_PARTS = _CLOCK + _TYPES + _WAKE + _START + _CLAIMED + _ID + _CLAIM

# Claim up to ARGV[1] tasks of a channel (right to left into this node's
# processing list), each started where it can be (see _CLAIMED), and no more than
# leaves the channel's tasks running on all nodes within its limit: the running
# set holds them, and a task counts while its node's heartbeat lives. The limit,
# and whether the channel is paused (then nothing is claimed), come from the
# channel's settings (KEYS[5]) when they are there, so that a change holds at
# once on every node, even one that has not read it yet. With ARGV[7], the claim
# that follows a push whose ENQUEUE was told not to wake anyone (the routing loop
# claims for an idle channel in the same round trip) tells the other nodes when it
# leaves entries: only then do they have anything to take.
CLAIM = _CLAIM_PARTS + """
-- KEYS[1] channel queue   KEYS[2] this node's processing list   KEYS[3] running set
-- KEYS[4] the channel's high queue (taken from first)
-- KEYS[5] the channels' settings hash (optional; of another type: not read, so
--         that a broken key does not stop every channel)
-- ARGV[1] how many at most   ARGV[2] node   ARGV[3] task record key prefix
-- ARGV[4] most tasks of the channel running on all nodes together, 0 = no limit
--         (this node's view: used when KEYS[5] has no settings for the channel)
-- ARGV[5] heartbeat key prefix: a task whose node's heartbeat expired holds no slot
-- ARGV[6] the channel's name (with KEYS[5])
-- ARGV[7] wake-up channel, optional: published to when the queues still hold entries
local bad = claim_bad(KEYS)
if bad then return bad end
local most, limit = room(KEYS, ARGV)
if not most then return {} end
return take(KEYS, ARGV, most, limit)
"""

# ENQUEUE of one task (told to wake nobody) and CLAIM for its channel in one script:
# the routing loop's push for an idle channel (see ``Broker.push_claiming``). When the
# task is queued and is all its channel's queues would hold, and the claim has room,
# the task goes straight into the processing list, started, as CLAIM would have
# taken and started it (no LPUSH and LMOVE, one record write): an idle daemon's task
# costs Redis one script instead of two. Otherwise ENQUEUE then CLAIM, as they are;
# the claim is made whatever the push's own outcome, a refusal included (earlier
# pushes of the batch may wait for it). Returns {ENQUEUE's code, or the text of its
# error reply (then it wrote nothing), CLAIM's reply}, with a third item when a
# claim key holds another type: that error (then nothing is claimed; the push is
# made all the same, as it was made before the claim that failed).
ROUTE = _FINAL + _CLAIM_PARTS + _ENQUEUE + """
-- KEYS[1..6] as ENQUEUE's   KEYS[7..11] as CLAIM's, for the task's channel
-- ARGV[1..7] as CLAIM's (ARGV[7] given)   ARGV[8..] as ENQUEUE's (ARGV[16]: the id)
local ck, ca = {KEYS[7], KEYS[8], KEYS[9], KEYS[10], KEYS[11]}, {unpack(ARGV, 1, 7)}
-- the queues' lengths, read first: an error (a key of another type) is reported below
local queued, high_queued = redis.pcall('LLEN', ck[1]), redis.pcall('LLEN', ck[4])
local bad
if type(queued) == 'number' and type(high_queued) == 'number' then
  bad = wrongtype(ck[2], 'list', ck[3], 'set')
else
  bad = claim_bad(ck)
end
local most, limit, listed
-- the room as CLAIM would see it once the push has written its record
if not bad then most, limit, listed = room(ck, ca, ARGV[16]) end
local into = most and most > 0 and queued + high_queued == 0 and {ck[2], ck[3], ca[2]}
local code, started = enqueue({KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]},
                              {unpack(ARGV, 8)}, into, into and listed)
if type(code) == 'table' then code = code['err'] end   -- refused, nothing written
if bad then return {code, {}, bad['err']} end
if started then return {code, {started}} end
most, limit = room(ck, ca)   -- what the push did is written: as CLAIM sees it
if not most then return {code, {}} end
return {code, take(ck, ca, most, limit)}
"""

# START for one claimed entry CLAIM left alone; attempt 0 when the claim is no
# longer in this node's processing list, -1 when the record's key holds another type.
START = _CLOCK + _TYPES + _START + """
-- KEYS[1] running set   KEYS[2] task record   KEYS[3] this node's processing list
-- ARGV[1] entry   ARGV[2] node
-- ARGV[3..] fields set only where missing (an entry pushed without a record)
local bad = wrongtype(KEYS[1], 'set', KEYS[3], 'list')
if bad then return bad end
local hash, none = is_hash(KEYS[2])
if not (hash or none) then return {-1, 0, 0, 0} end
if not redis.call('LPOS', KEYS[3], ARGV[1]) then
  return {0, 0, 0, 0}   -- not ours any more: reaped, and finished by an earlier run
end
for i = 3, #ARGV, 2 do redis.call('HSETNX', KEYS[2], ARGV[i], ARGV[i + 1]) end
return start(KEYS[2], KEYS[1], ARGV[1], ARGV[2])
"""

# A task's attempt is over: it leaves the processing list and the running set
# and its record gets the result. Then, by ARGV[2]: 'done' (final; the record
# expires after the TTL), 'failed' (final, into the channel's failed hash,
# kept until deleted there), or 'retry' (into the delayed set after ARGV[5]
# seconds). Returns 0, touching nothing, when the entry was no longer ours
# (another node requeued it and may be running it now).
# Upper bounds (seconds) of the buckets of the task duration histogram FINISH keeps
DURATION_BOUNDS = ("0.01", "0.05", "0.1", "0.5", "1", "5", "10", "30", "60", "300", "600",
                   "1800", "3600", "21600")

# Minutes of history a channel's statistics keep (the dashboard's chart)
MINUTES = 60

# The statistics of a channel (the metrics' counters, so every node reports the same):
# 'finished:<status>' per outcome ('retried' for an attempt that is retried), and the
# durations: 'bucket:<bound>' (not cumulative; '+Inf' past the last), 'duration_sum',
# 'duration_count'. And a ring of the last MINUTES minutes, slot = minute % MINUTES:
# 'minute:<slot>' (the unix minute it counts), 'done:<slot>' (tasks finished, retries
# not counted) and 'failed:<slot>' (of those, not succeeded). Best effort: a
# statistics key or field that is not ours is left alone and the task finishes.
_STATS = """
local BOUNDS = {""" + ", ".join(f"'{b}'" for b in DURATION_BOUNDS) + """}
local function stats_fields(outcome, fields)
  local status, duration = 'unknown', nil
  for i = 1, #fields - 1, 2 do
    if fields[i] == 'status' then status = fields[i + 1]
    elseif fields[i] == 'duration' then duration = tonumber(fields[i + 1]) end
  end
  if outcome == 'retry' then status = 'retried' end
  local names = {'finished:' .. status}
  if duration then
    local le = '+Inf'
    for _, bound in ipairs(BOUNDS) do
      if duration <= tonumber(bound) then le = bound break end
    end
    names = {names[1], 'bucket:' .. le, 'duration_sum', 'duration_count'}
  end
  return names, duration, status
end
-- -> the HSET arguments that count this attempt, or nil when a value is not a number
local function stats_update(key, names, duration, status, now)
  local hash, none = is_hash(key)
  if not (hash or none) then return nil end
  local minute = math.floor(tonumber(now) / 60)
  local slot = tostring(minute % """ + str(MINUTES) + """)
  local ring = status ~= 'retried'
  if ring then
    names = {'minute:' .. slot, 'done:' .. slot, 'failed:' .. slot, unpack(names)}
  end
  local values, out = redis.call('HMGET', key, unpack(names)), {}
  local first = 1
  if ring then
    local fresh = tonumber(values[1]) ~= minute   -- the slot counts an older minute
    local done, failed = tonumber(values[2] or '0'), tonumber(values[3] or '0')
    if fresh then done, failed = 0, 0 end
    if done == nil or failed == nil then return nil end
    if status ~= 'succeeded' then failed = failed + 1 end
    out = {names[1], tostring(minute), names[2], tostring(done + 1), names[3], tostring(failed)}
    first = 4
  end
  for i = first, #names do
    local name, value = names[i], tonumber(values[i] or '0')
    if value == nil then return nil end
    local add = (name == 'duration_sum') and duration or 1
    out[#out + 1] = name
    out[#out + 1] = (name == 'duration_sum') and string.format('%.6f', value + add)
                    or tostring(math.floor(value + add))
  end
  return out
end
"""

FINISH = _CLOCK + _TYPES + _STATS + """
-- KEYS[1] processing list   KEYS[2] running set   KEYS[3] distinct flag
-- KEYS[4] task record   KEYS[5] failed hash   KEYS[6] failed index zset
-- KEYS[7] delayed zset   KEYS[8] the channel's statistics hash (optional)
-- ARGV[1] entry   ARGV[2] 'done' | 'failed' | 'retry'   ARGV[3] task id
-- ARGV[4] record TTL (s)   ARGV[5] retry delay (s)   ARGV[6..] record fields and values
local bad = wrongtype(KEYS[1], 'list', KEYS[2], 'set', KEYS[4], 'hash')
  or (ARGV[2] == 'retry' and wrongtype(KEYS[7], 'zset'))
  or (ARGV[2] == 'failed' and wrongtype(KEYS[5], 'hash', KEYS[6], 'zset'))
if bad then return bad end
local now, counted = clock(), nil
local fields = {unpack(ARGV, 6)}
if KEYS[8] then
  local names, duration, status = stats_fields(ARGV[2], fields)
  counted = stats_update(KEYS[8], names, duration, status, now)
end
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
if counted then redis.call('HSET', KEYS[8], unpack(counted)) end
redis.call('SREM', KEYS[2], ARGV[1])
-- the result's fields, then what this step sets (which wins over them): one HSET
if ARGV[2] == 'retry' then
  local at = tonumber(now) + tonumber(ARGV[5])
  append(fields, 'status', 'delayed', 'retry_at', at,
         'retry_count', number(KEYS[4], 'retry_count') + 1)
  redis.call('HSET', KEYS[4], unpack(fields))
  redis.call('ZADD', KEYS[7], at, ARGV[1])
  return 2
end
redis.call('DEL', KEYS[3])
append(fields, 'finished_at', now)
if ARGV[2] == 'failed' then append(fields, 'failed_at', now, 'parked', '1') end
redis.call('HSET', KEYS[4], unpack(fields))
if ARGV[2] == 'failed' then
  redis.call('HSET', KEYS[5], ARGV[3], ARGV[1])
  redis.call('ZADD', KEYS[6], now, ARGV[3])
else
  redis.call('EXPIRE', KEYS[4], ARGV[4])
end
return 1
"""

# Give one claimed entry back to its queue, on the side workers take from
# (a shutdown that stopped it, or a claim made while stopping, whose start is
# undone: it did not run).
REQUEUE = _CLOCK + _TYPES + _WAKE + _BURY + """
-- KEYS[1] processing list   KEYS[2] running set   KEYS[3] queue   KEYS[4] task record
-- KEYS[5] channels hash   KEYS[6] dead-letter list   KEYS[7] trimmed counter
-- ARGV[1] entry   ARGV[2] '1' = it did not run: take back the attempt its start counted
-- ARGV[3] wake-up channel (optional)   ARGV[4] channel   ARGV[5] this node's id
-- ARGV[6] most dead letters kept   ARGV[7] record TTL (s)
-- returns 1 requeued, 2 into the dead-letter list (its channel was deleted), 0 not ours
local bad = wrongtype(KEYS[1], 'list', KEYS[2], 'set', KEYS[3], 'list', KEYS[5], 'hash',
                      KEYS[6], 'list') or counter_bad(KEYS[7])
if bad then return bad end
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
local started = redis.call('SREM', KEYS[2], ARGV[1]) == 1
if gone(KEYS[5], ARGV[4]) then
  bury(KEYS[6], KEYS[7], ARGV[6], ARGV[1], 'channel ' .. ARGV[4] .. ' was deleted',
       ARGV[5], KEYS[4], ARGV[7])
  return 2
end
redis.call('RPUSH', KEYS[3], ARGV[1])
wake(ARGV[3], KEYS[3])
if is_hash(KEYS[4]) then
  redis.call('HSET', KEYS[4], 'status', 'queued')
  local attempt = number(KEYS[4], 'attempt')
  if ARGV[2] == '1' and started and attempt > 0 then
    redis.call('HSET', KEYS[4], 'attempt', attempt - 1)
  end
end
return 1
"""

# Give everything a node holds back where it came from, in one step: its
# staging list to the prepare queue, each processing list to its channel
# queue (to run next), counting a redelivery in each task's record. With
# ARGV[2] = '1' it does nothing while the node's heartbeat lives, so a node
# that came back in between keeps its claims.
REAP = _CLOCK + _TYPES + _WAKE + _BURY + _ID + """
-- KEYS[1] the node's heartbeat   KEYS[2] node set   KEYS[3] its staging list
-- KEYS[4] prepare queue          KEYS[5] set of channels the node consumed
-- KEYS[6] channels hash   KEYS[7] dead-letter list   KEYS[8] trimmed counter
-- KEYS[9..] per channel, three keys: processing list, running set, queue
-- ARGV[1] node id   ARGV[2] '1' = only if the heartbeat expired
-- ARGV[3] '1' = forget the node afterwards   ARGV[4] record key prefix
-- ARGV[5] wake-up channel (optional)   ARGV[6] this node's id
-- ARGV[7] most dead letters kept   ARGV[8] record TTL (s)
-- ARGV[9] what a channel queue's key is followed by in its high queue's
-- ARGV[10..] the channels of KEYS[9..], in the same order (a deleted one's entries
-- go to the dead-letter list)
if ARGV[2] == '1' and redis.call('EXISTS', KEYS[1]) == 1 then return -1 end
local bad = wrongtype(KEYS[2], 'set', KEYS[3], 'list', KEYS[4], 'list', KEYS[5], 'set',
                      KEYS[6], 'hash', KEYS[7], 'list') or counter_bad(KEYS[8])
if bad then return bad end
for i = 9, #KEYS, 3 do
  bad = wrongtype(KEYS[i], 'list', KEYS[i + 1], 'set', KEYS[i + 2], 'list',
                  KEYS[i + 2] .. ARGV[9], 'list')
  if bad then return bad end
end
local n = 0
while redis.call('LMOVE', KEYS[3], KEYS[4], 'LEFT', 'RIGHT') do n = n + 1 end
for i = 9, #KEYS, 3 do
  local chan = ARGV[10 + (i - 9) / 3]
  local alive = not gone(KEYS[6], chan)
  if alive and redis.call('EXISTS', KEYS[i]) == 1 then wake(ARGV[5], KEYS[i + 2]) end
  while true do
    local entry = redis.call('LINDEX', KEYS[i], 0)
    if not entry then break end
    redis.call('SREM', KEYS[i + 1], entry)
    local id = id_of(entry)
    local record = id and (ARGV[4] .. id)
    if alive then   -- a high entry goes back to the high queue
      redis.call('LMOVE', KEYS[i], KEYS[i + 2] .. (high(entry) and ARGV[9] or ''),
                 'LEFT', 'RIGHT')
      if record and is_hash(record) and redis.call('HGET', record, 'status') == 'running' then
        redis.call('HSET', record, 'status', 'queued',
                   'redeliveries', number(record, 'redeliveries') + 1)
      end
    else
      redis.call('LPOP', KEYS[i])
      bury(KEYS[7], KEYS[8], ARGV[7], entry, 'channel ' .. chan .. ' was deleted', ARGV[6],
           record, ARGV[8])
    end
    n = n + 1
  end
end
if ARGV[3] == '1' then
  redis.call('SREM', KEYS[2], ARGV[1])
  redis.call('DEL', KEYS[5])
end
return n
"""

# Move one due delayed task into its queue; only one node wins the ZREM.
PROMOTE = _CLOCK + _TYPES + _WAKE + _BURY + """
-- KEYS[1] delayed zset   KEYS[2] channel queue   KEYS[3] task record
-- KEYS[4] channels hash   KEYS[5] dead-letter list   KEYS[6] trimmed counter
-- ARGV[1] task JSON   ARGV[2] wake-up channel (optional)   ARGV[3] channel
-- ARGV[4] this node's id   ARGV[5] most dead letters kept   ARGV[6] record TTL (s)
-- returns 1 queued, 2 into the dead-letter list (its channel was deleted), 0 gone
local bad = wrongtype(KEYS[1], 'zset', KEYS[2], 'list', KEYS[4], 'hash', KEYS[5], 'list')
  or counter_bad(KEYS[6])
if bad then return bad end
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
if gone(KEYS[4], ARGV[3]) then
  bury(KEYS[5], KEYS[6], ARGV[5], ARGV[1], 'channel ' .. ARGV[3] .. ' was deleted', ARGV[4],
       KEYS[3], ARGV[6])
  return 2
end
redis.call('LPUSH', KEYS[2], ARGV[1])
wake(ARGV[2], KEYS[2])
if is_hash(KEYS[3]) and redis.call('HGET', KEYS[3], 'status') == 'delayed' then
  redis.call('HSET', KEYS[3], 'status', 'queued')
end
return 1
"""

# Cancel a task that waits (queued or delayed): remove it and mark it.
# Returns 1 canceled, 0 not waiting any more (running, finished or unknown).
CANCEL = _CLOCK + _TYPES + """
-- KEYS[1] task record   KEYS[2] channel queue   KEYS[3] delayed zset
-- KEYS[4] distinct flag   KEYS[5] the channel's high queue
-- ARGV[1] entry   ARGV[2] record TTL (s)
local bad = wrongtype(KEYS[1], 'hash', KEYS[2], 'list', KEYS[3], 'zset', KEYS[5], 'list')
if bad then return bad end
if redis.call('LREM', KEYS[2], 1, ARGV[1]) == 0 and redis.call('LREM', KEYS[5], 1, ARGV[1]) == 0
    and redis.call('ZREM', KEYS[3], ARGV[1]) == 0 then
  return 0
end
redis.call('DEL', KEYS[4])
redis.call('HSET', KEYS[1], 'status', 'canceled', 'finished_at', clock())
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""

# Ask the node running a task to kill it (it polls its set), unless it ended.
KILL = _FINAL + _TYPES + """
-- KEYS[1] task record
-- KEYS[2] kill requests of the node running it (KEYS[1] again: no node yet)
-- ARGV[1] task id
local bad = wrongtype(KEYS[1], 'hash') or (KEYS[2] ~= KEYS[1] and wrongtype(KEYS[2], 'set'))
if bad then return bad end
local status = redis.call('HGET', KEYS[1], 'status')
if not status or final[status] then return 0 end
redis.call('HSET', KEYS[1], 'kill_requested', '1')
if KEYS[2] ~= KEYS[1] then redis.call('SADD', KEYS[2], ARGV[1]) end
return 1
"""

# Take a task out of the failed hash: back into its queue (ARGV[2] = '1'),
# or dropped, its record left to expire.
UNFAIL = _TYPES + _WAKE + _ID + """
-- KEYS[1] failed hash   KEYS[2] failed index   KEYS[3] channel queue
-- KEYS[4] task record   KEYS[5] distinct flag   KEYS[6] the channel's high queue
-- KEYS[7] channels hash
-- ARGV[1] task id   ARGV[2] '1' = retry, '0' = delete   ARGV[3] record TTL (s)
-- ARGV[4] distinct flag TTL (s), 0 = not distinct   ARGV[5] wake-up channel (optional)
-- ARGV[6] channel
-- returns 1 done, 0 not among the failed tasks, 2 not retried: the channel was deleted
local bad = wrongtype(KEYS[1], 'hash', KEYS[2], 'zset', KEYS[3], 'list', KEYS[4], 'hash',
                      KEYS[6], 'list', KEYS[7], 'hash')
if bad then return bad end
local entry = redis.call('HGET', KEYS[1], ARGV[1])
if not entry then return 0 end
if ARGV[2] == '1' and gone(KEYS[7], ARGV[6]) then return 2 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[4], 'parked')
if ARGV[2] == '1' then
  if ARGV[4] ~= '0' then redis.call('SET', KEYS[5], '1', 'EX', ARGV[4]) end
  redis.call('HSET', KEYS[4], 'status', 'queued', 'retry_count', 0, 'redeliveries', 0)
  redis.call('HDEL', KEYS[4], 'kill_requested', 'failed_at')
  redis.call('PERSIST', KEYS[4])
  local queue = high(entry) and KEYS[6] or KEYS[3]
  redis.call('LPUSH', queue, entry)
  wake(ARGV[5], queue)
else
  redis.call('EXPIRE', KEYS[4], ARGV[3])
end
return 1
"""

# The fallback of the wake-up messages: which of these channel queues hold
# entries (pushed by a producer that does not publish, or while our listener
# was reconnecting). A key of another type is skipped; its claim reports it.
WAITING = """
-- KEYS[1..] channel queues
-- ARGV[1] what a channel queue's key is followed by in its high queue's
-- returns the indices (1-based) of those that hold entries (or whose high queue does)
local out = {}
for i = 1, #KEYS do
  local n = redis.pcall('LLEN', KEYS[i])
  local h = redis.pcall('LLEN', KEYS[i] .. ARGV[1])
  if (type(n) == 'number' and n > 0) or (type(h) == 'number' and h > 0) then
    out[#out + 1] = i
  end
end
return out
"""

# Change one channel's settings if they are still what the caller read (two
# callers changing different fields at once must not lose either change), and
# tell every node. Returns 1 changed, 0 changed meanwhile (read again), -1 no
# such channel.
SET_CHANNEL = _TYPES + """
-- KEYS[1] channels hash
-- ARGV[1] channel   ARGV[2] its settings as read   ARGV[3] new settings
-- ARGV[4] wake-up channel ('' = none): told KEYS[1], the nodes read the settings again
-- ARGV[5] this node's id (in the message: it applied the change itself)
local bad = wrongtype(KEYS[1], 'hash')
if bad then return bad end
local now = redis.call('HGET', KEYS[1], ARGV[1])
if not now then return -1 end
if now ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
if ARGV[4] ~= '' then redis.call('PUBLISH', ARGV[4], KEYS[1] .. '\\n' .. ARGV[5]) end
return 1
"""

# Delete a channel once its queue is empty: its waiting tasks are refused (the
# caller gets how many), or first moved to another channel's queue (in order,
# behind what waits there) or dropped into the dead-letter list, ARGV[4] at a
# time. Entries the channel's nodes requeue later go to the dead-letter list
# (REQUEUE, REAP, PROMOTE). Returns {code, entries}: 1 deleted (entries moved or
# dropped by this call), 0 no such channel, 2 tasks wait (how many), 3 no such
# channel to move them to, 4 more to move or drop (call again).
DELETE_CHANNEL = _CLOCK + _TYPES + _WAKE + _BURY + _ID + """
-- KEYS[1] channels hash   KEYS[2] its queue
-- KEYS[3] the queue to move tasks to (KEYS[2] again: none)
-- KEYS[4] dead-letter list   KEYS[5] trimmed counter   KEYS[6] its high queue
-- KEYS[7] the high queue to move its high tasks to (KEYS[6] again: none)
-- KEYS[8] its statistics hash (optional: removed with the channel)
-- ARGV[1] channel   ARGV[2] 'refuse' | 'move' | 'drop'   ARGV[3] channel to move to
-- ARGV[4] most entries moved or dropped by this call
-- ARGV[5], ARGV[6] a distinct flag's key around the task's name (they are removed)
-- ARGV[7] record key prefix   ARGV[8] most dead letters kept   ARGV[9] reason
-- ARGV[10] this node's id (also in the message: it applied the change itself)
-- ARGV[11] record TTL (s)   ARGV[12] wake-up channel ('' = none)
local bad = wrongtype(KEYS[1], 'hash', KEYS[2], 'list', KEYS[3], 'list', KEYS[4], 'list',
                      KEYS[6], 'list', KEYS[7], 'list') or counter_bad(KEYS[5])
if bad then return bad end
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return {0, 0} end
if ARGV[2] == 'move' and redis.call('HEXISTS', KEYS[1], ARGV[3]) == 0 then return {3, 0} end
local waiting = redis.call('LLEN', KEYS[2]) + redis.call('LLEN', KEYS[6])
if ARGV[2] == 'refuse' and waiting > 0 then return {2, waiting} end
local n = 0
while n < tonumber(ARGV[4]) do
  local entry, to = redis.call('RPOP', KEYS[6]), KEYS[7]   -- high ones first, oldest first
  if not entry then entry, to = redis.call('RPOP', KEYS[2]), KEYS[3] end
  if not entry then break end
  local ok, task = pcall(cjson.decode, entry)
  local name = entry   -- a Go plain string is its own name
  if ok and type(task) == 'table' then
    name = (task.task ~= '' and task.task) or task.task_name
  end
  if type(name) == 'string' then redis.call('DEL', ARGV[5] .. name .. ARGV[6]) end
  local id = id_of(entry)
  local record = id and (ARGV[7] .. id)
  if ARGV[2] == 'move' then
    redis.call('LPUSH', to, entry)
    if record and is_hash(record) then redis.call('HSET', record, 'channel', ARGV[3]) end
  else
    bury(KEYS[4], KEYS[5], ARGV[8], entry, ARGV[9], ARGV[10], record, ARGV[11])
  end
  n = n + 1
end
if n > 0 and ARGV[2] == 'move' then wake(ARGV[12], KEYS[3]) end
if redis.call('LLEN', KEYS[2]) + redis.call('LLEN', KEYS[6]) > 0 then return {4, n} end
redis.call('HDEL', KEYS[1], ARGV[1])
if KEYS[8] then redis.call('DEL', KEYS[8]) end
if ARGV[12] ~= '' then redis.call('PUBLISH', ARGV[12], KEYS[1] .. '\\n' .. ARGV[10]) end
return {1, n}
"""

# Note the pids of commands that run on this node in their records (each
# maintenance turn, for those started since: a short task never costs a write).
NOTE_PIDS = _TYPES + """
-- KEYS[1..] task records
-- ARGV[1] this node's id   ARGV[2..] the pids, in the order of KEYS
for i = 1, #KEYS do
  if is_hash(KEYS[i]) and redis.call('HGET', KEYS[i], 'status') == 'running'
      and redis.call('HGET', KEYS[i], 'node') == ARGV[1] then
    redis.call('HSET', KEYS[i], 'pid', ARGV[i + 1])
  end
end
return 1
"""

# Whether any channel's settings changed, without sending them all: a digest of
# the whole hash, read every few seconds by every node.
DIGEST = _TYPES + """
-- KEYS[1] channels hash
-- returns the SHA-1 of every field and value, in the hash's order
local bad = wrongtype(KEYS[1], 'hash')
if bad then return bad end
return redis.sha1hex(table.concat(redis.call('HGETALL', KEYS[1]), '\\0'))
"""

# The sizes a listing of many channels starts from, in one reply (a reply per
# key cost more to read than the listing itself, with thousands of channels).
COUNTS = """
-- KEYS[1..] per channel, two keys: running set, queue
-- ARGV[1] what a channel queue's key is followed by in its high queue's
-- returns per channel: how many run, how many wait in its high queue, in its queue
local out = {}
for i = 1, #KEYS, 2 do
  out[#out + 1] = redis.call('SCARD', KEYS[i])
  out[#out + 1] = redis.call('LLEN', KEYS[i + 1] .. ARGV[1])
  out[#out + 1] = redis.call('LLEN', KEYS[i + 1])
end
return out
"""

# A dead letter goes back to the producers' queue (edited or as it was), where the
# router checks it again like any new entry.
REVIVE = _TYPES + """
-- KEYS[1] dead-letter list   KEYS[2] prepare queue
-- ARGV[1] the dead letter (its exact text)   ARGV[2] the entry to queue
-- returns 1, or 0 (nothing written) when the letter is no longer in the list
local bad = wrongtype(KEYS[1], 'list', KEYS[2], 'list')
if bad then return bad end
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
redis.call('LPUSH', KEYS[2], ARGV[2])
return 1
"""
