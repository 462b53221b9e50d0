"""The HTTP API against the real daemon process.

Every call the Go daemon answers, with its envelope and HTTP status, the three
body encodings (urlencoded, multipart, JSON) and PHP's array styles, the
error replies, the distinct rule, listings and their pagination, and the
guard (cross-site requests, DNS rebinding, body limits).

Tasks that must stay "running" for a while are *gated*: they note their
start in a ledger and wait until a gate file exists (at most 60 s), so a
test decides when they end and never sleeps.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shlex
import socket
import sys
import time
import urllib.parse
import uuid

import pytest
import redis
from conftest import (
    assert_error,
    ended,
    events,
    gate_command,
    idle,
    ledger_command,
    ok_data,
    read_ledger,
    started,
    wait_until,
)

CHANNELS_KEY = "task:channels"
DELAYED_KEY = "task:delay:queue"
DEAD_KEY = "task:prepare:dead"

# argv recorder: writes its own argv[2:] as JSON to argv[1]
RECORD = ("import json, os, sys\n"
          "tmp = sys.argv[1] + '.tmp'\n"
          "open(tmp, 'w', encoding='utf-8').write(json.dumps(sys.argv[2:]))\n"
          "os.replace(tmp, sys.argv[1])\n")


# -- helpers -----------------------------------------------------------------
def urlencoded(fields) -> tuple[bytes, dict]:
    return (urllib.parse.urlencode(list(fields)).encode(),
            {"Content-Type": "application/x-www-form-urlencoded"})


def multipart(fields) -> tuple[bytes, dict]:
    boundary = "----coyotes" + uuid.uuid4().hex
    parts = [(f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n"
              ).encode() + str(value).encode() + b"\r\n" for name, value in fields]
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def post_form(daemon, path, fields, kind="urlencoded", headers=None):
    body, hdrs = (urlencoded if kind == "urlencoded" else multipart)(fields)
    hdrs.update(headers or {})
    return daemon.request("POST", path, body=body, headers=hdrs)


def go_view(listing: dict) -> dict:
    """A channel's listing as the Go daemon gave it: its tasks (without where the
    running ones run) and their count, not the settings and counts added since."""
    where = ("node", "started_at", "pid")
    return {"tasks": [{k: v for k, v in task.items() if k not in where}
                      for task in listing["tasks"]], "count": listing["count"]}


def seed_channels(r, *names, distinct=True, workers=5) -> None:
    for name in names:
        r.hset(CHANNELS_KEY, name, json.dumps({"name": name, "distinct": distinct,
                                                "worker_count": workers}))


@pytest.fixture
def api_only(coyotes_factory, r):
    """A daemon with -task-mode=false (API only, consumes nothing), default channels seeded."""
    def make(*args):
        seed_channels(r, "default", "biz", "cron")
        return coyotes_factory("-task-mode=false", *args)
    return make


# -- every call of the API -----------------------------------------------------
def test_get_channels_lists_the_three_default_channels(coyotes):
    data = ok_data(coyotes.request("GET", "/channels"))
    assert {"default", "biz", "cron"} <= set(data), data
    node = ok_data(coyotes.request("GET", "/"))["node"]
    for name in ("default", "biz", "cron"):
        assert data[name] == {"tasks": [], "count": 0, "nodes": [node]}, data
    biz = ok_data(coyotes.request("GET", "/channels/biz"))
    assert go_view(biz) == {"tasks": [], "count": 0}
    assert biz["paused"] is False
    assert biz["counts"] == {"running": 0, "queued": 0, "failed": 0}
    assert biz["settings"] == {"distinct": True, "worker": 5, "max_running": 0,
                               "paused": False, "timeout": 0.0,
                               "retries": 0, "retry_backoff": 1.0, "retry_max": 600.0,
                               "retry_on": [], "kill_group": True, "command_policy": None}


def test_post_channel_task_field_runs_and_replies_with_id(coyotes, tmp_path):
    ledger = tmp_path / "ledger"
    command = ledger_command(ledger, "one")
    data = ok_data(post_form(coyotes, "/channels/default", [("task", command)]))
    assert data["task_name"] == command and data["result"] is True, data
    assert isinstance(data["task_id"], str) and data["task_id"], data
    wait_until(lambda: events(ledger) == [("start", "one"), ("end", "one")], what="task ran")
    wait_until(lambda: data["task_id"] in coyotes.log(), what="task id in the log")


def test_post_tasks_with_caller_id_is_echoed_and_runs(coyotes, r, tmp_path):
    ledger = tmp_path / "ledger"
    command = ledger_command(ledger, "v2")
    data = ok_data(post_form(coyotes, "/channels/biz/tasks",
                             [("task", command), ("id", "php-job-42")]))
    assert data == {"task_id": "php-job-42", "task_name": command, "result": True}
    wait_until(lambda: ended(ledger, "v2"), what="task ran")
    wait_until(lambda: "php-job-42" in coyotes.log() and idle(r, "biz"))


ARGS = ["a b  c", "", "it's \"quoted\" $HOME `x` ;|&", "héllo wörld ✓", "--flag=1 2"]


@pytest.mark.parametrize("style", ["urlencoded", "urlencoded-php[]", "urlencoded-php[i]",
                                   "multipart", "multipart-php[]", "multipart-php[i]", "json"])
def test_command_and_args_argv_is_honoured(coyotes, tmp_path, style):
    out = tmp_path / "argv dir" / "out put.json"
    out.parent.mkdir()
    args = ["-c", RECORD, str(out), *ARGS]
    kind = style.split("-")[0]
    if style == "json":
        reply = coyotes.request("POST", "/channels/default/tasks",
                                {"command": sys.executable, "args": args})
    else:
        if style.endswith("php[]"):
            fields = [("args[]", a) for a in args]
        elif style.endswith("php[i]"):
            # http_build_query order, but sent shuffled: the index decides
            indexed = [(f"args[{i}]", a) for i, a in enumerate(args)]
            fields = indexed[::-1]
        else:
            fields = [("args", a) for a in args]
        reply = post_form(coyotes, "/channels/default/tasks",
                          [("command", sys.executable), *fields], kind)
    data = ok_data(reply)
    assert data["result"] is True and data["task_id"], data
    assert data["task_name"] == shlex.join([sys.executable, *args]), data
    wait_until(lambda: json.loads(out.read_text(encoding="utf-8")) == ARGS,
               what=f"recorded argv {ARGS!r}, got "
                    f"{out.read_text(encoding='utf-8') if out.exists() else None}")


def test_php_indexed_args_sorted_numerically(coyotes, tmp_path):
    out = tmp_path / "out.json"
    args = ["-c", RECORD, str(out), *(f"x{i}" for i in range(12))]
    fields = [("command", sys.executable), *((f"args[{i}]", a) for i, a in enumerate(args))]
    ok_data(post_form(coyotes, "/channels/default/tasks", fields))
    wait_until(lambda: json.loads(out.read_text()) == [f"x{i}" for i in range(12)],
               what="args[10], args[11] after args[9]")


def test_json_args_numbers_formatted_like_go(coyotes, tmp_path):
    out = tmp_path / "out.json"
    data = ok_data(coyotes.request("POST", "/channels/default/tasks", {
        "command": sys.executable, "args": ["-c", RECORD, str(out), 7, 1.5, 2.0, "s"],
        "id": "json-1"}))
    assert data["task_id"] == "json-1" and data["result"] is True
    wait_until(lambda: json.loads(out.read_text()) == ["7", "1.5", "2", "s"])


def test_json_body_on_post_channel_task(coyotes, tmp_path):
    ledger = tmp_path / "ledger"
    command = ledger_command(ledger, "js")
    data = ok_data(coyotes.request("POST", "/channels/cron", {"task": command}))
    assert data["task_name"] == command and data["result"] is True and data["task_id"]
    wait_until(lambda: ended(ledger, "js"))


def test_delay_queues_in_delayed_set_then_runs(coyotes, r, tmp_path):
    ledger = tmp_path / "ledger"
    command = ledger_command(ledger, "later")
    before = time.time()
    data = ok_data(post_form(coyotes, "/channels/default/tasks",
                             [("task", command), ("delay", "2"), ("id", "d-1")]))
    assert data == {"task_id": "d-1", "task_name": command, "result": True}
    entries = r.zrange(DELAYED_KEY, 0, -1)
    assert len(entries) == 1 and json.loads(entries[0])["id"] == "d-1", entries
    assert not started(ledger, "later")
    wait_until(lambda: ended(ledger, "later"), timeout=15, what="delayed task ran")
    start = next(t for e, tag, t in read_ledger(ledger) if e == "start")
    assert start - before >= 1.0, start - before
    assert r.zcard(DELAYED_KEY) == 0


@pytest.mark.parametrize("kind", ["urlencoded", "multipart", "json"])
def test_post_channels_creates_persists_and_consumes_at_once(coyotes, r, tmp_path, kind):
    name = f"made-{kind}"
    fields = {"name": name, "distinct": "false", "worker": "3"}
    if kind == "json":
        reply = coyotes.request("POST", "/channels", {"name": name, "distinct": False,
                                                      "worker": 3})
    else:
        reply = post_form(coyotes, "/channels", list(fields.items()), kind)
    assert ok_data(reply) is None
    assert json.loads(r.hget(CHANNELS_KEY, name)) == {"name": name, "distinct": False,
                                                       "worker_count": 3}
    assert go_view(ok_data(coyotes.request("GET", f"/channels/{name}"))) == \
        {"tasks": [], "count": 0}
    assert name in ok_data(coyotes.request("GET", "/channels"))
    ledger = tmp_path / "ledger"
    data = ok_data(post_form(coyotes, f"/channels/{name}/tasks",
                             [("task", ledger_command(ledger, "new"))]))
    assert data["result"] is True and data["task_id"]
    wait_until(lambda: ended(ledger, "new"), what="task of a new channel ran without restart")
    wait_until(lambda: idle(r, name))


def test_post_channels_defaults_distinct_false_and_worker_concurrent(coyotes_factory, r):
    daemon = coyotes_factory("-concurrent", "4")
    assert ok_data(post_form(daemon, "/channels", [("name", "plain")])) is None
    assert json.loads(r.hget(CHANNELS_KEY, "plain")) == {"name": "plain", "distinct": False,
                                                          "worker_count": 4}
    assert ok_data(post_form(daemon, "/channels", [("name", "dis"), ("distinct", "true")])) \
        is None
    assert json.loads(r.hget(CHANNELS_KEY, "dis"))["distinct"] is True


def test_dead_letters(coyotes, r):
    assert ok_data(coyotes.request("GET", "/dead-letters")) == {"entries": [], "count": 0,
                                                                "trimmed": 0}
    r.lpush("task:prepare:queue", "not json at all")
    r.lpush("task:prepare:queue", json.dumps({"task": "echo x", "chan": "nowhere"}))
    wait_until(lambda: r.llen(DEAD_KEY) == 2, what="two dead letters")
    data = ok_data(coyotes.request("GET", "/dead-letters"))
    assert data["count"] == 2 and len(data["entries"]) == 2, data
    by_entry = {e["entry"]: e for e in data["entries"]}
    assert "not json at all" in by_entry and by_entry["not json at all"]["reason"]
    unknown = by_entry[json.dumps({"task": "echo x", "chan": "nowhere"})]
    assert "nowhere" in unknown["reason"], unknown
    page = ok_data(coyotes.request("GET", "/dead-letters?limit=1&offset=1"))
    assert page["count"] == 2 and len(page["entries"]) == 1, page
    assert page["entries"][0]["entry"] == "not json at all"   # newest first


def test_dead_letter_list_is_capped_and_keeps_a_prefix_of_oversized_entries(coyotes_factory, r):
    daemon = coyotes_factory("-dead-letters-max", "5")
    r.lpush("task:prepare:queue", *[f"not json {i}" for i in range(12)])
    wait_until(lambda: r.llen("task:prepare:queue") == 0 and not r.keys("task:node:*:prepare"),
               what="the bad entries to be routed")
    data = ok_data(daemon.request("GET", "/dead-letters"))
    assert data["count"] == 5 and data["trimmed"] == 7, data
    assert [e["entry"] for e in data["entries"]] == [f"not json {i}" for i in (11, 10, 9, 8, 7)]
    huge = "x" * 100_000   # not JSON, and larger than a dead letter keeps
    r.lpush("task:prepare:queue", huge)
    wait_until(lambda: r.get(DEAD_KEY + ":trimmed") == "8", what="the huge entry parked")
    letter = ok_data(daemon.request("GET", "/dead-letters?limit=1"))["entries"][0]
    assert letter["truncated"] is True and letter["entry_bytes"] == 100_000, letter
    assert letter["entry"] == huge[:len(letter["entry"])] and len(letter["entry"]) <= 16384
    assert letter["entry_sha256"] == hashlib.sha256(huge.encode()).hexdigest()
    assert r.llen(DEAD_KEY) == 5


# -- errors ------------------------------------------------------------------
def test_unknown_channel_is_404(coyotes, tmp_path):
    assert "nope" in assert_error(coyotes.request("GET", "/channels/nope"), 404)
    assert "nope" in assert_error(post_form(coyotes, "/channels/nope", [("task", "true")]), 404)
    assert "nope" in assert_error(
        post_form(coyotes, "/channels/nope/tasks", [("task", "true")]), 404)
    assert "nope" in assert_error(coyotes.request("POST", "/channels/nope/tasks",
                                                  {"command": "true"}), 404)


def test_post_channels_errors(coyotes, r):
    cases = [
        ([("name", "w1"), ("worker", "abc")], 400),
        ([("name", "w2"), ("worker", "0")], 400),
        ([("name", "w3"), ("worker", "-3")], 400),
        ([("name", "w4"), ("distinct", "maybe")], 400),
        ([("name", "bad name")], 400),
        ([("name", "x/y")], 400),
        ([("name", "")], 400),
        ([], 400),
        ([("name", "a" * 65)], 400),
        ([("name", "default")], 409),
    ]
    for fields, status in cases:
        assert_error(post_form(coyotes, "/channels", fields), status, str(fields))
    assert_error(coyotes.request("POST", "/channels", {"name": "j", "worker": "abc"}), 400)
    assert_error(coyotes.request("POST", "/channels", {"name": "biz"}), 409)
    assert sorted(r.hkeys(CHANNELS_KEY)) == ["biz", "cron", "default"]
    # the existing channel is left as it was
    assert json.loads(r.hget(CHANNELS_KEY, "default"))["distinct"] is True
    ok_data(post_form(coyotes, "/channels", [("name", "once")]))
    assert "once" in assert_error(post_form(coyotes, "/channels", [("name", "once")]), 409)


def test_push_errors_queue_nothing(api_only, r):
    daemon = api_only()
    cases = [
        ("/channels/default", [], 400),
        ("/channels/default", [("task", "")], 400),
        ("/channels/default", [("task", "   ")], 400),
        ("/channels/default", [("task", "echo 'unbalanced")], 400),
        ("/channels/default/tasks", [("task", 'echo "unbalanced')], 400),
        ("/channels/default/tasks", [("id", "only-an-id")], 400),
        ("/channels/default/tasks", [("task", "echo x"), ("delay", "abc")], 400),
        ("/channels/default/tasks", [("task", "echo x"), ("delay", "-5")], 400),
        ("/channels/default/tasks", [("task", "echo x"), ("delay", "nan")], 400),
        ("/channels/default/tasks", [("task", "echo x"), ("delay", "1e12")], 400),
    ]
    for path, fields, status in cases:
        for kind in ("urlencoded", "multipart"):
            assert_error(post_form(daemon, path, fields, kind), status, f"{path} {fields} {kind}")
    json_cases = [
        ("/channels/default", b"{not json"),
        ("/channels/default/tasks", b"{\"task\": "),
        ("/channels/default/tasks", b"[\"echo\"]"),
        ("/channels", b"{bad"),
        ("/channels/default/tasks", b"{\"command\": \"echo\", \"args\": [{\"a\": 1}]}"),
        ("/channels/default/tasks", b"{\"task\": 5}"),
    ]
    for path, body in json_cases:
        assert_error(daemon.request("POST", path, body=body,
                                    headers={"Content-Type": "application/json"}), 400,
                     f"{path} {body!r}")
    assert r.llen("default:tasks:queue") == 0 and r.zcard(DELAYED_KEY) == 0
    assert r.keys("default:*") == []


def test_unknown_route_and_wrong_method(coyotes):
    for path in ("/nope", "/channels/default/nope", "/channels/default/tasks/x/y"):
        assert_error(coyotes.request("GET", path), 404, path)
    assert_error(post_form(coyotes, "/nope", [("task", "true")]), 404)
    for method, path in (("GET", "/channels/default/tasks"), ("PUT", "/channels/default"),
                         ("PUT", "/channels"), ("POST", "/dead-letters"),
                         ("DELETE", "/channels"), ("GET", "/channels/default/tasks/x")):
        assert_error(coyotes.request(method, path), 405, f"{method} {path}")


def test_bad_limit_and_offset(coyotes):
    for path in ("/channels/default", "/channels", "/dead-letters"):
        for query in ("limit=abc", "offset=abc", "limit=-1", "offset=-1", "limit=1000001",
                      "limit=1.5"):
            assert_error(coyotes.request("GET", f"{path}?{query}"), 400, f"{path}?{query}")
        assert ok_data(coyotes.request("GET", f"{path}?limit=5&offset=0")) is not None


# -- distinct ------------------------------------------------------------------
def test_distinct_default_channel_refuses_queued_or_running_duplicates(
        coyotes_factory, r, tmp_path, gate):
    daemon = coyotes_factory("-concurrent", "1")
    ledger = tmp_path / "ledger"
    a, b = gate_command(ledger, gate, "A"), gate_command(ledger, gate, "B")

    first = ok_data(post_form(daemon, "/channels/default", [("task", a)]))
    assert first["result"] is True and first["task_id"]
    wait_until(lambda: started(ledger, "A"), what="A running")
    again = ok_data(post_form(daemon, "/channels/default", [("task", a)]))
    assert again["result"] is False and again["task_name"] == a and again["task_id"], again

    assert ok_data(post_form(daemon, "/channels/default/tasks", [("task", b)]))["result"] is True
    dup = ok_data(daemon.request("POST", "/channels/default/tasks", {"task": b}))
    assert dup["result"] is False and dup["task_id"], dup
    listing = ok_data(daemon.request("GET", "/channels/default"))
    assert [(t["task_name"], t["status"]) for t in listing["tasks"]] == \
        [(a, "running"), (b, "queued")] and listing["count"] == 2, listing

    gate.touch()
    wait_until(lambda: ended(ledger, "A") and ended(ledger, "B") and idle(r, "default"),
               what="A and B finished")
    assert events(ledger).count(("start", "A")) == 1 and events(ledger).count(("start", "B")) == 1
    wait_until(lambda: not r.keys("default:tasks:queue:*:dis"), what="distinct flags cleared")
    later = ok_data(post_form(daemon, "/channels/default", [("task", a)]))
    assert later["result"] is True, later
    wait_until(lambda: events(ledger).count(("end", "A")) == 2, what="A ran again")


def test_non_distinct_channel_accepts_duplicates(coyotes, r, tmp_path, gate):
    ok_data(post_form(coyotes, "/channels", [("name", "dups"), ("distinct", "false"),
                                             ("worker", "1")]))
    ledger = tmp_path / "ledger"
    x = gate_command(ledger, gate, "X")
    replies = [ok_data(post_form(coyotes, "/channels/dups", [("task", x)])) for _ in range(3)]
    assert [d["result"] for d in replies] == [True, True, True]
    assert len({d["task_id"] for d in replies}) == 3
    wait_until(lambda: started(ledger, "X"))
    listing = ok_data(coyotes.request("GET", "/channels/dups"))
    assert [t["status"] for t in listing["tasks"]] == ["running", "queued", "queued"]
    assert [t["task_id"] for t in listing["tasks"]] == [d["task_id"] for d in replies]
    gate.touch()
    wait_until(lambda: events(ledger).count(("end", "X")) == 3 and idle(r, "dups"),
               what="three runs")


# -- listings ------------------------------------------------------------------
def test_listing_running_then_queued_in_run_order_with_legacy_entries(
        coyotes_factory, r, tmp_path, gate):
    daemon = coyotes_factory("-concurrent", "1")
    ledger = tmp_path / "ledger"
    tags = ["R", "Q1", "Q2", "Q3"]
    ids = {}
    for tag in tags:
        data = ok_data(daemon.request("POST", "/channels/default/tasks",
                                      {"task": gate_command(ledger, gate, tag), "id": f"id-{tag}"}))
        ids[tag] = data["task_id"]
        assert data["task_id"] == f"id-{tag}" and data["result"] is True
        if tag == "R":
            wait_until(lambda: started(ledger, "R"), what="R running")
    legacy = ledger_command(ledger, "legacy")
    r.lpush("default:tasks:queue", legacy)

    listing = ok_data(daemon.request("GET", "/channels/default"))
    tasks = listing["tasks"]
    assert listing["count"] == 5, listing
    assert [(t["task_name"], t["status"]) for t in tasks] == \
        [(gate_command(ledger, gate, t), s)
         for t, s in zip(tags, ["running", "queued", "queued", "queued"], strict=True)] \
        + [(legacy, "queued")], tasks
    assert [t["task_id"] for t in tasks[:4]] == [ids[t] for t in tags]
    for t in tasks:
        assert t["channel"] == "default" and isinstance(t["task_id"], str) and t["task_id"], t
    assert len({t["task_id"] for t in tasks}) == 5

    # the running task says where it runs: this node, since when, and its pid once
    # the node has noted it (a maintenance turn)
    running = tasks[0]
    node = ok_data(daemon.request("GET", "/"))["node"]
    assert running["node"] == node and running["started_at"] > time.time() - 60
    wait_until(lambda: ok_data(daemon.request("GET", "/channels/default"))["tasks"][0]["pid"],
               what="the running task's pid noted")
    pid = ok_data(daemon.request("GET", "/channels/default"))["tasks"][0]["pid"]
    assert os.getpgid(pid) == pid   # the command's own session: its group leader
    assert listing["counts"] == {"running": 1, "queued": 4, "failed": 0}

    # the same through GET /channels and with a page
    assert go_view(ok_data(daemon.request("GET", "/channels"))["default"]) == go_view(listing)
    page = ok_data(daemon.request("GET", "/channels/default?offset=1&limit=2"))
    assert go_view(page) == {"tasks": tasks[1:3], "count": 5}, page
    assert go_view(ok_data(daemon.request("GET", "/channels/default?offset=0&limit=0"))) == \
        {"tasks": [], "count": 5}

    gate.touch()
    wait_until(lambda: ended(ledger, "legacy") and idle(r, "default"), what="all ran")
    runs = [tag for event, tag in events(ledger) if event == "start"]
    assert runs == [*tags, "legacy"], runs
    # the id listed for the legacy entry is the one it ran under
    assert f"task {tasks[4]['task_id']} started" in daemon.log()


def test_pagination_of_100000_queued_tasks(api_only, r):
    daemon = api_only()
    total = 100_000
    key = "default:tasks:queue"
    batch = 10_000
    with r.pipeline(transaction=False) as pipe:
        for start in range(0, total, batch):
            pipe.lpush(key, *(json.dumps({"id": f"t{i}", "task": f"echo {i}", "chan": "default",
                                          "ts": 1}) for i in range(start, start + batch)))
        pipe.execute()
    assert r.llen(key) == total

    t0 = time.monotonic()
    data = ok_data(daemon.request("GET", "/channels/default"))
    elapsed = time.monotonic() - t0
    assert data["count"] == total
    assert [t["task_id"] for t in data["tasks"]] == [f"t{i}" for i in range(100)]
    assert all(t["status"] == "queued" and t["task_name"] == f"echo {i}"
               for i, t in enumerate(data["tasks"]))
    assert elapsed < 2.0, elapsed

    t0 = time.monotonic()
    tail = ok_data(daemon.request("GET", "/channels/default?offset=99990&limit=20"))
    assert time.monotonic() - t0 < 2.0
    assert tail["count"] == total
    assert [t["task_id"] for t in tail["tasks"]] == [f"t{i}" for i in range(99990, total)]
    mid = ok_data(daemon.request("GET", "/channels/default?offset=50000&limit=3"))
    assert [t["task_id"] for t in mid["tasks"]] == ["t50000", "t50001", "t50002"]
    beyond = ok_data(daemon.request("GET", "/channels/default?offset=200000"))
    assert go_view(beyond) == {"tasks": [], "count": total}

    t0 = time.monotonic()
    everything = ok_data(daemon.request("GET", "/channels"))
    assert time.monotonic() - t0 < 2.0
    assert everything["default"]["count"] == total and len(everything["default"]["tasks"]) == 100
    assert r.llen(key) == total   # task mode off: nothing consumed


# -- security ------------------------------------------------------------------
def test_cross_site_requests_are_refused(api_only, r):
    daemon = api_only()
    port = daemon.http_port
    refused = [
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
        {"Origin": f"http://evil.example:{port}"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Host": f"evil.example:{port}"},
        {"Host": "evil.example:60001"},
        {"Host": "coyotes.internal"},
    ]
    for headers in refused:
        assert_error(post_form(daemon, "/channels/default", [("task", "echo pwned")],
                               headers=headers), 403, str(headers))
        assert_error(daemon.request("POST", "/channels/default/tasks", {"task": "echo pwned"},
                                    headers=headers), 403, str(headers))
        assert_error(post_form(daemon, "/channels", [("name", "evil")], "multipart",
                               headers=headers), 403, str(headers))
        assert_error(daemon.request("GET", "/channels", headers=headers), 403, str(headers))
    assert r.llen("default:tasks:queue") == 0 and r.keys("default:*") == []
    assert not r.hexists(CHANNELS_KEY, "evil")

    allowed = [
        {},
        {"Origin": f"http://127.0.0.1:{port}"},
        {"Host": f"localhost:{port}"},
        {"Host": f"localhost:{port}", "Origin": f"http://localhost:{port}"},
        {"Host": f"127.0.0.1:{port}"},
        {"Sec-Fetch-Site": "same-origin", "Origin": f"http://127.0.0.1:{port}"},
        {"Sec-Fetch-Site": "none"},
    ]
    for n, headers in enumerate(allowed):
        data = ok_data(post_form(daemon, "/channels/default", [("task", f"echo ok {n}")],
                                 headers=headers))
        assert data["result"] is True and data["task_id"], headers
    assert r.llen("default:tasks:queue") == len(allowed)


def test_allowed_hosts_flag(api_only, r):
    daemon = api_only("-allowed-hosts", "coyotes.internal")
    data = ok_data(post_form(daemon, "/channels/default", [("task", "echo one")],
                             headers={"Host": "coyotes.internal"}))
    assert data["result"] is True
    port = daemon.http_port
    ok_data(daemon.request("GET", "/channels", headers={"Host": f"coyotes.internal:{port}"}))
    ok_data(daemon.request("GET", "/channels", headers={"Host": f"localhost:{port}"}))
    assert_error(post_form(daemon, "/channels/default", [("task", "echo two")],
                           headers={"Host": "evil.example:60001"}), 403)
    assert r.llen("default:tasks:queue") == 1


def test_non_loopback_listener_answers_ip_and_own_names_only(coyotes_factory, r):
    daemon = coyotes_factory("-task-mode=false", start=False)
    # the last one wins; without a token, beyond loopback needs -http-insecure
    daemon.args += ["-http-addr", f"0.0.0.0:{daemon.http_port}", "-http-insecure"]
    daemon.start()
    port = daemon.http_port
    for host in (f"10.1.2.3:{port}", f"[fd00::1]:{port}", f"{socket.gethostname()}:{port}",
                 f"localhost:{port}"):
        ok_data(daemon.request("GET", "/channels", headers={"Host": host}))
    assert_error(daemon.request("GET", "/channels", headers={"Host": f"rebind.example:{port}"}),
                 403)


def test_listing_shows_bytes_that_are_not_utf8(api_only, redis_server):
    daemon = api_only()
    redis.Redis(port=redis_server.port).lpush("default:tasks:queue", b"echo \xc4\xe3")
    data = ok_data(daemon.request("GET", "/channels/default"))
    assert data["tasks"][0]["task_name"] == "echo \ufffd\ufffd"


def test_nan_and_infinity_are_not_json(coyotes, r):
    assert_error(coyotes.request("POST", "/channels/default/tasks", body=b'{"task": "echo", '
                                 b'"delay": NaN}', headers={"Content-Type": "application/json"}),
                 400)
    r.lpush("task:prepare:queue", '{"task": "echo x", "execute_at": Infinity}',
            '{"task": "echo y", "execute_at": 1e400}')
    wait_until(lambda: r.llen("task:prepare:dead") == 2)
    reasons = {json.loads(x)["reason"] for x in r.lrange("task:prepare:dead", 0, -1)}
    assert reasons == {"not valid JSON", "execute_at must be unix seconds"}
    assert r.zcard("task:delay:queue") == 0


def chunked_post(daemon, path: str, chunks: list[bytes], content_type: str):
    conn = http.client.HTTPConnection("127.0.0.1", daemon.http_port, timeout=30)
    try:
        conn.request("POST", path, body=iter(chunks), encode_chunked=True,
                     headers={"Content-Type": content_type, "Transfer-Encoding": "chunked"})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def test_body_limit(coyotes_factory, r, tmp_path):
    daemon = coyotes_factory("-max-body", "2048")
    ledger = tmp_path / "ledger"
    big = [("task", "echo " + "x" * 4096)]
    assert_error(post_form(daemon, "/channels/default", big), 413, "urlencoded 4 KiB")
    assert_error(post_form(daemon, "/channels/default/tasks", big, "multipart"), 413)
    assert_error(daemon.request("POST", "/channels/default/tasks",
                                {"task": "echo " + "y" * 4096}), 413)

    form = "application/x-www-form-urlencoded"
    chunks = [b"task=echo+", *(b"z" * 1000 for _ in range(4))]
    assert_error(chunked_post(daemon, "/channels/default", chunks, form), 413, "chunked")
    assert r.llen("default:tasks:queue") == 0 and r.keys("default:*") == []

    # under the limit, chunked or not, all is well
    body = urllib.parse.urlencode({"task": ledger_command(ledger, "chunked")}).encode()
    data = ok_data(chunked_post(daemon, "/channels/default", [body[:10], body[10:]], form))
    assert data["result"] is True and data["task_id"]
    wait_until(lambda: ended(ledger, "chunked"), what="chunked task ran")
    command = ledger_command(ledger, "exact")
    fields = [("task", command)]
    pad = 2048 - len(urlencoded([*fields, ("pad", "")])[0])
    exact, headers = urlencoded([*fields, ("pad", "p" * pad)])
    assert len(exact) == 2048
    ok_data(daemon.request("POST", "/channels/default", body=exact, headers=headers))
    wait_until(lambda: ended(ledger, "exact"), what="2048-byte body accepted")


def raw_exchange(daemon, head: bytes, body: bytes = b"", expect_continue: bool = False,
                 timeout: float = 10) -> tuple[bytes, bytes]:
    """Send ``head`` (and ``body``, after a 100 Continue if asked) on a raw socket;
    (interim bytes, final response bytes)."""
    sock = socket.create_connection(("127.0.0.1", daemon.http_port), timeout=timeout)
    try:
        sock.sendall(head)
        interim = b""
        if expect_continue:
            while b"\r\n\r\n" not in interim:
                chunk = sock.recv(4096)
                assert chunk, f"connection closed before 100 Continue: {interim!r}"
                interim += chunk
            assert interim.startswith(b"HTTP/1.1 100"), interim
            interim, rest = interim.split(b"\r\n\r\n", 1)
        else:
            rest = b""
        if body:
            sock.sendall(body)
        response = rest
        while b"\r\n\r\n" not in response:
            chunk = sock.recv(4096)
            assert chunk, f"connection closed early: {response!r}"
            response += chunk
        headers, payload = response.split(b"\r\n\r\n", 1)
        length = int(next(line.split(b":", 1)[1] for line in headers.split(b"\r\n")
                          if line.lower().startswith(b"content-length:")))
        while len(payload) < length:
            chunk = sock.recv(4096)
            assert chunk, "connection closed in the body"
            payload += chunk
        return interim, headers + b"\r\n\r\n" + payload[:length]
    finally:
        sock.close()


def parse_response(raw: bytes) -> tuple[int, dict]:
    headers, payload = raw.split(b"\r\n\r\n", 1)
    return int(headers.split(b" ", 2)[1]), json.loads(payload)


def test_expect_100_continue_like_php_curl(coyotes_factory, tmp_path):
    """curl (and so PHP) sends 'Expect: 100-continue' for bodies over 1 KiB."""
    daemon = coyotes_factory("-max-body", "4096")
    ledger = tmp_path / "ledger"
    body = urllib.parse.urlencode({"task": ledger_command(ledger, "curl"),
                                   "pad": "p" * 1500}).encode()
    head = (f"POST /channels/default HTTP/1.1\r\nHost: 127.0.0.1:{daemon.http_port}\r\n"
            "Content-Type: application/x-www-form-urlencoded\r\n"
            f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n").encode()
    _, response = raw_exchange(daemon, head, body, expect_continue=True)
    status, env = parse_response(response)
    assert status == 200 and env["data"]["result"] is True and env["data"]["task_id"], env
    wait_until(lambda: ended(ledger, "curl"), what="task sent after 100 Continue ran")


def test_declared_oversized_body_refused_before_it_is_sent(coyotes_factory, r):
    """A huge Content-Length gets its 413 at once: the body is never waited for."""
    daemon = coyotes_factory("-max-body", "2048")
    head = (f"POST /channels/default HTTP/1.1\r\nHost: 127.0.0.1:{daemon.http_port}\r\n"
            "Content-Type: application/x-www-form-urlencoded\r\n"
            f"Content-Length: {50 << 20}\r\n\r\n").encode()
    t0 = time.monotonic()
    _, response = raw_exchange(daemon, head, b"task=echo+", timeout=5)
    assert time.monotonic() - t0 < 3
    assert_error(parse_response(response), 413)
    assert r.keys("default:*") == []


def test_listed_unreadable_entries_still_carry_a_task_id(api_only, r):
    """Every task in a listing has its id, even an entry that cannot run."""
    daemon = api_only()
    legacy_bad = "echo 'unbalanced"
    json_bad = json.dumps({"id": "keep-me", "task": "", "chan": "default",
                           "command": {"name": "", "args": []}})
    r.lpush("default:tasks:queue", legacy_bad, json_bad)
    tasks = ok_data(daemon.request("GET", "/channels/default"))["tasks"]
    assert [t["status"] for t in tasks] == ["queued", "queued"], tasks
    assert tasks[0]["task_name"] == legacy_bad, tasks
    assert isinstance(tasks[0]["task_id"], str) and tasks[0]["task_id"], tasks[0]
    assert tasks[1]["task_id"] == "keep-me", tasks[1]


def test_json_command_object_form(coyotes, tmp_path):
    out = tmp_path / "out.json"
    data = ok_data(coyotes.request("POST", "/channels/default/tasks", {
        "command": {"name": sys.executable, "args": ["-c", RECORD, str(out), "a b", "c"]}}))
    assert data["result"] is True and data["task_id"]
    wait_until(lambda: json.loads(out.read_text()) == ["a b", "c"])


def test_redis_down_gives_503_envelope(coyotes, redis_server):
    redis_server.kill()
    for method, path in (("GET", "/channels"), ("GET", "/channels/default"),
                         ("GET", "/dead-letters")):
        assert "redis" in assert_error(coyotes.request(method, path), 503, path)
    assert_error(post_form(coyotes, "/channels/default", [("task", "echo x")]), 503)


# -- hostile input: every refusal is a 4xx with a message ------------------------
def test_limit_zero_returns_counts_only_and_huge_offsets_are_refused(api_only, r):
    """limit=0 once returned whole lists (LRANGE 0 -1); a huge offset gave 503."""
    daemon = api_only()
    r.lpush(DEAD_KEY, *[json.dumps({"entry": f"e{i}", "reason": "x"}) for i in range(30)])
    r.zadd(DELAYED_KEY, {json.dumps({"id": f"d{i}", "task": "true", "chan": "default"}): 4e9
                         for i in range(30)})
    r.lpush("default:tasks:queue", *[f"echo {i}" for i in range(30)])
    r.hset("default:tasks:queue:failed", mapping={f"f{i}": json.dumps(
        {"id": f"f{i}", "task": "false", "chan": "default"}) for i in range(30)})
    r.zadd("default:tasks:queue:failed:index", {f"f{i}": i for i in range(30)})
    for path, items in (("/dead-letters", "entries"), ("/delay-tasks", "tasks"),
                        ("/channels/default/failed-tasks", "tasks"),
                        ("/channels/default", "tasks")):
        data = ok_data(daemon.request("GET", f"{path}?limit=0"))
        assert data[items] == [] and data["count"] == 30, path
        data = ok_data(daemon.request("GET", f"{path}?limit=1000&offset=29"))
        assert len(data[items]) == 1 and data["count"] == 30, path
        for offset in ("99999999999999999999", "9223372036854775807", "4294967296"):
            assert_error(daemon.request("GET", f"{path}?offset={offset}"), 400, path)


def test_bodies_that_are_not_utf8_or_not_unicode_or_too_deep_are_400(api_only, r):
    daemon = api_only()
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    as_json = {"Content-Type": "application/json"}
    cases = [
        (b"task=echo+%ff%fe", form),                         # percent-escaped bytes, not UTF-8
        (b"task=echo \xff\xfe", form),                         # raw bytes, not UTF-8
        (b'{"task": "echo \\ud800"}', as_json),               # lone surrogate escape
        (b'{"task": "echo ok", "note": "\\udfff"}', as_json),  # in a field we only keep
        (b'{"command": "echo", "args": ["\\ud83d"]}', as_json),
        (b'{"task": "echo \xff"}', as_json),                   # JSON text not UTF-8
        (b"[" * 10_000 + b"]" * 10_000, as_json),              # 10,000 deep
        (b'{"task": "echo x", "a": ' + b"[" * 10_000 + b"]" * 10_000 + b"}", as_json),
    ]
    for body, headers in cases:
        for path in ("/channels/default", "/channels/default/tasks", "/channels"):
            assert_error(daemon.request("POST", path, body=body, headers=headers), 400,
                         f"{path} {body[:60]!r}")
    mixed = b"--b\r\nContent-Disposition: form-data; name=\"task\"\r\n\r\necho \xff\r\n--b--\r\n"
    assert_error(daemon.request("POST", "/channels/default", body=mixed, headers={
        "Content-Type": "multipart/form-data; boundary=b"}), 400, "multipart")
    assert r.llen("default:tasks:queue") == 0 and r.zcard(DELAYED_KEY) == 0
    assert "Traceback" not in daemon.log()


def test_health_is_503_until_ready_and_while_redis_is_down(coyotes_factory, redis_server):
    """A real readiness signal: 503 while the node waits for Redis, 200 once it runs
    its channels, 503 again when Redis goes away, in task mode and API-only mode."""
    redis_server.kill()
    daemons = [coyotes_factory(*args, start=False) for args in ((), ("-task-mode=false",))]
    for daemon in daemons:
        daemon.start(wait=False)
        wait_until(lambda d=daemon: health(d)[0] == 503, what="the API up, not ready")
        assert "starting" in assert_error(health(daemon), 503)
    redis_server.start()
    for daemon in daemons:
        daemon.wait_ready()
        data = ok_data(health(daemon))
        assert data["ready"] is True and data["node"]
    redis_server.kill()
    for daemon in daemons:
        assert "redis" in assert_error(health(daemon), 503)
    redis_server.start()


def health(daemon):
    try:
        return daemon.request("GET", "/health")
    except OSError:   # the API is not listening yet
        return 0, None
