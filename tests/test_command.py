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

from coyotes_lib.command import Result

RUNNERS = ["spawn", "subprocess"]


def run(runner: str, body: str, timeout: float = 60, make: str = "runner(sys.argv[1])",
        **popen) -> dict:
    """Run ``body`` (which sets ``result`` from Command objects) under gevent, with
    the runner made by ``make``."""
    script = textwrap.dedent("""
        from gevent import monkey; monkey.patch_all()
        import json, os, sys, time, gevent, gevent.pool
        from coyotes_lib.command import Command
        from coyotes_lib.runners import Spawner, runner
        RUNNER = %s
        lines = []
        def cmd(argv, **kw):
            return Command(argv, lambda s, t: lines.append([s, t]), RUNNER, **kw)
        def show(r):
            return {"exit_code": r.exit_code, "signal": r.signal, "error": r.error,
                    "stopped": r.stopped, "stdout": r.stdout, "stderr": r.stderr,
                    "duration": r.duration, "transient": r.transient}
        def alive(pid):
            try:
                with open(f"/proc/{pid}/stat") as f:
                    return f.read().rsplit(")", 1)[1].split()[0] != "Z"
            except FileNotFoundError:
                return False
    """) % make + textwrap.dedent(body) + "\nprint(json.dumps(result))\n"
    out = subprocess.run([sys.executable, "-c", script, runner], cwd=ROOT, capture_output=True,
                         text=True, timeout=timeout, **popen)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def end(pid: int) -> None:
    """Clean-up: kill a process a test left running on purpose."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


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


LIST_FDS = ["ls", "/proc/self/fd"]   # 0, 1, 2 and ls's own directory fd, if nothing leaks


@pytest.mark.parametrize("runner", RUNNERS)
def test_inherited_descriptors_do_not_reach_commands(runner):
    """A descriptor the daemon inherited without close-on-exec (a careless parent, a
    supervisor's socket), or opened so later, is not passed on to commands: the
    subprocess runner closes them (close_fds), and the spawn runner the same."""
    inherited = os.open(os.devnull, os.O_RDONLY)
    try:
        result = run(runner, f"""
            assert os.get_inheritable({inherited})   # the premise: it would reach children
            late = os.open(os.devnull, os.O_RDONLY)
            os.set_inheritable(late, True)
            r = cmd({LIST_FDS!r}).run()
            result = {{**show(r), "listed": sorted(int(line[1]) for line in lines)}}
        """, pass_fds=(inherited,))
    finally:
        os.close(inherited)
    assert result["exit_code"] == 0 and result["listed"] == [0, 1, 2, 3], result


def test_without_closefrom_the_spawner_marks_inherited_descriptors_close_on_exec():
    """The fallback where libc lacks posix_spawn_file_actions_addclosefrom_np (musl,
    glibc before 2.34): the descriptors present when the spawner is made."""
    inherited = os.open(os.devnull, os.O_RDONLY)
    try:
        result = run("spawn", f"""
            r = cmd({LIST_FDS!r}).run()
            result = {{**show(r), "listed": sorted(int(line[1]) for line in lines),
                       "closefrom": RUNNER.closefrom is not None}}
        """, make="Spawner(closefrom=False)", pass_fds=(inherited,))
    finally:
        os.close(inherited)
    assert not result["closefrom"]
    assert result["exit_code"] == 0 and result["listed"] == [0, 1, 2, 3], result


@pytest.mark.parametrize("runner", RUNNERS)
def test_running_out_of_descriptors_is_a_transient_result(runner):
    """EMFILE when the pipes are made, or when the command is started (the spawn
    child's /dev/null, subprocess's own descriptors), is a result the scheduler can
    requeue, never an exception that kills the worker; nothing leaks, and the runner
    works again once descriptors are free."""
    result = run(runner, """
        import resource
        from gevent.monkey import get_original
        close = get_original("os", "close")   # gevent's waits for a turn of the loop
        def count():
            return len(os.listdir("/proc/self/fd"))
        cmd(["true"]).run()   # the runner is set up (thread, watchers)
        base = count()
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (base + 32, hard))
        held = []
        try:
            while True:
                held.append(os.open(os.devnull, os.O_RDONLY))
        except OSError:
            pass
        no_pipes = show(cmd(["echo", "hi"]).run())
        for fd in held[-4:]:   # room for the two pipes, not for what starting needs
            close(fd)
        del held[-4:]
        no_start = show(cmd(["echo", "hi"]).run())
        for fd in held:
            close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        leaked = count() - base
        result = {"no_pipes": no_pipes, "no_start": no_start, "leaked": leaked,
                  "after": show(cmd(["echo", "hi"]).run())}
    """)
    failures = [result["no_pipes"]]
    if runner == "subprocess":
        failures.append(result["no_start"])
    else:   # glibc's posix_spawn needs no descriptor beyond the pipes (musl's does)
        assert result["no_start"]["exit_code"] == 0 or result["no_start"]["transient"], result
    for failed in failures:
        assert failed["transient"] is True and failed["exit_code"] == 126, result
        assert "Too many open files" in failed["error"], result
        assert Result(**{k: failed[k] for k in ("exit_code", "error", "transient")}).describe() \
            == f"failed to start ({failed['error']})"
    assert result["leaked"] == 0, result
    after = result["after"]
    assert after["exit_code"] == 0 and after["stdout"] == "hi\n" and not after["transient"]


@pytest.mark.parametrize("runner", RUNNERS)
@pytest.mark.parametrize("kill_group", [True, False])
def test_background_children_end_with_the_command(runner, kill_group):
    """With kill_group on (the default) what a command leaves in its process group
    ends when it exits; off, a background child with its output redirected (so it
    holds no pipe) outlives it."""
    result = run(runner, f"""
        r = cmd(["sh", "-c", "sleep 60 > /dev/null 2>&1 & echo $!"],
                kill_group={kill_group}).run()
        result = show(r)
    """)
    pid = int(result["stdout"])
    try:
        assert result["exit_code"] == 0 and not result["transient"]
        if kill_group:
            wait_until(lambda: not alive(pid), what="the background sleep to end")
        else:
            assert alive(pid)
    finally:
        end(pid)


@pytest.mark.parametrize("runner", RUNNERS)
def test_without_kill_group_a_child_holding_the_output_still_ends(runner):
    """kill_group off spares only children that let go of the output pipes: one
    that holds them keeps the task from ending, so its group goes after the linger."""
    result = run(runner, """
        t0 = time.monotonic()
        r = cmd(["sh", "-c", "sleep 60 & echo $!"], kill_group=False, kill_grace=1).run()
        result = {**show(r), "took": time.monotonic() - t0}
    """)
    pid = int(result["stdout"])
    try:
        assert result["exit_code"] == 0 and result["took"] >= 2.0, result   # PIPE_LINGER
        wait_until(lambda: not alive(pid), what="the pipe holder to end")
    finally:
        end(pid)


@pytest.mark.parametrize("runner", RUNNERS)
def test_a_background_child_that_ignores_term_is_killed_after_the_grace(runner):
    """The result does not wait for the group to end: TERM at once, KILL later."""
    result = run(runner, """
        c = cmd(["sh", "-c", "trap '' TERM; sleep 60 > /dev/null 2>&1 & echo $!"],
                kill_grace=2)
        t0 = time.monotonic()
        r = c.run()
        took = time.monotonic() - t0
        pid = int(r.stdout)
        alive_at_result = alive(pid)
        while alive(pid) and time.monotonic() - t0 < 20:
            gevent.sleep(0.05)
        result = {**show(r), "took": took, "pid": pid, "alive_at_result": alive_at_result,
                  "gone_after": time.monotonic() - t0 if not alive(pid) else None}
    """)
    try:
        assert result["exit_code"] == 0 and result["took"] < 1.5, result
        assert result["alive_at_result"], result         # TERM did not end it
        assert result["gone_after"] is not None and result["gone_after"] < 10, result
    finally:
        end(result["pid"])


@pytest.mark.parametrize("runner", RUNNERS)
@pytest.mark.parametrize("kill_group", [True, False])
def test_a_child_in_a_session_of_its_own_escapes_either_way(runner, kill_group):
    """The limit of kill_group (documented): a child that calls setsid leaves the
    group. The command waits until it has, so that the test does not race it."""
    line = ("setsid sleep 60 > /dev/null 2>&1 & p=$!; "
            "while [ \"$(ps -o sid= -p $p | tr -d ' ')\" != $p ]; do sleep 0.01; done; echo $p")
    result = run(runner, f"""
        result = show(cmd(["sh", "-c", {line!r}], kill_group={kill_group}).run())
    """)
    pid = int(result["stdout"])
    try:
        assert result["exit_code"] == 0
        time.sleep(0.3)   # a kill, were one sent, has landed by now
        assert alive(pid)
    finally:
        end(pid)


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


def test_a_flood_without_newlines_is_read_in_pieces_of_max_line():
    """Output held in memory for a line is bounded: a command that never prints a
    newline comes in MAX_LINE pieces, and the partial line kept never reaches it."""
    result = run("spawn", """
        from coyotes_lib import command
        peak = [0]
        read_lines = command.Output._lines
        def watched(self, data):   # observe the partial line after every read
            read_lines(self, data)
            peak[0] = max(peak[0], len(self.partial))
        command.Output._lines = watched
        prog = "import sys; sys.stdout.write('x' * 3000000)"
        r = cmd([sys.executable, "-c", prog], tail=10).run()
        result = {**show(r), "sizes": [len(t) for _s, t in lines], "peak": peak[0],
                  "max_line": command.MAX_LINE}
    """)
    sizes, max_line = result["sizes"], result["max_line"]
    assert result["exit_code"] == 0 and sum(sizes) == 3000000
    assert sizes[:-1] == [max_line] * (len(sizes) - 1) and 0 < sizes[-1] <= max_line
    assert 0 < result["peak"] < max_line


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


def test_the_daemon_passes_no_inherited_descriptor_to_tasks(coyotes_factory, r, tmp_path):
    """The whole path: a daemon started with an extra descriptor open (as a careless
    supervisor might) runs a task that lists its own."""
    inherited = os.open(tmp_path, os.O_RDONLY)
    try:
        for runner in RUNNERS:
            daemon = coyotes_factory("-runner", runner, start=False).start(pass_fds=(inherited,))
            assert os.path.exists(f"/proc/{daemon.proc.pid}/fd/{inherited}")   # the premise
            record = f"task:record:fds-{runner}"
            r.lpush("task:prepare:queue", json.dumps({"id": f"fds-{runner}",
                                                      "task": " ".join(LIST_FDS)}))
            wait_until(lambda record=record: r.hget(record, "status") == "succeeded",
                       what=f"the task under -runner {runner}")
            assert r.hget(record, "stdout").split() == ["0", "1", "2", "3"], runner
            assert daemon.stop() == 0
    finally:
        os.close(inherited)
