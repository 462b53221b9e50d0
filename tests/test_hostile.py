"""Hostile input and keys of the wrong type, against the real daemon.

The promise checked here: every entry either runs or lands in the dead-letter
list with a reason, one bad entry never holds up the good ones beside it, a
key of another type (set by someone else) never makes a script lose what it
was moving, and nothing is left behind in a staging or processing list.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import time

import pytest
from conftest import wait_until

NODE = "n1"
PREPARE = "task:prepare:queue"
DEAD = "task:prepare:dead"
FINAL = {"succeeded", "failed", "timed_out", "canceled", "killed"}


def status(r, task_id: str) -> str | None:
    return r.hget(f"task:record:{task_id}", "status")


def statuses(r, ids) -> dict[str, str | None]:
    return {task_id: status(r, task_id) for task_id in ids}


def all_in(r, ids, wanted: str = "succeeded") -> bool:
    return all(s == wanted for s in statuses(r, ids).values())


def letters(r) -> list[dict]:
    return [json.loads(letter) for letter in r.lrange(DEAD, 0, -1)]


def held(r) -> dict[str, list[str]]:
    """Entries left in any node's staging or processing list."""
    keys = r.keys("task:node:*:prepare") + r.keys("task:node:*:processing:*")
    return {key: r.lrange(key, 0, -1) for key in keys if r.type(key) == "list" and r.llen(key)}


def stranded(r) -> dict[str, str]:
    """Records that claim a task waits or runs when nothing is running."""
    out = {}
    for key in r.keys("task:record:*"):
        if r.type(key) == "hash" and r.hget(key, "status") in ("queued", "running"):
            out[key] = r.hget(key, "status")
    return out


def entry(task_id: str, command: str = "", **more) -> str:
    """A task entry; its command is unique (the default channel is distinct)."""
    return json.dumps({"task": command or f"true {task_id}", "id": task_id, **more})


# -- one bad entry among good ones -----------------------------------------------
LONE_SURROGATES = ['{"task": "echo \\ud800", "id": "bad-task"}',
                   '{"task": "true", "id": "bad-note", "note": "\\udfff"}',
                   '{"command": {"name": "echo", "args": ["\\ud83d"]}, "id": "bad-arg"}',
                   '{"task": "true", "id": "bad-\\udbff"}',
                   '{"task": "true", "chan": "default\\ud800"}']
DEEP = '{"task": "true", "deep": ' + "[" * 7_000 + "]" * 7_000 + "}"   # kept whole


def test_a_bad_entry_does_not_poison_the_batch_it_is_routed_with(coyotes_factory, r):
    """Pushed before the daemon starts, so that one move stages them all together."""
    good = [f"good-{i}" for i in range(6)]
    bad = [*LONE_SURROGATES, DEEP, ""]   # an empty entry was parked but left staged
    mixed = [entry(good[0]), *bad[:3], entry(good[1]), entry(good[2]), *bad[3:],
             entry(good[3]), entry(good[4]), entry(good[5])]
    r.lpush(PREPARE, *mixed)
    daemon = coyotes_factory("-node-id", NODE)
    wait_until(lambda: all_in(r, good), timeout=20, what="the good entries to run")
    wait_until(lambda: len(letters(r)) == len(bad), what="every bad entry dead-lettered")
    by_entry = {letter["entry"]: letter["reason"] for letter in letters(r)}
    assert set(by_entry) == set(bad)
    for raw in LONE_SURROGATES:
        assert "lone surrogate" in by_entry[raw], by_entry[raw]
    assert "nested too deeply" in by_entry[DEEP]
    assert r.llen(PREPARE) == 0 and held(r) == {} and stranded(r) == {}
    assert not r.exists("task:record:bad-task")
    assert "Traceback" not in daemon.log()


def test_a_bad_entry_in_a_channel_queue_is_parked_and_its_worker_lives_on(coyotes_factory, r):
    """As an old producer would push straight into a channel queue; one worker only,
    so the good task after the bad ones runs only if that worker survived them."""
    daemon = coyotes_factory("-node-id", NODE, "-concurrent", "1")
    bad = ['{"id": "q-bad", "task": "echo x", "argv": ["echo", "\\ud800"]}',
           '{"id": "q-bad-2", "task": "echo \\udc00\\ud800"}', DEEP, ""]
    r.lpush("default:tasks:queue", *bad, entry("after-the-bad-ones"))
    wait_until(lambda: status(r, "after-the-bad-ones") == "succeeded", timeout=20,
               what="the good task after the bad ones")
    reasons = {letter["entry"]: letter["reason"] for letter in letters(r)}
    assert set(reasons) == set(bad), reasons
    assert all(reasons.values())
    assert letters(r)[0]["channel"] == "default"
    assert held(r) == {} and r.scard("default:tasks:queue:exec") == 0
    assert "Traceback" not in daemon.log()


def test_a_record_key_of_another_type_parks_only_its_own_task(coyotes_factory, r):
    r.set("task:record:taken", "someone else's")
    r.set("task:record:taken-too", "someone else's")
    daemon = coyotes_factory("-node-id", NODE)
    r.lpush(PREPARE, entry("fine-1"), entry("taken"), entry("fine-2"))
    r.lpush("default:tasks:queue", entry("taken-too"), entry("fine-3"))
    wait_until(lambda: all_in(r, ["fine-1", "fine-2", "fine-3"]), what="the other tasks")
    wait_until(lambda: len(letters(r)) == 2, what="both taken ids parked")
    for letter in letters(r):
        assert "task:record:taken" in letter["reason"] and "another type" in letter["reason"]
    assert r.get("task:record:taken") == "someone else's"   # not ours: left alone
    code, env = daemon.request("POST", "/channels/default/tasks",
                               {"task": "true over http", "id": "taken"})
    assert code == 409 and "another type" in env["message"], env
    assert held(r) == {} and stranded(r) == {}
    assert "Traceback" not in daemon.log()


# -- every key the daemon writes, of the wrong type in turn ----------------------------
# key -> what the daemon does with it in the test's window
WRONG = {
    "default:tasks:queue": "routes into it, claims from it",
    "default:tasks:queue:exec": "adds started tasks to it",
    "task:delay:queue": "routes a delayed task into it",
    DEAD: "parks a bad entry in it",
    DEAD + ":trimmed": "counts trimmed dead letters in it",
    f"task:node:{NODE}:processing:default": "claims into it",
    f"task:node:{NODE}:prepare": "stages prepare-queue entries in it",
    PREPARE: "takes entries from it",
    "default:tasks:queue:failed": "parks a failed task in it",
    "default:tasks:queue:failed:index": "indexes a failed task in it",
    "task:nodes": "registers its heartbeat in it",
    f"task:node:{NODE}:channels": "records a new channel in it",
    "task:channels": "reads and creates channels in it",
}


@pytest.mark.parametrize("key", list(WRONG))
def test_a_key_of_the_wrong_type_loses_nothing_and_other_channels_go_on(coyotes_factory, r,
                                                                       key):
    """Set the key to another type, push work, restore the key: every task ran (or its
    failure or dead letter was recorded), nothing stayed held, and the channel that
    does not use the key kept running meanwhile."""
    r.hset("task:channels", "other", json.dumps({"name": "other", "distinct": False,
                                                  "worker_count": 2}))
    daemon = coyotes_factory("-node-id", NODE, "-node-ttl", "3")
    wait_until(lambda: r.sismember("task:nodes", NODE), what="the first heartbeat")
    if key == DEAD + ":trimmed":
        r.set(key, "not a number")
    else:
        r.delete(key)
        r.set(key, "wrong")
    now = time.time()
    work = [entry("good-1"), entry("good-2"), "not json",
            entry("later", execute_at=now + 1), entry("fails", "false fails")]
    if key != PREPARE:   # that one is the producers' own: their LPUSH fails, nothing to lose
        r.lpush(PREPARE, *work)
    status_code, _ = daemon.request("POST", "/channels", {"name": "third", "worker": 1})
    assert status_code == (500 if key == "task:channels" else 200)

    # meanwhile: the daemon says what is wrong, and another channel is served
    wait_until(lambda: "WRONGTYPE" in daemon.log(), timeout=20, what="the refusal logged")
    r.lpush("other:tasks:queue", entry("other-1"), entry("other-2"))
    wait_until(lambda: all_in(r, ["other-1", "other-2"]), timeout=20,
               what="the other channel served while the key is wrong")

    r.delete(key)   # restored (an empty key of any type is no key)
    if key == PREPARE:
        r.lpush(PREPARE, *work)
    if key == "task:channels":
        daemon.request("POST", "/channels", {"name": "third", "worker": 1})
    r.lpush(PREPARE, entry("third-1", chan="third"))
    everything = ["good-1", "good-2", "later", "third-1"]
    wait_until(lambda: all_in(r, everything) and status(r, "fails") == "failed", timeout=45,
               what=f"every task to finish: {statuses(r, [*everything, 'fails'])}")
    wait_until(lambda: [letter["entry"] for letter in letters(r)] == ["not json"],
               what="the bad entry dead-lettered")
    assert r.hexists("default:tasks:queue:failed", "fails")
    wait_until(lambda: held(r) == {} and stranded(r) == {}, what="nothing held")
    log = daemon.log()
    assert "redis refused a command" in log or "refused a command" in log
    assert "redis unavailable" not in log and "Traceback" not in log
    assert daemon.request("GET", "/channels")[0] == 200


def test_api_calls_refused_by_a_key_of_the_wrong_type_change_nothing(coyotes_factory, r):
    """Cancel, kill and retry go through scripts too: a refusal is a 500 that names the
    key, nothing moved, and the same call works once the key is restored."""
    daemon = coyotes_factory("-node-id", NODE)
    r.lpush(PREPARE, entry("long", "sleep 30"), entry("fails", "false fails"),
            entry("waits", execute_at=time.time() + 3600))
    wait_until(lambda: statuses(r, ["long", "fails", "waits"]) == {
        "long": "running", "fails": "failed", "waits": "delayed"}, what="the three states")

    def refused(method: str, path: str, key: str) -> None:
        code, env = daemon.request(method, path)
        assert code == 500 and "WRONGTYPE" in env["message"] and key in env["message"], env

    kills = f"task:node:{NODE}:kill"
    r.set(kills, "wrong")
    refused("DELETE", "/tasks/long", kills)
    r.set("default:tasks:queue", "wrong")
    refused("DELETE", "/tasks/waits", "default:tasks:queue")
    refused("POST", "/channels/default/failed-tasks/fails", "default:tasks:queue")
    assert statuses(r, ["long", "fails", "waits"]) == {
        "long": "running", "fails": "failed", "waits": "delayed"}
    assert r.hexists("default:tasks:queue:failed", "fails") and r.zcard("task:delay:queue") == 1

    r.delete(kills, "default:tasks:queue")
    assert daemon.request("DELETE", "/tasks/long")[1]["data"]["status"] == "killing"
    assert daemon.request("DELETE", "/tasks/waits")[1]["data"]["status"] == "canceled"
    assert daemon.request("POST", "/channels/default/failed-tasks/fails")[0] == 200
    wait_until(lambda: status(r, "long") == "killed", timeout=20, what="the kill")
    wait_until(lambda: r.hget("task:record:fails", "attempt") == "2"
               and status(r, "fails") == "failed", what="the retried task to fail again")
    assert held(r) == {} and "Traceback" not in daemon.log()


# -- exhausted resources and orphans ---------------------------------------------
def low_fd_limit(n: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))
    return apply


@pytest.mark.parametrize("runner", ["spawn", "subprocess"])
def test_tasks_that_cannot_start_for_want_of_descriptors_are_requeued(coyotes_factory, r,
                                                                      runner):
    """More workers than descriptors for their pipes: the tasks that cannot start go
    back to the queue (their attempt not counted) and run once others have finished."""
    r.hset("task:channels", "wide", json.dumps({"name": "wide", "distinct": False,
                                                 "worker_count": 60}))
    daemon = coyotes_factory("-node-id", NODE, "-runner", runner, start=False)
    daemon.start(preexec_fn=low_fd_limit(72))
    ids = [f"wide-{i}" for i in range(60)]
    r.lpush("wide:tasks:queue", *[entry(task_id, "sleep 0.5") for task_id in ids])
    wait_until(lambda: all_in(r, ids), timeout=90, what=f"every task: {statuses(r, ids)}")
    log = daemon.log()
    assert "could not start (Too many open files" in log, log[-3000:]
    assert {r.hget(f"task:record:{task_id}", "attempt") for task_id in ids} == {"1"}
    assert held(r) == {} and "Traceback" not in log
    assert daemon.request("GET", "/channels/wide")[0] == 200


def background_child(r, task_id: str) -> int:
    stdout = r.hget(f"task:record:{task_id}", "stdout") or ""
    return int(stdout.split()[0])


def test_a_channel_decides_whether_a_commands_process_group_ends_with_it(coyotes_factory, r):
    daemon = coyotes_factory("-node-id", NODE)
    code, env = daemon.request("POST", "/channels", {"name": "keeps", "kill_group": False})
    assert code == 200, env
    assert json.loads(r.hget("task:channels", "keeps"))["kill_group"] is False
    assert daemon.request("POST", "/channels", {"name": "x", "kill_group": "maybe"})[0] == 400
    spawn = "sh -c 'sleep 60 > /dev/null 2>&1 & echo $!'"
    r.lpush(PREPARE, entry("ends", spawn), entry("stays", spawn, chan="keeps"))
    wait_until(lambda: all_in(r, ["ends", "stays"]), what="both tasks")
    ended, stays = background_child(r, "ends"), background_child(r, "stays")
    try:
        wait_until(lambda: not alive(ended), what="the default channel's orphan to end")
        assert alive(stays)
    finally:
        if alive(stays):
            os.kill(stays, signal.SIGKILL)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:   # a zombie is not alive
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"
