"""Requests and replies of the HTTP API: the Go daemon's JSON envelope, errors as
responses, bodies read alike from forms and JSON, pages, and how tasks and
records are shown.
"""

from __future__ import annotations

import json
import math
from urllib.parse import unquote_to_bytes

import bottle

from .task import POLICY_LIMITS, BadTask, from_queue, locate, parse_json

MAX_LIMIT = 1000
MAX_OFFSET = 2**32 - 1   # Redis's longest list
JSON_TYPE = "application/json; charset=utf-8"


# json.dumps(..., ensure_ascii=False) without a new encoder each call
ENVELOPE_JSON = json.JSONEncoder(ensure_ascii=False)


def envelope(status: int, message: str, data=None) -> str:
    text = ENVELOPE_JSON.encode({"status_code": status, "message": message, "data": data})
    return text if text.isascii() else utf8_safe(text)


def utf8_safe(text: str) -> str:
    """Bytes that were not UTF-8 in Redis (surrogate escapes) become U+FFFD."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:   # a lone surrogate from a JSON escape
        return text.encode("utf-8", "replace").decode("utf-8")


def fail(status: int, message: str) -> bottle.HTTPResponse:
    return bottle.HTTPResponse(envelope(status, message), status, {"Content-Type": JSON_TYPE})


def ok(data=None) -> str:
    bottle.response.content_type = JSON_TYPE
    return envelope(200, "ok", data)


UI_PREFIX = "/ui"   # the dashboard's files: no data in them, so no token to get them


def is_page(environ) -> bool:
    """Whether a request asks for the dashboard's files: GET /ui/..., or GET / from a
    browser (which is sent there), not an API call."""
    if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
        return False
    path = environ.get("PATH_INFO", "")
    if path == UI_PREFIX or path.startswith(UI_PREFIX + "/"):
        return True
    return path == "/" and "text/html" in environ.get("HTTP_ACCEPT", "")


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
    if task.payload.get("priority") == "high":
        item["priority"] = "high"
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


# environ key under which server.Guard leaves the request body it read (bytes)
BODY_READ = "coyotes.body"


class Body:
    """Fields of a form or JSON body, read the same way.

    An urlencoded form is parsed here from the body the guard read, as bottle's
    ``request.forms.decode("utf-8")`` would (``parse_form``) but without its
    MultiDict copies; a multipart form, or a body read by no guard, goes through
    bottle. Fields are ``{name: [values]}`` in the order of their first use. It
    reads a WSGI environ: a request's (bottle's, or the express lane's)."""

    def __init__(self, environ: dict):
        self.environ = environ   # for what is signed: the method, path, query and body
        self.json = None
        content_type = environ.get("CONTENT_TYPE", "")
        data = environ.get(BODY_READ)
        if content_type.lower().startswith("application/json"):
            if data is None:
                data = bottle.BaseRequest(environ).body.read()
            try:
                self.json = parse_json(data or b"{}")
            except BadTask as exc:
                raise fail(400, f"body: {exc}") from None
            if not isinstance(self.json, dict):
                raise fail(400, "JSON body must be an object")
        elif data is not None and urlencoded(content_type):
            if len(data) > bottle.BaseRequest.MEMFILE_MAX:   # as bottle refuses a form body
                raise bottle.HTTPError(413, "Request entity too large")
            try:
                self.forms = parse_form(data)
                query = environ.get("QUERY_STRING", "")
                self.query = parse_form(query.encode("latin-1")) if query else {}
            except UnicodeError:
                raise fail(400, "form fields must be UTF-8") from None
        else:
            # bottle's request ties itself to the environ (a cycle): only when needed
            request = environ.get("bottle.request") or bottle.BaseRequest(environ)
            try:
                self.forms = request.forms.decode("utf-8").dict
                self.query = request.query.decode("utf-8").dict
            except UnicodeError:
                raise fail(400, "form fields must be UTF-8") from None
            except ValueError as exc:   # bottle's parser refusing a part's headers
                raise fail(400, f"form body is malformed: {exc}") from None

    def get(self, name: str, default=None):
        if self.json is not None:
            return self.json.get(name, default)
        values = self.forms.get(name) or self.query.get(name)
        return values[-1] if values else default

    def names(self) -> set[str]:
        """The fields given (PHP's ``retry_on[0]`` and ``retry_on[]`` as ``retry_on``)."""
        if self.json is not None:
            return set(self.json)
        return {key.partition("[")[0] for fields in (self.forms, self.query) for key in fields}

    def get_list(self, name: str) -> list:
        if self.json is not None:
            # only null is "none": a 0 or {} is a value (to use, or to refuse), not nothing
            value = self.json.get(name)
            return [] if value is None else value if isinstance(value, list) else [value]
        prefix = name + "["
        for fields in (self.forms, self.query):   # the query as well, as get() reads it
            values = fields.get(name) or fields.get(name + "[]")
            if not values:  # PHP's http_build_query: args[0]=..&args[1]=..
                indexed = [(k, v) for k, vs in fields.items() if k.startswith(prefix)
                           for v in vs]
                values = [v for _, v in sorted(indexed, key=lambda kv: _index(kv[0]))]
            if values:
                return values
        return []

    def policy(self) -> dict:
        """The policy keys given (timeout, retries, ...), not yet validated."""
        if self.json is None and not any(self.names_policy(fields)
                                         for fields in (self.forms, self.query)):
            return {}   # most pushes: no field that could give one
        given = {}
        for key in POLICY_LIMITS:
            value = self.get(key)
            if value not in (None, ""):
                given[key] = value
        # exit codes: repeated, PHP's retry_on[] or retry_on[0], a JSON list, or "1,75"
        codes = [code for value in self.get_list("retry_on")
                 for code in (value.split(",") if isinstance(value, str) else [value])]
        if "retry_on" in given or any(str(code).strip() for code in codes):
            given["retry_on"] = codes
        return given

    @staticmethod
    def names_policy(fields: dict) -> bool:
        """Whether form fields name a policy key, PHP's retry_on[...] included."""
        return any(key in fields for key in POLICY_LIMITS) \
            or any(key.startswith("retry_on[") for key in fields)


def urlencoded(content_type: str) -> bool:
    """Whether bottle would read a body of this Content-Type as an urlencoded form
    without refusing the header: anything but multipart/..., compared as bottle's
    header parser splits it (parameters without '=' make it raise)."""
    if '"' in content_type or "," in content_type:
        return False   # bottle's other parser: leave it to bottle
    main, *params = content_type.split(";")
    return all("=" in param for param in params) \
        and not main.strip().startswith("multipart/")


def parse_form(data: bytes) -> dict[str, list[str]]:
    """An urlencoded form as bottle's ``_parse_qsl`` reads it and ``FormsDict.decode``
    then decodes it: pairs cut at '&', empty ones skipped, no '=' an empty value,
    '+' a space, %XX a byte (a malformed escape stays as it is), and the bytes
    UTF-8 (else UnicodeError)."""
    fields: dict[str, list[str]] = {}
    for pair in data.split(b"&"):
        if not pair:
            continue
        key, _, value = pair.partition(b"=")
        key, value = _unquote(key), _unquote(value)
        values = fields.get(key)
        if values is None:
            fields[key] = [value]
        else:
            values.append(value)
    return fields


def _unquote(part: bytes) -> str:
    part = part.replace(b"+", b" ")
    return (unquote_to_bytes(part) if b"%" in part else part).decode("utf-8")


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
