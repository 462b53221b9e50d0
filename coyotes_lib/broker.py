"""Everything Coyotes does to Redis: push, claim, ack, requeue, listings.

A task never leaves Redis between being accepted and being finished. The
dispatcher moves a prepare-queue entry into this node's staging list, then a
Lua script moves it from there into its channel queue (or the dead-letter
list); a worker claims a task by moving it into this node's processing list
(the CLAIM script, when a wake-up message or the scan says it holds entries)
and a script removes it only once its result is recorded. A node that dies
leaves its staging and processing lists behind; it requeues them when it
starts again, and any live node does so once the dead node's heartbeat key
has expired. The scripts live in ``scripts.py``, the connections
and the round trips they take in ``connection.py``, the read-only listings the
API shows in ``listings.py``.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
import socket
import time
import uuid

import redis

from . import __version__, scripts
from .config import Config
from .connection import BLOCK, MAX_CONNECTIONS, Lean, Subscriber
from .keys import Keys
from .listings import Listings, count_commands, counts_of
from .model import ChannelSpec, Claim, Deleted, Enqueued, Outcome, Started
from .policy import CommandPolicy
from .task import Policy, Task, high

log = logging.getLogger("coyotes.broker")

DISTINCT_TTL = 1800  # seconds; a safety net, the flag is cleared when the task ends
GO_TIME_FLOOR = 1e13  # a delayed score this large is Go's YYYYmmddHHMMSS, not unix time
DEAD_ENTRY_MAX = 16 * 1024   # characters of an entry a dead letter keeps (with length and hash)


def flat(fields: dict) -> list:
    """A dict as Lua's ARGV pairs (None dropped, lists as JSON)."""
    out = []
    for key, value in fields.items():
        if value is not None:
            out += [key, json.dumps(value) if isinstance(value, (list, tuple, dict)) else value]
    return out


class Broker(Listings):
    def __init__(self, client: redis.Redis, keys: Keys, node_id: str,
                 node_ttl: int = Config.node_ttl, record_ttl: int = Config.result_ttl,
                 dead_max: int = Config.dead_letters_max,
                 spare_max: int = MAX_CONNECTIONS):
        self.redis, self.keys, self.node = client, keys, node_id
        self.node_ttl = node_ttl
        self.record_ttl = record_ttl
        self.dead_max = dead_max
        self.instance = uuid.uuid4().hex   # tells this process from another with our id
        self.started_at = time.time()
        self.seen: dict[str, tuple[str, ChannelSpec | None]] = {}   # see ``channels``
        self.read: tuple[str, dict[str, ChannelSpec]] = ("", {})   # (digest, specs)
        self.lean = lean = Lean(client, spare_max)
        self._enqueue = lean.script(scripts.ENQUEUE)
        self._dead = lean.script(scripts.DEAD)
        self._take = lean.script(scripts.TAKE)
        self._claim = lean.script(scripts.CLAIM)
        self._route = lean.script(scripts.ROUTE)
        self._start = lean.script(scripts.START)
        self._finish = lean.script(scripts.FINISH)
        self._requeue = lean.script(scripts.REQUEUE)
        self._reap = lean.script(scripts.REAP)
        self._promote = lean.script(scripts.PROMOTE)
        self._cancel = lean.script(scripts.CANCEL)
        self._kill = lean.script(scripts.KILL)
        self._unfail = lean.script(scripts.UNFAIL)
        self._waiting = lean.script(scripts.WAITING)
        self._digest = lean.script(scripts.DIGEST)
        self._counts = lean.script(scripts.COUNTS)
        self._set_channel = lean.script(scripts.SET_CHANNEL)
        self._delete_channel = lean.script(scripts.DELETE_CHANNEL)
        self._note_pids = lean.script(scripts.NOTE_PIDS)
        self._fire = lean.script(scripts.FIRE)
        self._revive = lean.script(scripts.REVIVE)

    def load_scripts(self) -> None:
        """Load every script now: a pipelined call finds it there (one that does not,
        after Redis restarted, is run again by itself, or takes the slower path)."""
        self.lean.load_scripts()

    # -- channels ---------------------------------------------------------
    def channels(self) -> dict[str, ChannelSpec]:
        """Every channel's settings. The hash is read again only when its digest
        changed, and only settings that changed are parsed again (with thousands of
        channels, reading and parsing them was most of the cost)."""
        digest = self._digest(keys=[self.keys.channels])
        if digest != self.read[0]:
            specs, seen = {}, {}
            for name, raw in self.redis.hgetall(self.keys.channels).items():
                known = self.seen.get(name)
                spec = known[1] if known is not None and known[0] == raw \
                    else self._spec(name, raw)
                seen[name] = (raw, spec)
                if spec is not None:
                    specs[name] = spec
            self.seen, self.read = seen, (digest, specs)
        return dict(self.read[1])

    @property
    def channels_version(self) -> str:
        """The digest of ``task:channels`` that ``channels`` last read: it changes
        whenever a channel is added, removed or has its settings changed."""
        return self.read[0]

    def channel(self, name: str) -> ChannelSpec | None:
        raw = self.redis.hget(self.keys.channels, name)
        return None if raw is None else self._spec(name, raw)

    def _spec(self, name: str, raw: str) -> ChannelSpec | None:
        try:
            data = json.loads(raw)
            return ChannelSpec(name, bool(data.get("distinct")),
                               max(1, int(data.get("worker_count") or 1)),
                               Policy().merge(data), data.get("paused") is True,
                               max(0, int(data.get("max_running") or 0)),
                               stored_policy(name, data.get("command_policy")))
        except (ValueError, TypeError, AttributeError):
            log.error("channel %s: unreadable settings %r in %s, skipped",
                      name, raw, self.keys.channels)
            return None

    def add_channel(self, spec: ChannelSpec) -> bool:
        """False if a channel of that name exists already (it is left as it is)."""
        if not self.redis.hsetnx(self.keys.channels, spec.name, spec.to_json()):
            return False
        # the other nodes start it now (this one does itself, and skips the message)
        self.redis.publish(self.keys.wake, f"{self.keys.channels}\n{self.node}")
        return True

    def change_channel(self, name: str, change) -> ChannelSpec | None:
        """Apply ``change(spec) -> spec`` to a channel's settings, read and written
        again if another caller changed them meanwhile, and tell every node;
        -> the new settings, None if there is no such channel."""
        while True:
            raw = self.redis.hget(self.keys.channels, name)
            spec = None if raw is None else self._spec(name, raw)
            if spec is None:
                return None
            new = change(spec)
            done = self._set_channel(keys=[self.keys.channels],
                                     args=[name, raw, new.to_json(), self.keys.wake,
                                           self.node])
            if done == 1:
                return new
            if done == -1:
                return None

    def delete_channel(self, name: str, move_to: str = "", drop: bool = False,
                       batch: int = 1000) -> tuple[Deleted, int]:
        """Delete a channel (see DELETE_CHANNEL), moving its waiting tasks to
        ``move_to`` or dropping them into the dead-letter list, ``batch`` per round
        trip -> (what happened, tasks moved or dropped; or how many wait)."""
        k = self.keys
        mode = "move" if move_to else "drop" if drop else "refuse"
        before, after = k.distinct_around(name)
        done = 0
        while True:
            code, n = self._delete_channel(
                keys=[k.channels, k.queue(name), k.queue(move_to) if move_to else k.queue(name),
                      k.dead, k.dead_trimmed, k.queue_high(name),
                      k.queue_high(move_to) if move_to else k.queue_high(name), k.stats(name)],
                args=[name, mode, move_to, batch, before, after, k.record(""), self.dead_max,
                      f"channel {name} was deleted", self.node, self.record_ttl, k.wake])
            if code != 4:
                return Deleted(code), done + n if code == Deleted.DELETED else n
            done += n

    # -- producing --------------------------------------------------------
    def push(self, task: Task, distinct: bool, source: str = "") -> Enqueued:
        """Queue (or delay) one task, see ``Enqueued``. ``source`` names the entry of
        this node's staging list the task came from; it is removed in the same step
        (unless the id is in use)."""
        keys, args = self._enqueue_args(task, distinct, source)
        return Enqueued(self._enqueue(keys=keys, args=args))

    def push_many(self, pushes) -> list[Enqueued | redis.ResponseError]:
        """``push`` for many ``(task, distinct, source)`` in one round trip; an entry
        that Redis refused (a key of another type) has the error in its place, and
        was left where it was."""
        return self.push_claiming(pushes, {})[0]

    def push_claiming(self, pushes, claim: dict[str, tuple[int, int]]):
        """``push_many``, and in the same round trip the claim (as ``claim``) of up to
        ``most`` tasks of each channel of ``claim`` ({channel: (most, its limit on
        all nodes)}, each a channel some of ``pushes`` go to) -> (outcomes, {channel:
        claims, each with its task when it is one of ``pushes``, or Redis's refusal}).
        The pushes into those channels wake no node: the claim takes what it can,
        and tells the other nodes only of what it leaves (an idle channel's task
        would otherwise wake every node, this one included, for nothing). The claim
        goes with the channel's last push, in one ROUTE script (which starts that
        task at once when it is all the channel holds)."""
        last = {task.channel: i for i, (task, _, _) in enumerate(pushes) if task.channel in claim}
        calls = []
        for i, (task, distinct, source) in enumerate(pushes):
            keys, args = self._enqueue_args(task, distinct, source, wake=task.channel not in claim)
            if last.get(task.channel) == i:
                claim_keys, claim_args = self._claim_args(task.channel, *claim[task.channel],
                                                          wake=True)
                calls.append((self._route, keys + claim_keys, claim_args + args))
            else:
                calls.append((self._enqueue, keys, args))
        outcomes, claimed = [], {}
        parsed = {task.raw: task for task, _, _ in pushes} if claim else {}
        for i, ((task, _, _), reply) in enumerate(
                zip(pushes, self.lean.pipelined(calls, errors=True), strict=True)):
            routed = last.get(task.channel) == i   # the ROUTE of a lent channel
            if routed and isinstance(reply, redis.ResponseError):   # nothing written
                claimed[task.channel] = reply
            elif routed:
                reply, claims, *refused = reply   # the ROUTE: {ENQUEUE's code, CLAIM's reply}
                claimed[task.channel] = (redis.ResponseError(refused[0]) if refused
                                         else self._claims(claims, parsed))
                if isinstance(reply, str):   # the push's refusal; the claim was made
                    reply = redis.ResponseError(reply)
            outcomes.append(reply if isinstance(reply, redis.ResponseError) else Enqueued(reply))
        return outcomes, claimed

    def _enqueue_args(self, task: Task, distinct: bool, source: str,
                      wake: bool = True) -> tuple[list, list]:
        k, payload = self.keys, task.payload
        # the new record's fields, as flat() would give them (the push path's own copy)
        args = [task.raw, DISTINCT_TTL if distinct else 0, source,
                payload.get("execute_at") or 0, k.wake if wake else "", self.node, task.channel,
                "id", task.id, "channel", task.channel, "task_name", task.name,
                "argv", json.dumps(list(task.argv)), "raw", task.raw, "attempt", 0,
                "retry_count", 0]
        for key in ("execute_at", "timeout", "retries"):
            if payload.get(key) is not None:
                args += (key, payload[key])
        queue = k.queue_high if payload.get("priority") == "high" else k.queue
        return ([queue(task.channel), k.distinct(task.channel, task.name), k.delayed,
                 k.staging(self.node), k.record(task.id), k.channels], args)

    def dead_letter(self, entry: str, reason: str, source: bool = True) -> None:
        """Park a prepare-queue entry (taken out of our staging list unless not
        ``source``) in the dead-letter list with its reason."""
        staging = self.keys.staging(self.node)
        self._dead(keys=[self.keys.dead, staging, staging, self.keys.dead_trimmed],
                   args=[self._dead_record(entry, reason), entry, self.dead_max,
                         "1" if source else "0"])

    def revive(self, letter: str, entry: str) -> bool:
        """Take a dead letter (its exact text) out of the list and queue ``entry`` in
        the prepare queue instead; False if the letter is no longer there."""
        return self._revive(keys=[self.keys.dead, self.keys.prepare], args=[letter, entry]) == 1

    def drop_dead_letter(self, letter: str) -> bool:
        return self.redis.lrem(self.keys.dead, 1, letter) == 1

    def _dead_record(self, entry: str, reason: str, **more) -> str:
        """A dead letter: the entry (an oversized one cut, with its length and hash),
        why, when and where. Text that cannot be UTF-8 is escaped, never an error."""
        record = {"entry": entry, "reason": reason, **more, "ts": int(time.time()),
                  "node": self.node}
        if len(entry) > DEAD_ENTRY_MAX:
            data = entry.encode("utf-8", "surrogateescape")
            record.update(entry=entry[:DEAD_ENTRY_MAX], truncated=True, entry_bytes=len(data),
                          entry_sha256=hashlib.sha256(data).hexdigest())
        text = json.dumps(record, ensure_ascii=False)
        try:
            text.encode("utf-8", "surrogateescape")
            return text
        except UnicodeEncodeError:
            return json.dumps(record)

    def ping(self) -> None:
        self.redis.ping()

    def risks(self) -> list[str]:
        """What in the server's settings can lose queued tasks: an eviction policy
        that may evict keys without a TTL (queues have none), or nothing kept on
        disk. Empty when CONFIG is not allowed (a managed Redis): nothing known."""
        try:
            settings = self.redis.config_get("maxmemory-policy")
            settings.update(self.redis.config_get("save"))
            settings.update(self.redis.config_get("appendonly"))
        except redis.ResponseError:
            return []
        out = []
        policy = settings.get("maxmemory-policy", "noeviction")
        if policy.startswith("allkeys-"):
            out.append(f"maxmemory-policy is {policy}: when memory runs out Redis may evict "
                       "queues and their tasks; use noeviction (a full Redis then refuses "
                       "pushes instead)")
        if not settings.get("save") and settings.get("appendonly") == "no":
            out.append("Redis keeps nothing on disk (no save points, appendonly no): a "
                       "restart of Redis loses every queued task; turn on appendonly")
        return out

    def claimed(self, chan: str) -> list[str]:
        """Every entry of ``chan`` this node's processing list holds."""
        return self.redis.lrange(self.keys.processing(self.node, chan), 0, -1)

    def now(self) -> float:
        """Redis's clock (unix seconds): every node agrees on it."""
        seconds, micros = self.redis.time()
        return seconds + micros / 1e6

    def staged(self, most: int) -> list[str]:
        """The oldest ``most`` entries this node moved out of the prepare queue and has
        not routed yet (they are taken from the right)."""
        return self.redis.lrange(self.keys.staging(self.node), -most, -1)[::-1]

    def take_prepared(self, most: int, timeout: float = BLOCK) -> list[str]:
        """Move the oldest prepare-queue entries (up to ``most``) into this node's
        staging list; when there is none, wait up to ``timeout`` for one. One round
        trip: a blocking move, and TAKE of the rest right behind it (none if ``most``
        is 1)."""
        k = self.keys
        staging = k.staging(self.node)
        take = [(self._take, [k.prepare, staging], [most - 1])] if most > 1 else []
        entry, *taken = self.lean.pipelined(
            take, first=("BLMOVE", k.prepare, staging, "RIGHT", "LEFT", timeout))
        return ([entry] if entry is not None else []) + (taken[0] if taken else [])

    def convert_go_delayed(self) -> int:
        """Later Go versions scored delayed tasks as local time YYYYmmddHHMMSS
        (20261127103000): rescore those as unix seconds, or they never come due."""
        moved = 0
        for raw, score in self.redis.zrangebyscore(self.keys.delayed, GO_TIME_FLOOR, "+inf",
                                                   withscores=True):
            try:
                when = datetime.datetime.strptime(f"{int(score):014d}", "%Y%m%d%H%M%S")
            except ValueError:
                continue
            moved += self.redis.zadd(self.keys.delayed, {raw: when.timestamp()}, xx=True,
                                     ch=True)
        return moved

    def promote_due(self, locate, limit: int = 100) -> int:
        """Queue delayed tasks whose time (by Redis's clock) has come;
        ``locate(raw) -> (channel, task id)``."""
        now = self.now()
        moved, refused = 0, None
        try:
            due = self.redis.zrangebyscore(self.keys.delayed, "-inf", now, 0, limit)
        except redis.ResponseError as exc:
            raise redis.ResponseError(f"{exc} ({self.keys.delayed})") from None
        k = self.keys
        located = [locate(raw) for raw in due]
        # a task moved to another channel (DELETE with move_to) keeps its entry as it
        # was: its record says where it belongs now
        with self.redis.pipeline(transaction=False) as pipe:
            for _, task_id in located:
                pipe.hget(k.record(task_id), "channel")
            homes = pipe.execute(raise_on_error=False) if due else []
        for raw, (chan, task_id), home in zip(due, located, homes, strict=True):
            chan = home if isinstance(home, str) and home else chan
            try:
                queue = k.queue_high(chan) if high(raw) else k.queue(chan)
                done = self._promote(keys=[k.delayed, queue, k.record(task_id),
                                           k.channels, k.dead, k.dead_trimmed],
                                     args=[raw, k.wake, chan, self.node, self.dead_max,
                                           self.record_ttl])
                moved += done == 1
                if done == 2:
                    log.warning("delayed tasks: task %s was due in channel %s, which was "
                                "deleted (moved to the dead-letter list)", task_id, chan)
            except redis.ResponseError as exc:   # one channel's queue: the others go on
                refused = exc
        if refused is not None:
            raise refused
        return moved

    # -- consuming --------------------------------------------------------
    def claim(self, chan: str, most: int = 1, limit: int = 0) -> list[Claim]:
        """Atomically move the next tasks of ``chan`` (up to ``most``, and no more than
        keeps ``limit`` of them running on all nodes, 0 = no limit) into this node's
        processing list, started where CLAIM can (see ``Claim``); none if it is empty."""
        return self._claims(self._claim(*self._claim_args(chan, most, limit)))

    def waiting(self, queues: list[str]) -> list[str]:
        """Those of these channel queues (keys) that hold entries (one round trip)."""
        found = self._waiting(keys=queues, args=[self.keys.high]) if queues else []
        return [queues[i - 1] for i in found]

    def output_subscriber(self, task_id: str) -> Subscriber:
        return Subscriber(self.redis, self.keys.output(task_id))

    def want_output(self, task_id: str, seq: int = 0) -> None:
        """Ask the node that runs a task for its lines after ``seq`` (the last line
        this reader has; 0: all it keeps), and to go on sending."""
        self.redis.publish(self.keys.wake, f"{self.keys.output_wanted(task_id)}\n{seq}")

    def send_output(self, task_id: str, message: str) -> None:
        self.redis.publish(self.keys.output(task_id), message)

    def wakeups(self) -> Subscriber:
        """A subscription to the queue keys that get entries (see ``scripts._WAKE``):
        each message is a queue key, followed by a newline and the node that queued
        there if it says."""
        return Subscriber(self.redis, self.keys.wake)

    def _claim_args(self, chan: str, most: int, limit: int = 0,
                    wake: bool = False) -> tuple[list, list]:
        k = self.keys
        return ([k.queue(chan), k.processing(self.node, chan), k.running(chan),
                 k.queue_high(chan), k.channels],
                [most, self.node, k.record(""), limit, k.heartbeat(""), chan,
                 *([k.wake] if wake else [])])

    @staticmethod
    def _claims(replies, parsed: dict[str, Task] | None = None) -> list[Claim]:
        """CLAIM's reply -> claims; ``parsed``: entries already read as tasks."""
        claims = []
        for raw, task_id, *started in replies:
            task = parsed.get(raw) if parsed else None
            claims.append(Claim(raw, task_id, Started.of(started), task) if task_id
                          else Claim(raw, task=task))
        return claims

    def start(self, task: Task) -> Started:
        """A claimed task that CLAIM did not start runs now."""
        k = self.keys
        missing = {"id": task.id, "channel": task.channel, "task_name": task.name,
                   "argv": list(task.argv), "raw": task.raw, "retry_count": 0}
        return Started.of(self._start(
            keys=[k.running(task.channel), k.record(task.id),
                  k.processing(self.node, task.channel)],
            args=[task.raw, self.node, *flat(missing)]))

    def finish(self, task: Task, outcome: Outcome, fields: dict, retry_delay: float = 0,
               claim_next: int = 0, limit: int = 0) -> tuple[int, list[Claim]]:
        """Record an attempt's result: ``outcome`` 'done', 'failed' or 'retry'.
        -> (done, claims): done is 0 if the task was no longer ours (requeued
        meanwhile), and then nothing is changed.
        With ``claim_next``, also claims (and starts) up to that many next tasks
        of the channel in the same round trip, as ``claim`` does (with ``limit``)."""
        k, chan = self.keys, task.channel
        keys = [k.processing(self.node, chan), k.running(chan), k.distinct(chan, task.name),
                k.record(task.id), k.failed(chan), k.failed_index(chan), k.delayed,
                k.stats(chan)]
        args = [task.raw, outcome, task.id, self.record_ttl, f"{retry_delay:.3f}",
                *flat(fields)]
        calls = [(self._finish, keys, args)]
        if claim_next:
            calls.append((self._claim, *self._claim_args(chan, claim_next, limit)))
        done, *claimed = self.lean.pipelined(calls)
        return int(done), self._claims(claimed[0]) if claimed else []

    def release(self, chan: str, raw: str, reason: str = "") -> int:
        """Drop a claimed entry that cannot run into the dead-letter list, in one step
        (a MULTI would go on past a command that fails); 0 if it was no longer ours."""
        k = self.keys
        return int(self._dead(
            keys=[k.dead, k.processing(self.node, chan), k.running(chan), k.dead_trimmed],
            args=[self._dead_record(raw, reason, channel=chan), raw, self.dead_max, "2"]))

    def requeue(self, chan: str, raw: str, task_id: str = "", ran: bool = True) -> bool:
        """Give one claimed entry back to the queue (it runs next); ``ran=False``
        for a claim that never ran, whose attempt is not counted."""
        k = self.keys
        queue = k.queue_high(chan) if high(raw) else k.queue(chan)
        done = self._requeue(keys=[k.processing(self.node, chan), k.running(chan),
                                   queue, k.record(task_id or "-"),   # "-": no record
                                   k.channels, k.dead, k.dead_trimmed],
                             args=[raw, "1" if not ran else "0", k.wake, chan, self.node,
                                   self.dead_max, self.record_ttl])
        if done == 2:
            log.warning("channel %s: task %s not requeued: the channel was deleted (moved to "
                        "the dead-letter list)", chan, task_id or raw[:200])
        return bool(done)

    def requeue_node(self, node: str, channels, only_if_dead: bool = False,
                     forget: bool = False) -> int:
        """Everything ``node`` had claimed or was routing goes back where it came
        from; -1 if ``only_if_dead`` and its heartbeat lives."""
        k = self.keys
        names = set(channels) | self.redis.smembers(k.node_channels(node))
        keys = [k.heartbeat(node), k.nodes, k.staging(node), k.prepare, k.node_channels(node),
                k.channels, k.dead, k.dead_trimmed]
        for chan in sorted(names):
            keys += [k.processing(node, chan), k.running(chan), k.queue(chan)]
        return int(self._reap(keys=keys, args=[node, "1" if only_if_dead else "0",
                                               "1" if forget else "0", k.record(""), k.wake,
                                               self.node, self.dead_max, self.record_ttl,
                                               k.high, *sorted(names)]))

    def note_pids(self, pids: dict[str, int]) -> None:
        """Write the pids of commands running here into their tasks' records."""
        if pids:
            self._note_pids(keys=[self.keys.record(task_id) for task_id in pids],
                            args=[self.node, *pids.values()])

    # -- schedules ----------------------------------------------------------
    def schedules(self) -> tuple[dict[str, str], dict[str, str]]:
        """Every schedule's definition and last firing (JSON texts), in one round trip."""
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(self.keys.schedules)
            pipe.hgetall(self.keys.fired)
            rows, fired = pipe.execute()
        return rows, fired

    def schedule(self, name: str) -> tuple[str | None, str | None]:
        """One schedule's definition and last firing (None: none)."""
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.hget(self.keys.schedules, name)
            pipe.hget(self.keys.fired, name)
            row, fired = pipe.execute()
        return row, fired

    def put_schedule(self, name: str, text: str, create: bool = False) -> bool:
        """Store a schedule; with ``create``, False if one of that name exists."""
        if create:
            return bool(self.redis.hsetnx(self.keys.schedules, name, text))
        self.redis.hset(self.keys.schedules, name, text)
        return True

    def delete_schedule(self, name: str) -> bool:
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.hdel(self.keys.schedules, name)
            pipe.hdel(self.keys.fired, name)
            deleted, _ = pipe.execute()
        return bool(deleted)

    def fire(self, name: str, due: float, task: Task | None, distinct: bool, mode: str,
             no_overlap: bool, previous: str | None) -> str:
        """One firing of a schedule (see FIRE): ``mode`` 'run', or why it does not run;
        ``previous``: the task id of its last run. -> its outcome, or '' when another
        node made it already."""
        k = self.keys
        if task is None:   # nothing to queue: only the firing is noted
            keys, args, task_id = [k.fired] * 6, [], ""
        else:
            (keys, args), task_id = self._enqueue_args(task, distinct, ""), task.id
        keys = [*keys, k.fired, k.record(previous) if previous else k.fired]
        made, outcome = self._fire(keys=keys, args=[name, f"{due:.6f}", mode,
                                                    "1" if no_overlap else "0", task_id, *args])
        return outcome if made else ""

    # -- nodes ------------------------------------------------------------
    def consuming(self, channels) -> None:
        """Remember which channels this node claims from, for whoever reaps it."""
        if channels:
            self.redis.sadd(self.keys.node_channels(self.node), *channels)

    def beat(self, running: int = 0, draining: bool = False, first: bool = False) -> bool:
        """Refresh this node's heartbeat, and what GET /nodes shows of it; -> whether
        a caller asked it to drain (see ``ask_drain``). The ``first`` beat of a
        process forgets a request made to the one before it."""
        k = self.keys
        info = k.node_info(self.node)
        with self.redis.pipeline(transaction=False) as pipe:
            if first:
                pipe.hdel(info, "drain")
            pipe.set(k.heartbeat(self.node), self.heartbeat_value(), ex=self.node_ttl)
            pipe.sadd(k.nodes, self.node)
            pipe.hset(info, mapping={"host": socket.gethostname(), "pid": os.getpid(),
                                     "version": __version__, "ttl": self.node_ttl,
                                     "started_at": f"{self.started_at:.3f}",
                                     "running": running, "draining": int(draining)})
            pipe.expire(info, self.node_ttl)
            pipe.hget(info, "drain")
            *_, drain = pipe.execute()
        return drain == "1"

    def nodes(self) -> list[dict]:
        """Every node that may hold work, as GET /nodes shows it: the heartbeat's age
        comes from its key's TTL (Redis's clock, not the nodes' own)."""
        k = self.keys
        out = []
        for node, (info, pttl, channels) in self._per_node(
                lambda pipe, node: pipe.hgetall(k.node_info(node)),
                lambda pipe, node: pipe.pttl(k.heartbeat(node)),
                lambda pipe, node: pipe.smembers(k.node_channels(node))):
            ttl = float(info.get("ttl") or self.node_ttl)
            out.append({
                "id": node, "alive": pttl > 0, "host": info.get("host"),
                "pid": int(info["pid"]) if info.get("pid") else None,
                "version": info.get("version"),
                "started_at": float(info["started_at"]) if info.get("started_at") else None,
                "heartbeat_age": round(ttl - pttl / 1000, 3) if pttl > 0 else None,
                "running": int(info.get("running") or 0),
                "draining": info.get("draining") == "1" or info.get("drain") == "1",
                "channels": sorted(channels)})
        return out

    def metrics_snapshot(self) -> dict:
        """What /metrics shows: every channel's settings, counts and statistics, the
        dead letters, the delayed tasks and the nodes, in a few round trips whatever
        the number of tasks. A key of another type counts as empty here."""
        k, specs = self.keys, self.channels()
        names = sorted(specs)
        commands = [("LLEN", k.dead), ("ZCARD", k.delayed)]
        for chan in names:
            commands += [*count_commands(k, chan), ("HGETALL", k.stats(chan))]
        replies = [0 if isinstance(reply, Exception) else reply
                   for reply in self.lean.round_trip(commands)]
        channels = {}
        for i, chan in enumerate(names):
            counts, stats = counts_of(replies[2 + 5 * i:6 + 5 * i]), replies[6 + 5 * i]
            spec = specs[chan]
            channels[chan] = {
                "running_tasks": counts["running"], "queued_tasks": counts["queued"],
                "failed_tasks": counts["failed"], "channel_paused": int(spec.paused),
                "channel_workers": spec.worker_count,
                "channel_max_running": spec.max_running,
                "stats": stats if isinstance(stats, dict)   # a RESP3 map, or RESP2 pairs
                else dict(zip(stats[::2], stats[1::2], strict=True)) if stats else {}}
        return {"dead": replies[0], "delayed": replies[1], "channels": channels,
                "nodes": self.nodes()}

    def consumers(self) -> dict[str, list[str]]:
        """{channel: the live nodes that consume it}, for every channel a live node
        consumes: one round trip per node list, whatever the number of channels."""
        k = self.keys
        out: dict[str, list[str]] = {}
        for node, (alive, channels) in self._per_node(
                lambda pipe, node: pipe.exists(k.heartbeat(node)),
                lambda pipe, node: pipe.smembers(k.node_channels(node))):
            if alive:
                for chan in channels:
                    out.setdefault(chan, []).append(node)
        return out

    def nodes_of(self, chan: str) -> list[str]:
        """The live nodes that consume ``chan``."""
        k = self.keys
        return [node for node, (consumes, alive) in self._per_node(
                    lambda pipe, node: pipe.sismember(k.node_channels(node), chan),
                    lambda pipe, node: pipe.exists(k.heartbeat(node))) if consumes and alive]

    def _per_node(self, *calls) -> list[tuple[str, list]]:
        """(id, the replies of ``calls``) for every node that may hold work, in one
        round trip after the list of ids; each call is ``call(pipeline, node_id)``."""
        ids = sorted(self.redis.smembers(self.keys.nodes))
        with self.redis.pipeline(transaction=False) as pipe:
            for node in ids:
                for call in calls:
                    call(pipe, node)
            replies = pipe.execute() if ids else []
        n = len(calls)
        return [(node, replies[n * i:n * i + n]) for i, node in enumerate(ids)]

    def ask_drain(self, node: str) -> bool:
        """Tell a live node to drain and exit (at once through the wake-up channel,
        and at its next heartbeat in any case); False if it is not alive."""
        k = self.keys
        if not self.redis.exists(k.heartbeat(node)):
            return False
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.hset(k.node_info(node), "drain", 1)
            pipe.publish(k.wake, k.drain(node))
            pipe.execute()
        return True

    def not_consuming(self, chan: str) -> None:
        """This node no longer claims from ``chan`` (it was deleted, and nothing of it
        is left in this node's lists)."""
        self.redis.srem(self.keys.node_channels(self.node), chan)

    def heartbeat_value(self) -> str:
        return f"{self.instance} {socket.gethostname()} {os.getpid()} {time.time():.3f}"

    def heartbeat_of(self, node: str) -> str | None:
        return self.redis.get(self.keys.heartbeat(node))

    def reap_dead_nodes(self, channels) -> dict[str, int]:
        """Requeue the work of nodes whose heartbeat expired; {node: tasks}."""
        reaped = {}
        nodes = sorted(self.redis.smembers(self.keys.nodes) - {self.node})
        with self.redis.pipeline(transaction=False) as pipe:
            for node in nodes:
                pipe.exists(self.keys.heartbeat(node))
            alive = pipe.execute() if nodes else []
        for node, beating in zip(nodes, alive, strict=True):
            if not beating:   # REAP checks again, in the same step as it moves
                moved = self.requeue_node(node, channels, only_if_dead=True, forget=True)
                if moved >= 0:
                    reaped[node] = moved
        return reaped

    def leave(self, channels) -> int:
        """A clean exit: give back anything still held and forget this node."""
        moved = self.requeue_node(self.node, channels, forget=True)
        self.redis.delete(self.keys.heartbeat(self.node), self.keys.node_info(self.node))
        return moved

    # -- cancel, kill, failed tasks ---------------------------------------
    def cancel(self, task_id: str, channels=()) -> str:
        """'canceled' (it was waiting), 'killing' (asked its node to kill it),
        'finished' (too late) or 'unknown'. ``channels`` are searched for an
        entry that has no record (see ``find_unrecorded``)."""
        record = self.record(task_id) or self.find_unrecorded(task_id, channels)
        if record is None:
            return "unknown"
        k, chan = self.keys, record.get("channel", "")
        if self._cancel(keys=[k.record(task_id), k.queue(chan), k.delayed,
                              k.distinct(chan, record.get("task_name", "")),
                              k.queue_high(chan)],
                        args=[record.get("raw", ""), self.record_ttl]):
            self.redis.hsetnx(k.record(task_id), "channel", chan)   # for an unrecorded one
            return "canceled"
        record = self.record(task_id) or {}
        node = record.get("node")   # none yet: claimed, not started; START sees the flag
        if self._kill(keys=[k.record(task_id),
                            k.kill_requests(node) if node else k.record(task_id)],
                      args=[task_id]):
            return "killing"
        return "finished"

    def kill_requests(self, count: int = 100) -> list[str]:
        """Ids of tasks on this node that callers want killed (taken once)."""
        return self.redis.spop(self.keys.kill_requests(self.node), count) or []

    def unfail(self, chan: str, task_id: str, retry: bool, distinct: bool = False) -> int:
        """Retry (back into the queue) or delete one failed task -> 1, 0 if it is not
        among the failed tasks, 2 if not retried because the channel was deleted."""
        k = self.keys
        record = self.record(task_id) or {}
        return int(self._unfail(
            keys=[k.failed(chan), k.failed_index(chan), k.queue(chan), k.record(task_id),
                  k.distinct(chan, record.get("task_name", "")), k.queue_high(chan),
                  k.channels],
            args=[task_id, "1" if retry else "0", self.record_ttl,
                  DISTINCT_TTL if distinct else 0, k.wake, chan]))


def stored_policy(channel: str, data) -> CommandPolicy | None:
    """A channel's command policy as ``task:channels`` holds it; one that cannot be
    read refuses every task (closed, not open), and says why."""
    if data is None:
        return None
    try:
        return CommandPolicy.parse(data, resolve=False)
    except ValueError as exc:
        log.error("channel %s: unreadable command policy %.300r: %s; its tasks are refused",
                  channel, data, exc)
        return CommandPolicy(broken=str(exc))
