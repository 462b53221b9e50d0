"""The API's routes, grouped by resource: service, channels, tasks, failed tasks,
delayed tasks, dead letters. Each route is a function of the shared ``Api``
(the broker, the config, the node's hooks and a short cache of channel
settings) and of its URL's parts; ``api.make_app`` mounts them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from pathlib import Path

import bottle
import gevent

from . import __version__
from .broker import Broker
from .config import CHANNEL_NAME, Config
from .live import event, follow
from .model import MAX_RUNNING, MAX_WORKERS, SETTINGS, ChannelSpec, Deleted, Enqueued
from .policy import BadPolicy, CommandPolicy, Refused
from .replies import (
    BODY_READ,
    Body,
    describe,
    fail,
    is_page,
    ok,
    page_args,
    record_view,
    whole,
)
from .schedules import BadSchedule, Schedule, last_firing, parse
from .scripts import MINUTES
from .signing import Unsigned
from .task import BOOLEANS, MAX_ENTRY, POLICY_LIMITS, BadTask, Policy, build, locate

log = logging.getLogger("coyotes.api")

SPEC_TTL = 1.0   # seconds a channel's settings are reused between requests
OUTPUT_POLL = 0.5   # seconds between looks at a task whose output is not here (yet)
RELAY_ASK = 2.0     # seconds between a reader's requests to the node that runs its task
FINAL_STATUSES = frozenset({"succeeded", "failed", "timed_out", "canceled", "killed"})
MAX_DELAY = 366 * 86400
UI_FILES = Path(__file__).with_name("ui")   # the dashboard, shipped in the package
# what the dashboard's files may do: nothing from elsewhere, and not be framed
UI_HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                                         "frame-ancestors 'none'; base-uri 'none'; "
                                         "form-action 'none'",
              "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY",
              "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"}
DELAYED_SCAN = 10_000   # delayed tasks read to count each channel's (the set is shared)
DELAYED_TTL = 5.0       # seconds those counts are reused, past DELAYED_FRESH tasks
DELAYED_FRESH = 1000    # delayed tasks counted again at every call (a cheap read)


class Api:
    """What every route needs: the broker, the config, the node's hooks
    (``on_channel_changed(name, spec)`` applies a new, changed or (None) deleted
    channel on this node now, ``on_queued(name)`` wakes it for a task just pushed,
    ``not_ready()`` says why the node is not ready, '' once it is) and channel
    settings read lately."""

    def __init__(self, broker: Broker, config: Config, on_channel_changed=None,
                 not_ready=None, on_queued=None, live=None):
        self.broker, self.config = broker, config
        self.on_channel_changed, self.not_ready = on_channel_changed, not_ready
        self.on_queued = on_queued
        self.live = live   # task id -> its Live, if it runs on this node
        self.known: dict[str, tuple[float, ChannelSpec]] = {}   # name -> (when read, spec)
        self.metrics = None   # the /metrics registry, made at the first scrape
        self.delayed_seen: tuple[float, dict[str, int]] = (0.0, {})

    def spec_of(self, name: str) -> ChannelSpec:
        """A channel's settings, read again from Redis when older than SPEC_TTL
        (changed settings apply within that time)."""
        cached = self.known.get(name)
        if cached is not None and time.monotonic() - cached[0] < SPEC_TTL:
            return cached[1]
        spec = self.broker.channel(name)
        if spec is None:
            raise fail(404, f"channel {name!r} does not exist")
        self.known[name] = (time.monotonic(), spec)
        return spec

    def listings(self, names: list[str]) -> dict:
        """{name: its page of tasks and their count}, for the page the query asks."""
        offset, limit = page_args()
        return {name: {"tasks": [describe(raw, name, status) for raw, status in entries],
                       "count": count}
                for name, (entries, count) in
                self.broker.channel_tasks(names, offset, limit).items()}

    def cancel(self, task_id: str, channel: str | None = None) -> str:
        broker = self.broker
        record = broker.record(task_id)
        if channel is not None and record is not None and record.get("channel") != channel:
            raise fail(404, f"task {task_id!r} is not in channel {channel!r}")
        # a Go plain-string entry has no record: look for it in the queue(s)
        outcome = broker.cancel(task_id, [channel] if channel else sorted(broker.channels()))
        if outcome == "unknown":
            raise fail(404, f"task {task_id!r} is unknown (or its record expired)")
        if outcome == "finished":
            raise fail(409, f"task {task_id!r} has finished already")
        log.info("task %s: %s via HTTP", task_id,
                 "canceled" if outcome == "canceled" else "kill requested")
        return ok({"task_id": task_id, "status": outcome})


# -- service ------------------------------------------------------------------
def health(api: Api):
    reason = api.not_ready() if api.not_ready else ""
    if reason:
        raise fail(503, reason)
    api.broker.ping()   # unreachable: 503, as every route answers then
    return ok({"node": api.broker.node, "ready": True})


def home(api: Api):
    if is_page(bottle.request.environ):   # a browser: to the dashboard
        raise bottle.HTTPResponse(status=302, Location="/ui/")
    return ok({"name": "coyotes", "version": __version__, "node": api.broker.node,
               "task_mode": api.config.task_mode})


def ui_file(api: Api, path="index.html"):
    """The dashboard's files (a page and its script and style), from the package."""
    if path == "":
        path = "index.html"
    reply = bottle.static_file(path, root=str(UI_FILES))
    if reply.status_code in (403, 404):   # outside the folder, or missing: our envelope
        raise fail(404, "not found")
    for name, value in UI_HEADERS.items():
        reply.set_header(name, value)
    return reply


def ui_root(api: Api):
    raise bottle.HTTPResponse(status=301, Location="/ui/")


def overview(api: Api):
    """The dashboard's first page in one reply: each channel's counts, state and
    tasks finished per minute over the last hour, the nodes, the dead letters."""
    broker = api.broker
    snap = broker.metrics_snapshot()
    now = broker.now()
    # the snapshot counted the delayed tasks: read them only when there are some
    when, delayed = api.delayed_seen
    if not snap["delayed"]:
        delayed = {}
    elif snap["delayed"] <= DELAYED_FRESH or time.monotonic() - when >= DELAYED_TTL:
        delayed = broker.delayed_channels(DELAYED_SCAN)
        api.delayed_seen = (time.monotonic(), delayed)
    channels = []
    for name, row in sorted(snap["channels"].items()):
        done, failed = per_minute(row["stats"], now)
        channels.append({
            "name": name, "queued": row["queued_tasks"], "running": row["running_tasks"],
            "delayed": delayed.get(name, 0), "failed": row["failed_tasks"],
            "paused": bool(row["channel_paused"]), "worker": row["channel_workers"],
            "max_running": row["channel_max_running"], "finished_per_minute": done,
            "failed_per_minute": failed})
    return ok({"node": broker.node, "version": __version__, "now": now,
               "channels": channels, "nodes": snap["nodes"], "delayed": snap["delayed"],
               "delayed_counted": snap["delayed"] <= DELAYED_SCAN,
               "dead_letters": snap["dead"]})


def per_minute(stats: dict, now: float) -> tuple[list[int], list[int]]:
    """(tasks finished, of which not succeeded) in each of the last MINUTES minutes,
    oldest first, the current minute last, from the ring FINISH keeps."""
    minute = int(now // 60)
    done, failed = [], []
    for past in range(minute - MINUTES + 1, minute + 1):
        slot = past % MINUTES
        fresh = stats.get(f"minute:{slot}") == str(past)
        done.append(count(stats.get(f"done:{slot}")) if fresh else 0)
        failed.append(count(stats.get(f"failed:{slot}")) if fresh else 0)
    return done, failed


def count(value) -> int:
    try:
        return max(0, int(value or 0))
    except ValueError:   # a field edited by hand
        return 0


def openapi(api: Api):
    # imported here: the document is needed by few and costs memory in every daemon
    from .openapi import document
    parts = bottle.request.urlparts   # the address this client reached us at
    bottle.response.content_type = "application/json; charset=utf-8"
    return json.dumps(document(f"{parts.scheme}://{parts.netloc}"))


def metrics(api: Api):
    """Prometheus text (not the JSON envelope)."""
    # imported here: prometheus-client costs memory in a daemon nobody scrapes
    from . import metrics as exposition
    if api.metrics is None:
        api.metrics = exposition.registry(api.broker)
    bottle.response.content_type = exposition.CONTENT_TYPE
    return exposition.generate_latest(api.metrics)


# -- channels -----------------------------------------------------------------
def channels(api: Api):
    """The Go listing of every channel, with the live nodes that consume each."""
    view = api.listings(sorted(api.broker.channels()))
    consumers = api.broker.consumers()
    for name, listing in view.items():
        listing["nodes"] = consumers.get(name, [])
    return ok(view)


def channel(api: Api, name):
    """The Go listing (``tasks``, ``count``), and the settings, the counts and, for
    each running task, the node that runs it, since when, and its pid."""
    spec = api.broker.channel(name)
    if spec is None:
        raise fail(404, f"channel {name!r} does not exist")
    view = api.listings([name])[name]
    running = [item for item in view["tasks"] if item["status"] == "running"]
    for item, where in zip(running, api.broker.where_running(
            [item["task_id"] for item in running]), strict=True):
        item.update(where)
    view["settings"] = spec.settings()
    view["paused"] = spec.paused
    view["counts"] = api.broker.channel_counts(name)
    view["nodes"] = api.broker.nodes_of(name)
    return ok(view)


def push_task(api: Api, name):
    return ok(push(api, name, Body(bottle.request.environ), with_command=False))


def push_task_v2(api: Api, name):
    return ok(push(api, name, Body(bottle.request.environ), with_command=True))


def push(api: Api, name: str, body: Body, with_command: bool) -> dict:
    broker = api.broker
    if api.config.signatures is not None:   # checked first: an unsigned push learns nothing
        try:
            api.config.signatures.request(body.environ, body.environ.get(BODY_READ) or b"",
                                          time.time())
        except Unsigned as exc:
            raise fail(401, f"refused: {exc}") from None
    spec = api.spec_of(name)
    name_field = body.get("task") or ""
    command = None
    if with_command and body.get("command"):
        command = body.get("command")
        if isinstance(command, str):
            command = {"name": command, "args": body.get_list("args")}
    task_id = body.get("id") if with_command else ""
    if isinstance(task_id, bool) or not isinstance(task_id, (str, int, float, type(None))):
        raise fail(400, "id must be a string")   # not a Python repr such as 'True' or '[]'
    execute_at = None
    delay = body.get("delay") if with_command else None
    if delay not in (None, "", 0, "0"):
        try:
            if isinstance(delay, bool):
                raise TypeError
            delay = float(delay)
        except (TypeError, ValueError):
            raise fail(400, "delay must be a number of seconds") from None
        if not 0 <= delay <= MAX_DELAY:
            raise fail(400, f"delay must be 0..{MAX_DELAY} seconds")
        execute_at = broker.now() + delay
    extra = body.policy() if with_command else {}
    if with_command and body.get("priority") not in (None, ""):
        extra["priority"] = body.get("priority")
    try:
        task = build(name, name_field, command, task_id, execute_at, extra)
    except BadTask as exc:
        raise fail(400, str(exc)) from None
    if spec.command_policy is not None:
        try:
            spec.command_policy.launch(task.argv)
        except Refused as exc:
            raise fail(403, f"refused: {exc}") from None
    result = broker.push(task, spec.distinct)
    if result == Enqueued.ID_IN_USE:
        raise fail(409, f"task id {task.id!r} is in use by a task that has not finished")
    if result == Enqueued.FOREIGN_RECORD:
        raise fail(409, f"task id {task.id!r}: its record key holds another type")
    if result == Enqueued.NO_CHANNEL:
        api.known.pop(name, None)
        raise fail(404, f"channel {name!r} does not exist")
    if result == Enqueued.QUEUED and api.on_queued:
        api.on_queued(name)
    refused = result == Enqueued.REFUSED
    # like the prepare queue: a refusal is news, a queued task is logged when it runs
    if refused or log.isEnabledFor(logging.DEBUG):
        log.log(logging.INFO if refused else logging.DEBUG, "channel %s: task %s %s via "
                "HTTP: %s", name, task.id, "refused (distinct)" if refused
                else result.name.lower(), task.name)
    return {"task_id": task.id, "task_name": task.name, "result": not refused}


def add_channel(api: Api):
    broker, config = api.broker, api.config
    body = Body(bottle.request.environ)
    name = str(body.get("name") or "")
    if not CHANNEL_NAME.match(name):
        raise fail(400, "name must be 1-64 letters, digits, '_', '-' or '.'")
    distinct = body.get("distinct")
    distinct = False if distinct is None else yes_no(distinct, "distinct")
    worker = body.get("worker")
    worker = config.concurrent if worker in (None, "") else worker_count(worker)
    limit = body.get("max_running")
    limit = 0 if limit in (None, "") else max_running(limit)
    spec = ChannelSpec(name, distinct, worker, policy_fields(body), max_running=limit,
                       command_policy=command_policy(body.get("command_policy")))
    if not broker.add_channel(spec):
        raise fail(409, f"channel {name!r} already exists")
    log.info("channel %s: created via HTTP (%s)", name, spec.to_json(shown=True))
    if api.on_channel_changed:
        api.on_channel_changed(name, spec)
    return ok(None)

def policy_fields(body: Body, base: Policy | None = None) -> Policy:
    try:
        return (base or Policy()).merge(body.policy())
    except BadTask as exc:
        raise fail(400, str(exc)) from None


def command_policy(value) -> CommandPolicy | None:
    """The ``command_policy`` field: an object, the same as JSON text (from a form),
    or null/"" for none. Program names are looked for on PATH now."""
    if value in (None, ""):
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise fail(400, "command_policy must be a JSON object") from None
    try:
        return CommandPolicy.parse(value)
    except BadPolicy as exc:
        raise fail(400, str(exc)) from None


def yes_no(value, field: str) -> bool:
    """A boolean field: JSON's true/false, or a form's true/false/1/0."""
    try:
        return BOOLEANS[value.lower() if isinstance(value, str) else value]
    except (KeyError, TypeError):   # TypeError: a list or an object is not hashable
        raise fail(400, f"{field} must be true or false") from None


def worker_count(value) -> int:
    try:
        worker = whole(value)
    except (TypeError, ValueError, OverflowError):   # JSON's 1e400 is infinity
        raise fail(400, "worker must be an integer") from None
    if not 1 <= worker <= MAX_WORKERS:
        raise fail(400, f"worker must be 1..{MAX_WORKERS}")
    return worker


def max_running(value) -> int:
    try:
        limit = whole(value)
    except (TypeError, ValueError, OverflowError):
        raise fail(400, "max_running must be an integer") from None
    if not 0 <= limit <= MAX_RUNNING:
        raise fail(400, f"max_running must be 0..{MAX_RUNNING} (0: no limit)")
    return limit


def change_channel(api: Api, name):
    """PATCH: the worker count, distinct, the limit on all nodes, the timeout and the
    retry policy; a field not given keeps its value. Every node applies the change
    within a second."""
    body = Body(bottle.request.environ)
    unknown = sorted(body.names() - set(SETTINGS))
    if unknown:
        raise fail(400, f"unknown field(s): {', '.join(unknown)}; a channel's settings "
                        f"are {', '.join(SETTINGS)}")
    changes: dict = {}
    if body.get("worker") not in (None, ""):
        changes["worker_count"] = worker_count(body.get("worker"))
    if body.get("distinct") not in (None, ""):
        changes["distinct"] = yes_no(body.get("distinct"), "distinct")
    if body.get("max_running") not in (None, ""):
        changes["max_running"] = max_running(body.get("max_running"))
    if "command_policy" in body.names():   # null or "" removes it
        changes["command_policy"] = command_policy(body.get("command_policy"))
    policy = body.policy()
    if not changes and not policy:
        raise fail(400, f"nothing to change: give one of {', '.join(SETTINGS)}")
    policy_fields(body)   # refused here, before anything is written
    spec = api.broker.change_channel(name, lambda spec: dataclasses.replace(
        spec, policy=policy_fields(body, spec.policy), **changes))
    return changed(api, name, spec, "settings changed")


def pause_channel(api: Api, name):
    """Stop claiming on every node; running commands finish."""
    return changed(api, name, api.broker.change_channel(
        name, lambda spec: dataclasses.replace(spec, paused=True)), "paused")


def resume_channel(api: Api, name):
    return changed(api, name, api.broker.change_channel(
        name, lambda spec: dataclasses.replace(spec, paused=False)), "resumed")


def changed(api: Api, name: str, spec: ChannelSpec | None, what: str) -> str:
    if spec is None:
        raise fail(404, f"channel {name!r} does not exist")
    api.known.pop(name, None)
    log.info("channel %s: %s via HTTP (%s)", name, what, spec.to_json(shown=True))
    if api.on_channel_changed:
        api.on_channel_changed(name, spec)
    return ok(spec.settings())


def delete_channel(api: Api, name):
    """Remove a channel once its queue is empty; its waiting tasks are refused (409)
    unless moved (``move_to``) or dropped into the dead-letter list (``drop``).
    Its running commands finish on their nodes."""
    body = Body(bottle.request.environ)
    move_to = str(body.get("move_to") or "")
    drop = body.get("drop")
    drop = False if drop in (None, "") else yes_no(drop, "drop")
    if move_to and drop:
        raise fail(400, "give move_to or drop, not both")
    if move_to and not CHANNEL_NAME.match(move_to):
        raise fail(400, "move_to must be a channel's name")
    if move_to == name:
        raise fail(400, "move_to must name another channel")
    if name == api.config.channel_default:
        raise fail(409, f"channel {name!r} is the default channel (-channel-default): "
                        "it cannot be deleted")
    outcome, count = api.broker.delete_channel(name, move_to, drop)
    if outcome == Deleted.UNKNOWN:
        raise fail(404, f"channel {name!r} does not exist")
    if outcome == Deleted.NO_TARGET:
        raise fail(400, f"move_to: channel {move_to!r} does not exist")
    if outcome == Deleted.BUSY:
        raise fail(409, f"channel {name!r} has {count} queued task(s): give move_to=<channel> "
                        "to move them, or drop=true to put them in the dead-letter list")
    api.known.pop(name, None)
    if api.on_channel_changed:
        api.on_channel_changed(name, None)
    what = f", {count} queued task(s) {'moved to ' + move_to if move_to else 'dropped'}" \
        if count else ""
    log.info("channel %s: deleted via HTTP%s", name, what)
    return ok({"channel": name, "moved" if move_to else "dropped": count})


# -- nodes --------------------------------------------------------------------
def nodes(api: Api):
    """Every node that may hold work: live ones, and dead ones not yet reaped."""
    return ok({"nodes": api.broker.nodes()})


def drain_node(api: Api, node_id):
    """Ask a live node to stop claiming, let its running commands finish, and exit
    (as USR2 does)."""
    if not api.broker.ask_drain(node_id):
        raise fail(404, f"node {node_id!r} is not alive (or unknown)")
    log.info("node %s: drain asked via HTTP", node_id)
    return ok({"node": node_id, "draining": True})


# -- schedules ----------------------------------------------------------------
NEXT_RUNS = 5   # next firing times a schedule's view shows


def schedule_views(api: Api, rows: dict[str, str], fired: dict[str, str]) -> list[dict]:
    """Schedules as the API shows them: the definition, the next firing times (unix
    s), and the last firing with the status of the task it queued."""
    now = api.broker.now()
    schedules = {name: readable(text) for name, text in sorted(rows.items())}
    lasts = {name: last_firing(fired.get(name)) for name in schedules}
    ids = [last["task_id"] for last in lasts.values() if last.get("task_id")]
    status = {task_id: record.get("status")
              for task_id, record in zip(ids, api.broker.records(ids), strict=True)}
    views = []
    for name, schedule in schedules.items():
        if schedule is None:   # written into the hash by hand: PUT replaces it
            views.append({"name": name, "error": "unreadable definition in Redis"})
            continue
        last = lasts[name]
        view = dataclasses.asdict(schedule)
        view["next_runs"] = schedule.next_runs(now, NEXT_RUNS) if schedule.enabled else []
        view["last"] = {"task_id": None, **last, "status": status.get(last.get("task_id"))} \
            if last else None
        views.append(view)
    return views


def readable(text: str) -> Schedule | None:
    try:
        return Schedule.from_json(text)
    except (ValueError, TypeError):
        return None


def schedule_fields(body: Body) -> dict:
    """A schedule's fields as given (its task options read as a push reads them)."""
    fields = {name: body.get(name) for name in body.names()
              if name not in POLICY_LIMITS and name != "retry_on"}
    return {**fields, **body.policy()}


def the_schedule(api: Api, name: str) -> tuple[Schedule, str | None]:
    row, fired = api.broker.schedule(name)
    if row is None:
        raise fail(404, f"schedule {name!r} does not exist")
    schedule = readable(row)
    if schedule is None:
        raise fail(409, f"schedule {name!r}: its definition in Redis is unreadable; "
                        "replace it with PUT")
    return schedule, fired


def parsed_schedule(api: Api, fields: dict, before: Schedule | None = None) -> Schedule:
    try:
        schedule = parse(fields, api.config.channel_default, api.broker.now(), before)
    except BadSchedule as exc:
        raise fail(400, str(exc)) from None
    if api.broker.channel(schedule.channel) is None:
        raise fail(400, f"channel {schedule.channel!r} does not exist")
    return schedule


def schedule_view(api: Api, name: str) -> str:
    row, fired = api.broker.schedule(name)
    return ok(schedule_views(api, {name: row}, {name: fired} if fired else {})[0])


def list_schedules(api: Api):
    return ok({"schedules": schedule_views(api, *api.broker.schedules())})


def add_schedule(api: Api):
    schedule = parsed_schedule(api, schedule_fields(Body(bottle.request.environ)))
    if not api.broker.put_schedule(schedule.name, schedule.to_json(), create=True):
        raise fail(409, f"schedule {schedule.name!r} already exists")
    log.info("schedule %s: created via HTTP (%s)", schedule.name, schedule.to_json())
    return schedule_view(api, schedule.name)


def get_schedule(api: Api, name):
    the_schedule(api, name)
    return schedule_view(api, name)


def replace_schedule(api: Api, name):
    """PUT: the whole definition, made or replaced (a replaced one keeps ``since``)."""
    fields = schedule_fields(Body(bottle.request.environ))
    if fields.setdefault("name", name) != name:
        raise fail(400, "name must be the schedule's name in the path (or left out)")
    before = api.broker.schedule(name)[0]
    schedule = parsed_schedule(api, fields, before and readable(before))
    api.broker.put_schedule(name, schedule.to_json())
    log.info("schedule %s: %s via HTTP (%s)", name, "replaced" if before else "created",
             schedule.to_json())
    return schedule_view(api, name)


def delete_schedule(api: Api, name):
    if not api.broker.delete_schedule(name):
        raise fail(404, f"schedule {name!r} does not exist")
    log.info("schedule %s: deleted via HTTP", name)
    return ok({"name": name, "deleted": True})


def run_schedule(api: Api, name):
    """Queue the schedule's task now, besides its firings."""
    schedule, _ = the_schedule(api, name)
    spec = api.spec_of(schedule.channel)
    try:
        task = schedule.task(f"{name}@run-{int(api.broker.now() * 1000)}")
    except BadTask as exc:
        raise fail(409, f"schedule {name!r}: {exc}") from None
    result = api.broker.push(task, spec.distinct)
    if result == Enqueued.QUEUED and api.on_queued:
        api.on_queued(schedule.channel)
    log.info("schedule %s: run via HTTP as task %s (%s)", name, task.id, result.name.lower())
    return ok({"task_id": task.id, "task_name": task.name,
               "result": result in (Enqueued.QUEUED, Enqueued.DELAYED)})


def enable_schedule(api: Api, name):
    return set_enabled(api, name, True)


def disable_schedule(api: Api, name):
    return set_enabled(api, name, False)


def set_enabled(api: Api, name: str, enabled: bool) -> str:
    schedule, _ = the_schedule(api, name)
    if schedule.enabled != enabled:
        # firings due while it was disabled are not made late
        since = api.broker.now() if enabled else schedule.since
        schedule = dataclasses.replace(schedule, enabled=enabled, since=since)
        api.broker.put_schedule(name, schedule.to_json())
        log.info("schedule %s: %s via HTTP", name, "enabled" if enabled else "disabled")
    return schedule_view(api, name)


# -- tasks --------------------------------------------------------------------
def record_of(api: Api, task_id: str) -> dict:
    record = api.broker.record(task_id)
    if record is None:
        raise fail(404, f"task {task_id!r} is unknown (or its record expired)")
    return record_view(record)


def get_task(api: Api, task_id):
    return ok(record_of(api, task_id))


def task_output(api: Api, task_id):
    """Server-sent events: a task's output lines (``stdout``/``stderr``, each once, in
    order), then ``end`` with its record's status and exit code. Live from the node
    that runs the task; elsewhere (another node, or a task that has not started)
    when it ends, from the tails its record keeps."""
    record_of(api, task_id)   # 404 for an unknown task
    bottle.response.content_type = "text/event-stream; charset=utf-8"
    bottle.response.set_header("Cache-Control", "no-cache")
    bottle.response.set_header("X-Accel-Buffering", "no")   # nginx: pass events at once
    return output_events(api, task_id)


def output_events(api: Api, task_id: str):
    live = api.live(task_id) if api.live else None
    while live is None:
        record = api.broker.record(task_id) or {}
        if record.get("status") in FINAL_STATUSES:
            for stream in ("stdout", "stderr"):
                for line in (record.get(stream) or "").splitlines():
                    yield event(stream, line)
            break
        if record.get("status") == "running" and record.get("node") != api.broker.node:
            relayed = yield from from_other_node(api, task_id)
            if relayed:
                break
        gevent.sleep(OUTPUT_POLL)
        live = api.live(task_id) if api.live else None
    else:
        yield from follow(live)
    for _ in range(int(10 / OUTPUT_POLL)):   # the result is recorded right after the end
        record = api.broker.record(task_id) or {}
        if record.get("status") in FINAL_STATUSES:
            break
        gevent.sleep(OUTPUT_POLL)
    yield event("end", {key: record.get(key) for key in ("status", "exit_code", "signal",
                                                          "error")})


def from_other_node(api: Api, task_id: str):
    """The lines of a task another node runs, relayed through Redis while this reader
    asks (every RELAY_ASK seconds) -> whether they came to the end; False if its node
    does not answer (the task ended meanwhile, or its node is gone): the caller falls
    back on the record."""
    subscriber = api.broker.output_subscriber(task_id)
    try:
        seq, asked, heard = 0, 0.0, time.monotonic()
        while time.monotonic() - heard < 3 * RELAY_ASK:
            if time.monotonic() - asked >= RELAY_ASK:
                api.broker.want_output(task_id, seq)
                asked = time.monotonic()
            for data in subscriber.messages(OUTPUT_POLL):
                heard = time.monotonic()
                message = json.loads(data)
                if message.get("end"):
                    return True
                if message["missed"] and seq == 0:
                    yield event("dropped", {"lines": message["missed"]})
                for number, stream, text in message["lines"]:
                    if number > seq:
                        yield event(stream, text)
                        seq = number
            if time.monotonic() - heard > RELAY_ASK and (   # silent: is it still running?
                    api.broker.record(task_id) or {}).get("status") != "running":
                return False
        return False
    finally:
        subscriber.close()


def delete_task(api: Api, task_id):
    return api.cancel(task_id)


def delete_channel_task(api: Api, name, task_id):
    api.spec_of(name)
    return api.cancel(task_id, name)


# -- failed tasks ---------------------------------------------------------------
def failed_item(chan: str, raw: str, record: dict | None) -> dict:
    item = describe(raw, chan, "failed")
    view = record_view(record or {})
    for key in ("exit_code", "signal", "error", "failed_at", "attempt", "retry_count",
                "redeliveries", "status", "stdout", "stderr"):
        if key in view:
            item[key] = view[key]
    return item


def failed_tasks(api: Api, name):
    broker = api.broker
    api.spec_of(name)
    offset, limit = page_args()
    entries, count = broker.failed_tasks(name, offset, limit)
    records = broker.records([describe(raw, name, "failed")["task_id"] for raw in entries])
    return ok({"tasks": [failed_item(name, raw, rec) for raw, rec in zip(entries, records,
                                                                          strict=True)],
               "count": count})

def failed_task(api: Api, name, task_id):
    broker = api.broker
    api.spec_of(name)
    raw = broker.failed_task(name, task_id)
    if raw is None:
        raise fail(404, f"task {task_id!r} is not among the failed tasks of {name!r}")
    return ok(failed_item(name, raw, broker.record(task_id)))

def unfail_task(api: Api, name, task_id):
    broker = api.broker
    spec = api.spec_of(name)
    retry = bottle.request.method == "POST"
    done = broker.unfail(name, task_id, retry, spec.distinct)
    if done == 2:
        raise fail(404, f"channel {name!r} does not exist")
    if not done:
        raise fail(404, f"task {task_id!r} is not among the failed tasks of {name!r}")
    log.info("channel %s: failed task %s %s via HTTP", name, task_id,
             "retried" if retry else "deleted")
    return ok({"task_id": task_id, "result": True})

def unfail_all(api: Api, name):
    broker = api.broker
    spec = api.spec_of(name)
    retry = bottle.request.method == "POST"
    done, now = 0, broker.now()
    # those that failed before this call: one retried now and failing again is not
    # taken twice (it is scored later)
    while ids := broker.failed_ids(name, now):
        results = [broker.unfail(name, task_id, retry, spec.distinct) for task_id in ids]
        if 2 in results:   # deleted meanwhile: what is left stays among the failed
            raise fail(404, f"channel {name!r} does not exist (deleted after "
                            f"{done + results.count(1)} task(s) were retried)")
        done += results.count(1)
    log.info("channel %s: %d failed task(s) %s via HTTP", name, done,
             "retried" if retry else "deleted")
    return ok({"count": done})


# -- delayed tasks --------------------------------------------------------------
def delayed_item(raw: str, due: float) -> dict:
    item = describe(raw, locate(raw)[0], "delayed")
    item["execute_at"] = due
    return item


def delay_tasks(api: Api):
    broker = api.broker
    offset, limit = page_args()
    entries, count = broker.delayed_tasks(offset, limit)
    return ok({"tasks": [delayed_item(raw, due) for raw, due in entries], "count": count})

def delay_task(api: Api, task_id):
    broker = api.broker
    found = broker.delayed_task(task_id)
    if found is None:
        raise fail(404, f"task {task_id!r} is not delayed")
    return ok(delayed_item(*found))

def delete_delay_task(api: Api, task_id):
    if api.broker.delayed_task(task_id) is None:
        raise fail(404, f"task {task_id!r} is not delayed")
    return api.cancel(task_id)


# -- dead letters ---------------------------------------------------------------
def dead_letters(api: Api):
    broker = api.broker
    offset, limit = page_args()
    entries, count, trimmed = broker.dead_letters(offset, limit)
    return ok({"entries": [letter_view(entry) for entry in entries], "count": count,
               "trimmed": trimmed})


def letter_view(text: str) -> dict:
    try:
        item = json.loads(text)
    except ValueError:
        item = None
    if not isinstance(item, dict):
        item = {"entry": text}
    item["id"] = letter_id(text)
    return item


def letter_id(text: str) -> str:
    """A dead letter's id: from its text, so it stays while others come and go."""
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def the_letter(api: Api, letter: str) -> str:
    """The letter's text; the query's ``at`` says where to look first."""
    try:
        hint = int(bottle.request.query.get("at", ""))
    except ValueError:
        hint = None
    text = api.broker.find_dead_letter(lambda text: letter_id(text) == letter,
                                       hint if hint is not None and hint >= 0 else None)
    if text is None:
        raise letter_gone(letter)
    return text


def letter_gone(letter: str) -> bottle.HTTPResponse:
    return fail(404, f"dead letter {letter!r} is not in the list (requeued or deleted "
                     "meanwhile, or trimmed off)")


def dead_letter(api: Api, letter):
    return ok(letter_view(the_letter(api, letter)))


def delete_dead_letter(api: Api, letter):
    if not api.broker.drop_dead_letter(the_letter(api, letter)):
        raise letter_gone(letter)
    log.info("dead letter %s: deleted via HTTP", letter)
    return ok({"id": letter, "deleted": True})


def requeue_dead_letter(api: Api, letter):
    """The letter's entry, or the ``entry`` given (the letter edited), goes back into
    the prepare queue, where it is checked again like any producer's entry."""
    text = the_letter(api, letter)
    given = Body(bottle.request.environ).get("entry")
    if given is not None and not isinstance(given, str):
        raise fail(400, "entry must be text (a queue entry: JSON or a Go command line)")
    view = letter_view(text)
    if given is None:
        if view.get("truncated"):
            raise fail(409, "this dead letter kept only the start of its entry: give the "
                            "whole entry to queue as entry")
        given = view.get("entry")
        if not isinstance(given, str):
            raise fail(409, "this dead letter holds no entry: give one as entry")
    if not given.strip():
        raise fail(400, "entry must not be empty")
    if len(given.encode("utf-8", "surrogateescape")) > MAX_ENTRY:
        raise fail(413, f"entry larger than {MAX_ENTRY} bytes")
    if not api.broker.revive(text, given):
        raise letter_gone(letter)
    log.info("dead letter %s: requeued via HTTP%s", letter,
             "" if given == view.get("entry") else " (edited)")
    return ok({"id": letter, "requeued": True})
