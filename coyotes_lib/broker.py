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
import socket
import time
import uuid

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
# distinct flag is cleared. Returns 0 (touching nothing) when the entry was no
# longer ours: another node requeued it and may be running it now.
ACK = """
-- KEYS[1] processing list   KEYS[2] running set   KEYS[3] distinct flag
-- ARGV[1] entry
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
redis.call('SREM', KEYS[2], ARGV[1])
redis.call('DEL', KEYS[3])
return 1
"""

# Give one claimed entry back to its queue, on the side workers take from.
REQUEUE = """
-- KEYS[1] processing list   KEYS[2] running set   KEYS[3] queue
-- ARGV[1] entry
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
redis.call('SREM', KEYS[2], ARGV[1])
redis.call('RPUSH', KEYS[3], ARGV[1])
return 1
"""

# Give everything a node holds back where it came from, in one step: its
# staging list to the prepare queue, each processing list to its channel
# queue (to run next). With ARGV[2] = '1' it does nothing while the node's
# heartbeat lives, so a node that came back in between keeps its claims.
REAP = """
-- KEYS[1] the node's heartbeat   KEYS[2] node set   KEYS[3] its staging list
-- KEYS[4] prepare queue          KEYS[5] set of channels the node consumed
-- KEYS[6..] per channel, three keys: processing list, running set, queue
-- ARGV[1] node id   ARGV[2] '1' = only if the heartbeat expired
-- ARGV[3] '1' = forget the node afterwards
if ARGV[2] == '1' and redis.call('EXISTS', KEYS[1]) == 1 then return -1 end
local n = 0
while redis.call('LMOVE', KEYS[3], KEYS[4], 'LEFT', 'RIGHT') do n = n + 1 end
for i = 6, #KEYS, 3 do
  while true do
    local entry = redis.call('LMOVE', KEYS[i], KEYS[i + 2], 'LEFT', 'RIGHT')
    if not entry then break end
    redis.call('SREM', KEYS[i + 1], entry)
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
    a claim loop reconciles its processing list after an outage). Bytes that
    are not UTF-8 (a GBK command line left by an old producer) decode with
    surrogate escapes, so they round-trip to Redis and to argv unchanged."""
    return redis.Redis(host=host, port=port, password=password or None, db=db,
                       decode_responses=True, encoding_errors="surrogateescape",
                       socket_timeout=BLOCK + 9,
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
        self._reap = client.register_script(REAP)
        self.instance = uuid.uuid4().hex   # tells this process from another with our id
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

    def staged(self) -> list[str]:
        """Entries this node moved out of the prepare queue and has not routed yet."""
        return self.redis.lrange(self.keys.staging(self.node), 0, -1)

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

    def requeue(self, chan: str, raw: str) -> bool:
        """Give one claimed entry back to the queue (it runs next)."""
        k = self.keys
        return bool(self._requeue(keys=[k.processing(self.node, chan), k.running(chan),
                                        k.queue(chan)], args=[raw]))

    def requeue_node(self, node: str, channels, only_if_dead: bool = False,
                     forget: bool = False) -> int:
        """Everything ``node`` had claimed or was routing goes back where it came
        from; -1 if ``only_if_dead`` and its heartbeat lives."""
        k = self.keys
        names = set(channels) | self.redis.smembers(k.node_channels(node))
        keys = [k.heartbeat(node), k.nodes, k.staging(node), k.prepare, k.node_channels(node)]
        for chan in sorted(names):
            keys += [k.processing(node, chan), k.running(chan), k.queue(chan)]
        return int(self._reap(keys=keys, args=[node, "1" if only_if_dead else "0",
                                               "1" if forget else "0"]))

    # -- nodes ------------------------------------------------------------
    def consuming(self, channels) -> None:
        """Remember which channels this node claims from, for whoever reaps it."""
        if channels:
            self.redis.sadd(self.keys.node_channels(self.node), *channels)

    def beat(self) -> None:
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.set(self.keys.heartbeat(self.node), self.heartbeat_value(), ex=self.node_ttl)
            pipe.sadd(self.keys.nodes, self.node)
            pipe.execute()

    def heartbeat_value(self) -> str:
        return f"{self.instance} {socket.gethostname()} {os.getpid()} {time.time():.3f}"

    def heartbeat_of(self, node: str) -> str | None:
        return self.redis.get(self.keys.heartbeat(node))

    def reap_dead_nodes(self, channels) -> dict[str, int]:
        """Requeue the work of nodes whose heartbeat expired; {node: tasks}."""
        reaped = {}
        for node in self.redis.smembers(self.keys.nodes):
            if node != self.node:
                moved = self.requeue_node(node, channels, only_if_dead=True, forget=True)
                if moved >= 0:
                    reaped[node] = moved
        return reaped

    def leave(self, channels) -> int:
        """A clean exit: give back anything still held and forget this node."""
        moved = self.requeue_node(self.node, channels, forget=True)
        self.redis.delete(self.keys.heartbeat(self.node))
        return moved

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
