"""Task lifecycle against the real daemon.

Records (``GET /tasks/{id}``) through every push path, output tails and
record expiry; timeouts that end the whole process group; retries with a
growing backoff and the failed-task endpoints; cancel and kill (also across
two nodes); delayed tasks (Redis's clock, restarts, several nodes); ids the
caller chooses.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import sys
import time
import urllib.parse
import urllib.request

from conftest import ledger_command, read_ledger, wait_until

FINAL = ("succeeded", "failed", "timed_out", "canceled", "killed")


# -- helpers -------------------------------------------------------------------

def push_http(daemon, chan: str = "default", **fields) -> dict:
    """POST /channels/{chan}/tasks with a JSON body; the envelope's data."""
    status, env = daemon.request("POST", f"/channels/{chan}/tasks", fields)
    assert status == 200, (status, env)
    assert env["data"]["result"] is True, env
    return env["data"]


def prepare(r, **payload) -> None:
    payload.setdefault("ts", int(time.time()))
    r.lpush("task:prepare:queue", json.dumps(payload))


def record(daemon, task_id: str) -> dict | None:
    status, env = daemon.request("GET", f"/tasks/{task_id}")
    if status == 404:
        return None
    assert status == 200, (status, env)
    return env["data"]


def wait_status(daemon, task_id: str, *statuses: str, timeout: float = 10) -> dict:
    def check():
        rec = record(daemon, task_id)
        return rec if rec and rec["status"] in statuses else None
    return wait_until(check, timeout=timeout,
                      what=f"task {task_id} to be {'/'.join(statuses)} "
                           f"(now {record(daemon, task_id)})")


def add_channel(daemon, name: str, **fields) -> None:
    status, env = daemon.request("POST", "/channels", {"name": name, **fields})
    assert status == 200, (status, env)


def listing(daemon, chan: str) -> list[dict]:
    status, env = daemon.request("GET", f"/channels/{chan}")
    assert status == 200, env
    return env["data"]["tasks"]


def failed_list(daemon, chan: str, query: str = "") -> dict:
    status, env = daemon.request("GET", f"/channels/{chan}/failed-tasks{query}")
    assert status == 200, env
    return env["data"]


def delayed_ids(daemon) -> set[str]:
    status, env = daemon.request("GET", "/delay-tasks")
    assert status == 200, env
    return {t["task_id"] for t in env["data"]["tasks"]}


def gone(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie waiting for its reaper counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


def read_pid(path) -> int:
    text = path.read_text().strip() if path.exists() else ""
    return int(text) if text.isdigit() else 0


def group_command(tmp_path, tag: str, trap: bool = False) -> tuple[str, object, object]:
    """A shell that records its pid and starts a background sleep (same process group)."""
    sh_pid, bg_pid = tmp_path / f"{tag}.sh.pid", tmp_path / f"{tag}.bg.pid"
    prefix = 'trap \\"\\" TERM; ' if trap else ""
    script = f"{prefix}echo $$ > {sh_pid}; sleep 60 & echo $! > {bg_pid}; sleep 60"
    return f'sh -c "{script}"', sh_pid, bg_pid


def pids_of(sh_pid, bg_pid) -> tuple[int, int]:
    return wait_until(lambda: (read_pid(sh_pid) and read_pid(bg_pid))
                      and (read_pid(sh_pid), read_pid(bg_pid)), what="pid files")


def starts(ledger) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for event, tag, when in read_ledger(ledger):
        if event == "start":
            out.setdefault(tag, []).append(when)
    return out


def redis_now(r) -> float:
    sec, usec = r.time()
    return sec + usec / 1e6


# -- 1. records ------------------------------------------------------------------

def test_every_push_path_returns_an_id_and_records_follow_the_task(coyotes_factory, r,
                                                                     tmp_path):
    c = coyotes_factory("-concurrent", "1", "-result-ttl", "60", node_id="n1")
    blocker = push_http(c, task="sleep 30", id="blocker")
    assert blocker["task_id"] == "blocker"
    running = wait_status(c, "blocker", "running")
    assert running["node"] == "n1" and running["attempt"] == 1
    assert running["channel"] == "default" and running["argv"] == ["sleep", "30"]
    assert running["queued_at"] <= running["started_at"]
    assert "finished_at" not in running and "exit_code" not in running
    assert r.ttl("task:record:blocker") == -1          # a live record does not expire

    # the worker is busy: everything below stays queued
    prepare(r, task="echo one", chan="default", id="prep-1")
    prepare(r, task="echo two", chan="default")
    status, env = c.request("POST", "/channels/default",
                            headers={"Content-Type": "application/x-www-form-urlencoded"},
                            body=urllib.parse.urlencode({"task": "echo three"}).encode())
    assert status == 200 and env["data"]["result"] is True
    go_id = env["data"]["task_id"]
    v2_id = push_http(c, task="echo four")["task_id"]
    legacy = "echo five"
    r.lpush("default:tasks:queue", legacy)            # left behind by the Go daemon
    legacy_id = hashlib.sha1(legacy.encode()).hexdigest()[:32]
    delayed_id = push_http(c, task="echo six", delay=60)["task_id"]
    assert go_id and v2_id and go_id != v2_id

    def listed():
        tasks = {t["task_name"]: t for t in listing(c, "default")}
        return tasks if {"echo one", "echo two", legacy} <= set(tasks) else None
    tasks = wait_until(listed, what="prepare-queue entries in the listing")
    assert tasks["echo one"]["task_id"] == "prep-1"
    two_id = tasks["echo two"]["task_id"]
    assert two_id and two_id not in ("prep-1", go_id, v2_id)
    assert tasks[legacy]["task_id"] == legacy_id       # a derived id, shown in the listing
    assert tasks["echo three"]["task_id"] == go_id and tasks["echo four"]["task_id"] == v2_id
    assert tasks["sleep 30"]["task_id"] == "blocker" and tasks["sleep 30"]["status"] == "running"

    for task_id, name in (("prep-1", "echo one"), (two_id, "echo two"), (go_id, "echo three"),
                          (v2_id, "echo four")):
        rec = record(c, task_id)
        assert rec["status"] == "queued" and rec["task_name"] == name, rec
        assert rec["channel"] == "default" and rec["attempt"] == 0
        assert rec["task_id"] == task_id and "queued_at" in rec and "started_at" not in rec
        assert r.ttl(f"task:record:{task_id}") == -1
    delayed = record(c, delayed_id)
    assert delayed["status"] == "delayed" and delayed["execute_at"] > redis_now(r) + 50
    assert r.ttl(f"task:record:{delayed_id}") == -1

    # release the worker: everything queued runs, in order, on n1
    assert c.request("DELETE", "/tasks/blocker")[0] == 200
    killed = wait_status(c, "blocker", *FINAL)
    assert killed["status"] == "killed" and killed["signal"] in (15, 9)
    for task_id, word in (("prep-1", "one"), (two_id, "two"), (go_id, "three"),
                          (v2_id, "four"), (legacy_id, "five")):
        rec = wait_status(c, task_id, *FINAL)
        assert rec["status"] == "succeeded", rec
        assert rec["exit_code"] == 0 and "signal" not in rec
        assert rec["stdout"] == f"{word}\n" and rec["stderr"] == ""
        assert rec["argv"] == ["echo", word] and rec["node"] == "n1" and rec["attempt"] == 1
        assert rec["task_id"] == task_id and rec["channel"] == "default"
        assert rec.get("queued_at", rec["started_at"]) <= rec["started_at"] <= rec["finished_at"]
        assert 0 <= rec["duration"] <= rec["finished_at"] - rec["started_at"] + 0.01
        assert 0 < r.ttl(f"task:record:{task_id}") <= 60, task_id   # -result-ttl 60
    assert record(c, delayed_id)["status"] == "delayed"
    assert record(c, "no-such-task") is None
    status, env = c.request("GET", "/tasks/no-such-task")
    assert status == 404 and env["status_code"] == 404


def test_output_tails_keep_the_last_bytes(coyotes_factory, tmp_path):
    c = coyotes_factory("-output-tail", "1000")
    script = tmp_path / "noisy.py"
    script.write_text("import sys\n"
                      "sys.stdout.write(''.join(f'out {i:05d} .........\\n' for i in range(500)))\n"
                      "sys.stderr.write(''.join(f'err {i:05d} ,,,,,,,,,\\n' for i in range(500)))\n"
                      "sys.exit(1)\n")
    full_out = "".join(f"out {i:05d} .........\n" for i in range(500))
    full_err = "".join(f"err {i:05d} ,,,,,,,,,\n" for i in range(500))
    assert len(full_out) == 10000
    task_id = push_http(c, task=f"{sys.executable} {script}")["task_id"]
    rec = wait_status(c, task_id, *FINAL)
    assert rec["status"] == "failed" and rec["exit_code"] == 1
    for tail, full in ((rec["stdout"], full_out), (rec["stderr"], full_err)):
        assert 900 <= len(tail) <= 1000, len(tail)
        assert full.endswith(tail)                     # the LAST bytes, not the first
    assert rec["stdout"].endswith("out 00499 .........\n")


# -- 2. timeouts -----------------------------------------------------------------

def test_task_timeout_ends_the_whole_process_group(coyotes, r, tmp_path):
    command, sh_pid, bg_pid = group_command(tmp_path, "grp")
    began = time.monotonic()
    task_id = push_http(coyotes, task=command, timeout=1)["task_id"]
    sh, bg = pids_of(sh_pid, bg_pid)
    rec = wait_status(coyotes, task_id, *FINAL)
    assert rec["status"] == "timed_out", rec
    assert rec["signal"] in (15, 9) and "exit_code" not in rec
    assert time.monotonic() - began < 6
    assert 0.9 <= rec["duration"] < 5
    wait_until(lambda: gone(sh) and gone(bg), timeout=5, what="sh and its background sleep")

    # the same key in a producer's JSON
    prepare(r, task="sleep 30", chan="default", id="json-timeout", timeout=1)
    rec = wait_status(coyotes, "json-timeout", *FINAL)
    assert rec["status"] == "timed_out" and rec["signal"] in (15, 9)
    assert rec["duration"] < 5


def test_channel_timeout_applies_to_its_tasks(coyotes):
    add_channel(coyotes, "slow", worker=2, distinct="false", timeout=1)
    task_id = push_http(coyotes, "slow", task="sleep 30")["task_id"]
    rec = wait_status(coyotes, task_id, *FINAL)
    assert rec["status"] == "timed_out" and rec["signal"] in (15, 9)
    assert rec["channel"] == "slow" and rec["duration"] < 5
    # a timed-out attempt is retried like a failed one
    task_id = push_http(coyotes, "slow", task="sleep 29", retries=1, retry_backoff=0.1)["task_id"]
    wait_until(lambda: task_id in {t["task_id"] for t in failed_list(coyotes, "slow")["tasks"]},
               timeout=10, what="the timed-out task in the failed list")
    rec = record(coyotes, task_id)
    assert rec["status"] == "timed_out" and rec["attempt"] == 2 and rec["retry_count"] == 1
    # a per-task timeout overrides the channel's
    task_id = push_http(coyotes, "slow", task="sleep 1.5", timeout=10)["task_id"]
    assert wait_status(coyotes, task_id, *FINAL)["status"] == "succeeded"


def test_a_command_ignoring_term_is_killed_after_the_grace(coyotes_factory, tmp_path):
    c = coyotes_factory("-kill-grace", "1")
    command, sh_pid, bg_pid = group_command(tmp_path, "stubborn", trap=True)
    task_id = push_http(c, task=command, timeout=1)["task_id"]
    sh, bg = pids_of(sh_pid, bg_pid)
    rec = wait_status(c, task_id, *FINAL)
    assert rec["status"] == "timed_out" and rec["signal"] == 9, rec
    assert 1.8 <= rec["duration"] < 4.5             # timeout 1 s + grace 1 s
    wait_until(lambda: gone(sh) and gone(bg), timeout=5, what="the TERM-proof group")

    ignorer = (f"{sys.executable} -c \"import signal, time; "
               f"signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)\"")
    rec = wait_status(c, push_http(c, task=ignorer, timeout=1)["task_id"], *FINAL)
    assert rec["status"] == "timed_out" and rec["signal"] == 9, rec
    assert 1.8 <= rec["duration"] < 4.5


# -- 3. retries and failed tasks ----------------------------------------------------

def test_retries_then_the_failed_list(coyotes, r, tmp_path):
    runs = tmp_path / "runs"
    task_id = push_http(coyotes, task=f"sh -c 'echo x >> {runs}; exit 3'", retries=2,
                        retry_backoff=0.2)["task_id"]
    only4 = tmp_path / "only4"
    once_id = push_http(coyotes, task=f"sh -c 'echo x >> {only4}; exit 3'", retries=2,
                        retry_backoff=0.2, retry_on=[4])["task_id"]

    def failed_ids():
        return {t["task_id"] for t in failed_list(coyotes, "default")["tasks"]}
    wait_until(lambda: {task_id, once_id} <= failed_ids(), timeout=15, what="failed list")
    items = {t["task_id"]: t for t in failed_list(coyotes, "default")["tasks"]}
    item = items[task_id]
    assert item["exit_code"] == 3 and item["retry_count"] == 2 and item["status"] == "failed"
    assert runs.read_text() == "x\n" * 3
    rec = record(coyotes, task_id)
    assert rec["status"] == "failed" and rec["attempt"] == 3 and rec["exit_code"] == 3
    assert r.ttl(f"task:record:{task_id}") == -1    # kept while in the failed list
    # retry_on lists only exit code 4: exit 3 is not retried
    assert items[once_id].get("retry_count", 0) == 0 and items[once_id]["exit_code"] == 3
    assert only4.read_text() == "x\n"
    time.sleep(1.0)   # nothing runs again
    assert runs.read_text() == "x\n" * 3 and only4.read_text() == "x\n"


def test_backoff_grows_and_is_capped(coyotes, r, tmp_path):
    ledger = tmp_path / "ledger"
    grow = push_http(coyotes, task=f"sh -c '{ledger_command(ledger, 'grow')}; exit 1'",
                     retries=3, retry_backoff=0.2, retry_max=60)["task_id"]
    capped = push_http(coyotes, task=f"sh -c '{ledger_command(ledger, 'capped')}; exit 1'",
                       retries=3, retry_backoff=0.2, retry_max=0.2)["task_id"]
    delays: dict[str, dict[int, float]] = {grow: {}, capped: {}}

    def watch():
        for task_id in (grow, capped):
            rec = r.hgetall(f"task:record:{task_id}")
            if rec.get("status") == "delayed" and "retry_at" in rec:
                n = int(rec["retry_count"])
                ended = float(rec["started_at"]) + float(rec["duration"])
                delays[task_id].setdefault(n, float(rec["retry_at"]) - ended)
        return all(r.hget(f"task:record:{t}", "status") == "failed" for t in (grow, capped))
    wait_until(watch, timeout=20, interval=0.01, what="both tasks to fail for good")

    assert sorted(delays[grow]) == [1, 2, 3], delays
    for n, delay in delays[grow].items():            # 0.2 * 2**retry, jitter: half to all
        step = 0.2 * 2 ** (n - 1)
        assert step / 2 - 0.05 <= delay <= step + 0.1, (n, delay, delays)
    assert delays[grow][3] > delays[grow][1]
    assert sorted(delays[capped]) == [1, 2, 3], delays
    assert all(0.05 <= d <= 0.3 for d in delays[capped].values()), delays
    # on the wall clock, no attempt came before its backoff
    times = sorted(starts(ledger)["grow"])
    assert len(times) == 4
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(gap >= 0.2 * 2 ** i / 2 - 0.05 for i, gap in enumerate(gaps)), gaps
    assert sum(gaps) < 8, gaps   # (due tasks are promoted on whole seconds of Redis's clock)


def test_channel_retries(coyotes, tmp_path):
    add_channel(coyotes, "again", worker=2, distinct="false", retries=1, retry_backoff=0.1)
    runs = tmp_path / "runs"
    task_id = push_http(coyotes, "again", task=f"sh -c 'echo x >> {runs}; exit 2'")["task_id"]
    wait_until(lambda: failed_list(coyotes, "again")["count"] == 1, timeout=10)
    item = failed_list(coyotes, "again")["tasks"][0]
    assert item["task_id"] == task_id and item["retry_count"] == 1 and item["exit_code"] == 2
    assert runs.read_text() == "x\n" * 2
    assert failed_list(coyotes, "default")["count"] == 0


def test_failed_task_endpoints(coyotes_factory, r, tmp_path):
    c = coyotes_factory("-result-ttl", "60")
    add_channel(c, "fl", worker=5, distinct="false")
    marker = tmp_path / "marker"
    flaky = f"sh -c 'test -e {marker} && exit 0; touch {marker}; exit 5'"
    push_http(c, "fl", task=flaky, id="flaky")
    for i in range(4):
        # the sleep: a retried task fails again only after the retry-all call has returned
        push_http(c, "fl", task=f"sh -c 'echo x >> {tmp_path / f'f{i}'}; sleep 0.3; exit 3'",
                  id=f"f{i}")
    wait_until(lambda: failed_list(c, "fl")["count"] == 5, timeout=10, what="5 failed tasks")
    all_ids = {"flaky", "f0", "f1", "f2", "f3"}

    # pagination
    first = failed_list(c, "fl", "?limit=2&offset=0")
    assert first["count"] == 5 and len(first["tasks"]) == 2
    seen = [t["task_id"] for off in (0, 2, 4)
            for t in failed_list(c, "fl", f"?limit=2&offset={off}")["tasks"]]
    assert len(seen) == 5 and set(seen) == all_ids
    last = failed_list(c, "fl", "?limit=2&offset=4")
    assert len(last["tasks"]) == 1 and last["count"] == 5
    assert failed_list(c, "fl", "?limit=10&offset=9")["tasks"] == []

    # one
    status, env = c.request("GET", "/channels/fl/failed-tasks/flaky")
    assert status == 200
    item = env["data"]
    assert item["task_id"] == "flaky" and item["exit_code"] == 5 and item["status"] == "failed"
    assert item["channel"] == "fl"

    # POST one: it runs again (and succeeds this time)
    status, env = c.request("POST", "/channels/fl/failed-tasks/flaky")
    assert status == 200, env
    rec = wait_status(c, "flaky", "succeeded", timeout=10)
    assert rec["attempt"] == 2 and rec["exit_code"] == 0
    assert 0 < r.ttl("task:record:flaky") <= 60
    assert {t["task_id"] for t in failed_list(c, "fl")["tasks"]} == all_ids - {"flaky"}

    # DELETE one
    assert c.request("DELETE", "/channels/fl/failed-tasks/f0")[0] == 200
    assert "f0" not in {t["task_id"] for t in failed_list(c, "fl")["tasks"]}
    assert c.request("GET", "/channels/fl/failed-tasks/f0")[0] == 404
    assert 0 < r.ttl("task:record:f0") <= 60
    time.sleep(0.5)
    assert (tmp_path / "f0").read_text() == "x\n"     # deleted, not run again

    # POST all: f1..f3 run again (and fail again)
    status, env = c.request("POST", "/channels/fl/failed-tasks")
    assert status == 200 and env["data"]["count"] == 3, env
    wait_until(lambda: all((tmp_path / f"f{i}").read_text() == "x\nx\n" for i in (1, 2, 3)),
               timeout=10, what="every failed task to run again")
    wait_until(lambda: failed_list(c, "fl")["count"] == 3, timeout=10)

    # DELETE all
    status, env = c.request("DELETE", "/channels/fl/failed-tasks")
    assert status == 200 and env["data"]["count"] == 3, env
    assert failed_list(c, "fl") == {"tasks": [], "count": 0}
    assert all(0 < r.ttl(f"task:record:f{i}") <= 60 for i in (1, 2, 3))

    # unknown ids and channels
    for method in ("GET", "POST", "DELETE"):
        assert c.request(method, "/channels/fl/failed-tasks/nope")[0] == 404, method
    assert c.request("GET", "/channels/no-such/failed-tasks")[0] == 404


def test_retry_all_retries_each_failed_task_once(coyotes, tmp_path):
    """POST /channels/{c}/failed-tasks retries what is failed at that moment, once: a task
    that fails again while the call is still going must not be retried a second time."""
    add_channel(coyotes, "burst", worker=20, distinct="false")
    runs = tmp_path / "runs"
    for i in range(40):
        push_http(coyotes, "burst", task=f"sh -c 'echo {i} >> {runs}; exit 3'")
    wait_until(lambda: failed_list(coyotes, "burst")["count"] == 40, timeout=15)
    request = urllib.request.Request(coyotes.url + "/channels/burst/failed-tasks", data=b"",
                                     method="POST")
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            status, env = resp.status, json.loads(resp.read())
    except TimeoutError:
        raise AssertionError(f"POST /channels/burst/failed-tasks did not return within 5 s; "
                             f"the 40 tasks ran {len(runs.read_text().splitlines())} times by "
                             "then (each failure is retried again, over and over)") from None
    assert status == 200, env
    wait_until(lambda: failed_list(coyotes, "burst")["count"] == 40, timeout=15)
    time.sleep(0.5)
    lines = runs.read_text().splitlines()
    assert env["data"]["count"] == 40 and len(lines) == 80, (env["data"], len(lines))


# -- 4. cancel and kill ------------------------------------------------------------

def test_cancel_a_queued_task(coyotes, r, tmp_path):
    add_channel(coyotes, "one", worker=1, distinct="true")
    blocker = push_http(coyotes, "one", task="sleep 30")["task_id"]
    wait_status(coyotes, blocker, "running")
    ledger = tmp_path / "ledger"
    command = ledger_command(ledger, "waiter")
    waiter = push_http(coyotes, "one", task=command)["task_id"]
    assert record(coyotes, waiter)["status"] == "queued"
    assert r.exists(f"one:tasks:queue:{command}:dis")

    status, env = coyotes.request("DELETE", f"/tasks/{waiter}")
    assert status == 200 and env["data"]["status"] == "canceled", env
    rec = record(coyotes, waiter)
    assert rec["status"] == "canceled" and "finished_at" in rec and "started_at" not in rec
    assert 0 < r.ttl(f"task:record:{waiter}")
    assert not any(waiter in e for e in r.lrange("one:tasks:queue", 0, -1))
    assert r.llen("one:tasks:queue") == 0
    assert not r.exists(f"one:tasks:queue:{command}:dis")   # the distinct flag is cleared
    assert coyotes.request("DELETE", f"/tasks/{waiter}")[0] == 409

    again = push_http(coyotes, "one", task=command)          # accepted again
    assert again["task_id"] != waiter
    assert coyotes.request("DELETE", f"/tasks/{blocker}")[0] == 200
    wait_status(coyotes, again["task_id"], "succeeded")
    assert [e for e, _, _ in read_ledger(ledger)] == ["start", "end"]   # ran once: the re-push
    assert record(coyotes, waiter)["status"] == "canceled"


def test_cancel_a_queued_go_entry_by_its_listed_id(coyotes_factory, r, tmp_path):
    """A plain string left by the Go daemon is listed with a derived id: that id cancels it."""
    c = coyotes_factory("-concurrent", "1")
    blocker = push_http(c, task="sleep 30")["task_id"]
    wait_status(c, blocker, "running")
    marker = tmp_path / "ran"
    legacy = f"touch {marker}"
    r.lpush("default:tasks:queue", legacy)
    listed = {t["task_name"]: t["task_id"] for t in listing(c, "default")}
    legacy_id = listed[legacy]
    status, env = c.request("DELETE", f"/tasks/{legacy_id}")
    try:
        assert status == 200 and env["data"]["status"] == "canceled", (status, env)
        assert r.lrange("default:tasks:queue", 0, -1) == []
    finally:
        c.request("DELETE", f"/tasks/{blocker}")
    wait_status(c, blocker, "killed")
    time.sleep(1.0)
    assert not marker.exists()


def test_cancel_a_delayed_task(coyotes, r):
    first = push_http(coyotes, task="echo later", delay=60)["task_id"]
    second = push_http(coyotes, task="echo much later", delay=60)["task_id"]
    assert {first, second} <= delayed_ids(coyotes)

    status, env = coyotes.request("DELETE", f"/tasks/{first}")
    assert status == 200 and env["data"]["status"] == "canceled", env
    assert record(coyotes, first)["status"] == "canceled"
    assert first not in delayed_ids(coyotes)
    assert coyotes.request("GET", f"/delay-tasks/{first}")[0] == 404
    assert not r.exists("default:tasks:queue:echo later:dis")

    status, env = coyotes.request("GET", f"/delay-tasks/{second}")
    assert status == 200 and env["data"]["task_id"] == second
    status, env = coyotes.request("DELETE", f"/delay-tasks/{second}")
    assert status == 200 and env["data"]["status"] == "canceled", env
    assert record(coyotes, second)["status"] == "canceled"
    assert delayed_ids(coyotes) == set() and r.zcard("task:delay:queue") == 0
    assert coyotes.request("DELETE", f"/delay-tasks/{second}")[0] == 404
    assert coyotes.request("DELETE", f"/tasks/{second}")[0] == 409


def test_kill_a_running_task(coyotes, r, tmp_path):
    command, sh_pid, bg_pid = group_command(tmp_path, "victim")
    task_id = push_http(coyotes, task=command)["task_id"]
    sh, bg = pids_of(sh_pid, bg_pid)
    wait_status(coyotes, task_id, "running")
    status, env = coyotes.request("DELETE", f"/tasks/{task_id}")
    assert status == 200 and env["data"]["task_id"] == task_id, env
    rec = wait_status(coyotes, task_id, *FINAL, timeout=10)
    assert rec["status"] == "killed" and rec["signal"] in (15, 9), rec
    wait_until(lambda: gone(sh) and gone(bg), timeout=5, what="the killed group")
    assert 0 < r.ttl(f"task:record:{task_id}")
    assert failed_list(coyotes, "default")["count"] == 0
    assert not r.exists(f"default:tasks:queue:{command}:dis")
    assert coyotes.request("DELETE", f"/tasks/{task_id}")[0] == 409      # finished


def test_go_path_delete_and_wrong_channel(coyotes, tmp_path):
    add_channel(coyotes, "other", worker=1)
    command, sh_pid, bg_pid = group_command(tmp_path, "go")
    task_id = push_http(coyotes, task=command)["task_id"]
    sh, bg = pids_of(sh_pid, bg_pid)
    status, env = coyotes.request("DELETE", f"/channels/other/tasks/{task_id}")
    assert status == 404, env
    time.sleep(0.8)
    assert record(coyotes, task_id)["status"] == "running"    # untouched
    status, env = coyotes.request("DELETE", f"/channels/default/tasks/{task_id}")
    assert status == 200, env
    assert wait_status(coyotes, task_id, *FINAL)["status"] == "killed"
    wait_until(lambda: gone(sh) and gone(bg), timeout=5)
    assert coyotes.request("DELETE", f"/channels/default/tasks/{task_id}")[0] == 409
    assert coyotes.request("DELETE", "/channels/default/tasks/no-such")[0] == 404
    assert coyotes.request("DELETE", "/tasks/no-such")[0] == 404

    done = push_http(coyotes, task="echo done")["task_id"]
    wait_status(coyotes, done, "succeeded")
    assert coyotes.request("DELETE", f"/tasks/{done}")[0] == 409


def test_kill_reaches_the_node_that_runs_the_task(coyotes_factory, tmp_path):
    a = coyotes_factory(node_id="node-a")
    b = coyotes_factory(node_id="node-b")
    by_node = {"node-a": a, "node-b": b}
    command, sh_pid, bg_pid = group_command(tmp_path, "remote")
    task_id = push_http(a, task=command)["task_id"]
    sh, bg = pids_of(sh_pid, bg_pid)
    runner = wait_status(a, task_id, "running")["node"]
    assert runner in by_node
    other = b if runner == "node-a" else a
    status, env = other.request("DELETE", f"/tasks/{task_id}")
    assert status == 200, env
    rec = wait_status(other, task_id, *FINAL, timeout=10)
    assert rec["status"] == "killed" and rec["node"] == runner
    wait_until(lambda: gone(sh) and gone(bg), timeout=5, what="the group on the other node")


# -- 5. delayed tasks --------------------------------------------------------------

def test_delay_and_execute_at_hold_tasks_until_then(coyotes, r, tmp_path):
    ledger = tmp_path / "ledger"
    http_id = push_http(coyotes, task=ledger_command(ledger, "http"), delay=2)["task_id"]
    http_due = record(coyotes, http_id)["execute_at"]
    due = redis_now(r) + 2
    prepare(r, task=ledger_command(ledger, "json"), chan="default", id="at-json",
            execute_at=due)
    wait_until(lambda: record(coyotes, "at-json"), what="the execute_at task's record")
    for task_id in (http_id, "at-json"):
        assert record(coyotes, task_id)["status"] == "delayed"
    status, env = coyotes.request("GET", "/delay-tasks")
    assert status == 200
    listed = {t["task_id"]: t for t in env["data"]["tasks"]}
    assert set(listed) == {http_id, "at-json"} and env["data"]["count"] == 2
    assert abs(listed["at-json"]["execute_at"] - due) < 0.01
    assert abs(listed[http_id]["execute_at"] - http_due) < 0.01
    status, env = coyotes.request("GET", "/delay-tasks/at-json")
    assert status == 200 and env["data"]["task_id"] == "at-json"
    assert abs(env["data"]["execute_at"] - due) < 0.01
    assert coyotes.request("GET", "/delay-tasks/no-such")[0] == 404

    for task_id in (http_id, "at-json"):
        assert wait_status(coyotes, task_id, *FINAL, timeout=10)["status"] == "succeeded"
    began = starts(ledger)
    assert began["json"][0] >= due - 0.05
    assert began["http"][0] >= http_due - 0.05
    assert delayed_ids(coyotes) == set()


def test_http_delay_is_never_shortened(coyotes, r, tmp_path):
    """delay=2 means no earlier than 2 s after the push, whatever the clock's fraction."""
    ledger = tmp_path / "ledger"
    wait_until(lambda: r.time()[1] > 850_000, interval=0.01, what="late in a Redis second")
    pushed = time.time()
    task_id = push_http(coyotes, task=ledger_command(ledger, "d2"), delay=2)["task_id"]
    assert record(coyotes, task_id)["execute_at"] >= redis_now(r) + 1.8
    wait_status(coyotes, task_id, "succeeded", timeout=10)
    assert starts(ledger)["d2"][0] - pushed >= 1.95


def test_delayed_tasks_survive_a_restart(coyotes_factory, r, tmp_path):
    ledger = tmp_path / "ledger"
    first = coyotes_factory()
    task_id = push_http(first, task=ledger_command(ledger, "late"), delay=2)["task_id"]
    assert first.stop() == 0
    assert record_status(r, task_id) == "delayed" and not ledger.exists()
    second = coyotes_factory()
    rec = wait_status(second, task_id, *FINAL, timeout=10)
    assert rec["status"] == "succeeded"
    assert list(starts(ledger)) == ["late"] and len(starts(ledger)["late"]) == 1


def record_status(r, task_id: str) -> str | None:
    return r.hget(f"task:record:{task_id}", "status")


def test_a_delayed_task_runs_once_with_two_nodes(coyotes_factory, r, tmp_path):
    a = coyotes_factory(node_id="node-a")
    coyotes_factory(node_id="node-b")
    ledger = tmp_path / "ledger"
    due = redis_now(r) + 1
    tags = [f"t{i}" for i in range(8)]
    for tag in tags:
        prepare(r, task=ledger_command(ledger, tag), chan="default", id=tag, execute_at=due)
    for tag in tags:
        wait_status(a, tag, *FINAL, timeout=15)
    time.sleep(1.0)   # a duplicate would show up by now
    began = starts(ledger)
    assert sorted(began) == tags and all(len(v) == 1 for v in began.values()), began
    assert {record(a, t)["status"] for t in tags} == {"succeeded"}


# -- 6. caller-chosen ids -------------------------------------------------------------

def test_a_live_id_is_refused_and_a_finished_one_reused(coyotes, r):
    add_channel(coyotes, "solo", worker=1)
    push_http(coyotes, "solo", task="sleep 30", id="mine")
    wait_status(coyotes, "mine", "running")
    push_http(coyotes, "solo", task="echo queued", id="queued-id")
    assert record(coyotes, "queued-id")["status"] == "queued"
    for task_id in ("mine", "queued-id"):
        status, env = coyotes.request("POST", "/channels/solo/tasks",
                                      {"task": "echo other", "id": task_id})
        assert status == 409 and env["status_code"] == 409, env
    status, _ = coyotes.request("POST", "/channels/default/tasks",
                                {"task": "echo elsewhere", "id": "mine"})
    assert status == 409                                   # ids are global
    assert record(coyotes, "mine")["task_name"] == "sleep 30"
    prepare(r, task="echo clash", chan="solo", id="queued-id")   # a producer's entry: parked
    wait_until(lambda: any(e["entry"].find("echo clash") >= 0
                           for e in coyotes.request("GET", "/dead-letters")[1]["data"]["entries"]),
               what="the clashing entry in the dead-letter list")
    assert record(coyotes, "queued-id")["task_name"] == "echo queued"

    assert coyotes.request("DELETE", "/tasks/mine")[0] == 200
    wait_status(coyotes, "mine", "killed")
    wait_status(coyotes, "queued-id", "succeeded")
    again = push_http(coyotes, "solo", task="echo reused", id="mine")
    assert again["task_id"] == "mine"
    rec = wait_status(coyotes, "mine", "succeeded")
    assert rec["stdout"] == "reused\n" and rec["attempt"] == 1
    assert push_http(coyotes, "solo", task="echo twice", id="queued-id")["task_id"] == "queued-id"
    assert wait_status(coyotes, "queued-id", "succeeded")["stdout"] == "twice\n"


# -- bounded redelivery -------------------------------------------------------------------

def test_a_task_whose_node_keeps_dying_ends_in_the_failed_list(coyotes_factory, tmp_path):
    command, sh_pid, bg_pid = group_command(tmp_path, "doomed")
    node = None
    orphans = []
    try:
        for life in range(3):
            node = coyotes_factory("-max-redeliveries", "1", node_id="crashy")
            if life == 0:
                task_id = push_http(node, task=command)["task_id"]
            if life < 2:
                rec = wait_status(node, task_id, "running")
                assert rec["attempt"] == life + 1, rec
                orphans.append(pids_of(sh_pid, bg_pid))
                sh_pid.unlink()
                bg_pid.unlink()
                node.kill9()
        rec = wait_status(node, task_id, *FINAL, timeout=10)
        assert rec["status"] == "failed" and rec["redeliveries"] == 2, rec
        assert "died" in rec.get("error", "")
        item = failed_list(node, "default")["tasks"][0]
        assert item["task_id"] == task_id
    finally:
        for sh, _bg in orphans:   # kill -9 of the node leaves its command running
            try:
                os.killpg(sh, 9)   # the shell leads its own group: the sleeps go with it
            except ProcessLookupError:
                pass
