"""One channel: a queue and the gevent pool of workers that run its tasks.

Its dispatcher claims tasks only for free workers, and only when told that its
queue got entries (``wake``: a message from Redis, or the node's scan); it
holds no Redis connection while it waits. A worker runs its task,
and acks it together with the claim of its next one (one round trip per task
under load) until the queue is empty. A claimed entry either runs, goes back
to the queue (a shutdown, a command that could not start for want of
resources), or goes to the dead-letter list with its reason.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import random

import gevent
import gevent.event
import gevent.pool
import redis

from .broker import Broker
from .command import Command, Result, Stop
from .config import Config
from .live import Live
from .log import OutputBudget
from .model import FOREIGN_RECORD, ChannelSpec, Claim, Outcome
from .outage import Outage, insist
from .policy import Refused
from .task import BadTask, Policy, Task, from_queue, locate

log = logging.getLogger("coyotes.channel")
output = logging.getLogger("coyotes.output")

TRANSIENT_PAUSE = 1.0   # seconds before a command that could not start is requeued


@dataclasses.dataclass(frozen=True)
class Limits:
    """Node-wide settings every channel applies (from the command line)."""
    output_tail: int = Config.output_tail
    kill_grace: float = Config.kill_grace
    log_output_max: int = Config.log_output_max
    max_redeliveries: int = Config.max_redeliveries
    crash_at: str = ""   # test hook (COYOTES_CRASH_AT): os._exit at that point


def backoff(policy: Policy, retries_so_far: int) -> float:
    """Exponential, capped, with jitter (half to all of the step) so that a burst
    of failures does not retry in lockstep."""
    step = min(policy.retry_max, policy.retry_backoff * 2 ** retries_so_far)
    return step * random.uniform(0.5, 1.0)


class Channel:
    def __init__(self, spec: ChannelSpec, broker: Broker, stop: gevent.event.Event,
                 give_up: gevent.event.Event, run_with, limits: Limits = Limits(),
                 unnoted: dict[str, int] | None = None, lives: dict[str, Live] | None = None):
        self.spec, self.name, self.broker = spec, spec.name, broker
        # task id -> pid of commands started here that the node has not yet written
        # into their records (``Scheduler._maintain`` does, shared by every channel)
        self.unnoted = {} if unnoted is None else unnoted
        # task id -> its output as it comes, for readers (GET /tasks/{id}/output)
        self.lives = {} if lives is None else lives
        self.run_with = run_with   # the runner commands are started with
        self.stop, self.give_up, self.limits = stop, give_up, limits
        # workers are counted here, not by a gevent Pool, whose size is fixed: the
        # settings may grow or shrink it while tasks run
        self.workers = gevent.pool.Group()
        self.busy = 0                       # workers running a task or recording it
        self.numbers: set[int] = set()      # worker numbers in use (for the logs)
        self.room = gevent.event.Event()    # set when a worker ends or the size grows
        self.retired = False                # deleted: claim nothing more, then go
        self.commands: dict[int, Command] = {}        # worker number -> running command
        # task id -> (its command, started by _prestart, and policy) until its worker runs it
        self.launched: dict[str, tuple[Command, Policy]] = {}
        self.by_id: dict[str, int] = {}               # task id -> worker number
        self.kill_wanted: set[str] = set()            # asked before its command existed
        self.handing: set[str] = set()                # ids claimed, not yet with a worker
        self.claimed: collections.Counter[str] = collections.Counter()
        self.in_flight = 0          # claims sent whose reply has not come
        self.no_claim_in_flight = gevent.event.Event()
        self.no_claim_in_flight.set()
        self.unsure = False         # a claim failed: its entries may be ours, unheld
        self.reconciling = False
        self.woken = gevent.event.Event()   # the queue may hold entries: claim them
        self.woken.set()                    # (it may hold some from before we started)
        self.lent = 0                       # workers another greenlet claims for (lend)
        self.no_loan = gevent.event.Event()
        self.no_loan.set()
        self.greenlet: gevent.Greenlet | None = None

    def start(self) -> None:
        self.greenlet = gevent.spawn(self._dispatch)

    def wake(self) -> None:
        """Entries were pushed into the queue (or the node is stopping)."""
        self.woken.set()

    def free_count(self) -> int:
        """Workers that may claim a task now (none while paused or retired)."""
        if self.spec.paused or self.retired:
            return 0
        return max(0, self.spec.worker_count - self.busy)

    def apply(self, spec: ChannelSpec) -> None:
        """New settings: distinct and the policy apply to tasks claimed from now on,
        a larger worker count at once; with a smaller one, the workers beyond it
        end with their current task; a paused channel claims nothing until
        resumed (its running commands go on)."""
        old, self.spec = self.spec, spec
        if spec.worker_count > old.worker_count or (old.paused and not spec.paused):
            self.room.set()
            self.wake()

    def retire(self) -> None:
        """The channel was deleted: claim nothing more; running tasks finish
        (``idle`` once they have)."""
        self.retired = True
        self.room.set()
        self.wake()

    @property
    def idle(self) -> bool:
        return not self.busy and not self.in_flight and not self.lent

    def _wait_room(self, timeout: float) -> bool:
        if self.free_count():
            return True
        self.room.clear()
        self.room.wait(timeout)
        return self.free_count() > 0

    def _spawn(self, claim: Claim) -> None:
        self.busy += 1
        self.workers.spawn(self._run, claim)

    def _dispatch(self) -> None:
        outage = Outage(f"channel {self.name}", self.stop)
        while not self.stop.is_set() and not self.retired:
            if not self._wait_room(timeout=1):
                continue
            self.woken.wait()
            if self.stop.is_set() or self.retired:
                break
            if self.lent:   # the routing loop claims for us right now: see what it brings
                self.no_loan.wait()
                continue
            free = self.free_count()   # again: a loan may have taken workers meanwhile
            if not free:
                continue
            self.woken.clear()   # before the claim: a push after it wakes us again
            try:
                # as many as there are free workers; a busy worker claims its next task
                # itself, with the result of the last one
                claims = self._hold(self._claiming(self.broker.claim, self.name, free,
                                                   self.spec.max_running))
            except redis.RedisError as exc:
                self.woken.set()   # not claimed: try again
                outage.failed(exc)
                continue
            except Exception:   # a bug of ours must not end this channel's consumption
                self.woken.set()
                log.exception("channel %s: unexpected error while claiming", self.name)
                self.stop.wait(1)
                continue
            outage.recovered()
            if self.unsure:
                self._reconcile()
            claims = self._keep(claims)
            for claim in claims:
                self._spawn(claim)
            if len(claims) == free:
                self.woken.set()   # there may be more once a worker is free
            if claims:
                gevent.sleep(0)   # let them start their commands before we claim again

    def lend(self) -> int:
        """Let the routing loop claim for this channel in the round trip that pushes
        its tasks, saving a round trip and a wake-up: -> how many it may claim (every
        worker when the channel is idle, else 0). ``repaid`` must follow."""
        if self.stop.is_set() or self.in_flight or self.unsure or self.lent or self.busy:
            return 0
        self.lent = self.free_count()
        if not self.lent:   # paused or retired
            return 0
        self.in_flight += 1
        self.no_claim_in_flight.clear()
        self.no_loan.clear()
        return self.lent

    def repaid(self, claims: list[Claim] | Exception | None) -> None:
        """What the claim ``lend`` allowed brought: claims to start, Redis's refusal
        (the dispatcher claims, and reports it, itself), or None when the reply was
        lost (the next reconcile looks for entries it may have moved)."""
        most, self.lent = self.lent, 0
        self.in_flight -= 1
        if not self.in_flight:
            self.no_claim_in_flight.set()
        if not isinstance(claims, list):
            self.unsure = self.unsure or claims is None
            self.wake()
            claims = []
        for i, claim in enumerate(self._keep(self._hold(claims))):
            if i == 0:   # the channel was idle: nothing else to wait for on its behalf
                self._prestart(claim)
            self._spawn(claim)
        if claims and len(claims) == most:
            self.wake()   # there may be more once a worker is free
        self.no_loan.set()

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
        try:
            self.no_claim_in_flight.wait()
            held = collections.Counter(self.broker.claimed(self.name))
            for raw, count in held.items():
                for _ in range(count - self.claimed.get(raw, 0)):
                    if self.broker.requeue(self.name, raw, locate(raw)[1], ran=False):
                        self.wake()
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
        worker = 1
        while worker in self.numbers:
            worker += 1
        self.numbers.add(worker)
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
            self.numbers.discard(worker)
            self.busy -= 1
            self.room.set()

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
        launched = self.launched.pop(claim.task_id, None) if claim.task_id else None
        try:
            if launched is not None:   # decided as below by _prestart, and started
                task, (command, policy) = claim.task, launched
                self.by_id[task.id] = worker
                attempt, _, _, retries = claim.started
                label = printable(task.name)
                result = self._execute(task, command.argv, command.env, policy, worker,
                                       attempt, label, what, command)
                return self._conclude(task, raw, policy, result, retries, what, label)
            try:
                task = claim.task or from_queue(raw, self.name)
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
                return self._finish(task, Outcome.DONE, {"status": "canceled"}, what)
            if redeliveries > self.limits.max_redeliveries:
                log.error("%s: task %s moved to the failed tasks: its node died %d times while "
                          "running it: %s", what, task.id, redeliveries, label)
                return self._finish(task, Outcome.FAILED, {"status": "failed", "error": (
                    f"its node died {redeliveries} times while running it")}, what)
            try:
                argv, env = self._launch_args(task)
            except Refused as exc:
                log.error("%s: task %s refused by the channel's command policy: %s", what,
                          task.id, exc, extra={"channel": self.name, "task_id": task.id})
                return self._finish(task, Outcome.FAILED, {"status": "failed", "error": (
                    f"refused: {exc}")}, what)
            result = self._execute(task, argv, env, policy, worker, attempt, label, what)
            return self._conclude(task, raw, policy, result, retries, what, label)
        finally:
            if task is not None:
                self.by_id.pop(task.id, None)
                self.kill_wanted.discard(task.id)
            self.commands.pop(worker, None)
            self._unclaim(raw)

    def _launch_args(self, task: Task) -> tuple:
        """(argv, env) the task's command runs with, or Refused by the channel's policy."""
        if self.spec.command_policy is None:
            return task.argv, None
        return self.spec.command_policy.launch(task.argv)

    def _conclude(self, task: Task, raw: str, policy: Policy, result: Result, retries: int,
                  what: str, label: str) -> Claim | None:
        """After the command: requeue it (stopped by a shutdown, or it could not start for
        want of resources) or record its result (-> the worker's next claim)."""
        if result.stopped == Stop.SHUTDOWN:   # it has not finished: it runs again later
            insist(what, lambda: self.broker.requeue(self.name, raw, task.id),
                    self.give_up)
            log.warning("%s: task %s requeued (stopped by shutdown)", what, task.id)
            return None
        if result.transient:   # out of descriptors or memory: not the command's fault
            self.stop.wait(TRANSIENT_PAUSE)   # not at once: it would fail the same way
            insist(what, lambda: self.broker.requeue(self.name, raw, task.id, ran=False),
                    self.give_up)
            self.wake()   # it is back in our queue
            log.warning("%s: task %s requeued: it could not start (%s)", what, task.id,
                        result.error)
            return None
        return self._record_result(task, policy, result, retries, what, label)

    def _execute(self, task: Task, argv: list[str], env, policy: Policy, worker: int,
                 attempt: int, label: str, what: str, command: Command | None = None) -> Result:
        """Run the task's command (``command``: the one _prestart started for it)."""
        budget = OutputBudget(self.limits.log_output_max)
        live = self.lives[task.id] = Live()

        def on_line(stream: str, text: str) -> None:
            live.add(stream, text)
            text = budget.line(text)
            if text is not None:
                output.info("channel %s worker %d [%s] %s: %s", self.name, worker, label,
                            stream, text, extra={"stream": stream, "channel": self.name,
                                                 "task_id": task.id})

        if command is None:
            command = self._command(argv, env, policy)
        command.on_line = on_line
        self.commands[worker] = command
        if task.id in self.kill_wanted:
            gevent.spawn(command.stop, Stop.CANCEL)
        def on_start(pid: int) -> None:   # logged once running: the log line costs time
            self.unnoted[task.id] = pid
            log.info("%s: task %s started (attempt %d, pid %d): %s", what, task.id, attempt,
                     pid, label, extra={"channel": self.name, "task_id": task.id})

        try:
            result = command.run(policy.timeout, on_start)
        finally:
            live.end({} if command.proc is None else {"pid": command.proc.pid})
            if self.lives.get(task.id) is live:
                del self.lives[task.id]
            self.unnoted.pop(task.id, None)
            self.commands.pop(worker, None)   # what is left is recording the result
        level = logging.INFO if result.ok else logging.WARNING
        log.log(level, "%s: task %s %s in %.3fs: %s", what, task.id, result.describe(),
                result.duration, label, extra={"channel": self.name, "task_id": task.id})
        if budget.summary:
            log.info("%s: task %s %s", what, task.id, budget.summary)
        return result

    def _command(self, argv, env, policy: Policy) -> Command:
        cap = self.spec.command_policy.output_max if self.spec.command_policy else 0
        return Command(argv, None, self.run_with, self.limits.output_tail,
                       self.limits.kill_grace, env=env, kill_group=policy.kill_group,
                       output_max=cap)

    def _prestart(self, claim: Claim) -> None:
        """Start the command of a claim the routing loop brought (its task parsed, and
        started in Redis) at once, before its worker's greenlet gets its turn of the
        loop: an idle channel's task starts that much sooner. Only a claim that
        ``_run_one`` would run as it is, decided the same way; any other is left to it
        (it then says why)."""
        task, started = claim.task, claim.started
        if task is None or started is None or claim.task_id != task.id or self.stop.is_set():
            return
        attempt, redeliveries, kill, _ = started
        if attempt < 1 or kill or redeliveries > self.limits.max_redeliveries:
            return
        try:
            policy = self.spec.policy.merge(task.payload)
            command = self._command(*self._launch_args(task), policy)
            command.launch()
        except Exception:   # BadTask, Refused, or a bug of ours: the worker sees it again
            return
        self.launched[task.id] = (command, policy)

    def _record_result(self, task: Task, policy: Policy, result: Result, retries: int,
                       what: str, label: str) -> Claim | None:
        fields = {"exit_code": result.exit_code, "signal": result.signal,
                  "duration": f"{result.duration:.6f}", "error": result.error or None,
                  "stdout": result.stdout, "stderr": result.stderr}
        if result.stopped == Stop.OUTPUT:
            fields["error"] = ("stopped: its output passed the channel's cap "
                               "(command_policy.output_max)")
        delay = 0.0
        if result.ok:
            outcome, fields["status"] = Outcome.DONE, "succeeded"
        elif result.stopped == Stop.CANCEL:
            outcome, fields["status"] = Outcome.DONE, "killed"
        else:
            fields["status"] = "timed_out" if result.stopped == Stop.TIMEOUT else "failed"
            retry = retries < policy.retries and (
                not policy.retry_on or result.exit_code in policy.retry_on)
            outcome = Outcome.RETRY if retry else Outcome.FAILED
            if retry:
                delay = backoff(policy, retries)
                log.info("%s: task %s retries in %.1fs (retry %d of %d): %s", what, task.id,
                         delay, retries + 1, policy.retries, label,
                         extra={"channel": self.name, "task_id": task.id})
            else:
                log.warning("%s: task %s moved to the failed tasks (%s): %s", what, task.id,
                            fields["status"], label,
                            extra={"channel": self.name, "task_id": task.id})
        return self._finish(task, outcome, fields, what, delay)

    def _finish(self, task: Task, outcome: Outcome, fields: dict, what: str,
                delay: float = 0.0) -> Claim | None:
        """Record the result; with it, claim this worker's next task (-> that claim)."""
        self._crash_if("before-ack")
        done, claims = None, []
        # a worker beyond a lowered count, or of a paused or deleted channel, ends here
        wanted = self.busy <= self.spec.worker_count and not self.spec.paused
        if wanted and not (self.stop.is_set() or self.reconciling or self.retired):
            try:
                done, claims = self._claiming(self.broker.finish, task, outcome, fields, delay,
                                              claim_next=1, limit=self.spec.max_running)
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
            gevent.spawn(command.stop, Stop.CANCEL)
        return True

    def kill_running(self) -> None:
        """Shutdown ran out of time: end every running group; its worker requeues it."""
        gevent.joinall([gevent.spawn(c.stop, Stop.SHUTDOWN) for c in self.commands.values()])


def printable(name: str, width: int = 80) -> str:
    """A command line fit for one log line: control characters escaped, length capped."""
    if len(name) <= width and name.isprintable():
        return name
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in name)
    return text if len(text) <= width else text[:width - 3] + "..."
