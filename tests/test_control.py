"""Live channel control through the API, on real daemons and a real Redis:
PATCH /channels/{c}, pause and resume, DELETE (refused, moved, dropped,
drained), and the same change seen by a second node.

Tasks are ledger commands (start/end lines with times) or gated ones that
run until the test opens their gate, so that "running" is a state the test
holds as long as it needs.
"""

from __future__ import annotations

import json
import time

from conftest import (
    assert_error,
    ended,
    events,
    gate_command,
    ledger_command,
    max_overlap,
    ok_data,
    read_ledger,
    started,
    wait_until,
)

CHANNELS_KEY = "task:channels"
DEAD_KEY = "task:prepare:dead"
QUIET = 1.5   # seconds in which a task that may not start would have started


def push(daemon, channel: str, command: str, task_id: str = "") -> str:
    data = ok_data(daemon.request("POST", f"/channels/{channel}/tasks",
                                  {"task": command, **({"id": task_id} if task_id else {})}))
    assert data["result"] is True, data
    return data["task_id"]


def create(daemon, name: str, worker: int = 1) -> None:
    assert ok_data(daemon.request("POST", "/channels", {"name": name, "worker": worker})) is None


def patch(daemon, name: str, fields: dict):
    return daemon.request("PATCH", f"/channels/{name}", fields)


def starts(ledger) -> list[str]:
    return [tag for event, tag in events(ledger) if event == "start"]


def stored(r, name: str) -> dict:
    return json.loads(r.hget(CHANNELS_KEY, name))


def test_patch_validates_every_field_and_changes_nothing_when_refused(coyotes, r):
    before = r.hget(CHANNELS_KEY, "biz")
    assert_error(patch(coyotes, "nope", {"worker": 2}), 404)
    assert "nothing to change" in assert_error(patch(coyotes, "biz", {}), 400)
    assert "workers" in assert_error(patch(coyotes, "biz", {"workers": 3}), 400)
    for bad in ({"worker": 0}, {"worker": 1001}, {"worker": "x"}, {"worker": 1.5},
                {"distinct": "maybe"}, {"timeout": -1}, {"retries": 1000},
                {"worker": 2, "timeout": "soon"}):
        assert_error(patch(coyotes, "biz", bad), 400, str(bad))
    assert r.hget(CHANNELS_KEY, "biz") == before

    # a PHP client's form
    code, env = coyotes.call("PATCH", "/channels/biz", {"worker": "3", "distinct": "false"})
    assert code == 200, env
    settings = json.loads(env)["data"]
    assert settings["worker"] == 3 and settings["distinct"] is False, settings
    # what the Go daemon reads is there, in its form
    assert stored(r, "biz") == {"name": "biz", "distinct": False, "worker_count": 3}

    settings = ok_data(patch(coyotes, "biz", {"timeout": 30, "retries": 2}))
    assert (settings["worker"], settings["timeout"], settings["retries"]) == (3, 30.0, 2)
    assert stored(r, "biz") == {"name": "biz", "distinct": False, "worker_count": 3,
                                "timeout": 30.0, "retries": 2}
    view = ok_data(coyotes.request("GET", "/channels/biz"))
    assert view["settings"] == settings and view["paused"] is False


def test_resize_grows_at_once_and_shrinks_without_interrupting(coyotes, tmp_path, gate):
    create(coyotes, "grow", worker=1)
    ledger = tmp_path / "ledger"
    for tag in "ABC":
        push(coyotes, "grow", gate_command(ledger, gate, tag))
    wait_until(lambda: starts(ledger) == ["A"], what="A running")
    time.sleep(QUIET)
    assert starts(ledger) == ["A"]   # one worker

    ok_data(patch(coyotes, "grow", {"worker": 3}))
    wait_until(lambda: sorted(starts(ledger)) == ["A", "B", "C"], what="B and C started")

    # fewer workers: nothing is stopped, the extra ones end with their task
    ok_data(patch(coyotes, "grow", {"worker": 1}))
    time.sleep(QUIET)
    assert not any(event == "end" for event, _ in events(ledger)), events(ledger)
    gate.touch()
    wait_until(lambda: all(ended(ledger, tag) for tag in "ABC"), what="A, B and C ended")
    assert sorted(starts(ledger)) == ["A", "B", "C"]   # each ran once, none again

    after = tmp_path / "after"
    for tag in "DEF":
        push(coyotes, "grow", ledger_command(after, tag, 0.3))
    wait_until(lambda: all(ended(after, tag) for tag in "DEF"), what="D, E and F ran")
    assert max_overlap(read_ledger(after)) == 1


def test_pause_holds_the_queue_across_a_restart_and_resume_releases_it(
        coyotes, r, tmp_path, gate):
    ledger = tmp_path / "ledger"
    push(coyotes, "default", gate_command(ledger, gate, "G"))
    wait_until(lambda: started(ledger, "G"), what="G running")

    settings = ok_data(coyotes.request("POST", "/channels/default/pause"))
    assert settings["paused"] is True and stored(r, "default")["paused"] is True
    push(coyotes, "default", ledger_command(ledger, "H"))
    gate.touch()   # the running command goes on and finishes
    wait_until(lambda: ended(ledger, "G"), what="G finished while paused")
    time.sleep(QUIET)
    assert starts(ledger) == ["G"]
    view = ok_data(coyotes.request("GET", "/channels/default"))
    assert view["paused"] is True and view["counts"]["queued"] == 1, view

    coyotes.stop()   # the pause is a setting: a restarted node keeps it
    coyotes.start()
    time.sleep(QUIET)
    assert starts(ledger) == ["G"]

    settings = ok_data(coyotes.request("POST", "/channels/default/resume"))
    assert settings["paused"] is False and "paused" not in stored(r, "default")
    wait_until(lambda: ended(ledger, "H"), what="H ran once resumed")
    assert_error(coyotes.request("POST", "/channels/nope/pause"), 404)
    assert_error(coyotes.request("POST", "/channels/nope/resume"), 404)


def test_delete_refuses_queued_tasks_then_moves_them_in_order(coyotes, r, tmp_path):
    create(coyotes, "old")
    create(coyotes, "new")
    ok_data(coyotes.request("POST", "/channels/old/pause"))   # its tasks stay queued
    ledger = tmp_path / "ledger"
    ids = [push(coyotes, "old", ledger_command(ledger, tag), f"t-{tag}") for tag in "123"]

    assert "3 queued" in assert_error(coyotes.request("DELETE", "/channels/old"), 409)
    assert_error(coyotes.request("DELETE", "/channels/default"), 409)
    assert_error(coyotes.request("DELETE", "/channels/nope"), 404)
    for query in ("move_to=nope", "move_to=old", "move_to=new&drop=true", "drop=maybe",
                  "move_to=a%20b"):
        assert_error(coyotes.request("DELETE", f"/channels/old?{query}"), 400, query)
    assert r.hexists(CHANNELS_KEY, "old") and r.llen("old:tasks:queue") == 3

    data = ok_data(coyotes.request("DELETE", "/channels/old?move_to=new"))
    assert data == {"channel": "old", "moved": 3}
    wait_until(lambda: all(ended(ledger, tag) for tag in "123"), what="moved tasks ran")
    assert starts(ledger) == ["1", "2", "3"]   # in the order they were pushed
    # a command's last line comes before its result is recorded: wait for the records
    def record(task_id: str) -> dict:
        return ok_data(coyotes.request("GET", f"/tasks/{task_id}"))

    wait_until(lambda: all(record(i)["status"] == "succeeded" for i in ids),
               what="the moved tasks recorded")
    assert [record(i)["channel"] for i in ids] == ["new"] * 3

    assert not r.hexists(CHANNELS_KEY, "old")
    assert_error(coyotes.request("GET", "/channels/old"), 404)
    assert_error(coyotes.request("POST", "/channels/old/tasks", {"task": "true"}), 404)
    # a producer that did not hear of it: its entry lands in the dead-letter list
    r.lpush("task:prepare:queue", json.dumps({"task": "true", "chan": "old"}))
    wait_until(lambda: r.llen(DEAD_KEY) == 1, what="the entry dead-lettered")
    assert "old" in json.loads(r.lindex(DEAD_KEY, 0))["reason"]


def test_delete_with_drop_buries_the_queue_and_closes_the_records(coyotes, r, tmp_path):
    create(coyotes, "gone")
    ok_data(coyotes.request("POST", "/channels/gone/pause"))
    ids = [push(coyotes, "gone", ledger_command(tmp_path / "ledger", tag), f"d-{tag}")
           for tag in "12"]
    data = ok_data(coyotes.request("DELETE", "/channels/gone", {"drop": True}))
    assert data == {"channel": "gone", "dropped": 2}
    letters = ok_data(coyotes.request("GET", "/dead-letters"))["entries"]
    assert sorted(json.loads(letter["entry"])["id"] for letter in letters) == sorted(ids)
    assert all(letter["reason"] == "channel gone was deleted" for letter in letters), letters
    for task_id in ids:
        record = ok_data(coyotes.request("GET", f"/tasks/{task_id}"))
        assert record["status"] == "canceled" and "deleted" in record["error"], record
        assert 0 < r.ttl(f"task:record:{task_id}")
    assert r.llen("gone:tasks:queue") == 0
    assert not (tmp_path / "ledger").exists()   # none of them ran


def test_a_deleted_channel_lets_its_running_command_finish(coyotes, r, tmp_path, gate):
    create(coyotes, "busy")
    ledger = tmp_path / "ledger"
    task_id = push(coyotes, "busy", gate_command(ledger, gate, "R"))
    wait_until(lambda: started(ledger, "R"), what="R running")
    assert ok_data(coyotes.request("DELETE", "/channels/busy")) == \
        {"channel": "busy", "dropped": 0}
    assert_error(coyotes.request("POST", "/channels/busy/tasks", {"task": "true"}), 404)
    time.sleep(QUIET)
    assert not ended(ledger, "R")   # not killed
    gate.touch()
    wait_until(lambda: ok_data(coyotes.request("GET", f"/tasks/{task_id}"))["status"]
               == "succeeded", what="its result recorded")
    wait_until(lambda: "channel busy: removed from this node" in coyotes.log(),
               what="the channel gone from the node")
    # made again under the same name: a new channel, consumed again
    create(coyotes, "busy")
    push(coyotes, "busy", ledger_command(ledger, "again"))
    wait_until(lambda: ended(ledger, "again"), what="a task of the new channel ran")


def test_a_change_on_one_node_applies_on_the_other(coyotes_factory, tmp_path, gate):
    a = coyotes_factory(node_id="node-a")
    b = coyotes_factory(node_id="node-b")
    create(a, "wide", worker=1)
    ledger = tmp_path / "ledger"
    for tag in "1234":
        push(a, "wide", gate_command(ledger, gate, tag))
    wait_until(lambda: len(starts(ledger)) == 2, what="one task on each node")
    time.sleep(QUIET)
    assert len(starts(ledger)) == 2

    ok_data(patch(b, "wide", {"worker": 2}))   # told on b, applied by both
    wait_until(lambda: len(starts(ledger)) == 4, what="two tasks on each node")
    nodes = {task["node"] for task in ok_data(a.request("GET", "/channels/wide"))["tasks"]}
    assert nodes == {"node-a", "node-b"}

    ok_data(a.request("POST", "/channels/wide/pause"))
    for tag in "56":
        push(b, "wide", ledger_command(ledger, tag))
    gate.touch()
    wait_until(lambda: all(ended(ledger, tag) for tag in "1234"), what="gated tasks ended")
    time.sleep(QUIET)
    assert len(starts(ledger)) == 4   # paused on both nodes
    ok_data(b.request("POST", "/channels/wide/resume"))
    wait_until(lambda: ended(ledger, "5") and ended(ledger, "6"), what="resumed on both")


# -- the limit on all nodes ---------------------------------------------------------
def test_a_pause_holds_at_once_on_a_node_that_has_not_read_it(coyotes_factory, tmp_path):
    """Paused through one node, a task pushed through another right away waits: the
    other node claims from Redis, which knows (its own view follows within 2 s)."""
    first, second = coyotes_factory(node_id="a"), coyotes_factory(node_id="b")
    ledger = tmp_path / "ledger"
    for n in range(3):   # each round: paused on a, pushed to b's idle channel at once
        ok_data(first.request("POST", "/channels/default/pause"))
        push(second, "default", ledger_command(ledger, f"p{n}"))
        time.sleep(QUIET)
        assert not started(ledger, f"p{n}"), n
        ok_data(first.request("POST", "/channels/default/resume"))
        wait_until(lambda n=n: ended(ledger, f"p{n}"), what="the task once resumed")


def test_max_running_holds_across_three_nodes(coyotes_factory, r, tmp_path):
    nodes = [coyotes_factory(node_id=f"n{i}") for i in range(3)]
    assert_error(patch(nodes[0], "default", {"max_running": -1}), 400)
    assert_error(patch(nodes[0], "default", {"max_running": "one"}), 400)
    create(nodes[0], "solo", worker=3)
    # the tasks come at once: a node that has not read the change yet (nodes[0] made
    # the channel without a limit) claims within it all the same (CLAIM reads it)
    assert ok_data(patch(nodes[1], "solo", {"max_running": 1}))["max_running"] == 1
    assert stored(r, "solo")["max_running"] == 1
    ledger = tmp_path / "ledger"
    for i in range(12):   # pushed through every node, each of which would run 3
        push(nodes[i % 3], "solo", ledger_command(ledger, f"t{i}", 0.15))
    wait_until(lambda: sum(event == "end" for event, _ in events(ledger)) == 12, timeout=60,
               what="the 12 tasks ran")
    assert max_overlap(read_ledger(ledger)) == 1

    # two at a time on all nodes together
    ok_data(patch(nodes[2], "solo", {"max_running": 2}))
    wide = tmp_path / "wide"
    for i in range(12):
        push(nodes[i % 3], "solo", ledger_command(wide, f"w{i}", 0.3))
    wait_until(lambda: sum(event == "end" for event, _ in events(wide)) == 12, timeout=60,
               what="the 12 tasks ran")
    assert max_overlap(read_ledger(wide)) == 2


def test_a_killed_nodes_slot_returns_within_its_heartbeat_ttl(coyotes_factory, tmp_path,
                                                              gate):
    a = coyotes_factory("-node-ttl", "3", node_id="a")
    create(a, "solo", worker=2)
    ok_data(patch(a, "solo", {"max_running": 1}))
    ledger = tmp_path / "ledger"
    push(a, "solo", gate_command(ledger, gate, "first"))
    wait_until(lambda: started(ledger, "first"), what="first running on a")
    b = coyotes_factory("-node-ttl", "3", node_id="b")
    push(b, "solo", ledger_command(ledger, "second"))
    time.sleep(QUIET)
    assert not started(ledger, "second")   # the one slot is a's

    a.kill9()   # its heartbeat lives up to 3 s more; then its slot is free for b
    killed = time.monotonic()
    gate.touch()   # a's orphaned command ends; run again on b, it passes at once
    wait_until(lambda: started(ledger, "second"), timeout=20, what="second started on b")
    assert time.monotonic() - killed > 1.0   # not before a's heartbeat expired
    wait_until(lambda: ended(ledger, "second") and starts(ledger).count("first") == 2,
               timeout=20, what="second ran, and first again (a's was lost with it)")


def test_a_moved_task_that_retries_stays_in_its_new_channel(coyotes, r):
    """Its entry still names the old channel: the retry follows the record's."""
    create(coyotes, "old")
    create(coyotes, "new")
    ok_data(coyotes.request("POST", "/channels/old/pause"))
    task_id = ok_data(coyotes.request("POST", "/channels/old/tasks", {
        "task": "false", "id": "moved", "retries": 1, "retry_backoff": 0}))["task_id"]
    assert ok_data(coyotes.request("DELETE", "/channels/old?move_to=new"))["moved"] == 1
    wait_until(lambda: ok_data(coyotes.request("GET", f"/tasks/{task_id}"))["status"]
               == "failed", timeout=20, what="two attempts, then failed")
    record = ok_data(coyotes.request("GET", f"/tasks/{task_id}"))
    assert (record["channel"], record["attempt"]) == ("new", 2), record
    assert r.hexists("new:tasks:queue:failed", task_id) and r.llen(DEAD_KEY) == 0
    # a retry of a failed task of a deleted channel is refused, and the task kept
    create(coyotes, "gone")
    r.hset("gone:tasks:queue:failed", "f1", json.dumps({"id": "f1", "task": "true"}))
    r.zadd("gone:tasks:queue:failed:index", {"f1": 1})
    # the API keeps the channel's settings for a second: it still knows the channel
    # when another node deletes it, and the script has to refuse the retry itself
    ok_data(coyotes.request("GET", "/channels/gone/failed-tasks"))
    r.hdel(CHANNELS_KEY, "gone")
    status, env = coyotes.request("POST", "/channels/gone/failed-tasks/f1")
    assert status == 404 and "does not exist" in env["message"], env
    assert r.hexists("gone:tasks:queue:failed", "f1") and r.llen("gone:tasks:queue") == 0
