"""Everything Coyotes does to Redis: push, claim, ack, requeue, listings.

A task never leaves Redis between being accepted and being finished. The
dispatcher moves a prepare-queue entry into this node's staging list, then a
Lua script moves it from there into its channel queue (or the dead-letter
list); a worker claims a task by moving it into this node's processing list
(``BLMOVE``) and a script removes it only once it has finished. A node that
dies leaves its staging and processing lists behind; it requeues them when it
starts again, and any live node does so once the dead node's heartbeat key
has expired. Each script is registered once, with a KEYS/ARGV header.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .keys import Keys
from .task import Task

log = logging.getLogger("coyotes.broker")

DISTINCT_TTL = 1800  # seconds; a safety net, the flag is cleared when the task ends
BLOCK = 1            # seconds a blocking move waits, so the stop flag is seen quickly

# Route one task into its channel queue (or the delayed set), honouring the
# distinct rule, and remove the entry it came from, all in one step.
ENQUEUE = """
-- KEYS[1] channel queue   KEYS[2] distinct flag   KEYS[3] delayed zset
-- KEYS[4] source list the entry is removed from (may not exist)
-- ARGV[1] task JSON       ARGV[2] flag TTL (s), 0 = not distinct
-- ARGV[3] source entry    ARGV[4] execute_at (unix s), 0 = now
if ARGV[3] ~= '' then redis.call('LREM', KEYS[4], 1, ARGV[3]) end
if ARGV[2] ~= '0' and not redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[2]) then
  return 0
end
if tonumber(ARGV[4]) > tonumber(redis.call('TIME')[1]) then
  redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
  return 2
end
redis.call('LPUSH', KEYS[1], ARGV[1])
return 1
"""

# Park an entry that cannot become a task, with its reason.
DEAD = """
-- KEYS[1] dead-letter list   KEYS[2] source list (may not exist)
-- ARGV[1] dead-letter record (JSON)   ARGV[2] source entry
redis.call('LREM', KEYS[2], 1, ARGV[2])
return redis.call('LPUSH', KEYS[1], ARGV[1])
"""

# A finished task leaves the processing list and the running set, and its
# distinct flag is cleared. Returns 0 when another node had already requeued it.
ACK = """
-- KEYS[1] processing list   KEYS[2] running set   KEYS[3] distinct flag
-- ARGV[1] entry
local removed = redis.call('LREM', KEYS[1], 1, ARGV[1])
redis.call('SREM', KEYS[2], ARGV[1])
redis.call('DEL', KEYS[3])
return removed
"""

# Give claimed entries back to their queue, on the side workers take from,
# so they run next. ARGV[1] = '' moves the whole list.
REQUEUE = """
-- KEYS[1] processing (or staging) list   KEYS[3] queue
-- KEYS[2] running set (KEYS[1] again when there is none, for staging lists)
-- ARGV[1] one entry, or '' for all of them
local tracked = KEYS[2] ~= KEYS[1]
if ARGV[1] ~= '' then
  if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
  if tracked then redis.call('SREM', KEYS[2], ARGV[1]) end
  redis.call('RPUSH', KEYS[3], ARGV[1])
  return 1
end
local n = 0
while true do
  local entry = redis.call('LMOVE', KEYS[1], KEYS[3], 'LEFT', 'RIGHT')
  if not entry then return n end
  if tracked then redis.call('SREM', KEYS[2], entry) end
  n = n + 1
end
"""

# Move one due delayed task into its queue; only one node wins the ZREM.
PROMOTE = """
-- KEYS[1] delayed zset   KEYS[2] channel queue
-- ARGV[1] task JSON
if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 then
  return redis.call('LPUSH', KEYS[2], ARGV[1])
end
return 0
"""


@dataclasses.dataclass(frozen=True)
class ChannelSpec:
    name: str
    distinct: bool
    worker_count: int

    def to_json(self) -> str:
        return json.dumps({"name": self.name, "distinct": self.distinct,
                           "worker_count": self.worker_count})


def connect(host: str, port: int, password: str = "", db: int = 0) -> redis.Redis:
    """A client whose socket timeout outlasts every blocking call we make.

    redis-py's own silent retries are turned off: resending a move whose reply
    was lost is not idempotent, so every caller handles the error itself (and
    a claim loop reconciles its processing list after an outage)."""
    return redis.Redis(host=host, port=port, password=password or None, db=db,
                       decode_responses=True, socket_timeout=BLOCK + 9,
                       socket_connect_timeout=3, socket_keepalive=True,
                       health_check_interval=30, retry=Retry(NoBackoff(), 0))


class Broker:
    def __init__(self, client: redis.Redis, keys: Keys, node_id: str, node_ttl: int = 30):
        self.redis, self.keys, self.node = client, keys, node_id
        self.node_ttl = node_ttl
        self._enqueue = client.register_script(ENQUEUE)
        self._dead = client.register_script(DEAD)
        self._ack = client.register_script(ACK)
        self._requeue = client.register_script(REQUEUE)
        self._promote = client.register_script(PROMOTE)

    # -- channels ---------------------------------------------------------
    def channels(self) -> dict[str, ChannelSpec]:
        specs = {}
        for name, raw in self.redis.hgetall(self.keys.channels).items():
            spec = self._spec(name, raw)
            if spec is not None:
                specs[name] = spec
        return specs

    def channel(self, name: str) -> ChannelSpec | None:
        raw = self.redis.hget(self.keys.channels, name)
        return None if raw is None else self._spec(name, raw)

    def _spec(self, name: str, raw: str) -> ChannelSpec | None:
        try:
            data = json.loads(raw)
            return ChannelSpec(name, bool(data.get("distinct")),
                               max(1, int(data.get("worker_count") or 1)))
        except (ValueError, TypeError, AttributeError):
            log.error("channel %s: unreadable settings %r in %s, skipped",
                      name, raw, self.keys.channels)
            return None

    def add_channel(self, spec: ChannelSpec) -> bool:
        """False if a channel of that name exists already (it is left as it is)."""
        return bool(self.redis.hsetnx(self.keys.channels, spec.name, spec.to_json()))

    # -- producing --------------------------------------------------------
    def push(self, task: Task, distinct: bool, source: str = "") -> int:
        """1 queued, 2 delayed, 0 refused by the distinct rule.

        ``source`` names the entry of this node's staging list the task came
        from; it is removed in the same step.
        """
        k = self.keys
        return int(self._enqueue(
            keys=[k.queue(task.channel), k.distinct(task.channel, task.name),
                  k.delayed, k.staging(self.node)],
            args=[task.raw, DISTINCT_TTL if distinct else 0, source,
                  task.payload.get("execute_at") or 0]))

    def dead_letter(self, entry: str, reason: str, source: bool = True) -> None:
        record = json.dumps({"entry": entry, "reason": reason, "ts": int(time.time()),
                             "node": self.node}, ensure_ascii=False)
        self._dead(keys=[self.keys.dead, self.keys.staging(self.node)],
                   args=[record, entry if source else ""])

    def now(self) -> int:
        """Redis's clock (unix seconds): every node agrees on it."""
        return int(self.redis.time()[0])

    def take_prepared(self, timeout: float = BLOCK) -> str | None:
        """Move the oldest prepare-queue entry into this node's staging list."""
        return self.redis.blmove(self.keys.prepare, self.keys.staging(self.node),
                                 timeout, "RIGHT", "LEFT")

    def promote_due(self, channel_of, limit: int = 100) -> int:
        """Queue delayed tasks whose time (by Redis's clock) has come."""
        now = self.now()
        moved = 0
        for raw in self.redis.zrangebyscore(self.keys.delayed, "-inf", now, 0, limit):
            moved += bool(self._promote(keys=[self.keys.delayed,
                                              self.keys.queue(channel_of(raw))], args=[raw]))
        return moved

    # -- consuming --------------------------------------------------------
    def claim(self, chan: str, timeout: float = BLOCK) -> str | None:
        """Atomically move the next task of ``chan`` into this node's processing list."""
        raw = self.redis.blmove(self.keys.queue(chan), self.keys.processing(self.node, chan),
                                timeout, "RIGHT", "LEFT")
        if raw is not None:
            self.redis.sadd(self.keys.running(chan), raw)
        return raw

    def ack(self, chan: str, raw: str, name: str) -> bool:
        """The task is finished; False if it was no longer ours (requeued meanwhile)."""
        k = self.keys
        return bool(self._ack(keys=[k.processing(self.node, chan), k.running(chan),
                                    k.distinct(chan, name)], args=[raw]))

    def release(self, chan: str, raw: str, reason: str = "") -> None:
        """Drop a claimed entry that cannot run into the dead-letter list."""
        k = self.keys
        record = json.dumps({"entry": raw, "reason": reason, "channel": chan,
                             "ts": int(time.time()), "node": self.node}, ensure_ascii=False)
        with self.redis.pipeline() as pipe:
            pipe.lpush(k.dead, record)
            pipe.lrem(k.processing(self.node, chan), 1, raw)
            pipe.srem(k.running(chan), raw)
            pipe.execute()

    def requeue(self, chan: str, raw: str = "", node: str | None = None) -> int:
        """Give one claimed entry (or all of a node's, ``raw=''``) back to the queue."""
        k = self.keys
        return int(self._requeue(keys=[k.processing(node or self.node, chan),
                                       k.running(chan), k.queue(chan)], args=[raw]))

    def requeue_node(self, node: str, channels) -> int:
        """Everything ``node`` had claimed or was routing goes back where it came from."""
        n = sum(self.requeue(chan, node=node) for chan in channels)
        k = self.keys
        return n + int(self._requeue(keys=[k.staging(node), k.staging(node), k.prepare],
                                     args=[""]))

    # -- nodes ------------------------------------------------------------
    def beat(self) -> None:
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.set(self.keys.heartbeat(self.node), f"{os.getpid()} {int(time.time())}",
                     ex=self.node_ttl)
            pipe.sadd(self.keys.nodes, self.node)
            pipe.execute()

    def reap_dead_nodes(self, channels) -> dict[str, int]:
        """Requeue the work of nodes whose heartbeat expired; {node: tasks}."""
        reaped = {}
        for node in self.redis.smembers(self.keys.nodes):
            if node == self.node or self.redis.exists(self.keys.heartbeat(node)):
                continue
            reaped[node] = self.requeue_node(node, channels)
            self.redis.srem(self.keys.nodes, node)
        return reaped

    def leave(self) -> None:
        """A clean exit: nothing of ours is left, so forget this node."""
        with self.redis.pipeline() as pipe:
            pipe.delete(self.keys.heartbeat(self.node))
            pipe.srem(self.keys.nodes, self.node)
            pipe.execute()

    # -- reading ----------------------------------------------------------
    def channel_tasks(self, chan: str, offset: int = 0, limit: int = 100):
        """(running entries + queued entries in run order, sliced; total count)."""
        k = self.keys
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.smembers(k.running(chan))
            pipe.llen(k.queue(chan))
            running, queued = pipe.execute()
        running = sorted(running)
        page = [(raw, "running") for raw in running[offset:offset + limit]]
        start = max(0, offset - len(running))
        want = limit - len(page)
        if want > 0 and start < queued:
            # the queue is taken from the right: the next task is at index -1
            raws = self.redis.lrange(k.queue(chan), -(start + want), -(start + 1))
            page += [(raw, "queued") for raw in reversed(raws)]
        return page, len(running) + queued

    def dead_letters(self, offset: int = 0, limit: int = 100):
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.lrange(self.keys.dead, offset, offset + limit - 1)
            pipe.llen(self.keys.dead)
            entries, count = pipe.execute()
        return entries, count
