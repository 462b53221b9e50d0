"""The OpenAPI 3.1 description of the HTTP API, served at ``/openapi.json``.

Written by hand as Python data so that it ships inside the package (and the
one-file build) with no build step. ``tests/test_openapi.py`` keeps it in step
with the routes of ``api.make_app`` and fuzzes the live daemon against it.
Every reply is the Go daemon's envelope; its ``status_code`` is the HTTP status.
"""

from __future__ import annotations

from . import __version__
from .config import CHANNEL_NAME
from .replies import MAX_LIMIT, MAX_OFFSET
from .routes import MAX_DELAY, MAX_RUNNING, MAX_WORKERS
from .schedules import CRON_MAX, MISSED, OVERLAP
from .scripts import MINUTES
from .task import MAX_COMMAND, MAX_ID, POLICY_LIMITS

DEFAULT_SERVER = "http://127.0.0.1:60001"
CHANNEL_PATTERN = CHANNEL_NAME.pattern
ID_PATTERN = r"^[^\s/]+$"   # and printable: what JSON Schema cannot say
_CODE = r"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"   # 0-255
CODES = rf"^ *({_CODE} *)?(, *({_CODE} *)?)*$"              # "1,75": comma-separated codes

JSON, URLENCODED, MULTIPART = ("application/json", "application/x-www-form-urlencoded",
                               "multipart/form-data")
REF = "#/components/"

ERRORS = {400: "a bad field, query parameter or body",
          401: "the daemon has API tokens and the request has none, or an unknown one "
               "(with a WWW-Authenticate header); or a push whose producer signature is "
               "missing, wrong or old (-require-signature)",
          403: "refused by the browser protections (a cross-site Origin or Sec-Fetch-Site, "
               "or a Host that is not allowed: DNS rebinding), a read-only token asking "
               "for a change, or a command the channel's policy does not allow",
          404: "no such channel or task",
          405: "the path exists with another method (see the Allow header)",
          408: "the request body did not arrive within -http-timeout",
          409: "a conflict with what exists", 413: "the body is larger than -max-body",
          500: "a bug: the daemon's log has the details",
          503: "Redis is unavailable (or out of memory): retry later"}
# what the guard in front of every route may answer (400: a broken Content-Length or
# body), and a bug; 503 comes from every route that reads Redis
EVERY_ROUTE = (400, 401, 403, 408, 413, 500)
BROWSER_HOME = "a browser (Accept: text/html) is sent to the dashboard, /ui/"


def ref(kind: str, name: str) -> dict:
    return {"$ref": f"{REF}{kind}/{name}"}


def ok(data: dict, description: str) -> dict:
    """A 200 reply: the envelope around ``data``."""
    return {"description": description, "content": {JSON: {"schema": {
        "type": "object", "required": ["status_code", "message", "data"],
        "additionalProperties": False,
        "properties": {"status_code": {"const": 200}, "message": {"const": "ok"},
                       "data": data}}}}}


def error(status: int) -> dict:
    return {"description": ERRORS[status], "content": {JSON: {"schema": {
        "type": "object", "required": ["status_code", "message", "data"],
        "additionalProperties": False,
        "properties": {"status_code": {"const": status},
                       "message": {"type": "string", "minLength": 1},
                       "data": {"type": "null"}}}}}}


def operation(op_id: str, summary: str, reply: dict, *statuses: int, params=(),
              body: dict | None = None, redis: bool = True, open_to_all: bool = False,
              redirect: tuple[int, str] | None = None) -> dict:
    """One operation: its 200 reply and the error statuses it may answer besides
    those of every route; ``open_to_all``: it needs no token, ever; ``redirect``:
    (status, when) it may answer with a Location instead."""
    responses = {"200": reply}
    if redirect:
        responses[str(redirect[0])] = {"description": redirect[1]}
    for status in sorted({*statuses, *EVERY_ROUTE, *([503] if redis else [])}
                         - ({401} if open_to_all else set())):
        responses[str(status)] = ref("responses", str(status))
    op = {"operationId": op_id, "summary": summary, "responses": responses}
    if open_to_all:
        op["security"] = []
    if params:
        op["parameters"] = [ref("parameters", p) for p in params]
    if body is not None:
        op["requestBody"] = body
    return op


def page_operation(op_id: str, summary: str, params=(), redirect: int = 0) -> dict:
    """A file of the dashboard: open to all (it holds no data), not in the envelope."""
    op = operation(op_id, summary, {"description": "the file", "content": {
        kind: {"schema": {"type": "string"}} for kind in (
            "text/html", "text/javascript", "text/css")}}, 404, params=params, redis=False,
        open_to_all=True)
    if redirect:   # the only answer but the errors
        del op["responses"]["200"]
        op["responses"][str(redirect)] = {"description": summary}
    return op


def body(form: dict, json_schema: dict, example: dict) -> dict:
    """A request body in the three encodings the API reads alike."""
    return {"required": True, "content": {
        URLENCODED: {"schema": form, "example": example},
        MULTIPART: {"schema": form, "example": example},
        JSON: {"schema": json_schema, "example": example}}}


def number(low: float, high: float, kind: str = "number", **extra) -> dict:
    return {"type": kind, "minimum": low, "maximum": high, **extra}


def boolean(json: bool) -> dict:
    text = {"type": "string", "enum": ["true", "false", "1", "0"]}
    return {"anyOf": [{"type": "boolean"}, text]} if json else text


def policy_fields(json: bool) -> dict:
    """timeout, retries, retry_backoff, retry_max, retry_on (...): per task or per channel.
    From POLICY_LIMITS, so that a new key is described as soon as it is read."""
    fields = {}
    for key, (kind, low, high) in POLICY_LIMITS.items():
        if kind is bool:
            fields[key] = boolean(json)
        elif kind is tuple:   # exit codes, repeated or in a JSON list, or "1,75"
            codes = {"type": "array", "items": number(low, high, "integer"),
                     "description": "exit codes (empty: any)"}
            fields[key] = {"anyOf": [codes, {"type": "string", "pattern": CODES}]} \
                if json else codes
        else:
            fields[key] = number(low, high, "integer" if kind is int else "number")
    return fields


def push_fields(json: bool) -> dict:
    task_id = {"type": "string", "maxLength": MAX_ID, "pattern": ID_PATTERN,
               "description": "your task id (printable, no spaces or '/')"}
    args = {"type": "array", "description": "arguments of command, in order",
            "items": {"type": ["string", "number"]} if json else {"type": "string"}}
    command = {"type": "string", "minLength": 1, "description": "the program"}
    if json:
        command = {"anyOf": [command, {
            "type": "object", "required": ["name"], "properties": {
                "name": {"type": "string", "minLength": 1},
                "args": {"type": "array", "items": {"type": ["string", "number"]}}}}]}
    return {"task": {"type": "string", "maxLength": MAX_COMMAND,
                     "description": "the command line; with command, only a display name"},
            "command": command, "args": args,
            "delay": number(0, MAX_DELAY, description="seconds before it may run"),
            "priority": {"enum": ["normal", "high"],
                         "description": "high: runs before every normal task of its channel"},
            "id": {"anyOf": [task_id, {"type": "integer"}]} if json else task_id,
            **policy_fields(json)}


def push_body() -> dict:
    def schema(json: bool) -> dict:
        return {"type": "object", "properties": push_fields(json),
                "anyOf": [{"required": ["task"]}, {"required": ["command"]}]}
    return body(schema(False), schema(True), {"command": "echo", "args": ["hello"],
                                              "id": "hello-1"})


def settings_fields(json: bool) -> dict:
    return {"distinct": boolean(json),
            "worker": number(1, MAX_WORKERS, "integer",
                             description="commands run at once on each node (default "
                                         "-concurrent)"),
            "max_running": number(0, MAX_RUNNING, "integer",
                                  description="most commands running on all nodes together "
                                              "(0: no limit)"),
            **policy_fields(json)}


def channel_body() -> dict:
    def schema(json: bool) -> dict:
        return {"type": "object", "required": ["name"], "properties": {
            "name": {"type": "string", "pattern": CHANNEL_PATTERN}, **settings_fields(json)}}
    return body(schema(False), schema(True), {"name": "reports", "distinct": "false",
                                              "worker": 1})


def change_body() -> dict:
    def schema(json: bool) -> dict:
        return {"type": "object", "minProperties": 1, "additionalProperties": False,
                "properties": settings_fields(json)}
    return body(schema(False), schema(True), {"worker": 10, "timeout": 600})


def schedule_body(named: bool) -> dict:
    def schema(json: bool) -> dict:
        fields = {
            "name": {"type": "string", "pattern": CHANNEL_PATTERN},
            "cron": {"type": "string", "minLength": 1, "maxLength": CRON_MAX,
                     "description": "5 fields, or 6 with seconds first, or @daily..."},
            "command": {"type": "string", "minLength": 1, "maxLength": MAX_COMMAND},
            "channel": {"type": "string", "pattern": CHANNEL_PATTERN,
                        "description": "default: -channel-default"},
            "timezone": {"type": "string", "description": "IANA name, default UTC"},
            "enabled": boolean(json), "missed": {"enum": list(MISSED)},
            "overlap": {"enum": list(OVERLAP)}, **policy_fields(json)}
        return {"type": "object", "required": ["cron", "command", *(["name"] if named else [])],
                "additionalProperties": False, "properties": fields}
    return body(schema(False), schema(True), {"name": "report", "cron": "0 2 * * *",
                                              "command": "php artisan report:daily",
                                              "timezone": "Asia/Shanghai"})


def components() -> dict:
    command = {"type": "object", "required": ["name", "args"], "properties": {
        "name": {"type": "string"}, "args": {"type": "array", "items": {"type": "string"}}}}
    integer, num, text = {"type": "integer"}, {"type": "number"}, {"type": "string"}
    listed = {"type": "object", "required": ["task_name", "channel", "status", "task_id"],
              "description": "the Go fields, then ours where known; an entry that cannot "
                             "be read is shown as it is, with an error",
              "properties": {
                  "task_name": text, "channel": text, "task_id": text,
                  "command": ref("schemas", "Command"),
                  "status": {"type": "string", "description": "queued, running, delayed, "
                             "or for a failed task failed or timed_out"},
                  "execute_at": num, "priority": {"const": "high"},
                  "error": text, "exit_code": integer, "signal": integer,
                  "failed_at": num, "attempt": integer, "retry_count": integer,
                  "redeliveries": integer, "stdout": text, "stderr": text,
                  "node": {"type": ["string", "null"],
                           "description": "running, in one channel's view: its node"},
                  "started_at": {"type": ["number", "null"]},
                  "pid": {"type": ["integer", "null"],
                          "description": "noted by its node within half a second"}}}
    listing = {"type": "object", "required": ["tasks", "count"], "properties": {
        "tasks": {"type": "array", "items": ref("schemas", "ListedTask")},
        "count": {"type": "integer", "minimum": 0, "description": "the true total"}}}
    record = {"type": "object", "required": ["task_id"], "properties": {
        "task_id": text, "id": text, "channel": text, "task_name": text,
        "status": {"type": "string", "enum": ["queued", "delayed", "running", "succeeded",
                                              "failed", "timed_out", "canceled", "killed"]},
        "argv": {"type": "array", "items": text}, "node": text, "stdout": text,
        "stderr": text, "error": text, "attempt": integer, "redeliveries": integer,
        "retry_count": integer, "exit_code": integer, "signal": integer, "retries": integer,
        "timeout": num, "duration": num, "queued_at": num, "started_at": num,
        "finished_at": num, "failed_at": num, "retry_at": num, "execute_at": num}}
    settings = {"type": "object", "properties": {
        "distinct": {"type": "boolean"}, "worker": integer, "max_running": integer,
        "paused": {"type": "boolean"},
        "timeout": num, "retries": integer, "retry_backoff": num, "retry_max": num,
        "retry_on": {"type": "array", "items": integer}, "kill_group": {"type": "boolean"}},
        "required": ["distinct", "worker", "max_running", "paused"]}
    counts = {"type": "object", "required": ["running", "queued", "failed"],
              "properties": {key: {"type": "integer", "minimum": 0}
                             for key in ("running", "queued", "failed")}}
    consumers = {"type": "array", "items": text,
                 "description": "the live nodes that consume it"}
    view = {"type": "object",
            "required": ["tasks", "count", "settings", "paused", "counts", "nodes"],
            "properties": {**listing["properties"], "settings": ref("schemas", "Settings"),
                           "paused": {"type": "boolean"}, "counts": counts,
                           "nodes": consumers}}
    consumed = {"type": "object", "required": ["tasks", "count", "nodes"],
                "properties": {**listing["properties"], "nodes": consumers}}
    maybe_num, maybe_int = {"type": ["number", "null"]}, {"type": ["integer", "null"]}
    maybe_text = {"type": ["string", "null"]}
    schedule = {"type": "object", "required": ["name", "cron", "command", "channel",
                                               "timezone", "enabled", "next_runs", "last"],
                "properties": {
                    "name": text, "cron": text, "command": text, "channel": text,
                    "timezone": text, "enabled": {"type": "boolean"},
                    "missed": {"enum": list(MISSED)}, "overlap": {"enum": list(OVERLAP)},
                    "options": {"type": "object"},
                    "since": {"type": "number", "description": "no firing before it"},
                    "next_runs": {"type": "array", "items": num},
                    "last": {"type": ["object", "null"], "properties": {
                        "at": num, "outcome": text, "task_id": maybe_text,
                        "status": maybe_text}}}}
    node = {"type": "object", "required": ["id", "alive", "running", "draining", "channels"],
            "properties": {
                "id": text, "alive": {"type": "boolean",
                                      "description": "false: its heartbeat expired, its "
                                                     "work not yet requeued"},
                "host": {"type": ["string", "null"]}, "pid": maybe_int,
                "version": {"type": ["string", "null"]}, "started_at": maybe_num,
                "heartbeat_age": maybe_num, "running": integer,
                "draining": {"type": "boolean"},
                "channels": {"type": "array", "items": text}}}
    page = {"limit": number(0, MAX_LIMIT, "integer", default=100),
            "offset": number(0, MAX_OFFSET, "integer", default=0)}
    return {
        "schemas": {"Command": command, "ListedTask": listed, "Listing": listing,
                    "ConsumedListing": consumed, "TaskRecord": record, "Settings": settings,
                    "Channel": view, "Node": node, "Schedule": schedule},
        "parameters": {
            "name": {"name": "name", "in": "path", "required": True,
                     "description": "a channel (a schedule, under /schedules)",
                     "example": "default",
                     "schema": {"type": "string", "pattern": CHANNEL_PATTERN}},
            "task_id": {"name": "task_id", "in": "path", "required": True,
                        "description": "a task id", "example": "hello-1",
                        "schema": {"type": "string", "maxLength": MAX_ID,
                                   "pattern": ID_PATTERN}},
            **{key: {"name": key, "in": "query", "required": False, "schema": schema,
                     "description": "page size" if key == "limit" else "entries skipped"}
               for key, schema in page.items()},
            "letter": {"name": "letter", "in": "path", "required": True,
                       "description": "a dead letter's id (from GET /dead-letters)",
                       "example": "3f2a9c0b7d1e4a65", "schema": {"type": "string",
                                                                "minLength": 1}},
            "at": {"name": "at", "in": "query", "required": False,
                   "description": "where the letter was in the list (its offset in a "
                                  "listing): looked at first", "schema": number(
                                      0, MAX_OFFSET, "integer")},
            "path": {"name": "path", "in": "path", "required": True,
                     "description": "a file of the dashboard", "example": "app.js",
                     "schema": {"type": "string", "minLength": 1}},
            "node_id": {"name": "node_id", "in": "path", "required": True,
                        "description": "a node's id (-node-id)", "example": "web1",
                        "schema": {"type": "string", "minLength": 1}},
            "move_to": {"name": "move_to", "in": "query", "required": False,
                        "description": "move the channel's queued tasks to this channel",
                        "schema": {"type": "string", "pattern": CHANNEL_PATTERN}},
            "drop": {"name": "drop", "in": "query", "required": False,
                     "description": "put the channel's queued tasks in the dead-letter list",
                     "schema": {"type": "string", "enum": ["true", "false", "1", "0"]}}},
        "responses": {str(status): error(status) for status in ERRORS},
        "securitySchemes": {"token": {
            "type": "http", "scheme": "bearer",
            "description": "needed when the daemon has API tokens (-api-token-file, "
                           "COYOTES_API_TOKEN); a read-only one may only read"}},
    }


def document(server: str = DEFAULT_SERVER) -> dict:
    """The OpenAPI document, with ``server`` as the base URL of every path."""
    listing = ref("schemas", "Listing")
    settings = ref("schemas", "Settings")
    push_result = {"type": "object", "required": ["task_id", "task_name", "result"],
                   "properties": {"task_id": {"type": "string"},
                                  "task_name": {"type": "string"},
                                  "result": {"type": "boolean",
                                             "description": "false: refused by the distinct "
                                                            "rule (no record is kept)"}}}
    canceled = {"type": "object", "required": ["task_id", "status"], "properties": {
        "task_id": {"type": "string"}, "status": {"enum": ["canceled", "killing"]}}}
    unfailed = {"type": "object", "required": ["task_id", "result"], "properties": {
        "task_id": {"type": "string"}, "result": {"const": True}}}
    counted = {"type": "object", "required": ["count"],
               "properties": {"count": {"type": "integer", "minimum": 0}}}
    delayed = ref("schemas", "ListedTask")
    page = ("limit", "offset")
    count = {"type": "integer", "minimum": 0}
    minutes = {"type": "array", "items": count, "minItems": MINUTES, "maxItems": MINUTES,
               "description": "one a minute, oldest first, the current minute last"}
    overview = {"type": "object", "required": [
        "node", "version", "now", "channels", "nodes", "delayed", "delayed_counted",
        "dead_letters"], "properties": {
        "node": {"type": "string"}, "version": {"type": "string"}, "now": {"type": "number"},
        "channels": {"type": "array", "items": {"type": "object", "properties": {
            "name": {"type": "string"}, "queued": count, "running": count, "delayed": count,
            "failed": count, "paused": {"type": "boolean"}, "worker": count,
            "max_running": count, "finished_per_minute": minutes,
            "failed_per_minute": minutes}}},
        "nodes": {"type": "array", "items": ref("schemas", "Node")},
        "delayed": count, "dead_letters": count,
        "delayed_counted": {"type": "boolean", "description": "false: the channels' delayed "
                            "counts come from the soonest 10,000 delayed tasks only"}}}
    letter = {"type": "object", "required": ["id"], "properties": {
        "id": {"type": "string"}, "entry": {"type": "string"}, "reason": {"type": "string"},
        "ts": {"type": "integer"}, "node": {"type": "string"}}}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Coyotes", "version": __version__,
            "description": "You give me the command, I run it. Every reply is JSON "
                           '{"status_code", "message", "data"}; status_code is also the '
                           "HTTP status, and on an error data is null. Bodies may be "
                           "urlencoded or multipart forms, or JSON. A method a path does "
                           "not have answers 405 with an Allow header; an unknown path 404.",
        },
        "servers": [{"url": server}],
        # a token when the daemon has some, none otherwise
        "security": [{"token": []}, {}],
        "paths": {
            "/": {"get": operation("home", "what answers here", ok({
                "type": "object", "required": ["name", "version", "node", "task_mode"],
                "properties": {"name": {"const": "coyotes"}, "version": {"type": "string"},
                               "node": {"type": "string"},
                               "task_mode": {"type": "boolean"}}}, "this daemon"),
                                  redis=False, redirect=(302, BROWSER_HOME))},
            "/ui": {"get": page_operation("dashboard_root", "to /ui/", redirect=301)},
            "/ui/": {"get": page_operation("dashboard", "the dashboard (a page for a browser; "
                                           "its data comes from this API, with the token)")},
            "/ui/{path}": {"get": page_operation("dashboard_file", "a file of the dashboard "
                                                 "(script, style)", params=("path",))},
            "/overview": {"get": operation(
                "overview", "what the dashboard's first page shows, in one reply",
                ok(overview, "every channel's counts and last hour, the nodes"))},
            "/health": {"get": operation(
                "health", "200 once this node is ready to work (its channels exist and it "
                "is registered); 503 before that, and while Redis is unreachable",
                ok({"type": "object", "required": ["node", "ready"],
                    "properties": {"node": {"type": "string"}, "ready": {"const": True}}},
                   "ready"), open_to_all=True)},
            "/openapi.json": {"get": operation(
                "openapi", "this document (not in the envelope)",
                {"description": "the OpenAPI document",
                 "content": {JSON: {"schema": {"type": "object",
                                               "required": ["openapi", "paths"]}}}},
                redis=False)},
            "/metrics": {"get": operation(
                "metrics", "Prometheus metrics of the whole cluster and of this process "
                "(not in the envelope)",
                {"description": "the Prometheus text format",
                 "content": {"text/plain": {"schema": {"type": "string"}}}})},
            "/channels": {
                "get": operation("list_channels", "every channel's tasks",
                                 ok({"type": "object", "additionalProperties":
                                     ref("schemas", "ConsumedListing")},
                                    "channel name -> its listing and the live nodes that "
                                    "consume it (limit and offset apply to each)"),
                                 params=page),
                "post": operation("add_channel", "create a channel", ok(
                    {"type": "null"}, "created; it starts consuming at once"), 409,
                    body=channel_body())},
            "/channels/{name}": {
                "get": operation("list_channel", "one channel: its tasks (running, then "
                                 "queued; where each running one runs), settings and counts",
                                 ok(ref("schemas", "Channel"), "a page of the listing"), 404,
                                 params=("name", *page)),
                "patch": operation("change_channel", "change settings; every node applies "
                                   "them within a second (fewer workers: the extra ones "
                                   "finish their task first)",
                                   ok(settings, "the new settings"), 404,
                                   params=("name",), body=change_body()),
                "delete": operation("delete_channel", "delete a channel once its queued "
                                    "tasks are moved or dropped; running ones finish",
                                    ok({"type": "object", "required": ["channel"],
                                        "properties": {"channel": {"type": "string"},
                                                       "moved": {"type": "integer"},
                                                       "dropped": {"type": "integer"}}},
                                       "deleted"), 404, 409,
                                    params=("name", "move_to", "drop")),
                "post": operation("push_task", "push a command line (the original form)",
                                  ok(push_result, "queued, or refused by the distinct rule"),
                                  404, params=("name",), body=body(
                                      {"type": "object", "required": ["task"], "properties": {
                                          "task": {"type": "string", "minLength": 1}}},
                                      {"type": "object", "required": ["task"], "properties": {
                                          "task": {"type": "string", "minLength": 1}}},
                                      {"task": "echo hello"}))},
            "/channels/{name}/pause": {
                "post": operation("pause_channel", "claim nothing more on any node; "
                                  "running commands finish", ok(settings, "the settings"),
                                  404, params=("name",))},
            "/channels/{name}/resume": {
                "post": operation("resume_channel", "claim again",
                                  ok(settings, "the settings"), 404, params=("name",))},
            "/channels/{name}/tasks": {
                "post": operation("push_task_v2", "push a task: argv, id, delay, policy",
                                  ok(push_result, "queued or delayed, or refused by the "
                                     "distinct rule"), 404, 409, params=("name",),
                                  body=push_body())},
            "/channels/{name}/tasks/{task_id}": {
                "delete": operation("cancel_channel_task",
                                    "cancel a waiting task or kill a running one",
                                    ok(canceled, "canceled, or its node was asked to kill it"),
                                    404, 409, params=("name", "task_id"))},
            "/channels/{name}/failed-tasks": {
                "get": operation("list_failed", "failed tasks, newest failure first",
                                 ok(listing, "a page of the failed tasks"), 404,
                                 params=("name", *page)),
                "post": operation("retry_all_failed", "retry every failed task",
                                  ok(counted, "how many"), 404, params=("name",)),
                "delete": operation("delete_all_failed", "delete every failed task",
                                    ok(counted, "how many"), 404, params=("name",))},
            "/channels/{name}/failed-tasks/{task_id}": {
                "get": operation("get_failed", "one failed task",
                                 ok(ref("schemas", "ListedTask"), "the failed task"), 404,
                                 params=("name", "task_id")),
                "post": operation("retry_failed", "retry one failed task",
                                  ok(unfailed, "back in its queue"), 404,
                                  params=("name", "task_id")),
                "delete": operation("delete_failed", "delete one failed task",
                                    ok(unfailed, "deleted"), 404, params=("name", "task_id"))},
            "/schedules": {
                "get": operation("list_schedules", "every schedule, with its next firing "
                                 "times and its last firing",
                                 ok({"type": "object", "required": ["schedules"],
                                     "properties": {"schedules": {
                                         "type": "array",
                                         "items": ref("schemas", "Schedule")}}}, "by name")),
                "post": operation("add_schedule", "make a schedule",
                                  ok(ref("schemas", "Schedule"), "made"), 409,
                                  body=schedule_body(True))},
            "/schedules/{name}": {
                "get": operation("get_schedule", "one schedule",
                                 ok(ref("schemas", "Schedule"), "the schedule"), 404, 409,
                                 params=("name",)),
                "put": operation("put_schedule", "make or replace a schedule",
                                 ok(ref("schemas", "Schedule"), "stored"),
                                 params=("name",), body=schedule_body(False)),
                "delete": operation("delete_schedule", "delete a schedule",
                                    ok({"type": "object", "required": ["name", "deleted"],
                                        "properties": {"name": {"type": "string"},
                                                       "deleted": {"const": True}}},
                                       "deleted"), 404, params=("name",))},
            "/schedules/{name}/run": {
                "post": operation("run_schedule", "queue its task now",
                                  ok(push_result, "queued, or refused by the distinct "
                                     "rule"), 404, 409, params=("name",))},
            "/schedules/{name}/enable": {
                "post": operation("enable_schedule", "fire again (from now on)",
                                  ok(ref("schemas", "Schedule"), "the schedule"), 404, 409,
                                  params=("name",))},
            "/schedules/{name}/disable": {
                "post": operation("disable_schedule", "stop firing",
                                  ok(ref("schemas", "Schedule"), "the schedule"), 404, 409,
                                  params=("name",))},
            "/nodes": {
                "get": operation("list_nodes", "every node that may hold work",
                                 ok({"type": "object", "required": ["nodes"], "properties": {
                                     "nodes": {"type": "array",
                                               "items": ref("schemas", "Node")}}},
                                    "by id"))},
            "/nodes/{node_id}/drain": {
                "post": operation("drain_node", "tell a node to stop claiming, let its "
                                  "commands finish, and exit (as USR2 does)",
                                  ok({"type": "object", "required": ["node", "draining"],
                                      "properties": {"node": {"type": "string"},
                                                     "draining": {"const": True}}},
                                     "told"), 404, params=("node_id",))},
            "/tasks/{task_id}": {
                "get": operation("get_task", "a task's record",
                                 ok(ref("schemas", "TaskRecord"), "the record"), 404,
                                 params=("task_id",)),
                "delete": operation("cancel_task", "cancel a waiting task or kill a running one",
                                    ok(canceled, "canceled, or its node was asked to kill it"),
                                    404, 409, params=("task_id",))},
            "/tasks/{task_id}/output": {"get": operation(
                "task_output", "its output as server-sent events (stdout, stderr, dropped), "
                "then end with the record's status; live from the node that runs it",
                {"description": "a text/event-stream that ends with the task",
                 "content": {"text/event-stream": {"schema": {"type": "string"}}}},
                404, params=("task_id",))},
            "/delay-tasks": {
                "get": operation("list_delayed", "delayed tasks, soonest first",
                                 ok(listing, "a page of them"), params=page)},
            "/delay-tasks/{task_id}": {
                "get": operation("get_delayed", "one delayed task",
                                 ok(delayed, "the task"), 404, params=("task_id",)),
                "delete": operation("cancel_delayed", "cancel a delayed task",
                                    ok(canceled, "canceled"), 404, 409, params=("task_id",))},
            "/dead-letters": {
                "get": operation("dead_letters", "entries that could not become tasks",
                                 ok({"type": "object",
                                     "required": ["entries", "count", "trimmed"],
                                     "properties": {
                                         "entries": {"type": "array", "items": letter},
                                         "count": {"type": "integer", "minimum": 0},
                                         "trimmed": {"type": "integer", "minimum": 0}}},
                                    "newest first"), params=page)},
            "/dead-letters/{letter}": {
                "get": operation("dead_letter", "one dead letter", ok(letter, "the letter"),
                                 404, params=("letter", "at")),
                "delete": operation("delete_dead_letter", "delete a dead letter", ok(
                    {"type": "object", "required": ["id", "deleted"], "properties": {
                        "id": {"type": "string"}, "deleted": {"const": True}}}, "deleted"),
                    404, params=("letter", "at"))},
            "/dead-letters/{letter}/requeue": {"post": operation(
                "requeue_dead_letter", "put a dead letter's entry (or the entry given, "
                "edited) back into the prepare queue, where it is checked again",
                ok({"type": "object", "required": ["id", "requeued"], "properties": {
                    "id": {"type": "string"}, "requeued": {"const": True}}}, "queued"),
                404, 409, params=("letter", "at"), body={"required": False, "content": {
                    media: {"schema": {"type": "object", "properties": {"entry": {
                        "type": "string", "minLength": 1, "pattern": r"\S",
                        "description": "the entry to queue instead of the letter's"}}}}
                    for media in (JSON, URLENCODED, MULTIPART)}})},
        },
        "components": components(),
    }
