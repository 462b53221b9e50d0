"""Both runners (posix_spawn and gevent.subprocess) behave the same.

Each test runs in a child Python that monkey-patches gevent (as the daemon
does) and prints the Result as JSON, so the test process itself is never
patched.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from conftest import ROOT, wait_until

RUNNERS = ["spawn", "subprocess"]


def run(runner: str, body: str, timeout: float = 60) -> dict:
    """Run ``body`` (which sets ``result`` from Command objects) under gevent."""
    script = textwrap.dedent("""
        from gevent import monkey; monkey.patch_all()
        import json, os, sys, time, gevent, gevent.pool
        from coyotes_lib.command import Command, runner
        RUNNER = runner(sys.argv[1])
        lines = []
        def cmd(argv, **kw):
            return Command(argv, lambda s, t: lines.append([s, t]), RUNNER, **kw)
        def show(r):
            return {"exit_code": r.exit_code, "signal": r.signal, "error": r.error,
                    "stopped": r.stopped, "stdout": r.stdout, "stderr": r.stderr,
                    "duration": r.duration}
    """) + textwrap.dedent(body) + "\nprint(json.dumps(result))\n"
    out = subprocess.run([sys.executable, "-c", script, runner], cwd=ROOT, capture_output=True,
                         text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("runner", RUNNERS)
def test_exit_code_output_lines_and_tails(runner):
    result = run(runner, """
        r = cmd(["sh", "-c", "echo out1; echo err1 >&2; printf 'no newline'; exit 3"]).run()
        result = {**show(r), "lines": lines}
    """)
    assert result["exit_code"] == 3 and result["signal"] is None and not result["error"]
    assert result["stdout"] == "out1\nno newline" and result["stderr"] == "err1\n"
    assert sorted(map(tuple, result["lines"])) == [("stderr", "err1"), ("stdout", "no newline"),
                                                   ("stdout", "out1")]


@pytest.mark.parametrize("runner", RUNNERS)
def test_missing_and_not_executable_commands_are_results(runner, tmp_path):
    plain = tmp_path / "plain.txt"
    plain.write_text("not a program")
    result = run(runner, f"""
        result = [show(cmd(["no-such-program-xyz"]).run()), show(cmd(["{plain}"]).run())]
    """)
    assert result[0]["exit_code"] == 127 and "No such file" in result[0]["error"]
    assert result[1]["exit_code"] == 126 and "Permission denied" in result[1]["error"]


@pytest.mark.parametrize("runner", RUNNERS)
def test_signal_exit_and_own_session(runner):
    result = run(runner, """
        r = cmd(["sh", "-c", "echo $$ $(ps -o sid= -p $$); kill -TERM $$"]).run()
        pid, sid = lines[0][1].split()
        result = {**show(r), "pid": pid, "sid": sid, "my_sid": os.getsid(0)}
    """)
    assert result["exit_code"] is None and result["signal"] == 15
    assert result["pid"] == result["sid"] and int(result["sid"]) != result["my_sid"]


@pytest.mark.parametrize("runner", RUNNERS)
def test_first_command_of_a_process_is_reaped_even_when_it_ends_at_once(runner):
    """libev puts its SIGCHLD handler in place with the first child watcher: a first
    command that ended before that was never reaped, and its task hung (a fresh
    process each time: it happened about one time in four)."""
    for _ in range(12):
        result = run(runner, 'result = show(cmd(["true"]).run())', timeout=20)
        assert result["exit_code"] == 0, result


def test_an_old_exit_of_the_same_pid_is_not_taken_for_a_new_command():
    """The spawner keeps exits nobody waited for (a child whose spawn failed can be
    reaped by the hub first); a later command that gets the same pid must wait for
    its own exit, not take that one. Linux gives the next pid to the next process,
    so a stale exit 3 is planted for it."""
    result = run("spawn", """
        cmd(["true"]).run()                       # the spawner is set up
        results = []
        for _ in range(5):
            nxt = int(open("/proc/sys/kernel/ns_last_pid").read()) + 1
            RUNNER.reaps += 1
            RUNNER.exits[nxt] = (RUNNER.reaps, 3 << 8)   # "exited 3", seen before the spawn
            results.append(show(cmd(["sh", "-c", "sleep 0.2; echo $$"]).run()))
        result = results
    """)
    assert all(r["exit_code"] == 0 for r in result), result


@pytest.mark.parametrize("runner", RUNNERS)
def test_commands_start_with_default_signals(runner):
    """Python ignores SIGPIPE and SIGXFSZ; a command must not inherit that (``yes |
    head`` would print errors instead of ending quietly), nor a blocked signal."""
    result = run(runner, """
        import signal
        # the daemon's own handlers for these (so a shell that started it with them
        # ignored, as a background job without job control, leaves no trace)
        for sig in (signal.SIGINT, signal.SIGTERM):
            gevent.signal_handler(sig, lambda: None)
        cmd(["grep", "^Sig[BI]", "/proc/self/status"]).run()
        result = dict(line[1].split(":\t") for line in lines)
    """)
    ignored, blocked = int(result["SigIgn"], 16), int(result["SigBlk"], 16)
    for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGTERM, signal.SIGINT):
        assert not ignored & (1 << (sig - 1)), (sig, result)
    assert blocked == 0, result


@pytest.mark.parametrize("runner", RUNNERS)
def test_stdin_is_empty_and_fds_are_not_leaked(runner):
    result = run(runner, """
        r = cmd(["sh", "-c", "cat; ls /proc/self/fd | wc -l"]).run()
        result = show(r)
    """)
    # cat reads an empty stdin at once; ls sees 0, 1, 2 and its own directory fd
    assert result["exit_code"] == 0 and result["stdout"].strip() == "4"


@pytest.mark.parametrize("runner", RUNNERS)
def test_large_output_does_not_block_and_tail_is_capped(runner):
    result = run(runner, """
        prog = ("import sys; [(sys.stdout.write('x' * 999 + chr(10)), "
                "sys.stderr.write('y' * 99 + chr(10))) for _ in range(5000)]; print('LAST')")
        r = cmd([sys.executable, "-c", prog], tail=1000).run()
        result = {**show(r), "count": len(lines)}
    """)
    assert result["exit_code"] == 0 and result["count"] == 10001
    assert len(result["stdout"]) == 1000 and result["stdout"].endswith("LAST\n")
    assert len(result["stderr"]) == 1000 and set(result["stderr"]) == {"y", "\n"}


@pytest.mark.parametrize("runner", RUNNERS)
def test_timeout_kills_the_whole_group(runner, tmp_path):
    pidfile = tmp_path / "bg.pid"
    result = run(runner, f"""
        c = cmd(["sh", "-c", "sleep 60 & echo $! > {pidfile}; sleep 60"], kill_grace=2)
        r = c.run(timeout=0.5)
        result = show(r)
    """)
    assert result["stopped"] == "timeout" and result["signal"] == 15
    assert 0.4 < result["duration"] < 10
    wait_until(lambda: not alive(int(pidfile.read_text())), what="the background sleep to die")


@pytest.mark.parametrize("runner", RUNNERS)
def test_term_ignored_means_kill_after_the_grace(runner):
    result = run(runner, """
        r = cmd(["sh", "-c", "trap '' TERM; sleep 60 & wait"], kill_grace=1).run(timeout=0.3)
        result = show(r)
    """)
    assert result["stopped"] == "timeout" and result["signal"] == 9
    assert 1.0 < result["duration"] < 10


@pytest.mark.parametrize("runner", RUNNERS)
def test_stop_from_another_greenlet_and_background_holders(runner, tmp_path):
    pidfile = tmp_path / "holder.pid"
    result = run(runner, f"""
        c = cmd(["sleep", "60"], kill_grace=1)
        gevent.spawn_later(0.3, c.stop, "cancel")
        first = show(c.run())
        # exits at once, but a background child keeps the output pipe open
        second = show(cmd(["sh", "-c", "sleep 60 & echo $! > {pidfile}"]).run())
        result = [first, second]
    """)
    assert result[0]["stopped"] == "cancel" and result[0]["signal"] == 15
    assert result[1]["exit_code"] == 0 and not result[1]["stopped"]
    wait_until(lambda: not alive(int(pidfile.read_text())), what="the pipe holder to end")


@pytest.mark.parametrize("runner", RUNNERS)
def test_stop_asked_before_the_process_exists_still_ends_it(runner):
    """A cancel that arrives while the command is being started (the spawn runner
    waits for its thread) is not lost: the process is ended once it exists."""
    result = run(runner, """
        c = cmd(["sleep", "60"], kill_grace=1)
        gevent.spawn(c.stop, "cancel")   # runs at run()'s first wait, perhaps before the pid
        t0 = time.monotonic()
        result = {**show(c.run()), "took": time.monotonic() - t0}
    """)
    assert result["stopped"] == "cancel" and result["signal"] == 15, result
    assert result["took"] < 30


@pytest.mark.parametrize("runner", RUNNERS)
def test_many_at_once_stay_cooperative(runner):
    result = run(runner, """
        ticks = []
        ticker = gevent.spawn(lambda: [ticks.append(time.monotonic()) or gevent.sleep(0.01)
                                       for _ in range(10**6)])
        pool = gevent.pool.Pool(10)
        codes = pool.map(lambda i: cmd(["sh", "-c", f"sleep 0.2; exit {i % 3}"]).run().exit_code,
                         range(30))
        ticker.kill()
        gaps = [b - a for a, b in zip(ticks, ticks[1:])]
        result = {"codes": codes, "max_gap": max(gaps)}
    """)
    assert result["codes"] == [i % 3 for i in range(30)]
    assert result["max_gap"] < 0.5   # the loop kept turning while commands ran


def test_spawn_reaps_every_child(tmp_path):
    """No zombies left behind by the child watcher, even for fast exits."""
    result = run("spawn", """
        pool = gevent.pool.Pool(20)
        pool.map(lambda i: cmd(["true"]).run(), range(200))
        me = os.getpid()
        zombies = 0
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    stat = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                zombies += stat[0] == "Z" and int(stat[1]) == me
        result = {"zombies": zombies}
    """)
    assert result["zombies"] == 0


def test_the_daemon_runs_tasks_with_either_runner(coyotes_factory, r, tmp_path):
    for runner in RUNNERS:
        marker = tmp_path / runner
        daemon = coyotes_factory("-runner", runner)
        r.lpush("task:prepare:queue", json.dumps({"task": f"touch {marker}"}))
        wait_until(marker.exists, what=f"a task under -runner {runner}")
        assert daemon.stop() == 0
    assert os.path.exists(tmp_path / "spawn") and time.time()
