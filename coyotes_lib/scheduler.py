"""The node: its channels, and the loops that feed them.

``Scheduler`` owns the set of channels (``channel.py``; new ones found in
``task:channels`` start at once), wakes a channel when its queue gets entries
(one subscription for all of them, and a scan each second for entries pushed
by other means), routes the prepare queue into channel queues, promotes due
delayed tasks, keeps this node's heartbeat, requeues the work of dead nodes,
and drains on shutdown. Every loop survives Redis
outages (``outage.py``): it backs off, logs once, and carries on when Redis
answers again.
"""

from __future__ import annotations

import gc
import logging
import os
import socket
import time

import gevent
import gevent.event
import gevent.pool
import redis

from .broker import Broker
from .channel import Channel, Limits
from .live import Live, Relay
from .model import ChannelSpec, Enqueued, from_file
from .outage import Outage, insist, redis_trouble
from .pidfile import pid_alive
from .policy import Refused
from .runners import runner
from .schedules import Schedule, Timetable
from .schedules import parse as schedule_from
from .signing import Unsigned
from .task import MAX_ENTRY, BadTask, Task, from_producer, locate

log = logging.getLogger("coyotes.scheduler")

DEFAULT_CHANNELS = ("biz", "cron")   # besides -channel-default
SYNC_EVERY = 2.0                     # seconds between reloads of task:channels
BLOCK_WAIT = 3.0                     # seconds to let claim loops notice the stop flag
ROUTE_BATCH = 100                    # prepare-queue entries routed per round trip
STAGED_READ = 1000                   # staged entries read at a time to route again
WAITED = 0.002                       # seconds a take lasted when it waited for an entry
STUCK_PAUSE_MAX = 30.0               # seconds between tries of entries Redis refused
RECORD_WAIT = 2.0                    # seconds a shutdown waits for results to be recorded
SCAN_EVERY = 1.0                     # seconds between scans for entries nobody told us of
TICK = 0.5                           # seconds between two turns of the maintenance loop
RESYNC_MIN = 0.25                    # seconds between two reads of changed settings


class NodeConflict(Exception):
    """Another live process uses this node's id."""


class Scheduler:
    def __init__(self, broker: Broker, config, stop: gevent.event.Event):
        self.broker, self.config, self.stop = broker, config, stop
        self.give_up = gevent.event.Event()   # set at the very end of a shutdown
        self.channels: dict[str, Channel] = {}
        # queue key (and high queue key) -> its channel, for wake-ups
        self.by_queue: dict[str, Channel] = {}
        self.digest = ""   # of task:channels, when last read (see ``_sync``)
        self.resync = gevent.event.Event()   # a node said the settings changed
        self.unnoted: dict[str, int] = {}    # see ``Channel.unnoted``
        self.lives: dict[str, Live] = {}     # task id -> output of a task running here
        self.relays: dict[str, Relay] = {}   # task id -> its lines sent to other nodes
        self.drain_asked = False             # through the API (POST /nodes/<id>/drain)
        self.specs: dict[str, ChannelSpec] = {}
        self.greenlets: list[gevent.Greenlet] = []
        self.heart: gevent.Greenlet | None = None
        self.started = False
        self.limits = Limits(config.output_tail, config.kill_grace, config.log_output_max,
                             config.max_redeliveries, os.environ.get("COYOTES_CRASH_AT", ""))
        self.run_with = None   # the runner, made by start() (not in API-only mode)

    # -- start ------------------------------------------------------------
    def ensure_default_channels(self) -> None:
        for name in (self.config.channel_default, *DEFAULT_CHANNELS):
            if self.broker.add_channel(ChannelSpec(name, True, self.config.concurrent)):
                log.info("channel %s: created (distinct, %d workers)", name,
                         self.config.concurrent)

    def start(self) -> None:
        """Wait for Redis, requeue our leftovers, start channels and loops."""
        self.run_with = runner(self.config.runner)
        insist("start-up", self._prepare_start, self.stop)
        if self.stop.is_set():
            return
        timetable = Timetable(self.broker, self.stop, self._distinct, self.queued)
        self.greenlets = [gevent.spawn(self._route_prepared), gevent.spawn(self._listen),
                          gevent.spawn(timetable.run)]
        self.heart = gevent.spawn(self._maintain)

    def _prepare_start(self) -> None:
        self.broker.ping()
        for risk in self.broker.risks():
            log.warning("redis: %s (see docs/OPERATIONS.md)", risk)
        self.broker.load_scripts()
        self._check_node_id()
        self.ensure_default_channels()
        self._load_channels()
        self.specs = self.broker.channels()
        self._load_schedules()
        moved = self.broker.convert_go_delayed()
        if moved:
            log.warning("delayed tasks: %d entries left by the Go daemon converted to unix "
                        "times", moved)
        # no live process has our id: whatever it holds was left by our previous life
        moved = self.broker.requeue_node(self.broker.node, self.specs)
        if moved:
            log.warning("node %s: requeued %d task(s) left from a previous run",
                        self.broker.node, moved)
        self.broker.beat(first=True)
        self.started = True
        self._sync()

    def _load_channels(self) -> None:
        """Make the channels of the config file, or give those that exist the settings
        it names (the others keep theirs): the file has the last word at each start."""
        for name, fields in self.config.channels:
            base = ChannelSpec(name, False, self.config.concurrent)
            if self.broker.add_channel(from_file(name, fields, base)):
                log.info("channel %s: created from %s", name, self.config.config)
                continue
            before = self.broker.channel(name)
            if before is None or from_file(name, fields, before) == before:
                continue   # as the file says already: no write, no resync on every node
            after = self.broker.change_channel(
                name, lambda spec, name=name, fields=fields: from_file(name, fields, spec))
            if after is not None:
                log.info("channel %s: settings from %s (%s)", name, self.config.config,
                         after.to_json(shown=True))

    def _load_schedules(self) -> None:
        """Store the schedules of the config file (checked when it was read); one
        that exists already keeps its ``since``, and its last firing."""
        for fields in self.config.schedules:
            name = fields["name"]
            before = self.broker.schedule(name)[0]
            try:
                known = Schedule.from_json(before) if before else None
            except (ValueError, TypeError):   # written by hand, unreadable: replaced
                known = None
            schedule = schedule_from(fields, self.config.channel_default, self.broker.now(),
                                     known)
            if schedule.to_json() != before:
                self.broker.put_schedule(name, schedule.to_json())
                log.info("schedule %s: %s from %s", name, "replaced" if before else "made",
                         self.config.config)
            if schedule.channel not in self.specs:
                log.warning("schedule %s: channel %s does not exist; its firings are "
                            "refused until it does", name, schedule.channel)

    def _check_node_id(self) -> None:
        """Refuse to share our node id with a live process: its claims would look like
        our leftovers. A heartbeat left by our own dead predecessor is taken over."""
        node = self.broker.node
        held = self.broker.heartbeat_of(node)
        if held is None:
            return
        token, host, pid = [*held.split(), "", "", "0"][:3]
        if token == self.broker.instance:
            return
        if host == socket.gethostname() and pid.isdigit() and not pid_alive(int(pid)):
            return
        wait = self.config.node_ttl / 3 + 1
        log.warning("node %s: a heartbeat of pid %s on %s is still there; watching it for "
                    "%.0fs to see whether that node is alive", node, pid, host, wait)
        if self.stop.wait(wait):
            return
        now = self.broker.heartbeat_of(node)
        if now is not None and now != held:
            raise NodeConflict(f"node id {node!r} is in use by a live coyotes (pid {pid} on "
                               f"{host}); give this one its own -node-id")

    def added(self, spec: ChannelSpec) -> None:
        """Start a channel a caller just created; if Redis refuses, the maintenance
        loop starts it within SYNC_EVERY seconds."""
        if not self.started or self.stop.is_set() or spec.name in self.channels:
            return
        try:
            self.broker.consuming([spec.name])   # recorded before the first claim
        except redis.RedisError as exc:
            log.warning("channel %s: not started yet, %s; trying again within %.0fs",
                        spec.name, redis_trouble(exc), SYNC_EVERY)
            return
        self.specs[spec.name] = spec
        self._start_channel(spec)

    def changed(self, name: str, spec: ChannelSpec | None) -> None:
        """A caller changed (or, with None, deleted) a channel through this node's API:
        applied here at once, so that the caller's next request finds it done (the
        other nodes hear of it from Redis)."""
        if not self.started or self.stop.is_set():
            return
        channel = self.channels.get(name)
        if spec is None:
            self.specs.pop(name, None)
            if channel is not None and not channel.retired:
                self._retire(channel)
        elif channel is None:
            self.added(spec)
        elif not channel.retired and spec != channel.spec:
            self.specs[name] = spec
            self._apply(channel, spec)

    def _apply(self, channel: Channel, spec: ChannelSpec) -> None:
        old = channel.spec
        channel.apply(spec)
        log.info("channel %s: %s", channel.name, changes(old, spec))

    def _retire(self, channel: Channel) -> None:
        channel.retire()
        log.info("channel %s: deleted; claiming nothing more, %d running task(s) finish "
                 "first", channel.name, channel.busy)
        gevent.spawn(self._remove_when_idle, channel)

    def _start_channel(self, spec: ChannelSpec) -> None:
        channel = self.channels[spec.name] = Channel(spec, self.broker, self.stop,
                                                     self.give_up, self.run_with, self.limits,
                                                     self.unnoted, self.lives)
        keys = self.broker.keys
        self.by_queue[keys.queue(spec.name)] = self.by_queue[keys.queue_high(spec.name)] = channel
        channel.start()
        # a channel lives as long as the daemon: its objects leave the collector's
        # passes, which otherwise walk every channel's (100 ms with 10,000 of them)
        gc.freeze()
        log.info("channel %s: consuming with %d worker(s)%s", spec.name, spec.worker_count,
                 ", distinct" if spec.distinct else "")

    def _sync(self) -> None:
        """Start channels that appeared in ``task:channels`` and apply changed settings
        (not before ``start``, nor once stopping). The settings are read only when
        their digest changed: with thousands of channels, reading them all every
        SYNC_EVERY seconds was most of an idle daemon's work."""
        if not self.started or self.stop.is_set():
            return
        specs = self.broker.channels()   # one digest; the hash itself only if it changed
        # taken now: another caller of channels() may move it on while this one yields
        version = self.broker.channels_version
        if version == self.digest:
            return
        self.specs = specs
        if self.config.channel_default not in self.specs:
            # Redis came back empty (restarted without persistence, or flushed)
            log.warning("channel %s: missing from %s, creating the default channels again",
                        self.config.channel_default, self.broker.keys.channels)
            self.ensure_default_channels()
            self.specs = self.broker.channels()
        new = [name for name in self.specs if name not in self.channels]
        self.broker.consuming(new)   # recorded before the first claim, for any reaper
        waiting = False   # a channel deleted and made again: it starts once the old is gone
        for name, spec in self.specs.items():
            channel = self.channels.get(name)
            if channel is None:
                self._start_channel(spec)
            elif channel.retired:
                waiting = True
            elif spec != channel.spec:
                self._apply(channel, spec)
        for name, channel in list(self.channels.items()):
            if name not in self.specs and not channel.retired:
                self._retire(channel)
        # only now: a sync cut short by an error (or waiting for a channel) runs again
        self.digest = "" if waiting else version

    def _remove_when_idle(self, channel: Channel) -> None:
        """A deleted channel goes once its dispatcher has ended and its tasks are
        done (and its objects with it). Entries still in its processing list (a
        claim whose reply was lost) are given back first: REQUEUE puts them in the
        dead-letter list, its channel being gone."""
        if channel.greenlet is not None:
            channel.greenlet.join()   # it spawns what it had claimed before it ends
        while not channel.idle and not self.stop.is_set():
            channel.room.wait(1)
            channel.room.clear()
        if self.stop.is_set():
            return   # the shutdown drains it with the others
        name = channel.name
        for raw in insist(f"channel {name}", lambda: self.broker.claimed(name),
                          self.stop) or []:
            insist(f"channel {name}", lambda raw=raw: self.broker.requeue(
                name, raw, locate(raw)[1], ran=False), self.stop)
        self.channels.pop(channel.name, None)
        self.by_queue.pop(self.broker.keys.queue(channel.name), None)
        self.by_queue.pop(self.broker.keys.queue_high(channel.name), None)
        insist(f"channel {channel.name}", lambda: self.broker.not_consuming(channel.name),
               self.stop)
        self.digest = ""   # a channel of that name made meanwhile starts at the next sync
        # its objects were frozen out of the collector's passes (``_start_channel``)
        gc.unfreeze()
        gc.collect()
        gc.freeze()
        log.info("channel %s: removed from this node", channel.name)

    # -- loops ------------------------------------------------------------
    def _route_prepared(self) -> None:
        """Move producer entries from the prepare queue into their channel queue,
        a batch at a time when they come quickly. Entries that Redis refused (a key
        of another type) stay in this node's staging list and are tried again,
        oldest first, after a pause that grows while they keep being refused."""
        outage = Outage("prepare queue", self.stop)
        leftovers = True   # entries already staged (a reply lost in an outage) go first
        pause, retry_at, waited = 0.0, 0.0, False
        while not self.stop.is_set():
            try:
                again = leftovers or bool(pause and time.monotonic() >= retry_at)
                if again:
                    batch, leftovers = self.broker.staged(STAGED_READ), False
                else:
                    # after a wait the queue was empty: one entry, without the TAKE
                    # behind it, whose run in Redis would delay this entry
                    started = time.monotonic()
                    batch = self.broker.take_prepared(1 if waited else ROUTE_BATCH)
                    waited = time.monotonic() - started > WAITED
                    leftovers = outage.recovered()
                refused = self._route(batch) if batch else None
                if refused is not None and (again or not pause):
                    pause = min(STUCK_PAUSE_MAX, max(1.0, pause * 2))
                    retry_at = time.monotonic() + pause
                    log.warning("prepare queue: entries kept in the staging list, %s; "
                                "trying again in %.0fs", redis_trouble(refused), pause)
                elif refused is None and again:
                    leftovers, pause = len(batch) == STAGED_READ, 0.0   # more may wait
                if batch:
                    gevent.sleep(0)   # channels woken by these tasks start them first
            except redis.RedisError as exc:
                outage.failed(exc)
            except Exception:   # never let one entry stop the routing
                log.exception("prepare queue: unexpected error")
                self.stop.wait(1)

    def _route(self, raws: list[str]) -> redis.ResponseError | None:
        """Route a batch of staged entries: each goes into its channel queue (or the
        delayed set) or into the dead-letter list with its reason. -> the first
        refusal by Redis, whose entries were left in the staging list."""
        pushes, refused = [], []
        for raw in raws:
            try:
                task, spec = self._check(raw)
            except BadTask as exc:
                refused.append(self._reject(raw, str(exc)))
                continue
            except redis.RedisError:
                raise
            except Exception as exc:   # a bug of ours must not wedge the entry or the loop
                log.exception("prepare queue: cannot route %.200r", raw)
                refused.append(self._reject(raw, f"internal error: {exc!r}"))
                continue
            pushes.append((task, spec.distinct, raw))
        loans = self._lend(pushes)
        for (task, _, raw), outcome in zip(pushes, self._push_many(pushes, loans), strict=True):
            if isinstance(outcome, redis.ResponseError):
                refused.append(outcome)
            elif isinstance(outcome, Exception):
                refused.append(self._reject(raw, f"internal error: {outcome!r}"))
            elif outcome == Enqueued.NOT_OURS:
                log.warning("prepare queue: %.200r went back to the queue while this node was "
                            "routing it (reaped); left to whoever takes it", raw)
            elif outcome == Enqueued.ID_IN_USE:
                refused.append(self._reject(raw, f"id {task.id!r} is in use by a task that "
                                                 "has not finished"))
            elif outcome == Enqueued.NO_CHANNEL and task.channel in (
                    self.config.channel_default, *DEFAULT_CHANNELS):
                # task:channels was lost (Redis restarted empty, or emptied): the default
                # channels always exist, so they are made again and the entry waits staged
                self.ensure_default_channels()
                refused.append(redis.ResponseError(f"channel {task.channel!r} was missing "
                                                   "from task:channels: made again"))
            elif outcome == Enqueued.NO_CHANNEL:
                refused.append(self._reject(raw, f"unknown channel {task.channel!r} "
                                                 "(it was deleted)"))
            elif outcome == Enqueued.FOREIGN_RECORD:
                refused.append(self._reject(raw, f"id {task.id!r}: its record key "
                                                 f"{self.broker.keys.record(task.id)} holds "
                                                 "another type"))
            elif outcome == Enqueued.REFUSED:
                log.info("channel %s: task %s refused, already queued or running: %s",
                         task.channel, task.id, task.name)
            else:
                if outcome == Enqueued.QUEUED and task.channel not in loans:
                    self.queued(task.channel)
                log.debug("channel %s: task %s %s", task.channel, task.id,
                          outcome.name.lower())
        return next((exc for exc in refused if exc is not None), None)

    def _lend(self, pushes) -> dict[str, Channel]:
        """The idle channels this batch queues tasks for: the push claims for them."""
        loans, seen = {}, set()
        for task, _, _ in pushes:
            channel = self.channels.get(task.channel)
            if channel is None or task.channel in seen or task.payload.get("execute_at"):
                continue
            seen.add(task.channel)
            if channel.lend():
                loans[task.channel] = channel
        return loans

    def _push_many(self, pushes, loans: dict[str, Channel]) -> list:
        """The outcome of each push, the tasks of the ``loans`` channels claimed in the
        same round trip; an entry that cannot even be sent (a bug of ours) has its
        exception in its place instead of failing the whole batch."""
        claimed = {}
        try:
            outcomes, claimed = self.broker.push_claiming(
                pushes, {name: (channel.lent, channel.spec.max_running)
                         for name, channel in loans.items()})
            return outcomes
        except redis.RedisError:
            raise
        except Exception:
            log.exception("prepare queue: a batch could not be sent, routing its entries "
                          "one by one")
        finally:
            for name, channel in loans.items():
                channel.repaid(claimed.get(name))   # None: the reply was lost
        outcomes = []
        for push in pushes:
            try:
                outcomes += self.broker.push_many([push])
            except redis.RedisError:
                raise
            except Exception as exc:
                outcomes.append(exc)
        return outcomes

    def _distinct(self, name: str) -> bool:
        spec = self.specs.get(name)
        return spec is not None and spec.distinct

    def queued(self, name: str) -> None:
        """This node queued a task in channel ``name``: wake that channel now (the
        message Redis sends the other nodes says so, and is skipped here)."""
        channel = self.channels.get(name)
        if channel is not None:
            channel.wake()

    def _listen(self) -> None:
        """Wake each channel whose queue got entries, as Redis tells us (the scripts
        that push publish the queue's key). A scan each SCAN_EVERY seconds, and
        after a reconnection, finds what was pushed without a message."""
        outage = Outage("wake-ups", self.stop)
        subscriber, scanned = None, 0.0
        wanted = self.broker.keys.output_wanted("")
        while not self.stop.is_set():
            try:
                if subscriber is None:
                    subscriber = self.broker.wakeups()
                    scanned = 0.0
                    outage.recovered()
                if time.monotonic() - scanned >= SCAN_EVERY:
                    self._wake_waiting()
                    scanned = time.monotonic()
                for message in subscriber.messages(SCAN_EVERY):
                    if message == self.broker.keys.drain(self.broker.node):
                        self._drain_asked()
                        continue
                    if message.startswith(wanted):   # a reader elsewhere: is it ours?
                        task_id, _, seq = message[len(wanted):].partition("\n")
                        self._relay(task_id, int(seq) if seq.isdigit() else 0)
                        continue
                    queue, _, node = message.partition("\n")
                    if queue == self.broker.keys.channels:   # settings changed
                        if node != self.broker.node:   # ours: applied already
                            self.resync.set()
                        continue
                    channel = self.by_queue.get(queue)
                    if channel is not None and node != self.broker.node:   # ours: woken
                        channel.wake()
            except redis.RedisError as exc:
                if subscriber is not None:
                    subscriber.close()
                    subscriber = None
                outage.failed(exc)
            except Exception:   # a bug of ours must not end every wake-up of this node
                log.exception("wake-ups: unexpected error")
                self.stop.wait(1)
        if subscriber is not None:
            subscriber.close()

    def _relay(self, task_id: str, seq: int) -> None:
        """A reader on another node wants a task's lines: send them if it runs here."""
        relay = self.relays.get(task_id)
        if relay is None:
            live = self.lives.get(task_id)
            if live is None:
                return
            relay = self.relays[task_id] = Relay(
                live, lambda message: self.broker.send_output(task_id, message))

            def run() -> None:
                try:
                    relay.run(time.monotonic)
                except redis.RedisError as exc:   # the reader falls back on the record
                    log.debug("output of task %s: relay stopped: %s", task_id, exc)
                finally:
                    self.relays.pop(task_id, None)
            gevent.spawn(run)
        relay.asked(time.monotonic(), seq)

    def _wake_waiting(self) -> None:
        """Wake the channels whose queue holds entries (the slow path: entries pushed
        by a producer that does not publish, such as the Go daemon)."""
        queues = [self.broker.keys.queue(name) for name in self.channels]
        for queue in self.broker.waiting(queues):   # each one's high queue is looked at too
            channel = self.by_queue.get(queue)   # a channel removed meanwhile: gone
            if channel is not None:
                channel.wake()

    def _reject(self, raw: str, reason: str) -> redis.ResponseError | None:
        """Move a staged entry into the dead-letter list; -> Redis's refusal if it
        could not (the entry stays staged)."""
        try:
            self.broker.dead_letter(raw, reason)
        except redis.ResponseError as exc:
            return exc
        log.error("prepare queue: rejected %.200r: %s (moved to the dead-letter list)",
                  raw, reason)
        return None

    def _check(self, raw: str) -> tuple[Task, ChannelSpec]:
        """A producer entry -> (task, its channel), or BadTask."""
        if len(raw) > MAX_ENTRY:
            raise BadTask(f"entry larger than {MAX_ENTRY} bytes")
        if self.config.signatures is not None:
            try:
                raw = self.config.signatures.entry(raw, time.time())
            except Unsigned as exc:
                raise BadTask(str(exc)) from None
        task = from_producer(raw, self.config.channel_default)
        spec = self.specs.get(task.channel)
        if spec is None:   # perhaps created a moment ago through another node
            self.specs = self.broker.channels()
            spec = self.specs.get(task.channel)
        if spec is None:
            raise BadTask(f"unknown channel {task.channel!r}")
        if spec.command_policy is not None:
            try:
                spec.command_policy.launch(task.argv)
            except Refused as exc:
                raise BadTask(f"refused: {exc}") from None
        return task, spec

    def _maintain(self) -> None:
        """Heartbeat, dead-node reaping, channel reloads and delayed tasks.

        The heartbeat goes on while a shutdown drains (until ``give_up``), or
        another node would requeue tasks that are still running here."""
        outage = Outage("maintenance", self.give_up)
        beat_every = self.config.node_ttl / 3
        last_beat = last_sync = time.monotonic()
        while not self.give_up.is_set():
            # a change of settings told by another node is applied at once
            gevent.wait([self.give_up, self.resync], timeout=TICK, count=1)
            if self.give_up.is_set():
                break
            told = self.resync.is_set()
            if told:   # a burst of changes (10,000 channels made) is read in one go
                self.give_up.wait(max(0.0, last_sync + RESYNC_MIN - time.monotonic()))
            self.resync.clear()
            try:
                now = time.monotonic()
                if now - last_beat >= beat_every:
                    if self.broker.beat(self.running(), self.stop.is_set()):
                        self._drain_asked()
                    for node, n in self.broker.reap_dead_nodes(self.specs).items():
                        log.warning("node %s: heartbeat expired, requeued %d task(s)", node, n)
                    last_beat = now
                self._kill_requested()
                pids = dict(self.unnoted)
                self.unnoted.clear()
                self.broker.note_pids(pids)
                if self.stop.is_set():
                    continue
                if now - last_sync >= SYNC_EVERY or told:
                    self._sync()
                    last_sync = now
                self.broker.promote_due(self._locate)
                outage.recovered()
            except redis.RedisError as exc:
                outage.failed(exc)
            except Exception:
                log.exception("maintenance: unexpected error")

    def _drain_asked(self) -> None:
        """A caller asked this node to drain: as a stop signal does."""
        if not self.stop.is_set():
            self.drain_asked = True
            log.warning("node %s: drain asked through the API", self.broker.node)
            self.stop.set()

    def _kill_requested(self) -> None:
        for task_id in self.broker.kill_requests():
            if any(channel.kill(task_id) for channel in self.channels.values()):
                log.info("task %s: kill requested, stopping its process group", task_id)
            else:
                log.info("task %s: kill requested, but it no longer runs here", task_id)

    def _locate(self, raw: str) -> tuple[str, str]:
        """(channel, task id) of a delayed entry (ours, or one left by a later Go)."""
        return locate(raw, self.config.channel_default)

    # -- stop -------------------------------------------------------------
    def not_ready(self) -> str:
        """Why this node is not ready to work yet; '' once its channels run."""
        return "" if self.started and self.channels else "starting: waiting for redis"

    def running(self) -> int:
        """Commands running now (not workers that only record a result)."""
        return sum(len(c.commands) for c in self.channels.values())

    def drain(self, grace: float, force: gevent.event.Event) -> bool:
        """Called once ``stop`` is set: let running commands finish within ``grace``
        seconds (or until ``force``), then kill them and requeue their tasks.
        Every step after the grace time is bounded (kill grace + RECORD_WAIT + a few
        seconds), so that supervisor's stopwaitsecs is never reached.
        True when nothing had to be killed."""
        for channel in list(self.channels.values()):
            channel.wake()   # its dispatcher sees the stop flag and ends
        deadline = time.monotonic() + grace
        said = 0.0
        while self.running() and not force.is_set() and time.monotonic() < deadline:
            if time.monotonic() - said >= 5:
                log.info("shutdown: waiting for %d running command(s), %.0fs left",
                         self.running(), deadline - time.monotonic())
                said = time.monotonic()
            force.wait(0.1)   # wakes on a second signal; notices the end quickly
        # dispatchers end once their claim returns (a late claim is given back)
        channels = list(self.channels.values())   # sync() adds none once stopping
        gevent.joinall(self.greenlets + [c.greenlet for c in channels if c.greenlet],
                       timeout=BLOCK_WAIT)
        clean = not self.running()
        if not clean:
            log.warning("shutdown: %s; killing %d command(s), their tasks are requeued",
                        "forced" if force.is_set() else "grace time exceeded", self.running())
            gevent.joinall([gevent.spawn(c.kill_running) for c in channels])
        # workers still recording a result (or a requeue) get a moment to reach redis;
        # then they give up and their entries stay in our lists, requeued below or at
        # the next start
        gevent.joinall([gevent.spawn(c.workers.join) for c in channels], timeout=RECORD_WAIT)
        self.give_up.set()
        for channel in channels:
            channel.workers.kill(timeout=1)
        if self.heart is not None:
            self.heart.kill(timeout=1)
        try:
            with gevent.Timeout(RECORD_WAIT):
                # anything still in our lists (a worker that could not ack) goes back
                moved = self.broker.leave(self.specs)
            if moved:
                log.warning("shutdown: requeued %d unfinished task(s)", moved)
        except (redis.RedisError, gevent.Timeout) as exc:
            log.warning("shutdown: redis unavailable (%s); this node's leftovers are "
                        "requeued when it starts again or its heartbeat expires",
                        exc or "timed out")
        return clean


def changes(old: ChannelSpec, new: ChannelSpec) -> str:
    """What differs between two settings of a channel, for the log."""
    before, after = old.settings(), new.settings()
    return ", ".join(f"{key} {before[key]} -> {after[key]}" for key in after
                     if after[key] != before[key]) or "settings rewritten"
