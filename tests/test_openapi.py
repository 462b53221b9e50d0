"""The OpenAPI document at /openapi.json, and schemathesis against the live daemon.

The document is kept in step with the routes of ``make_app`` (both ways), is a
valid OpenAPI 3.1 document, and the daemon answers what it says: schemathesis
runs its examples, coverage and fuzzing phases against a real daemon process
and checks that nothing answers 5xx, that every status code, content type and
reply body is the documented one (and an undocumented method 405 with Allow),
that the log holds no traceback and that the daemon still serves afterwards.

The daemon runs the commands it is given, so the main run is against a daemon
with ``-task-mode=false`` (it queues, and runs nothing). A shorter run against
a daemon in task mode uses a copy of the document whose commands can only be
``true`` or ``echo`` and generates valid requests only (an invalid one could
carry any command line).
"""

from __future__ import annotations

import copy
import json
import re
import time
import urllib.parse
import urllib.request

import jsonschema_rs
import pytest
import schemathesis
from conftest import wait_until
from schemathesis.engine import Status, events
from schemathesis.specs.openapi.definitions import OPENAPI_31_VALIDATOR

from coyotes_lib import __version__
from coyotes_lib.api import make_app
from coyotes_lib.broker import Broker
from coyotes_lib.config import Config
from coyotes_lib.connection import connect
from coyotes_lib.keys import Keys
from coyotes_lib.openapi import DEFAULT_SERVER, document
from coyotes_lib.replies import envelope, record_view
from coyotes_lib.routes import Api

CHECKS = ("not_a_server_error", "status_code_conformance", "content_type_conformance",
          "response_schema_conformance", "unsupported_method", "allow_header_conformance")
CHANNELS = ("default", "biz", "cron")
SEED = 20240601   # with deterministic generation: the same requests on every run


def seed_channels(r) -> None:
    for name in CHANNELS:
        r.hset("task:channels", name, json.dumps({"name": name, "distinct": True,
                                                   "worker_count": 2}))


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch):
    """schemathesis talks through requests, which would follow a proxy from the
    environment: every request here is for 127.0.0.1."""
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(name, "127.0.0.1,localhost")


@pytest.fixture
def api_only(coyotes_factory, r):
    """A daemon that serves the API and runs nothing (-task-mode=false)."""
    seed_channels(r)
    return coyotes_factory("-task-mode=false")


# -- the document ---------------------------------------------------------------
def test_document_lists_exactly_the_routes_of_the_app(redis_server):
    client = connect("127.0.0.1", redis_server.port)
    app = make_app(Api(Broker(client, Keys(), "n1"), Config(redis_port=redis_server.port)))
    # bottle's /channels/<name> (or <name:filter>) is OpenAPI's /channels/{name}
    routes = {(route.method, re.sub(r"<(\w+)(:[^>]*)?>", r"{\1}", route.rule))
              for route in app.routes}
    described = {(method.upper(), path) for path, item in document()["paths"].items()
                 for method in item}
    assert routes - described == set(), "routes missing from the document"
    assert described - routes == set(), "documented operations the app does not have"
    client.close()


def test_document_is_valid_openapi():
    doc = document()
    OPENAPI_31_VALIDATOR.validate(doc)
    schemathesis.openapi.from_dict(copy.deepcopy(doc)).validate()
    assert doc["info"]["version"] == __version__
    assert doc["servers"] == [{"url": DEFAULT_SERVER}]
    broken = copy.deepcopy(doc)   # and the validator does refuse a broken one
    broken["components"]["parameters"]["limit"]["in"] = "body"
    with pytest.raises(jsonschema_rs.ValidationError):
        OPENAPI_31_VALIDATOR.validate(broken)


def test_every_operation_documents_its_error_statuses():
    for path, item in document()["paths"].items():
        for method, op in item.items():
            codes = set(op["responses"])
            assert {"400", "403", "408", "413", "500"} <= codes, (method, path)
            assert "200" in codes or path == "/ui", (method, path)   # /ui: to /ui/
            # every route needs the token when there is one, but /health and the
            # dashboard's files
            assert ("401" in codes) == (path != "/health" and not path.startswith("/ui")), (
                method, path)
            if path not in ("/", "/openapi.json") and not path.startswith("/ui"):
                assert "503" in codes, (method, path)   # all but those that never read Redis
            if "{" in path and method != "put":   # a PUT makes what is missing
                assert "404" in codes, (method, path)
            for name in re.findall(r"{(\w+)}", path):
                assert {"$ref": f"#/components/parameters/{name}"} in op["parameters"]


def test_openapi_json_is_served_plain_with_this_daemons_address(api_only):
    daemon = api_only
    with urllib.request.urlopen(daemon.url + "/openapi.json", timeout=10) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("application/json")
        served = json.loads(resp.read())
    assert "status_code" not in served   # the document itself, not an envelope
    assert served["servers"] == [{"url": daemon.url}]
    assert served["paths"] == document()["paths"]
    assert "/openapi.json" in served["paths"]


# -- schemathesis against the live daemon ---------------------------------------
def fuzz(url: str, doc: dict | None = None, *, max_examples: int, mode: str = "all",
         seed: int = SEED, phases=("examples", "coverage", "fuzzing"), checks=CHECKS,
         ) -> tuple[list[str], dict[int, int]]:
    """Run schemathesis's engine (what ``schemathesis run`` does) against the daemon at
    ``url``, described by ``doc`` or else by its own /openapi.json: (the failures, each
    with a curl line to reproduce it; status code -> how many replies had it)."""
    config = schemathesis.Config.from_dict({
        "seed": seed,
        "base-url": url,
        "request-timeout": 30,
        "generation": {"mode": mode, "max-examples": max_examples, "deterministic": True,
                       "database": "none"},
        "checks": {"enabled": False, **{name: {"enabled": True} for name in checks}},
        "phases": {"enabled": False, **{name: {"enabled": True} for name in phases}},
    })
    if doc is None:
        with urllib.request.urlopen(url + "/openapi.json", timeout=30) as reply:
            doc = json.loads(reply.read())
    # a task's output stream lasts as long as the task (a queued one: until it runs):
    # tests/test_output.py reads it; the dashboard's files are tested in
    # test_dashboard.py and test_browser.py
    doc = {**doc, "paths": {path: item for path, item in doc["paths"].items()
                            if path != "/tasks/{task_id}/output" and not path.startswith("/ui")}}
    schema = schemathesis.openapi.from_dict(doc, config=config)
    failures: list[str] = []
    statuses: dict[int, int] = {}
    for event in schemathesis.engine.from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            for interaction in event.recorder.interactions.values():
                if interaction.response is not None:
                    code = interaction.response.status_code
                    statuses[code] = statuses.get(code, 0) + 1
            for results in event.recorder.checks.values():
                for check in results:
                    if check.status == Status.FAILURE and check.failure_info is not None:
                        info = check.failure_info
                        failures.append(f"{event.label}: {check.name}: {info.failure.title}"
                                        f" {info.failure.message}\n{info.code_sample}")
        elif isinstance(event, (events.NonFatalError, events.FatalError)):
            failures.append(f"error: {event!r}")
    return failures, statuses


def found(failures: list[str], daemon) -> str:
    """What schemathesis found, with the daemon's complaints about it."""
    errors = [line for line in daemon.log().splitlines() if " ERROR " in line]
    return "\n\n".join([*dict.fromkeys(failures), "daemon log:", *errors[-10:]])


def survived(daemon) -> None:
    assert "Traceback" not in daemon.log(), daemon.log()[-5000:]
    status, env = daemon.request("GET", "/channels")
    assert status == 200 and env["status_code"] == 200, env


def test_schemathesis_finds_nothing_against_the_api_only_daemon(api_only):
    daemon = api_only
    started = time.monotonic()
    failures, statuses = fuzz(daemon.url, max_examples=20)   # the served document
    elapsed = time.monotonic() - started
    assert not failures, found(failures, daemon)
    assert not [code for code in statuses if code >= 500], statuses
    assert {200, 400, 404, 405, 409} <= set(statuses), statuses
    survived(daemon)
    print(f"schemathesis: {sum(statuses.values())} requests in {elapsed:.1f} s: {statuses}")


HARMLESS = ("true", "echo")


def harmless(doc: dict) -> dict:
    """A copy of the document whose pushes can only run ``true`` or ``echo`` with
    harmless arguments, and carry no field it does not name."""
    doc = copy.deepcopy(doc)
    word = {"type": "string", "enum": ["a", "b c", "-n"]}
    for path in ("/channels/{name}", "/channels/{name}/tasks"):
        for media in doc["paths"][path]["post"]["requestBody"]["content"].values():
            schema = media["schema"] = {**media["schema"], "required": ["task"],
                                        "additionalProperties": False}
            schema.pop("anyOf", None)
            fields = schema["properties"] = dict(schema["properties"])
            fields["task"] = {"type": "string", "enum": ["true", "echo hello", "echo 'a b'"]}
            media["example"] = {"task": "echo hello"}
            if "command" in fields:
                fields["command"] = {"type": "string", "enum": list(HARMLESS)}
                fields["args"] = {"type": "array", "items": word, "maxItems": 3}
    # a schedule's command line runs at each firing: harmless ones only
    for path, method in (("/schedules", "post"), ("/schedules/{name}", "put")):
        for media in doc["paths"][path][method]["requestBody"]["content"].values():
            schema = media["schema"] = {**media["schema"]}
            fields = schema["properties"] = dict(schema["properties"])
            fields["command"] = {"type": "string", "enum": ["true", "echo hello"]}
            media["example"] = {**media["example"], "command": "true"}
    return doc


def test_schemathesis_in_task_mode_with_harmless_commands(coyotes_factory, r):
    """Valid requests only (an invalid one could carry any command line), fewer of them."""
    seed_channels(r)
    daemon = coyotes_factory()
    failures, statuses = fuzz(daemon.url, harmless(document(daemon.url)), max_examples=10,
                              mode="positive")
    assert not failures, found(failures, daemon)
    assert not [code for code in statuses if code >= 500], statuses
    records = [r.hgetall(key) for key in r.scan_iter("task:record:*")]
    assert {json.loads(rec["argv"])[0] for rec in records} <= set(HARMLESS)
    # what was queued runs: the daemon kept working through it (once the channels the
    # fuzzing paused, if any, are resumed)
    for name in r.hkeys("task:channels"):
        daemon.request("POST", f"/channels/{name}/resume")
    wait_until(lambda: not any(r.llen(f"{name}:tasks:queue") for name in r.hkeys("task:channels")),
               timeout=30, what="the queued tasks to run")
    assert any(rec.get("status") == "succeeded" for rec in
               (r.hgetall(key) for key in r.scan_iter("task:record:*")))
    survived(daemon)


# -- what schemathesis found (fixed in api.py) -----------------------------------
def multipart_raw(parts: list[tuple[bytes, bytes]]) -> tuple[bytes, dict]:
    body = b"".join(b"--xx\r\nContent-Disposition: form-data; name=\"" + name + b"\"\r\n\r\n"
                    + value + b"\r\n" for name, value in parts) + b"--xx--\r\n"
    return body, {"Content-Type": "multipart/form-data; boundary=xx"}


def test_broken_multipart_bodies_are_400_with_a_reason(api_only):
    """A part name holding a control character made bottle's parser raise ValueError:
    a 500 with a traceback. Its own MultipartError was a 400 saying 'internal error'."""
    daemon = api_only
    body, headers = multipart_raw([(b"a\x05\x00b", b"x"), (b"task", b"echo hi")])
    status, env = daemon.request("POST", "/channels/default", body=body, headers=headers)
    assert status == 400 and "malformed" in env["message"], env
    for content_type in ("multipart/form-data", "multipart/form-data; boundary=yy"):
        status, env = daemon.request("POST", "/channels/default/tasks", body=b"garbage",
                                     headers={"Content-Type": content_type})
        assert status == 400 and env["message"].startswith("MultipartError"), env
        assert env["data"] is None
    assert "Traceback" not in daemon.log()


def payload(r, task_id: str) -> dict:
    """The task as queued (the default channel is distinct: each push needs its own
    command, or it is refused and leaves no record)."""
    return json.loads(r.hget(f"task:record:{task_id}", "raw"))


def test_retry_on_in_every_documented_form(api_only, r):
    """README: repeat the field, or 1,75, or a JSON list. "1,75" was a 400; PHP's
    retry_on[]=1&retry_on[]=75 was silently dropped."""
    daemon, path = api_only, "/channels/default/tasks"
    forms = {"comma": [("retry_on", "1,75")], "repeated": [("retry_on", "1"), ("retry_on", "75")],
             "php": [("retry_on[]", "1"), ("retry_on[]", "75")],
             "php-indexed": [("retry_on[1]", "75"), ("retry_on[0]", "1")]}
    for tag, fields in forms.items():
        for kind in ("urlencoded", "multipart"):
            task_id = f"{tag}-{kind}"
            fields_ = [("task", f"echo {task_id}"), ("id", task_id), *fields]
            if kind == "urlencoded":
                body = urllib.parse.urlencode(fields_).encode()
                headers = {"Content-Type": "application/x-www-form-urlencoded"}
            else:
                body, headers = multipart_raw([(k.encode(), v.encode()) for k, v in fields_])
            status, env = daemon.request("POST", path, body=body, headers=headers)
            assert status == 200, (tag, kind, env)
            assert payload(r, task_id)["retry_on"] == [1, 75], (tag, kind)
    for task_id, codes in (("json-list", [75, 1]), ("json-comma", "1, 75")):
        status, env = daemon.request("POST", path, {"task": f"echo {task_id}", "id": task_id,
                                                    "retry_on": codes})
        assert status == 200 and payload(r, task_id)["retry_on"] == [1, 75], env
    status, env = daemon.request("POST", path, {"task": "echo 0", "id": "zero", "retry_on": 0})
    assert status == 200 and payload(r, "zero")["retry_on"] == [0], env
    status, env = daemon.request("POST", path, {"task": "echo blank", "id": "blank",
                                                "retry_on": ""})
    assert status == 200 and "retry_on" not in payload(r, "blank"), env


def test_json_values_of_the_wrong_type_are_refused_not_reinterpreted(api_only, r):
    """JSON worker 1e400 (infinity) was a 500; an id of true or [] became 'True' or '[]';
    args 0 was dropped (argv 'sleep', not 'sleep 0'); retry_on {} meant 'any code'."""
    daemon = api_only
    refused = [("/channels", b'{"name": "w1", "worker": 1e400}', "worker"),
               ("/channels", b'{"name": "w2", "worker": true}', "worker"),
               ("/channels", b'{"name": "w3", "worker": 2.5}', "worker"),
               ("/channels/default/tasks", b'{"task": "echo x", "id": true}', "id"),
               ("/channels/default/tasks", b'{"task": "echo x", "id": []}', "id"),
               ("/channels/default/tasks", b'{"task": "echo x", "id": {}}', "id"),
               ("/channels/default/tasks", b'{"task": "echo x", "delay": true}', "delay"),
               ("/channels/default/tasks", b'{"task": "echo x", "retry_on": {}}', "retry_on"),
               ("/channels/default/tasks", b'{"command": "echo", "args": {}}', "args")]
    for path, body, field in refused:
        status, env = daemon.request("POST", path, body=body,
                                     headers={"Content-Type": "application/json"})
        assert status == 400 and field in env["message"], (body, env)
    status, env = daemon.request("POST", "/channels", {"name": "w4", "worker": 3.0,
                                                       "distinct": None})
    assert status == 200, env
    assert json.loads(r.hget("task:channels", "w4"))["worker_count"] == 3
    status, env = daemon.request("POST", "/channels/default/tasks",
                                 {"command": "sleep", "args": 0, "id": "nap"})
    assert status == 200 and env["data"]["task_name"] == "sleep 0", env
    status, env = daemon.request("POST", "/channels/default/tasks",
                                 {"task": "echo 12345", "id": 12345})
    assert status == 200 and env["data"]["task_id"] == "12345", env   # PHP's integer ids
    assert "Traceback" not in daemon.log()


def test_record_numbers_that_are_not_finite_stay_text():
    """int('inf') raised OverflowError (a 500), and a float nan or inf is not JSON."""
    view = record_view({"id": "t", "exit_code": "inf", "duration": "nan", "attempt": "2",
                        "started_at": "-inf", "signal": "x"})
    assert view == {"id": "t", "task_id": "t", "exit_code": "inf", "duration": "nan",
                    "attempt": 2, "started_at": "-inf", "signal": "x"}
    json.loads(envelope(200, "ok", view), parse_constant=pytest.fail)   # NaN: not JSON
