"""Both runners (posix_spawn and gevent.subprocess) behave the same.

Each test's body is a function in child_runners.py, run in a child Python that
monkey-patches gevent (as the daemon does) and returns the Result as JSON, so the
test process itself is never patched.
"""

from __future__ import annotations

import json
import os
import signal
import time

import child_runners as child
import pytest
from child_runners import alive
from conftest import wait_until
from gevent_child import call

from coyotes_lib.command import Result
from coyotes_lib.runners import MAX_SPAWN_THREADS

RUNNERS = ["spawn", "subprocess"]


def end(pid: int) -> None:
    """Clean-up: kill a process a test left running on purpose."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.mark.parametrize("runner", RUNNERS)
def test_exit_code_output_lines_and_tails(runner):
    result = call(child.exit_code_and_output, runner)
    assert result["exit_code"] == 3 and result["signal"] is None and not result["error"]
    assert result["stdout"] == "out1\nno newline" and result["stderr"] == "err1\n"
    assert sorted(map(tuple, result["lines"])) == [("stderr", "err1"), ("stdout", "no newline"),
                                                   ("stdout", "out1")]


@pytest.mark.parametrize("runner", RUNNERS)
def test_missing_and_not_executable_commands_are_results(runner, tmp_path):
    plain = tmp_path / "plain.txt"
    plain.write_text("not a program")
    result = call(child.missing_and_not_executable, runner, str(plain))
    assert result[0]["exit_code"] == 127 and "No such file" in result[0]["error"]
    assert result[1]["exit_code"] == 126 and "Permission denied" in result[1]["error"]


@pytest.mark.parametrize("runner", RUNNERS)
def test_signal_exit_and_own_session(runner):
    result = call(child.killed_by_its_signal, runner)
    assert result["exit_code"] is None and result["signal"] == 15
    assert result["pid"] == result["sid"] and int(result["sid"]) != result["my_sid"]


@pytest.mark.parametrize("runner", RUNNERS)
def test_first_command_of_a_process_is_reaped_even_when_it_ends_at_once(runner):
    """libev puts its SIGCHLD handler in place with the first child watcher: a first
    command that ended before that was never reaped, and its task hung (a fresh
    process each time: it happened about one time in four)."""
    for _ in range(12):
        result = call(child.first_command, runner, timeout=20)
        assert result["exit_code"] == 0, result


def test_an_old_exit_of_the_same_pid_is_not_taken_for_a_new_command():
    """The spawner keeps exits nobody waited for (a child whose spawn failed can be
    reaped by the hub first); a later command that gets the same pid must wait for
    its own exit, not take that one. Linux gives the next pid to the next process,
    so a stale exit 3 is planted for it."""
    result = call(child.after_stale_exits)
    assert all(r["exit_code"] == 0 for r in result), result


@pytest.mark.parametrize("runner", RUNNERS)
def test_commands_start_with_default_signals(runner):
    """Python ignores SIGPIPE and SIGXFSZ; a command must not inherit that (``yes |
    head`` would print errors instead of ending quietly), nor a blocked signal. A
    signal the daemon was started with ignored (SIGHUP under nohup) stays ignored,
    as subprocess leaves it; the daemon's handlers give way to the default."""
    result = call(child.signal_masks, runner)
    ignored, blocked = int(result["SigIgn"], 16), int(result["SigBlk"], 16)
    defaults = (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
    for sig in defaults:
        assert not ignored & (1 << (sig - 1)), (sig, result)
    # glibc's own signals (32 up to SIGRTMIN, unseen by programs) its posix_spawn ignores
    internal = set(range(32, signal.SIGRTMIN))
    glibc = sum(1 << (sig - 1) for sig in internal)
    # what the test process inherited ignored (a background job: SIGINT, SIGQUIT) stays so
    kept = (set(result["inherited"]) | {signal.SIGHUP}) - set(defaults) - internal
    assert ignored & ~glibc == sum(1 << (sig - 1) for sig in kept), result
    assert blocked == 0, result


def test_the_spawner_names_every_signal_it_resets():
    """glibc's posix_spawn child asks about each signal not named in the spawn
    attributes before it sets it (about 60 system calls more per command, before
    exec): every signal the child gets at its default is named, and none the daemon
    ignores (or could not be set)."""
    result = call(child.spawn_signal_defaults)
    named = set(result["named"])
    assert signal.SIGHUP not in named and signal.SIGKILL not in named
    assert {signal.SIGPIPE, signal.SIGXFSZ, signal.SIGTERM, signal.SIGCHLD, signal.SIGUSR2,
            signal.SIGRTMIN, signal.SIGRTMAX} <= named
    ignored = set(result["ignored"]) - {signal.SIGPIPE, signal.SIGXFSZ}   # Python's own
    assert named == (set(range(1, signal.NSIG)) - {signal.SIGKILL, signal.SIGSTOP}
                     - set(range(32, signal.SIGRTMIN)) - ignored)


@pytest.mark.parametrize("runner", RUNNERS)
def test_stdin_is_empty_and_fds_are_not_leaked(runner):
    result = call(child.stdin_and_descriptor_count, runner)
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
        result = call(child.descriptors_listed, runner, inherited, LIST_FDS,
                      pass_fds=(inherited,))
    finally:
        os.close(inherited)
    assert result["inheritable"], result   # the premise: it would reach children
    assert result["exit_code"] == 0 and result["listed"] == [0, 1, 2, 3], result


def test_without_closefrom_the_spawner_marks_inherited_descriptors_close_on_exec():
    """The fallback where libc lacks posix_spawn_file_actions_addclosefrom_np (musl,
    glibc before 2.34): the descriptors present when the spawner is made."""
    inherited = os.open(os.devnull, os.O_RDONLY)
    try:
        result = call(child.descriptors_listed_without_closefrom, LIST_FDS,
                      pass_fds=(inherited,))
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
    result = call(child.out_of_descriptors, runner)
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
    result = call(child.background_child, runner, kill_group)
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
    result = call(child.child_holding_the_output, runner)
    pid = int(result["stdout"])
    try:
        assert result["exit_code"] == 0 and result["took"] >= 2.0, result   # PIPE_LINGER
        wait_until(lambda: not alive(pid), what="the pipe holder to end")
    finally:
        end(pid)


@pytest.mark.parametrize("runner", RUNNERS)
def test_a_background_child_that_ignores_term_is_killed_after_the_grace(runner):
    """The result does not wait for the group to end: TERM at once, KILL later."""
    result = call(child.child_ignoring_term, runner)
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
    result = call(child.shell_line, runner, line, kill_group)
    pid = int(result["stdout"])
    try:
        assert result["exit_code"] == 0
        time.sleep(0.3)   # a kill, were one sent, has landed by now
        assert alive(pid)
    finally:
        end(pid)


@pytest.mark.parametrize("runner", RUNNERS)
def test_large_output_does_not_block_and_tail_is_capped(runner):
    result = call(child.large_output, runner)
    assert result["exit_code"] == 0 and result["count"] == 10001
    assert len(result["stdout"]) == 1000 and result["stdout"].endswith("LAST\n")
    assert len(result["stderr"]) == 1000 and set(result["stderr"]) == {"y", "\n"}


def test_a_flood_without_newlines_is_read_in_pieces_of_max_line():
    """Output held in memory for a line is bounded: a command that never prints a
    newline comes in MAX_LINE pieces, and the partial line kept never reaches it."""
    result = call(child.flood_without_newlines)
    sizes, max_line = result["sizes"], result["max_line"]
    assert result["exit_code"] == 0 and sum(sizes) == 3000000
    assert sizes[:-1] == [max_line] * (len(sizes) - 1) and 0 < sizes[-1] <= max_line
    assert 0 < result["peak"] < max_line


@pytest.mark.parametrize("runner", RUNNERS)
def test_timeout_kills_the_whole_group(runner, tmp_path):
    pidfile = tmp_path / "bg.pid"
    result = call(child.timeout_with_a_background_child, runner, str(pidfile))
    assert result["stopped"] == "timeout" and result["signal"] == 15
    assert 0.4 < result["duration"] < 10
    wait_until(lambda: not alive(int(pidfile.read_text())), what="the background sleep to die")


@pytest.mark.parametrize("runner", RUNNERS)
def test_term_ignored_means_kill_after_the_grace(runner):
    result = call(child.timeout_with_term_ignored, runner)
    assert result["stopped"] == "timeout" and result["signal"] == 9
    assert 1.0 < result["duration"] < 10


@pytest.mark.parametrize("runner", RUNNERS)
def test_stop_from_another_greenlet_and_background_holders(runner, tmp_path):
    pidfile = tmp_path / "holder.pid"
    result = call(child.stopped_and_pipe_holder, runner, str(pidfile))
    assert result[0]["stopped"] == "cancel" and result[0]["signal"] == 15
    assert result[1]["exit_code"] == 0 and not result[1]["stopped"]
    wait_until(lambda: not alive(int(pidfile.read_text())), what="the pipe holder to end")


@pytest.mark.parametrize("runner", RUNNERS)
def test_stop_asked_before_the_process_exists_still_ends_it(runner):
    """A cancel that arrives while the command is being started (the spawn runner
    waits for its thread) is not lost: the process is ended once it exists."""
    result = call(child.stopped_before_it_exists, runner)
    assert result["stopped"] == "cancel" and result["signal"] == 15, result
    assert result["took"] < 30


@pytest.mark.parametrize("runner", RUNNERS)
def test_many_at_once_stay_cooperative(runner):
    result = call(child.many_at_once, runner)
    assert result["codes"] == [i % 3 for i in range(30)]
    assert result["max_gap"] < 0.5   # the loop kept turning while commands ran


def test_spawn_reaps_every_child(tmp_path):
    """No zombies left behind by the child watcher, even for fast exits; with 20
    started at once, the spawner adds threads so that spawns wait for their
    children's exec side by side, and each command still gets its own result."""
    result = call(child.zombies_after_many)
    assert result["zombies"] == 0
    assert result["codes"] == [i % 7 for i in range(200)]
    assert 1 < result["threads"] <= MAX_SPAWN_THREADS


def test_spawn_finds_programs_on_path_as_posix_spawnp_does(tmp_path):
    """The spawner looks programs up on PATH itself, as posix_spawnp would (the first
    executable regular file), and keeps what it found for PATH_TTL: a program put
    earlier on PATH is run once that time has passed, and one that went away is
    looked for again at once."""
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    result = call(child.program_on_path, str(first), str(second))
    assert result["skips_not_executable"] == "second"
    assert result["within_ttl"] == "second"   # found a moment ago: not looked for again
    assert result["after_ttl"] == "first"
    assert result["removed"] == "second"
    assert result["none"].startswith("exit 127") and "No such file" in result["none"]


def test_the_daemon_runs_tasks_with_either_runner(coyotes_factory, r, tmp_path):
    for runner in RUNNERS:
        marker = tmp_path / runner
        daemon = coyotes_factory("-runner", runner)
        r.lpush("task:prepare:queue", json.dumps({"task": f"touch {marker}"}))
        wait_until(marker.exists, what=f"a task under -runner {runner}")
        assert daemon.stop() == 0


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
