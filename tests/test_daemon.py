"""The daemon as a real process: execution, concurrency, signals, crashes, outages.

Each test pushes tasks that append start/end lines to a ledger file, then
reads the ledger (and Redis) to see what really ran.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import redis
from conftest import ledger_command, max_overlap, read_ledger, wait_until


def push(r, command: str, chan: str = "default", **extra) -> None:
    r.lpush("task:prepare:queue", json.dumps({"task": command, "chan": chan,
                                              "ts": int(time.time()), **extra}))


def ended(ledger) -> set[str]:
    return {tag for event, tag, _ in read_ledger(ledger) if event == "end"}


def started(ledger) -> set[str]:
    return {tag for event, tag, _ in read_ledger(ledger) if event == "start"}


def settled(r, node_lists=True) -> bool:
    """Nothing queued, running or claimed in the default channel."""
    keys = r.keys("task:node:*:processing:*") if node_lists else []
    return (r.llen("default:tasks:queue") == 0 and r.scard("default:tasks:queue:exec") == 0
            and all(r.llen(k) == 0 for k in keys))


def test_tasks_run_and_leave_no_trace(coyotes, r, tmp_path):
    ledger = tmp_path / "ledger"
    for i in range(5):
        push(r, ledger_command(ledger, f"t{i}"))
    wait_until(lambda: ended(ledger) == {f"t{i}" for i in range(5)}, what="5 tasks")
    wait_until(lambda: settled(r) and r.llen("task:prepare:queue") == 0)
    assert "exited 0" in coyotes.log()


def test_resolves_addresses_in_place_and_host_names_in_gevents_resolver(coyotes_factory, r,
                                                                        tmp_path):
    """With addresses only (Redis and the API), nothing is looked up: the daemon runs
    its main thread and its spawning threads (named coyotes-spawn, one or more), no
    resolver thread. A Redis given by host name is still resolved (in gevent's
    resolver thread) and tasks run."""
    by_address = coyotes_factory()
    by_name = coyotes_factory(start=False, node_id="by-name")
    argv = by_name.argv()
    argv[argv.index("-redis-host") + 1] = f"localhost:{by_name.redis_port}"
    by_name.argv = lambda: argv
    by_name.start()
    ledger = tmp_path / "ledger"
    for i in range(6):
        push(r, ledger_command(ledger, f"t{i}"))
    wait_until(lambda: ended(ledger) == {f"t{i}" for i in range(6)}, what="6 tasks")
    assert "localhost" in by_name.log()

    def threads(daemon) -> list[str]:
        """The names of the daemon's threads, less its spawning threads (how many
        there are depends on how many spawns waited at once)."""
        names = [(Path(f"/proc/{daemon.proc.pid}/task") / tid / "comm").read_text().strip()
                 for tid in os.listdir(f"/proc/{daemon.proc.pid}/task")]
        assert "coyotes-spawn" in names, names
        return [name for name in names if name != "coyotes-spawn"]

    assert len(threads(by_address)) == 1   # the main thread alone
    assert len(threads(by_name)) >= 2


def test_concurrency_never_above_worker_count(coyotes, r, tmp_path):
    status, _ = coyotes.request("POST", "/channels", {"name": "three", "distinct": "false",
                                                      "worker": 3})
    assert status == 200
    ledger = tmp_path / "ledger"
    for i in range(12):
        push(r, ledger_command(ledger, f"t{i}", 0.4), chan="three")
    wait_until(lambda: len(ended(ledger)) == 12, timeout=30, what="12 tasks")
    assert max_overlap(read_ledger(ledger)) == 3


def test_slow_task_does_not_hold_the_others(coyotes_factory, r, tmp_path):
    coyotes_factory("-concurrent", "2")
    ledger = tmp_path / "ledger"
    push(r, ledger_command(ledger, "slow", 4))
    wait_until(lambda: "slow" in started(ledger))
    for i in range(6):
        push(r, ledger_command(ledger, f"quick{i}", 0))
    wait_until(lambda: len(ended(ledger)) == 6, timeout=20)
    assert "slow" not in ended(ledger)   # six quick tasks went past the slow one
    wait_until(lambda: "slow" in ended(ledger), timeout=20)


def test_distinct_refuses_a_queued_or_running_duplicate(coyotes, r, tmp_path):
    ledger = tmp_path / "ledger"
    command = ledger_command(ledger, "same", 1.0)
    push(r, command)
    wait_until(lambda: "same" in started(ledger))
    push(r, command)          # running: refused
    wait_until(lambda: "refused, already queued or running" in coyotes.log())
    wait_until(lambda: "same" in ended(ledger))
    wait_until(lambda: settled(r))
    assert not r.exists(f"default:tasks:queue:{command}:dis")   # flag cleared on finish
    push(r, command)          # finished: accepted again
    wait_until(lambda: [e for e, _, _ in read_ledger(ledger)].count("end") == 2)
    assert [e for e, _, _ in read_ledger(ledger)].count("start") == 2


def test_bad_entries_go_to_dead_letters_and_the_next_task_runs(coyotes, r, tmp_path):
    bad = ["not json at all", '["a list"]', '{"chan": "default"}',
           '{"task": "echo hi", "chan": "nowhere"}',
           '{"task": "echo \\"unclosed", "chan": "default"}',
           '{"command": {"name": "echo", "args": [{"x": 1}]}}']
    for entry in bad:
        r.lpush("task:prepare:queue", entry)
    ledger = tmp_path / "ledger"
    push(r, ledger_command(ledger, "good"))
    wait_until(lambda: "good" in ended(ledger))
    wait_until(lambda: r.llen("task:prepare:dead") == len(bad))
    records = [json.loads(x) for x in r.lrange("task:prepare:dead", 0, -1)]
    assert sorted(rec["entry"] for rec in records) == sorted(bad)
    reasons = {rec["entry"]: rec["reason"] for rec in records}
    assert reasons["not json at all"] == "not valid JSON"
    assert "unknown channel" in reasons['{"task": "echo hi", "chan": "nowhere"}']
    assert "no command" in reasons['{"chan": "default"}']
    assert "cannot split" in reasons['{"task": "echo \\"unclosed", "chan": "default"}']
    assert coyotes.proc.poll() is None
    status, reply = coyotes.request("GET", "/dead-letters")
    assert status == 200 and reply["data"]["count"] == len(bad)


def test_every_producer_form_is_accepted(coyotes, r, tmp_path):
    ledger = tmp_path / "ledger"
    # id kept; argv form; execute_at in the past runs now; execute_at ahead waits (Redis clock)
    r.lpush("task:prepare:queue", json.dumps({"id": "php-42", "chan": "default",
                                              "task": ledger_command(ledger, "with-id", 1)}))
    wait_until(lambda: "with-id" in started(ledger))
    status, reply = coyotes.request("GET", "/channels/default")
    assert status == 200
    assert [t["task_id"] for t in reply["data"]["tasks"]] == ["php-42"]
    now = int(r.time()[0])
    r.lpush("task:prepare:queue", json.dumps({"task": ledger_command(ledger, "past"),
                                              "execute_at": now - 60}))
    r.lpush("task:prepare:queue", json.dumps({"task": ledger_command(ledger, "later"),
                                              "chan": "default", "execute_at": now + 3}))
    wait_until(lambda: "past" in ended(ledger))
    wait_until(lambda: r.zcard("task:delay:queue") == 1)
    assert "later" not in started(ledger)
    wait_until(lambda: "later" in ended(ledger), timeout=20)
    assert float(next(w for e, t, w in read_ledger(ledger) if t == "later")) >= now + 3
    assert r.zcard("task:delay:queue") == 0


def test_oversized_entry_is_dead_lettered(coyotes, r, tmp_path):
    ledger = tmp_path / "ledger"
    r.lpush("task:prepare:queue", json.dumps({"task": "echo " + "x" * (2 << 20)}))
    push(r, ledger_command(ledger, "next"))
    wait_until(lambda: "next" in ended(ledger))
    wait_until(lambda: r.llen("task:prepare:dead") == 1)
    assert "larger than" in json.loads(r.lindex("task:prepare:dead", 0))["reason"]


def test_missing_command_is_a_logged_failure(coyotes, r, tmp_path):
    ledger = tmp_path / "ledger"
    push(r, "no-such-program-xyz --flag")
    push(r, ledger_command(ledger, "after"))
    wait_until(lambda: "after" in ended(ledger))
    wait_until(lambda: "failed to start" in coyotes.log() and settled(r))
    assert "no-such-program-xyz" in coyotes.log()


def test_go_plain_string_entries_still_run(coyotes, r, tmp_path):
    marker = tmp_path / "legacy"
    r.lpush("default:tasks:queue", f"touch {marker}")   # as the Go v1.0-beta daemon queued them
    wait_until(marker.exists, what="the legacy entry to run")
    wait_until(lambda: settled(r))


def test_argv_form_and_quoting(coyotes, r, tmp_path):
    out1, out2 = tmp_path / "a b.txt", tmp_path / "argv.txt"
    script = "import sys; open(sys.argv[1], 'w').write(repr(sys.argv[2:]))"
    push(r, f'{sys.executable} -c "{script}" "{out1}" "x y" z')
    r.lpush("task:prepare:queue", json.dumps({"command": {"name": sys.executable, "args": [
        "-c", script, str(out2), "quoted 'and' spaced", 7, 2.5]}, "chan": "default"}))
    wait_until(lambda: out1.exists() and out2.exists())
    assert out1.read_text() == repr(["x y", "z"])
    assert out2.read_text() == repr(["quoted 'and' spaced", "7", "2.5"])


def test_chatty_command_does_not_block(coyotes, r, tmp_path):
    ledger = tmp_path / "ledger"
    chatty = ("import sys; [(sys.stdout.write('o' * 999 + chr(10)), sys.stderr.write("
              "'e' * 999 + chr(10))) for _ in range(4000)]")
    push(r, f'{sys.executable} -c "{chatty}"')
    push(r, ledger_command(ledger, "after"))
    wait_until(lambda: "after" in ended(ledger), timeout=60)
    wait_until(lambda: settled(r), timeout=60)
    log = coyotes.log()
    # 8 MB of output: the log takes the first 1 MiB of it (-log-output-max), and says so
    logged = log.count("stdout: ooo") + log.count("stderr: eee")
    assert 1000 <= logged <= 1 + (1 << 20) // 1000, logged   # the last one cut
    assert "not logged (log budget of" in log


def test_usr2_waits_for_running_command_then_exits_0(coyotes, r, tmp_path):
    ledger = tmp_path / "ledger"
    push(r, ledger_command(ledger, "sleeper", 2))
    wait_until(lambda: "sleeper" in started(ledger))
    assert coyotes.pidfile.exists()
    coyotes.signal(signal.SIGUSR2)
    assert coyotes.wait(30) == 0
    assert "sleeper" in ended(ledger)
    assert not coyotes.pidfile.exists()
    assert settled(r)


def test_tasks_pushed_during_drain_are_not_claimed(coyotes, r, tmp_path):
    ledger = tmp_path / "ledger"
    push(r, ledger_command(ledger, "first", 2))
    wait_until(lambda: "first" in started(ledger))
    coyotes.signal(signal.SIGTERM)
    wait_until(lambda: "shutdown: signal received" in coyotes.log())
    push(r, ledger_command(ledger, "late"))
    assert coyotes.wait(30) == 0
    assert started(ledger) == {"first"}
    wait_until(lambda: r.llen("default:tasks:queue") == 1, what="late task kept queued")


def test_sigint_to_the_process_group_leaves_children_running(coyotes_factory, r, tmp_path):
    daemon = coyotes_factory(start=False)
    daemon.start(start_new_session=True)   # its own group, like a terminal's foreground job
    ledger = tmp_path / "ledger"
    push(r, ledger_command(ledger, "child", 2))
    wait_until(lambda: "child" in started(ledger))
    os.killpg(daemon.proc.pid, signal.SIGINT)   # what Ctrl-C does
    assert daemon.wait(30) == 0
    assert "child" in ended(ledger)   # the child never saw the SIGINT


def test_grace_exceeded_kills_the_group_and_requeues(coyotes_factory, r, tmp_path):
    daemon = coyotes_factory("-grace", "1")
    pidfile = tmp_path / "grandchild.pid"
    # a command whose own child would outlive it if only the leader were killed
    script = (f"import subprocess,time; p=subprocess.Popen(['sleep','60']); "
              f"open('{pidfile}','w').write(str(p.pid)); time.sleep(60)")
    push(r, f'{sys.executable} -c "{script}"')
    wait_until(pidfile.exists)
    wait_until(lambda: pidfile.read_text())
    grandchild = int(pidfile.read_text())
    daemon.signal(signal.SIGUSR2)
    assert daemon.wait(30) == 0
    assert "requeued" in daemon.log()
    queued = r.lrange("default:tasks:queue", 0, -1)
    assert len(queued) == 1 and "sleep" in queued[0]
    assert r.scard("default:tasks:queue:exec") == 0
    wait_until(lambda: not _alive(grandchild), what="the grandchild to be killed")


def test_second_signal_forces_the_exit_and_requeues(coyotes, r, tmp_path):
    push(r, "sleep 60")
    # its process runs (the running set has it from the claim on, a moment before)
    wait_until(lambda: "started (attempt 1" in coyotes.log())
    coyotes.signal(signal.SIGUSR2)
    wait_until(lambda: "waiting for 1 running command" in coyotes.log())
    coyotes.signal(signal.SIGUSR2)
    assert coyotes.wait(30) == 0
    assert "forced" in coyotes.log()
    assert r.lrange("default:tasks:queue", 0, -1) and json.loads(
        r.lrange("default:tasks:queue", 0, -1)[0])["task"] == "sleep 60"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0); it is dead for our purpose
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_kill9_with_tasks_queued_and_running_then_restart(coyotes_factory, r, tmp_path):
    daemon = coyotes_factory(node_id="node-a")
    ledger = tmp_path / "ledger"
    tags = {f"t{i:02d}" for i in range(50)}
    for tag in sorted(tags):
        push(r, ledger_command(ledger, tag, 0.3))
    wait_until(lambda: len(started(ledger)) >= 8, timeout=30)
    daemon.kill9()
    assert len(ended(ledger)) < 50
    # the same node comes back (same id): it requeues its own leftovers
    again = coyotes_factory(node_id="node-a")
    wait_until(lambda: ended(ledger) >= tags, timeout=60, what="all 50 tasks")
    wait_until(lambda: settled(r))
    assert "left from a previous run" in again.log()


def test_a_live_node_requeues_the_work_of_a_dead_one(coyotes_factory, r, tmp_path):
    dead = coyotes_factory("-node-ttl", "3", node_id="dead-node")
    ledger = tmp_path / "ledger"
    push(r, ledger_command(ledger, "orphan", 1))
    wait_until(lambda: "orphan" in started(ledger))
    dead.kill9()
    assert r.llen("task:node:dead-node:processing:default") == 1
    survivor = coyotes_factory("-node-ttl", "3", node_id="survivor")
    wait_until(lambda: "heartbeat expired" in survivor.log(), timeout=30)
    wait_until(lambda: [e for e, t, _ in read_ledger(ledger)].count("end") >= 1, timeout=30)
    wait_until(lambda: settled(r))
    assert "dead-node" not in r.smembers("task:nodes")


def test_redis_killed_and_restarted_during_a_burst(coyotes, redis_server, r, tmp_path):
    ledger = tmp_path / "ledger"
    tags = {f"b{i:03d}" for i in range(200)}
    with r.pipeline() as pipe:
        for tag in sorted(tags):
            pipe.lpush("task:prepare:queue", json.dumps(
                {"task": ledger_command(ledger, tag, 0.05), "chan": "default"}))
        pipe.execute()
    wait_until(lambda: len(ended(ledger)) >= 20, timeout=30)
    redis_server.kill()
    time.sleep(1.5)   # an outage long enough for every loop to notice
    redis_server.start()   # same port, same directory: the append-only file comes back
    r2 = redis_server.client()
    wait_until(lambda: ended(ledger) >= tags, timeout=120, what="all 200 tasks after the outage")
    wait_until(lambda: settled(r2), timeout=30)
    assert coyotes.proc.poll() is None
    assert "redis is back" in coyotes.log()


def test_running_command_survives_a_redis_outage(coyotes, redis_server, r, tmp_path):
    ledger = tmp_path / "ledger"
    push(r, ledger_command(ledger, "steady", 3))
    wait_until(lambda: "steady" in started(ledger))
    redis_server.kill()
    wait_until(lambda: "steady" in ended(ledger), timeout=20)
    redis_server.start()
    r2 = redis_server.client()
    wait_until(lambda: settled(r2), timeout=30)   # the ack went through once redis was back
    assert [e for e, _, _ in read_ledger(ledger)] == ["start", "end"]


def test_started_children_have_their_own_session(coyotes, r, tmp_path):
    out = tmp_path / "ids"
    script = (f"import os; open('{out}','w')"
              ".write(f'{os.getsid(0)} {os.getpgid(0)} {os.getpid()}')")
    push(r, f'{sys.executable} -c "{script}"')
    wait_until(lambda: out.exists() and out.read_text())
    sid, pgid, pid = map(int, out.read_text().split())
    assert sid == pgid == pid
    assert sid != os.getsid(coyotes.proc.pid)


def test_a_channel_whose_workers_are_busy_claims_nothing_more(coyotes_factory, r, tmp_path):
    coyotes_factory("-concurrent", "1")
    push(r, "sleep 2")
    wait_until(lambda: r.scard("default:tasks:queue:exec") == 1)
    push(r, "echo next")
    wait_until(lambda: r.llen("default:tasks:queue") == 1)
    # the single worker is busy: the second task stays in the channel queue, not claimed
    assert r.llen(f"task:node:{_node(r)}:processing:default") == 1
    wait_until(lambda: settled(r), timeout=20)


def _node(r) -> str:
    nodes = r.smembers("task:nodes")
    assert len(nodes) == 1
    return next(iter(nodes))


def test_default_channels_come_back_after_redis_loses_its_data(coyotes, r, tmp_path):
    r.flushall()   # as after a restart without persistence
    wait_until(lambda: r.hexists("task:channels", "default"), timeout=20)
    ledger = tmp_path / "ledger"
    push(r, ledger_command(ledger, "after-flush"))
    wait_until(lambda: "after-flush" in ended(ledger), timeout=20)
    assert "creating the default channels again" in coyotes.log()


def test_a_task_pushed_right_after_redis_lost_its_data_waits_for_the_defaults(coyotes, r,
                                                                            tmp_path):
    """Pushed before the maintenance turn makes the default channels again, once
    another channel was made (so Redis's task:channels exists without them): the node
    still knows them, Redis does not. The entry waits staged, the defaults are made
    at once, and it runs; it is not dead-lettered as 'unknown channel'."""
    ledger = tmp_path / "ledger"
    r.flushall()
    r.hset("task:channels", "third", json.dumps({"name": "third", "distinct": False,
                                                 "worker_count": 1}))
    push(r, ledger_command(ledger, "right-after"))
    wait_until(lambda: "right-after" in ended(ledger), timeout=20)
    assert r.llen("task:prepare:dead") == 0
    assert "was missing from task:channels: made again" in coyotes.log()


def test_each_task_runs_once_after_an_outage(coyotes, redis_server, tmp_path):
    redis_server.kill()
    wait_until(lambda: "redis unavailable" in coyotes.log())
    redis_server.start()
    r2 = redis_server.client()
    ledger = tmp_path / "ledger"
    for i in range(3):
        push(r2, ledger_command(ledger, f"t{i}", 0.5))
    wait_until(lambda: len(ended(ledger)) == 3, timeout=30)
    wait_until(lambda: settled(r2), timeout=30)
    assert sorted(t for e, t, _ in read_ledger(ledger) if e == "start") == ["t0", "t1", "t2"]


def test_entries_that_are_not_utf8_still_run(coyotes, redis_server, tmp_path):
    raw = redis.Redis(port=redis_server.port)   # bytes in, bytes out
    gbk_name = "你好".encode("gbk")
    raw.lpush("biz:tasks:queue", b"touch " + os.fsencode(tmp_path) + b"/" + gbk_name)
    marker = tmp_path / "after"
    raw.lpush("biz:tasks:queue", f"touch {marker}".encode())
    wait_until(marker.exists)
    assert gbk_name in os.listdir(os.fsencode(tmp_path))   # argv kept its exact bytes
    status, _ = coyotes.request("GET", "/channels")
    assert status == 200


def test_unreadable_queue_entries_are_dead_lettered(coyotes_factory, r, tmp_path):
    viewer = coyotes_factory("-task-mode=false")
    # in API-only mode the default channels are created after "ready", in the background
    wait_until(lambda: r.hexists("task:channels", "cron"), what="the cron channel")
    r.lpush("cron:tasks:queue", '{"id": "n1", "task": 5}')
    status, reply = viewer.request("GET", "/channels/cron")
    assert status == 200 and reply["data"]["tasks"][0]["task_id"] == "n1"
    viewer.stop()
    coyotes_factory()
    marker = tmp_path / "next"
    r.lpush("cron:tasks:queue", f"touch {marker}")
    wait_until(marker.exists)
    wait_until(lambda: r.llen("task:prepare:dead") == 1)
    record = json.loads(r.lindex("task:prepare:dead", 0))
    assert record["reason"] == "task must be a string" and record["channel"] == "cron"
    # a policy value no producer path would accept, written straight into a queue
    r.lpush("cron:tasks:queue", '{"id": "n2", "task": "true", "timeout": "soon"}')
    wait_until(lambda: r.llen("task:prepare:dead") == 2)
    assert "timeout" in json.loads(r.lindex("task:prepare:dead", 0))["reason"]
    wait_until(lambda: r.scard("cron:tasks:queue:exec") == 0)


def test_a_node_id_in_use_is_refused(coyotes_factory, r, tmp_path):
    first = coyotes_factory("-node-ttl", "3", node_id="twin")
    ledger = tmp_path / "ledger"
    push(r, ledger_command(ledger, "long", 4))
    wait_until(lambda: "long" in started(ledger))
    second = coyotes_factory("-node-ttl", "3", node_id="twin", start=False).start(wait=False)
    assert second.wait(30) == 1
    assert "is in use by a live coyotes" in second.log()
    wait_until(lambda: "long" in ended(ledger), timeout=20)
    assert [e for e, _, _ in read_ledger(ledger)] == ["start", "end"]   # not requeued
    assert first.proc.poll() is None


def test_a_dead_predecessor_with_the_same_id_is_taken_over_at_once(coyotes_factory, r):
    dead = coyotes_factory(node_id="phoenix")
    push(r, "sleep 3")   # outlives the kill -9 (its own session) for a short while only
    wait_until(lambda: r.scard("default:tasks:queue:exec") == 1)
    dead.kill9()
    assert r.exists("task:node:phoenix")   # its heartbeat has not expired yet
    again = coyotes_factory(node_id="phoenix")
    assert "watching it" not in again.log()
    assert "left from a previous run" in again.log()


def test_shutdown_acks_a_task_that_finished_and_ends_its_group(coyotes_factory, r, tmp_path):
    daemon = coyotes_factory("-grace", "0")
    done, bg = tmp_path / "done", tmp_path / "bg.pid"
    # exits 0 at once, but a background child keeps the output pipes open
    push(r, f"sh -c 'echo $$ > {done}; sleep 30 & echo $! > {bg}; exit 0'")
    wait_until(lambda: bg.exists() and bg.read_text().strip())
    wait_until(lambda: "exited 0" in daemon.log())
    daemon.signal(signal.SIGUSR2)
    assert daemon.wait(30) == 0
    assert "requeued" not in daemon.log()
    assert r.llen("default:tasks:queue") == 0
    wait_until(lambda: not _alive(int(bg.read_text())), what="the background sleep to end")


def test_background_children_holding_the_output_end_with_the_task(coyotes, r, tmp_path):
    bg = tmp_path / "bg.pid"
    push(r, f"sh -c 'sleep 30 & echo $! > {bg}'")
    wait_until(lambda: bg.exists() and bg.read_text().strip())
    wait_until(lambda: settled(r), timeout=20)
    wait_until(lambda: not _alive(int(bg.read_text())), what="the background sleep to end")


def test_an_output_flood_does_not_starve_the_daemon(coyotes, r, tmp_path):
    flood = ("import sys; w = sys.stdout.write; [w('y' * 20 + chr(10)) for _ in range(400000)]")
    push(r, f'{sys.executable} -c "{flood}"')
    wait_until(lambda: coyotes.log().count("stdout: yyyy") > 1000)
    status, reply = coyotes.request("GET", "/")   # answered while the flood goes on
    assert status == 200 and reply["data"]["name"] == "coyotes"
    assert r.scard("default:tasks:queue:exec") == 1 and "exited 0" not in coyotes.log()
    wait_until(lambda: settled(r), timeout=120)


def test_entries_left_by_later_go_versions_run(coyotes_factory, r, tmp_path):
    """Later Go versions queued their Task JSON (task_id/task_name/channel, an empty
    command placeholder) and scored delayed tasks as local YYYYmmddHHMMSS."""
    queued, delayed = tmp_path / "queued", tmp_path / "delayed"
    r.lpush("default:tasks:queue", json.dumps({
        "task_id": "go-1", "task_name": f"touch {queued}", "command": {"name": "", "args": None},
        "channel": "default", "status": "queued", "retry_count": 0}))
    due = time.strftime("%Y%m%d%H%M%S", time.localtime(time.time() - 5))
    r.zadd("task:delay:queue", {json.dumps({
        "task_id": "go-2", "task_name": f"touch {delayed}", "command": {"name": "", "args": None},
        "channel": "default"}): float(due)})
    daemon = coyotes_factory()
    wait_until(lambda: queued.exists() and delayed.exists(), timeout=20)
    assert "converted to unix times" in daemon.log()
    # the file exists before touch exits and its result is recorded
    wait_until(lambda: daemon.request("GET", "/tasks/go-1")[1]["data"]["status"] == "succeeded",
               what="go-1's result recorded")
