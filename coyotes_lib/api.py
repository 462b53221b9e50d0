"""The HTTP API: ``make_app(...) -> Bottle``.

Every reply is the Go daemon's envelope ``{"status_code", "message", "data"}``
with the matching HTTP status. Bodies may be forms (urlencoded or
multipart) or JSON. The server in front of it, with its guard and bounds,
is in ``server.py``.
"""

from __future__ import annotations

import json
import logging
import math
import time

import bottle
import redis

from . import __version__
from .broker import Broker, ChannelSpec, Enqueued
from .config import CHANNEL_NAME, Config
from .task import POLICY_LIMITS, BadTask, Policy, build, from_queue, locate, parse_json

log = logging.getLogger("coyotes.api")

MAX_LIMIT = 1000
MAX_OFFSET = 2**32 - 1   # Redis's longest list
SPEC_TTL = 2.0   # seconds a channel's settings are reused between requests
MAX_DELAY = 366 * 86400


def envelope(status: int, message: str, data=None) -> str:
    text = json.dumps({"status_code": status, "message": message, "data": data},
                      ensure_ascii=False)
    return text if text.isascii() else utf8_safe(text)


def utf8_safe(text: str) -> str:
    """Bytes that were not UTF-8 in Redis (surrogate escapes) become U+FFFD."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:   # a lone surrogate from a JSON escape
        return text.encode("utf-8", "replace").decode("utf-8")


def fail(status: int, message: str) -> bottle.HTTPResponse:
    return bottle.HTTPResponse(envelope(status, message), status,
                               {"Content-Type": "application/json; charset=utf-8"})


def ok(data=None) -> str:
    bottle.response.content_type = "application/json; charset=utf-8"
    return envelope(200, "ok", data)


def describe(raw: str, channel: str, status: str) -> dict:
    """A task in a listing: the Go fields, plus ours where known."""
    try:
        task = from_queue(raw, channel)
    except Exception as exc:   # shown as it is; it goes to the dead-letter list when claimed
        return {"task_name": raw, "channel": channel, "status": status,
                "task_id": locate(raw)[1], "error": str(exc)}
    item = {"task_name": task.name, "channel": channel, "status": status,
            "task_id": task.id, "command": {"name": task.argv[0], "args": list(task.argv[1:])}}
    if task.payload.get("execute_at"):
        item["execute_at"] = task.payload["execute_at"]
    return item


RECORD_NUMBERS = {"attempt": int, "redeliveries": int, "retry_count": int, "exit_code": int,
                  "signal": int, "timeout": float, "retries": int, "duration": float,
                  "queued_at": float, "started_at": float, "finished_at": float,
                  "failed_at": float, "retry_at": float, "execute_at": float}


def record_view(record: dict) -> dict:
    """A task record as the API shows it: typed fields, argv as a list, no raw entry."""
    view = {}
    for key, value in record.items():
        if key in ("raw", "kill_requested", "parked"):
            continue
        if key in RECORD_NUMBERS:
            try:
                number = float(value)
                # inf and nan stay text: int() refuses them, and JSON has no word for them
                if math.isfinite(number):
                    value = RECORD_NUMBERS[key](number)
            except ValueError:
                pass
        elif key == "argv":
            try:
                value = json.loads(value)
            except ValueError:
                pass
        view[key] = value
    if "id" in view:
        view["task_id"] = view["id"]
    return view


class Body:
    """Fields of a form or JSON body, read the same way."""

    def __init__(self, request: bottle.BaseRequest):
        self.json = None
        if (request.content_type or "").startswith("application/json"):
            try:
                self.json = parse_json(request.body.read() or b"{}")
            except BadTask as exc:
                raise fail(400, f"body: {exc}") from None
            if not isinstance(self.json, dict):
                raise fail(400, "JSON body must be an object")
        else:
            try:
                self.forms = request.forms.decode("utf-8")
                self.query = request.query.decode("utf-8")
            except UnicodeError:
                raise fail(400, "form fields must be UTF-8") from None
            except ValueError as exc:   # bottle's parser refusing a part's headers
                raise fail(400, f"form body is malformed: {exc}") from None

    def get(self, name: str, default=None):
        if self.json is not None:
            return self.json.get(name, default)
        value = self.forms.get(name)
        return value if value is not None else self.query.get(name, default)

    def get_list(self, name: str) -> list:
        if self.json is not None:
            # only null is "none": a 0 or {} is a value (to use, or to refuse), not nothing
            value = self.json.get(name)
            return [] if value is None else value if isinstance(value, list) else [value]
        for fields in (self.forms, self.query):   # the query as well, as get() reads it
            values = fields.getall(name) or fields.getall(name + "[]")
            if not values:  # PHP's http_build_query: args[0]=..&args[1]=..
                indexed = [(k, v) for k, v in fields.allitems() if k.startswith(name + "[")]
                values = [v for _, v in sorted(indexed, key=lambda kv: _index(kv[0]))]
            if values:
                return values
        return []

    def policy(self) -> dict:
        """The policy keys given (timeout, retries, ...), not yet validated."""
        given = {key: self.get(key) for key in POLICY_LIMITS if self.get(key) not in (None, "")}
        # exit codes: repeated, PHP's retry_on[] or retry_on[0], a JSON list, or "1,75"
        codes = [code for value in self.get_list("retry_on")
                 for code in (value.split(",") if isinstance(value, str) else [value])]
        if "retry_on" in given or any(str(code).strip() for code in codes):
            given["retry_on"] = codes
        return given


def whole(value) -> int:
    """An integer field: an int, a float without a fraction, or its text."""
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise ValueError(value)
    return int(value)


def _index(key: str) -> int:
    inner = key[key.index("[") + 1:-1]
    return int(inner) if inner.isdigit() else 0


def page_args() -> tuple[int, int]:
    try:
        limit = int(bottle.request.query.get("limit", 100))
        offset = int(bottle.request.query.get("offset", 0))
    except ValueError:
        raise fail(400, "limit and offset must be integers") from None
    if not 0 <= limit <= MAX_LIMIT or not 0 <= offset <= MAX_OFFSET:
        raise fail(400, f"limit must be 0..{MAX_LIMIT} and offset 0..{MAX_OFFSET}")
    return offset, limit


def make_app(broker: Broker, config: Config, on_channel_added=None,
             not_ready=None) -> bottle.Bottle:
    """The API app; ``on_channel_added()`` lets the scheduler start a new channel now,
    and ``not_ready()`` says why the node is not ready yet ('' once it is)."""
    app = bottle.Bottle(autojson=False)

    known: dict[str, tuple[float, ChannelSpec]] = {}   # name -> (when read, settings)

    def spec_of(name: str) -> ChannelSpec:
        """A channel's settings, read again from Redis when older than SPEC_TTL
        (channels are never deleted; changed settings apply within that time)."""
        cached = known.get(name)
        if cached is not None and time.monotonic() - cached[0] < SPEC_TTL:
            return cached[1]
        spec = broker.channel(name)
        if spec is None:
            raise fail(404, f"channel {name!r} does not exist")
        known[name] = (time.monotonic(), spec)
        return spec

    def listing(name: str) -> dict:
        offset, limit = page_args()
        entries, count = broker.channel_tasks(name, offset, limit)
        return {"tasks": [describe(raw, name, status) for raw, status in entries],
                "count": count}

    def push(name: str, body: Body, with_command: bool) -> dict:
        spec = spec_of(name)
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
        policy = body.policy() if with_command else {}
        try:
            task = build(name, name_field, command, task_id, execute_at, policy)
        except BadTask as exc:
            raise fail(400, str(exc)) from None
        result = broker.push(task, spec.distinct)
        if result == Enqueued.ID_IN_USE:
            raise fail(409, f"task id {task.id!r} is in use by a task that has not finished")
        if result == Enqueued.FOREIGN_RECORD:
            raise fail(409, f"task id {task.id!r}: its record key holds another type")
        refused = result == Enqueued.REFUSED
        # like the prepare queue: a refusal is news, a queued task is logged when it runs
        log.log(logging.INFO if refused else logging.DEBUG, "channel %s: task %s %s via "
                "HTTP: %s", name, task.id, "refused (distinct)" if refused
                else result.name.lower(), task.name)
        return {"task_id": task.id, "task_name": task.name, "result": not refused}

    @app.get("/health")
    def health():
        reason = not_ready() if not_ready else ""
        if reason:
            raise fail(503, reason)
        broker.ping()   # unreachable: 503, as every route answers then
        return ok({"node": broker.node, "ready": True})

    @app.get("/")
    def home():
        return ok({"name": "coyotes", "version": __version__, "node": broker.node,
                   "task_mode": config.task_mode})

    @app.get("/openapi.json")
    def openapi():
        # imported here: the document is needed by few and costs memory in every daemon
        from .openapi import document
        parts = bottle.request.urlparts   # the address this client reached us at
        bottle.response.content_type = "application/json; charset=utf-8"
        return json.dumps(document(f"{parts.scheme}://{parts.netloc}"))

    @app.get("/channels")
    def channels():
        return ok({name: listing(name) for name in sorted(broker.channels())})

    @app.get("/channels/<name>")
    def channel(name):
        spec_of(name)
        return ok(listing(name))

    @app.post("/channels/<name>")
    def push_task(name):
        return ok(push(name, Body(bottle.request), with_command=False))

    @app.post("/channels/<name>/tasks")
    def push_task_v2(name):
        return ok(push(name, Body(bottle.request), with_command=True))

    @app.post("/channels")
    def add_channel():
        body = Body(bottle.request)
        name = str(body.get("name") or "")
        if not CHANNEL_NAME.match(name):
            raise fail(400, "name must be 1-64 letters, digits, '_', '-' or '.'")
        distinct = body.get("distinct")
        distinct = "false" if distinct is None else str(distinct).lower()
        if distinct not in ("true", "false", "1", "0"):
            raise fail(400, "distinct must be true or false")
        worker = body.get("worker")
        try:
            worker = config.concurrent if worker in (None, "") else whole(worker)
        except (TypeError, ValueError, OverflowError):   # JSON's 1e400 is infinity
            raise fail(400, "worker must be an integer") from None
        if not 1 <= worker <= 1000:
            raise fail(400, "worker must be 1..1000")
        spec = ChannelSpec(name, distinct in ("true", "1"), worker, policy_fields(body))
        if not broker.add_channel(spec):
            raise fail(409, f"channel {name!r} already exists")
        log.info("channel %s: created via HTTP (%s)", name, spec.to_json())
        if on_channel_added:
            on_channel_added()
        return ok(None)

    def policy_fields(body: Body) -> Policy:
        try:
            return Policy().merge(body.policy())
        except BadTask as exc:
            raise fail(400, str(exc)) from None

    def record_of(task_id: str) -> dict:
        record = broker.record(task_id)
        if record is None:
            raise fail(404, f"task {task_id!r} is unknown (or its record expired)")
        return record_view(record)

    @app.get("/tasks/<task_id>")
    def get_task(task_id):
        return ok(record_of(task_id))

    def cancel(task_id: str, channel: str | None = None) -> str:
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

    @app.delete("/tasks/<task_id>")
    def delete_task(task_id):
        return cancel(task_id)

    @app.delete("/channels/<name>/tasks/<task_id>")
    def delete_channel_task(name, task_id):
        spec_of(name)
        return cancel(task_id, name)

    def failed_item(chan: str, raw: str, record: dict | None) -> dict:
        item = describe(raw, chan, "failed")
        view = record_view(record or {})
        for key in ("exit_code", "signal", "error", "failed_at", "attempt", "retry_count",
                    "redeliveries", "status", "stdout", "stderr"):
            if key in view:
                item[key] = view[key]
        return item

    @app.get("/channels/<name>/failed-tasks")
    def failed_tasks(name):
        spec_of(name)
        offset, limit = page_args()
        entries, count = broker.failed_tasks(name, offset, limit)
        records = broker.records([describe(raw, name, "failed")["task_id"] for raw in entries])
        return ok({"tasks": [failed_item(name, raw, rec) for raw, rec in zip(entries, records,
                                                                              strict=True)],
                   "count": count})

    @app.get("/channels/<name>/failed-tasks/<task_id>")
    def failed_task(name, task_id):
        spec_of(name)
        raw = broker.failed_task(name, task_id)
        if raw is None:
            raise fail(404, f"task {task_id!r} is not among the failed tasks of {name!r}")
        return ok(failed_item(name, raw, broker.record(task_id)))

    @app.post("/channels/<name>/failed-tasks/<task_id>")
    @app.delete("/channels/<name>/failed-tasks/<task_id>")
    def unfail_task(name, task_id):
        spec = spec_of(name)
        retry = bottle.request.method == "POST"
        if not broker.unfail(name, task_id, retry, spec.distinct):
            raise fail(404, f"task {task_id!r} is not among the failed tasks of {name!r}")
        log.info("channel %s: failed task %s %s via HTTP", name, task_id,
                 "retried" if retry else "deleted")
        return ok({"task_id": task_id, "result": True})

    @app.post("/channels/<name>/failed-tasks")
    @app.delete("/channels/<name>/failed-tasks")
    def unfail_all(name):
        spec = spec_of(name)
        retry = bottle.request.method == "POST"
        done, now = 0, broker.now()
        # those that failed before this call: one retried now and failing again is not
        # taken twice (it is scored later)
        while ids := broker.failed_ids(name, now):
            done += sum(broker.unfail(name, task_id, retry, spec.distinct) for task_id in ids)
        log.info("channel %s: %d failed task(s) %s via HTTP", name, done,
                 "retried" if retry else "deleted")
        return ok({"count": done})

    def delayed_item(raw: str, due: float) -> dict:
        item = describe(raw, locate(raw)[0], "delayed")
        item["execute_at"] = due
        return item

    @app.get("/delay-tasks")
    def delay_tasks():
        offset, limit = page_args()
        entries, count = broker.delayed_tasks(offset, limit)
        return ok({"tasks": [delayed_item(raw, due) for raw, due in entries], "count": count})

    @app.get("/delay-tasks/<task_id>")
    def delay_task(task_id):
        found = broker.delayed_task(task_id)
        if found is None:
            raise fail(404, f"task {task_id!r} is not delayed")
        return ok(delayed_item(*found))

    @app.delete("/delay-tasks/<task_id>")
    def delete_delay_task(task_id):
        if broker.delayed_task(task_id) is None:
            raise fail(404, f"task {task_id!r} is not delayed")
        return cancel(task_id)

    @app.get("/dead-letters")
    def dead_letters():
        offset, limit = page_args()
        entries, count, trimmed = broker.dead_letters(offset, limit)
        items = []
        for entry in entries:
            try:
                items.append(json.loads(entry))
            except ValueError:
                items.append({"entry": entry})
        return ok({"entries": items, "count": count, "trimmed": trimmed})

    def redis_outage(callback):
        """A Redis outage is a 503 for the caller, not a traceback in the log."""
        def wrapper(*args, **kwargs):
            try:
                return callback(*args, **kwargs)
            except redis.OutOfMemoryError as exc:   # refused for now, as an outage is
                log.warning("api: %s %s: redis is out of memory (%s)", bottle.request.method,
                            bottle.request.path, exc)
                return fail(503, f"redis is out of memory: {exc}")
            except redis.ResponseError as exc:   # a key of another type
                log.error("api: %s %s: redis refused a command (%s)", bottle.request.method,
                          bottle.request.path, exc)
                return fail(500, f"redis refused a command: {exc}")
            except redis.RedisError as exc:
                log.warning("api: %s %s: redis unavailable (%s)", bottle.request.method,
                            bottle.request.path, exc)
                return fail(503, f"redis unavailable: {exc}")
        return wrapper

    app.install(redis_outage)

    def on_error(error: bottle.HTTPError) -> str:
        bottle.response.content_type = "application/json; charset=utf-8"
        if error.status_code >= 500:
            log.error("api: %s %s failed: %r", bottle.request.method, bottle.request.path,
                      error.exception)
        if error.status_code >= 500:
            message = "internal error"
        else:   # bottle's own other 4xx say why (a broken multipart body ...)
            message = {404: "not found", 405: "method not allowed"}.get(error.status_code) \
                or str(error.body or "") or "bad request"
        return envelope(error.status_code, message)

    app.default_error_handler = on_error
    return app
