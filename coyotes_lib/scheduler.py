"""Channels and the greenlets that feed them.

``Channel`` is one queue with a ``gevent.pool.Pool`` of ``worker_count``
greenlets: its dispatcher claims tasks only for free workers; a worker runs
its task, and acks it together with the claim of its next one (one round trip
per task under load) until the queue is empty. ``Scheduler`` owns the set of channels (new ones
found in ``task:channels`` start at once), routes the prepare queue into
channel queues, promotes due delayed tasks, keeps this node's heartbeat and
requeues the work of dead nodes. Every loop survives Redis outages: it backs
off, logs once, and carries on when Redis answers again.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import random
import socket
import time

import gevent
import gevent.event
import gevent.pool
import redis

from .broker import FOREIGN_RECORD, Broker, ChannelSpec, Claim
from .command import Command, Result, runner
from .log import OutputBudget
from .pidfile import pid_alive
from .task import BadTask, Policy, Task, from_producer, from_queue, locate

log = logging.getLogger("coyotes.scheduler")
output = logging.getLogger("coyotes.output")

DEFAULT_CHANNELS = ("biz", "cron")   # besides -channel-default
KILL_GRACE = 5.0                     # seconds between TERM and KILL of a group
SYNC_EVERY = 2.0                     # seconds between reloads of task:channels
MAX_ENTRY = 1 << 20                  # bytes of one prepare-queue entry
BLOCK_WAIT = 3.0                     # seconds to let claim loops notice the stop flag
ROUTE_BATCH = 100                    # prepare-queue entries routed per round trip
STAGED_READ = 1000                   # staged entries read at a time to route again
STUCK_PAUSE_MAX = 30.0               # seconds between tries of entries Redis refused
RECORD_WAIT = 2.0                    # seconds a shutdown waits for results to be recorded
TRANSIENT_PAUSE = 1.0                # seconds before a command that could not start is requeued


class NodeConflict(Exception):
    """Another live process uses this node's id."""


class Outage:
    """Backoff and one log line per Redis outage, for loops that must go on."""

    def __init__(self, what: str, wake: gevent.event.Event):
        self.what, self.wake = what, wake
        self.delay = 0.0
        self.since = 0.0

    def failed(self, exc: Exception) -> None:
        if not self.delay:
            self.since = time.monotonic()
            log.warning("%s: %s, retrying", self.what, redis_trouble(exc))
        self.delay = min(5.0, (self.delay or 0.05) * 2)
        self.wake.wait(self.delay)

    def recovered(self) -> bool:
        if not self.delay:
            return False
        log.info("%s: redis is back after %.1fs", self.what, time.monotonic() - self.since)
        self.delay = 0.0
        return True


def redis_trouble(exc: Exception) -> str:
    """What went wrong, in words: a refused command (a key of another type, out of
    memory) is not an unavailable server."""
    if isinstance(exc, redis.ResponseError):
        return f"redis refused a command ({exc})"
    return f"redis unavailable ({exc})"


def insist(what: str, action, give_up: gevent.event.Event):
    """Run ``action()`` until Redis takes it, or until ``give_up`` is set (-> None)."""
    outage = Outage(what, give_up)
    while True:
        try:
            result = action()
            outage.recovered()
            return result
        except redis.RedisError as exc:
            if give_up.is_set():
                log.error("%s: gave up (%s); the task stays in redis and is requeued "
                          "when this node starts again", what, exc)
                return None
            outage.failed(exc)


@dataclasses.dataclass(frozen=True)
class Limits:
    """Node-wide settings every channel applies (from the command line)."""
    output_tail: int = 64 * 1024
    kill_grace: float = KILL_GRACE
    log_output_max: int = 1 << 20
    max_redeliveries: int = 3
    crash_at: str = ""   # test hook (COYOTES_CRASH_AT): os._exit at that point


def backoff(policy: Policy, retries_so_far: int) -> float:
    """Exponential, capped, with jitter (half to all of the step) so that a burst
    of failures does not retry in lockstep."""
    step = min(policy.retry_max, policy.retry_backoff * 2 ** retries_so_far)
    return step * random.uniform(0.5, 1.0)


class Channel:
    def __init__(self, spec: ChannelSpec, broker: Broker, stop: gevent.event.Event,
                 give_up: gevent.event.Event, run_with, limits: Limits = Limits()):
        self.spec, self.name, self.broker = spec, spec.name, broker
        self.run_with = run_with   # the runner commands are started with
        self.stop, self.give_up, self.limits = stop, give_up, limits
        self.pool = gevent.pool.Pool(spec.worker_count)
        self.commands: dict[int, Command] = {}        # worker number -> running command
        self.by_id: dict[str, int] = {}               # task id -> worker number
        self.kill_wanted: set[str] = set()            # asked before its command existed
        self.handing: set[str] = set()                # ids claimed, not yet with a worker
        self.claimed: collections.Counter[str] = collections.Counter()
        self.in_flight = 0          # claims sent whose reply has not come
        self.no_claim_in_flight = gevent.event.Event()
        self.no_claim_in_flight.set()
        self.unsure = False         # a claim failed: its entries may be ours, unheld
        self.reconciling = False
        self.free = list(range(spec.worker_count, 0, -1))
        self.greenlet: gevent.Greenlet | None = None

    def start(self) -> None:
        self.greenlet = gevent.spawn(self._dispatch)

    def _dispatch(self) -> None:
        outage = Outage(f"channel {self.name}", self.stop)
        while not self.stop.is_set():
            free = self.pool.wait_available(timeout=1)
            if not free:
                continue
            try:
                # as many as there are free workers; a busy worker claims its next task
                # itself, with the result of the last one
                claims = self._hold(self._claiming(self.broker.claim, self.name, free))
            except redis.RedisError as exc:
                outage.failed(exc)
                continue
            except Exception:   # a bug of ours must not end this channel's consumption
                log.exception("channel %s: unexpected error while claiming", self.name)
                self.stop.wait(1)
                continue
            outage.recovered()
            if self.unsure:
                self._reconcile()
            claims = self._keep(claims)
            for claim in claims:
                self.pool.spawn(self._run, claim)
            if claims:
                gevent.sleep(0)   # let them start their commands before we claim again

    def _claiming(self, action, *args, **kwargs):
        """Run ``action``, a call that claims. If its reply is lost, it may have moved
        entries that nobody holds: the next reconcile finds them."""
        self.in_flight += 1
        self.no_claim_in_flight.clear()
        try:
            return action(*args, **kwargs)
        except Exception:   # a lost reply, or one we could not read: check the list
            self.unsure = True
            raise
        finally:
            self.in_flight -= 1
            if not self.in_flight:
                self.no_claim_in_flight.set()

    def _hold(self, claims: list[Claim]) -> list[Claim]:
        """Count claims as held (before anything yields: a reconcile trusts it), and
        know their ids until their worker does (a cancel may come in between)."""
        for claim in claims:
            self.claimed[claim.raw] += 1
            if claim.task_id:
                self.handing.add(claim.task_id)
            self._crash_if("after-claim")
        return claims

    def _keep(self, claims: list[Claim]) -> list[Claim]:
        """The claims to run; all of them go back if a stop signal came meanwhile."""
        if not self.stop.is_set():
            return claims
        for claim in claims:
            insist(f"channel {self.name}",
                    lambda c=claim: self.broker.requeue(self.name, c.raw, c.task_id, ran=False),
                    self.give_up)
            self.handing.discard(claim.task_id)
            self._unclaim(claim.raw)
        return []

    def _crash_if(self, point: str) -> None:
        if self.limits.crash_at == point:
            log.critical("test hook: crashing at %s", point)
            os._exit(99)

    def _reconcile(self) -> None:
        """After a claim failed, requeue entries of our processing list that no worker
        holds (a claim whose reply was lost with the connection). Workers claim
        nothing meanwhile, and claims under way are waited for, so that what the
        list holds and what ``claimed`` counts are read at one moment."""
        self.reconciling, self.unsure = True, False
        key = self.broker.keys.processing(self.broker.node, self.name)
        try:
            self.no_claim_in_flight.wait()
            held = collections.Counter(self.broker.redis.lrange(key, 0, -1))
            for raw, count in held.items():
                for _ in range(count - self.claimed.get(raw, 0)):
                    if self.broker.requeue(self.name, raw, locate(raw)[1], ran=False):
                        log.warning("channel %s: requeued a claim lost in the outage", self.name)
        except redis.RedisError as exc:
            self.unsure = True
            log.warning("channel %s: could not reconcile after the outage (%s)", self.name, exc)
        finally:
            self.reconciling = False

    def _unclaim(self, raw: str) -> None:
        self.claimed[raw] -= 1
        if self.claimed[raw] <= 0:
            del self.claimed[raw]

    def _run(self, claim: Claim) -> None:
        """One worker: runs the claimed task, then each next one it claims itself."""
        worker = self.free.pop()
        try:
            while claim is not None:
                try:
                    claim = self._run_one(claim, worker)
                except Exception as exc:   # a bug of ours: park the entry, the worker lives on
                    what = f"channel {self.name}: worker {worker}"
                    log.exception("%s: unexpected error with %.200r", what, claim.raw)
                    try:
                        self._park(claim.raw, f"internal error: {exc!r}", what)
                    except Exception:   # stays in our processing list, requeued with it
                        log.exception("%s: cannot park %.200r", what, claim.raw)
                    claim = None
        finally:
            self.free.append(worker)

    def _park(self, raw: str, reason: str, what: str) -> None:
        """A claimed entry that cannot run goes to the dead-letter list with its reason."""
        if insist(what, lambda: self.broker.release(self.name, raw, reason), self.give_up):
            log.error("%s: bad entry %.200r: %s (moved to the dead-letter list)",
                      what, raw, reason)

    def _run_one(self, claim: Claim, worker: int) -> Claim | None:
        raw = claim.raw
        self.handing.discard(claim.task_id)
        what = f"channel {self.name}: worker {worker}"
        task = None
        try:
            try:
                task = from_queue(raw, self.name)
                policy = self.spec.policy.merge(task.payload)   # bad timeout etc.: BadTask
            except Exception as exc:   # BadTask, or a bug of ours: never wedge the entry
                reason = str(exc) if isinstance(exc, BadTask) else f"internal error: {exc!r}"
                self._park(raw, reason, what)
                return None
            self.by_id[task.id] = worker
            started = claim.started
            if started is not None and claim.task_id != task.id:
                log.warning("%s: entry %.200r read as task %s by redis and as %s here; "
                            "started as %s", what, raw, claim.task_id, task.id, task.id)
                started = None
            if started is None:
                started = insist(what, lambda: self.broker.start(task), self.give_up)
            if started is None:
                return None   # shutting down without redis: requeued when this node is back
            attempt, redeliveries, kill, retries = started
            if attempt == FOREIGN_RECORD:
                self._park(raw, f"its record key {self.broker.keys.record(task.id)} holds "
                                "another type", what)
                return None
            label = printable(task.name)
            if not attempt:
                log.warning("%s: task %s is no longer ours (this node was reaped and the "
                            "task finished meanwhile); not run again: %s", what, task.id, label)
                return None
            if kill:
                log.info("%s: task %s canceled before it started: %s", what, task.id, label)
                return self._finish(task, "done", {"status": "canceled"}, what)
            if redeliveries > self.limits.max_redeliveries:
                log.error("%s: task %s moved to the failed tasks: its node died %d times while "
                          "running it: %s", what, task.id, redeliveries, label)
                return self._finish(task, "failed", {"status": "failed", "error": (
                    f"its node died {redeliveries} times while running it")}, what)
            result = self._execute(task, policy, worker, attempt, label, what)
            if result.stopped == "shutdown":   # it has not finished: it runs again later
                insist(what, lambda: self.broker.requeue(self.name, raw, task.id),
                        self.give_up)
                log.warning("%s: task %s requeued (stopped by shutdown)", what, task.id)
                return None
            if result.transient:   # out of descriptors or memory: not the command's fault
                self.stop.wait(TRANSIENT_PAUSE)   # not at once: it would fail the same way
                insist(what, lambda: self.broker.requeue(self.name, raw, task.id, ran=False),
                        self.give_up)
                log.warning("%s: task %s requeued: it could not start (%s)", what, task.id,
                            result.error)
                return None
            return self._record_result(task, policy, result, retries, what, label)
        finally:
            if task is not None:
                self.by_id.pop(task.id, None)
                self.kill_wanted.discard(task.id)
            self.commands.pop(worker, None)
            self._unclaim(raw)

    def _execute(self, task: Task, policy: Policy, worker: int, attempt: int, label: str,
                 what: str) -> Result:
        budget = OutputBudget(self.limits.log_output_max)

        def on_line(stream: str, text: str) -> None:
            text = budget.line(text)
            if text is not None:
                output.info("channel %s worker %d [%s] %s: %s", self.name, worker, label,
                            stream, text, extra={"stream": stream})

        command = self.commands[worker] = Command(task.argv, on_line, self.run_with,
                                                  self.limits.output_tail,
                                                  self.limits.kill_grace,
                                                  kill_group=policy.kill_group)
        if task.id in self.kill_wanted:
            gevent.spawn(command.stop, "cancel")
        def on_start(pid: int) -> None:   # logged once running: the log line costs time
            log.info("%s: task %s started (attempt %d, pid %d): %s", what, task.id, attempt,
                     pid, label)

        try:
            result = command.run(policy.timeout, on_start)
        finally:
            self.commands.pop(worker, None)   # what is left is recording the result
        level = logging.INFO if result.ok else logging.WARNING
        log.log(level, "%s: task %s %s in %.3fs: %s", what, task.id, result.describe(),
                result.duration, label)
        if budget.summary:
            log.info("%s: task %s %s", what, task.id, budget.summary)
        return result

    def _record_result(self, task: Task, policy: Policy, result: Result, retries: int,
                       what: str, label: str) -> Claim | None:
        fields = {"exit_code": result.exit_code, "signal": result.signal,
                  "duration": f"{result.duration:.6f}", "error": result.error or None,
                  "stdout": result.stdout, "stderr": result.stderr}
        delay = 0.0
        if result.ok:
            outcome, fields["status"] = "done", "succeeded"
        elif result.stopped == "cancel":
            outcome, fields["status"] = "done", "killed"
        else:
            fields["status"] = "timed_out" if result.stopped == "timeout" else "failed"
            retry = retries < policy.retries and (
                not policy.retry_on or result.exit_code in policy.retry_on)
            outcome = "retry" if retry else "failed"
            if retry:
                delay = backoff(policy, retries)
                log.info("%s: task %s retries in %.1fs (retry %d of %d): %s", what, task.id,
                         delay, retries + 1, policy.retries, label)
            else:
                log.warning("%s: task %s moved to the failed tasks (%s): %s", what, task.id,
                            fields["status"], label)
        return self._finish(task, outcome, fields, what, delay)

    def _finish(self, task: Task, outcome: str, fields: dict, what: str,
                delay: float = 0.0) -> Claim | None:
        """Record the result; with it, claim this worker's next task (-> that claim)."""
        self._crash_if("before-ack")
        done, claims = None, []
        if not (self.stop.is_set() or self.reconciling):
            try:
                done, claims = self._claiming(self.broker.finish, task, outcome, fields, delay,
                                              claim_next=1)
                self._hold(claims)
            except redis.RedisError:
                pass   # recorded below, without a claim, once redis takes it
        if done is None:
            done = insist(what, lambda: self.broker.finish(task, outcome, fields, delay)[0],
                           self.give_up)
        if done == 0:
            log.warning("%s: task %s finished but was no longer in this node's processing "
                        "list (requeued by another node, or lost by Redis): late ack, "
                        "it may run again", what, task.id)
        return next(iter(self._keep(claims)), None)

    def kill(self, task_id: str) -> bool:
        """A caller canceled this running task: end its process group."""
        if task_id in self.handing:   # claimed (and started in redis), worker not yet there
            self.kill_wanted.add(task_id)
            return True
        worker = self.by_id.get(task_id)
        if worker is None:
            return False
        command = self.commands.get(worker)
        if command is None:
            self.kill_wanted.add(task_id)
        else:
            gevent.spawn(command.stop, "cancel")
        return True

    def kill_running(self) -> None:
        """Shutdown ran out of time: end every running group; its worker requeues it."""
        gevent.joinall([gevent.spawn(c.stop, "shutdown") for c in list(self.commands.values())])


def printable(name: str, width: int = 80) -> str:
    """A command line fit for one log line: control characters escaped, length capped."""
    if len(name) <= width and name.isprintable():
        return name
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in name)
    return text if len(text) <= width else text[:width - 3] + "..."


class Scheduler:
    def __init__(self, broker: Broker, config, stop: gevent.event.Event):
        self.broker, self.config, self.stop = broker, config, stop
        self.give_up = gevent.event.Event()   # set at the very end of a shutdown
        self.channels: dict[str, Channel] = {}
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
        self.greenlets = [gevent.spawn(self._route_prepared)]
        self.heart = gevent.spawn(self._maintain)

    def _prepare_start(self) -> None:
        self.broker.redis.ping()
        self.broker.load_scripts()
        self._check_node_id()
        self.ensure_default_channels()
        self.specs = self.broker.channels()
        moved = self.broker.convert_go_delayed()
        if moved:
            log.warning("delayed tasks: %d entries left by the Go daemon converted to unix "
                        "times", moved)
        # no live process has our id: whatever it holds was left by our previous life
        moved = self.broker.requeue_node(self.broker.node, self.specs)
        if moved:
            log.warning("node %s: requeued %d task(s) left from a previous run",
                        self.broker.node, moved)
        self.broker.beat()
        self.started = True
        self._sync()

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

    def sync(self) -> None:
        """``_sync`` now, for a caller that just created a channel; if Redis refuses,
        the maintenance loop tries again within SYNC_EVERY seconds."""
        try:
            self._sync()
        except redis.RedisError as exc:
            log.warning("channels: new channels not started yet, %s; trying again "
                        "within %.0fs", redis_trouble(exc), SYNC_EVERY)

    def _sync(self) -> None:
        """Start channels that appeared in ``task:channels`` (not before ``start``,
        nor once stopping)."""
        if not self.started or self.stop.is_set():
            return
        self.specs = self.broker.channels()
        if self.config.channel_default not in self.specs:
            # Redis came back empty (restarted without persistence, or flushed)
            log.warning("channel %s: missing from %s, creating the default channels again",
                        self.config.channel_default, self.broker.keys.channels)
            self.ensure_default_channels()
            self.specs = self.broker.channels()
        new = [name for name in self.specs if name not in self.channels]
        self.broker.consuming(new)   # recorded before the first claim, for any reaper
        for name, spec in self.specs.items():
            if name not in self.channels:
                channel = self.channels[name] = Channel(spec, self.broker, self.stop,
                                                        self.give_up, self.run_with,
                                                        self.limits)
                channel.start()
                log.info("channel %s: consuming with %d worker(s)%s", name,
                         spec.worker_count, ", distinct" if spec.distinct else "")
            elif spec != self.channels[name].spec:
                old = self.channels[name].spec
                self.channels[name].spec = spec   # distinct and policy apply to new tasks now
                log.info("channel %s: settings changed to %s", name, spec.to_json())
                if spec.worker_count != old.worker_count:
                    log.warning("channel %s: the worker count (%d, was %d) changes after a "
                                "restart", name, spec.worker_count, old.worker_count)

    # -- loops ------------------------------------------------------------
    def _route_prepared(self) -> None:
        """Move producer entries from the prepare queue into their channel queue,
        a batch at a time when they come quickly. Entries that Redis refused (a key
        of another type) stay in this node's staging list and are tried again,
        oldest first, after a pause that grows while they keep being refused."""
        outage = Outage("prepare queue", self.stop)
        leftovers = True   # entries already staged (a reply lost in an outage) go first
        pause, retry_at = 0.0, 0.0
        while not self.stop.is_set():
            try:
                again = leftovers or (pause and time.monotonic() >= retry_at)
                if again:
                    batch, leftovers = self.broker.staged(STAGED_READ), False
                else:
                    batch = self.broker.take_prepared(ROUTE_BATCH)
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
        for (task, _, raw), outcome in zip(pushes, self._push_many(pushes), strict=True):
            if isinstance(outcome, redis.ResponseError):
                refused.append(outcome)
            elif isinstance(outcome, Exception):
                refused.append(self._reject(raw, f"internal error: {outcome!r}"))
            elif outcome == 4:
                log.warning("prepare queue: %.200r went back to the queue while this node was "
                            "routing it (reaped); left to whoever takes it", raw)
            elif outcome == 3:
                refused.append(self._reject(raw, f"id {task.id!r} is in use by a task that "
                                                 "has not finished"))
            elif outcome == 5:
                refused.append(self._reject(raw, f"id {task.id!r}: its record key "
                                                 f"{self.broker.keys.record(task.id)} holds "
                                                 "another type"))
            elif outcome == 0:
                log.info("channel %s: task %s refused, already queued or running: %s",
                         task.channel, task.id, task.name)
            else:
                log.debug("channel %s: task %s %s", task.channel, task.id,
                          "delayed" if outcome == 2 else "queued")
        return next((exc for exc in refused if exc is not None), None)

    def _push_many(self, pushes) -> list:
        """The outcome of each push; an entry that cannot even be sent (a bug of ours)
        has its exception in its place instead of failing the whole batch."""
        try:
            return self.broker.push_many(pushes)
        except redis.RedisError:
            raise
        except Exception:
            log.exception("prepare queue: a batch could not be sent, routing its entries "
                          "one by one")
        outcomes = []
        for push in pushes:
            try:
                outcomes += self.broker.push_many([push])
            except redis.RedisError:
                raise
            except Exception as exc:
                outcomes.append(exc)
        return outcomes

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
        task = from_producer(raw, self.config.channel_default)
        spec = self.specs.get(task.channel)
        if spec is None:   # perhaps created a moment ago through another node
            self.specs = self.broker.channels()
            spec = self.specs.get(task.channel)
        if spec is None:
            raise BadTask(f"unknown channel {task.channel!r}")
        return task, spec

    def _maintain(self) -> None:
        """Heartbeat, dead-node reaping, channel reloads and delayed tasks.

        The heartbeat goes on while a shutdown drains (until ``give_up``), or
        another node would requeue tasks that are still running here."""
        outage = Outage("maintenance", self.give_up)
        beat_every = self.config.node_ttl / 3
        last_beat = last_sync = time.monotonic()
        while not self.give_up.wait(0.5):
            try:
                now = time.monotonic()
                if now - last_beat >= beat_every:
                    self.broker.beat()
                    for node, n in self.broker.reap_dead_nodes(self.specs).items():
                        log.warning("node %s: heartbeat expired, requeued %d task(s)", node, n)
                    last_beat = now
                self._kill_requested()
                if self.stop.is_set():
                    continue
                if now - last_sync >= SYNC_EVERY:
                    self._sync()
                    last_sync = now
                self.broker.promote_due(self._locate)
                outage.recovered()
            except redis.RedisError as exc:
                outage.failed(exc)
            except Exception:
                log.exception("maintenance: unexpected error")

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
    def running(self) -> int:
        """Commands running now (not workers that only record a result)."""
        return sum(len(c.commands) for c in self.channels.values())

    def drain(self, grace: float, force: gevent.event.Event) -> bool:
        """Called once ``stop`` is set: let running commands finish within ``grace``
        seconds (or until ``force``), then kill them and requeue their tasks.
        Every step after the grace time is bounded (kill grace + RECORD_WAIT + a few
        seconds), so that supervisor's stopwaitsecs is never reached.
        True when nothing had to be killed."""
        deadline = time.monotonic() + grace
        said = 0.0
        while self.running() and not force.is_set() and time.monotonic() < deadline:
            if time.monotonic() - said >= 5:
                log.info("shutdown: waiting for %d running command(s), %.0fs left",
                         self.running(), deadline - time.monotonic())
                said = time.monotonic()
            force.wait(0.1)   # wakes on a second signal; notices the end quickly
        # claim loops end within one BLOCK (a late claim is given back), usually long ago
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
        gevent.joinall([gevent.spawn(c.pool.join) for c in channels], timeout=RECORD_WAIT)
        self.give_up.set()
        for channel in channels:
            channel.pool.kill(timeout=1)
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
