"""Periodic tasks: schedules kept in Redis, and the loop that fires them.

A schedule is a cron expression (five fields; or six, seconds first; or an
alias such as ``@daily``) read in a time zone, a channel, a command line and
the options of its tasks. Every node runs the loop (``Timetable``), on Redis's
clock; each firing is claimed and queued in one script (FIRE), so it is queued
once whatever the number of nodes, with the id ``<schedule>@<unix time>``.
Expressions are read by croniter (DST, ranges, steps, names), imported only
once a schedule exists: an idle daemon without schedules does not pay for it.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging

import gevent.event
import redis

from .config import CHANNEL_NAME
from .outage import Outage
from .task import BOOLEANS, POLICY_LIMITS, BadTask, build, check_policy

log = logging.getLogger("coyotes.schedules")

MISSED = ("skip", "run_once")   # a firing due while no node ran: noted only, or run late
OVERLAP = ("skip", "allow")     # a firing while the previous run has not finished
LATE = 60.0                     # seconds after its time when a firing counts as missed
CRON_MAX = 200                  # characters of an expression
ZONE_MAX = 64                   # characters of a time zone's name
FIELDS = ("name", "cron", "command", "channel", "timezone", "enabled", "missed", "overlap",
          *POLICY_LIMITS)
TURN_MAX = 1.0                  # seconds between two turns at most (changes are seen)


class BadSchedule(ValueError):
    """A schedule that cannot be kept; ``str()`` says why."""


@dataclasses.dataclass(frozen=True)
class Schedule:
    name: str
    cron: str
    command: str            # a command line, split as a pushed task's
    channel: str
    timezone: str = "UTC"
    enabled: bool = True
    missed: str = "skip"
    overlap: str = "skip"
    options: dict = dataclasses.field(default_factory=dict)   # timeout, retries, ...
    since: float = 0.0   # no firing before it (unix s): its creation, or when re-enabled

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Schedule:
        return cls(**json.loads(text))

    def times(self, start: float):
        """croniter from ``start`` (unix s), in the schedule's zone."""
        import zoneinfo

        from croniter import croniter  # see the module's docstring
        base = datetime.datetime.fromtimestamp(start, zoneinfo.ZoneInfo(self.timezone))
        return croniter(self.cron, base, second_at_beginning=len(self.cron.split()) == 6)

    def last_due(self, now: float) -> float | None:
        """The latest firing time at or before ``now``, if the schedule existed then."""
        it = self.times(now)
        due = it.get_prev(float)
        while self.repeated(due):
            due = it.get_prev(float)
        return due if due >= self.since else None

    def repeated(self, due: float) -> bool:
        """A time of day the clock goes through twice (the hour that repeats when
        daylight saving ends): fired the first time only, unless every hour fires."""
        import zoneinfo
        local = datetime.datetime.fromtimestamp(due, zoneinfo.ZoneInfo(self.timezone))
        fields = self.cron.split()   # the hour field: 5 fields, or 6 with seconds first
        hours = fields[-4] if len(fields) > 1 else "*" if self.cron == "@hourly" else "0"
        return local.fold == 1 and hours != "*"

    def next_runs(self, now: float, count: int) -> list[float]:
        it, out = self.times(now), []
        while len(out) < count:
            due = it.get_next(float)
            if not self.repeated(due):
                out.append(due)
        return out

    def between(self, after: float, until: float) -> list[float]:
        """Its firing times later than ``after``, up to ``until`` (a minute at most
        apart: LATE; the caller bounds them)."""
        it, out = self.times(max(after, self.since - 1e-6)), []
        while (due := it.get_next(float)) <= until:
            if not self.repeated(due):
                out.append(due)
        return out

    def task(self, task_id: str):
        """The task a firing queues (BadTask if the command no longer splits)."""
        return build(self.channel, self.command, task_id=task_id,
                     extra={**self.options, "schedule": self.name})


def parse(fields: dict, default_channel: str, now: float,
          before: Schedule | None = None) -> Schedule:
    """A schedule from API or file fields -> Schedule, or BadSchedule with the reason.
    ``before``: the schedule it replaces (its ``since`` is kept)."""
    unknown = sorted(set(fields) - set(FIELDS))
    if unknown:
        raise BadSchedule(f"unknown field(s): {', '.join(unknown)}; a schedule has "
                          f"{', '.join(FIELDS)}")
    name = fields.get("name")
    if not isinstance(name, str) or not CHANNEL_NAME.match(name):
        raise BadSchedule("name must be 1-64 letters, digits, '_', '-' or '.'")
    cron = fields.get("cron")
    if not isinstance(cron, str) or not cron.strip() or len(cron) > CRON_MAX:
        raise BadSchedule(f"cron must be an expression of at most {CRON_MAX} characters")
    cron = " ".join(cron.split())
    if len(cron.split()) not in (1, 5, 6) or (len(cron.split()) == 1 and cron[0] != "@"):
        raise BadSchedule("cron must have 5 fields (minute hour day month weekday), or 6 "
                          "with seconds first, or be an alias such as @daily")
    command = fields.get("command")
    if not isinstance(command, str) or not command.strip():
        raise BadSchedule("command must be a command line")
    channel = fields.get("channel")
    channel = default_channel if channel in (None, "") else channel
    if not isinstance(channel, str) or not CHANNEL_NAME.match(channel):
        raise BadSchedule("channel must be a channel's name")
    zone = fields.get("timezone")
    zone = "UTC" if zone in (None, "") else zone
    if not isinstance(zone, str) or len(zone) > ZONE_MAX:
        raise BadSchedule(f"timezone must be an IANA name of at most {ZONE_MAX} characters")
    options = {key: fields[key] for key in POLICY_LIMITS if fields.get(key) not in (None, "")}
    try:
        options = check_policy(options)
    except BadTask as exc:
        raise BadSchedule(str(exc)) from None
    enabled = fields.get("enabled")
    try:   # JSON's true/false, or a form's true/false/1/0, as every boolean field
        enabled = True if enabled in (None, "") else \
            BOOLEANS[enabled.lower() if isinstance(enabled, str) else enabled]
    except (KeyError, TypeError):
        raise BadSchedule("enabled must be true or false") from None
    # kept across a change, but a schedule enabled again fires from now on only
    since = before.since if before and (before.enabled or not enabled) else now
    schedule = Schedule(name, cron, command, channel, zone, enabled,
                        choice(fields, "missed", MISSED), choice(fields, "overlap", OVERLAP),
                        {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()},
                        since)
    check(schedule, now)
    return schedule


def choice(fields: dict, key: str, allowed: tuple) -> str:
    """One of ``allowed`` (the first when not given)."""
    value = fields.get(key)
    if value in (None, ""):
        return allowed[0]
    text = str(value).lower()
    if text not in allowed:
        raise BadSchedule(f"{key} must be {' or '.join(allowed)}")
    return text


def check(schedule: Schedule, now: float) -> None:
    """BadSchedule unless its zone exists, its expression reads, and its command splits."""
    import zoneinfo

    from croniter import CroniterError
    try:
        zoneinfo.ZoneInfo(schedule.timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):   # OSError: a folder
        raise BadSchedule(f"timezone: unknown time zone {schedule.timezone!r} (an IANA "
                          "name such as Asia/Shanghai or UTC)") from None
    try:
        schedule.next_runs(now, 1)
    except (CroniterError, ValueError, KeyError) as exc:
        raise BadSchedule(f"cron: {schedule.cron!r} is not a valid expression "
                          f"({exc})") from None
    try:
        schedule.task(f"{schedule.name}@0")
    except BadTask as exc:
        raise BadSchedule(f"command: {exc}") from None


def last_firing(text: str | None) -> dict:
    """A schedule's last firing as FIRE notes it: {at, outcome, task_id}."""
    try:
        made = json.loads(text) if text else {}
    except ValueError:
        made = {}
    return made if isinstance(made, dict) else {}


class Timetable:
    """The loop every node runs: at each turn, each enabled schedule gets every
    firing due since its last one (FIRE decides which node makes each). Firings
    more than LATE seconds late were missed (no node ran then): the latest of them
    is noted only, or with ``missed = run_once`` run; older ones are dropped."""

    def __init__(self, broker, stop: gevent.event.Event, distinct, on_queued=None):
        self.broker, self.stop = broker, stop
        self.distinct = distinct      # channel -> whether it is distinct (None: unknown)
        self.on_queued = on_queued    # channel -> None: a firing queued a task there
        self.known: dict[str, tuple[str, Schedule | None]] = {}   # name -> (JSON, parsed)

    def run(self) -> None:
        outage = Outage("schedules", self.stop)
        while not self.stop.is_set():
            wait = TURN_MAX
            try:
                rows, fired = self.broker.schedules()
                if rows:   # none: no clock to read either
                    wait = self.turn(rows, fired, self.broker.now())
                outage.recovered()
            except redis.RedisError as exc:
                outage.failed(exc)
            except Exception:   # a bug of ours must not end every schedule
                log.exception("schedules: unexpected error")
            self.stop.wait(wait)

    def turn(self, rows: dict[str, str], fired: dict[str, str], now: float) -> float:
        """Make the firings due -> seconds until the next one (at most TURN_MAX)."""
        soonest = now + TURN_MAX
        for name, text in rows.items():
            schedule = self._parsed(name, text)
            if schedule is None or not schedule.enabled:
                continue
            try:
                soonest = min(soonest, self._due(schedule, fired.get(name), now))
            except redis.ConnectionError:
                raise   # an outage: the loop backs off
            except Exception:   # one schedule's trouble must not stop the others
                log.exception("schedule %s: cannot fire", name)
        return max(0.0, soonest - now) + 0.002   # just after the time, not just before

    def _due(self, schedule: Schedule, fired: str | None, now: float) -> float:
        """Make the firings of one schedule due by ``now`` -> its next firing time."""
        last = last_firing(fired)
        made, previous = float(last.get("at") or 0), last.get("task_id")
        missed = schedule.last_due(now - LATE)
        if missed is not None and missed > made:
            previous = self._fire(schedule, missed,
                                  "run" if schedule.missed == "run_once" else "missed",
                                  previous) or previous
            made = missed
        for due in schedule.between(max(made, now - LATE), now):
            previous = self._fire(schedule, due, "run", previous) or previous
        return schedule.next_runs(now, 1)[0]

    def _parsed(self, name: str, text: str) -> Schedule | None:
        known = self.known.get(name)
        if known is None or known[0] != text:
            try:
                schedule = Schedule.from_json(text)
            except (ValueError, TypeError) as exc:
                log.error("schedule %s: unreadable (%s), skipped: %.200r", name, exc, text)
                schedule = None
            known = self.known[name] = (text, schedule)
        return known[1]

    def _fire(self, schedule: Schedule, due: float, mode: str,
              previous: str | None) -> str | None:
        """One firing -> the id of the task it queued, if it did."""
        task_id = f"{schedule.name}@{int(due)}"
        try:
            task = schedule.task(task_id)
        except BadTask as exc:   # written into the hash by hand: noted, not retried
            task, mode = None, f"refused: {exc}"
        outcome = self.broker.fire(schedule.name, due, task, bool(self.distinct(
            schedule.channel)), mode, schedule.overlap == "skip", previous)
        if not outcome:
            return None   # another node made it
        queued = outcome in ("queued", "delayed")
        if queued and self.on_queued:
            self.on_queued(schedule.channel)
        level = logging.INFO if queued else logging.WARNING
        log.log(level, "schedule %s: firing of %s %s%s", schedule.name,
                datetime.datetime.fromtimestamp(due, datetime.UTC).isoformat(), outcome,
                f" (task {task_id})" if queued else "")
        return task_id if queued else None
