"""The bodies of tests/test_command.py: each makes its runner ("spawn" or
"subprocess"), runs commands under gevent in a child Python
(``gevent_child.call``) and returns what its test checks.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import resource
import signal
import sys
import time

import gevent
import gevent.pool
from gevent.monkey import get_original

from coyotes_lib import command
from coyotes_lib.command import Command
from coyotes_lib.runners import Spawner, runner


class Commands:
    """Makes commands on one runner and keeps the lines they print, as [stream, text]."""

    def __init__(self, runner):
        self.runner = runner
        self.lines = []

    def __call__(self, argv, **kw) -> Command:
        return Command(argv, lambda s, t: self.lines.append([s, t]), self.runner, **kw)


def show(r) -> dict:
    return {"exit_code": r.exit_code, "signal": r.signal, "error": r.error,
            "stopped": r.stopped, "stdout": r.stdout, "stderr": r.stderr,
            "duration": r.duration, "transient": r.transient}


def alive(pid: int) -> bool:
    """The process exists and is not a zombie (also used by the tests themselves)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def exit_code_and_output(name: str) -> dict:
    cmd = Commands(runner(name))
    r = cmd(["sh", "-c", "echo out1; echo err1 >&2; printf 'no newline'; exit 3"]).run()
    return {**show(r), "lines": cmd.lines}


def missing_and_not_executable(name: str, plain: str) -> list:
    cmd = Commands(runner(name))
    return [show(cmd(["no-such-program-xyz"]).run()), show(cmd([plain]).run())]


def killed_by_its_signal(name: str) -> dict:
    cmd = Commands(runner(name))
    r = cmd(["sh", "-c", "echo $$ $(ps -o sid= -p $$); kill -TERM $$"]).run()
    pid, sid = cmd.lines[0][1].split()
    return {**show(r), "pid": pid, "sid": sid, "my_sid": os.getsid(0)}


def first_command(name: str) -> dict:
    return show(Commands(runner(name))(["true"]).run())


def after_stale_exits() -> list:
    cmd = Commands(runner("spawn"))
    spawner = cmd.runner
    cmd(["true"]).run()                        # the spawner is set up
    results = []
    for _ in range(5):
        with open("/proc/sys/kernel/ns_last_pid") as f:
            nxt = int(f.read()) + 1
        spawner.reaps += 1
        spawner.exits[nxt] = (spawner.reaps, 3 << 8)   # "exited 3", seen before the spawn
        results.append(show(cmd(["sh", "-c", "sleep 0.2; echo $$"]).run()))
    return results


def ignored_here() -> list[int]:
    """The signals this process ignores now: Python's own, and any it inherited ignored
    (a shell's background job, as CI may run us, ignores SIGINT and SIGQUIT)."""
    with open("/proc/self/status") as status:
        mask = int(next(line.split()[1] for line in status if line.startswith("SigIgn:")), 16)
    return [sig for sig in range(1, signal.NSIG) if mask & (1 << (sig - 1))]


def signal_masks(name: str) -> dict:
    inherited = ignored_here()
    signal.signal(signal.SIGHUP, signal.SIG_IGN)   # as under nohup
    signal.signal(signal.SIGUSR1, lambda *_: None)   # a handler of Python's own
    cmd = Commands(runner(name))
    # the daemon's own handlers for these (so a shell that started it with them
    # ignored, as a background job without job control, leaves no trace)
    for sig in (signal.SIGINT, signal.SIGTERM):
        gevent.signal_handler(sig, lambda: None)
    cmd(["grep", "^Sig[BI]", "/proc/self/status"]).run()
    return {**dict(line[1].split(":\t") for line in cmd.lines), "inherited": inherited}


def spawn_signal_defaults() -> dict:
    """The signals the spawner names for glibc to set to their default in the child,
    SIGHUP ignored here first, and those this process ignored then."""
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    ignored = ignored_here()
    spawner = Spawner()
    named = ctypes.create_string_buffer(128)
    spawner.libc.posix_spawnattr_getsigdefault(spawner.attr, named)
    return {"named": [sig for sig in range(1, signal.NSIG)
                      if spawner.libc.sigismember(named, sig) == 1], "ignored": ignored}


def stdin_and_descriptor_count(name: str) -> dict:
    return show(Commands(runner(name))(["sh", "-c", "cat; ls /proc/self/fd | wc -l"]).run())


def descriptors_listed(name: str, inherited: int, list_fds: list) -> dict:
    """``inherited`` came from the parent; another is opened here, also inheritable."""
    cmd = Commands(runner(name))
    inheritable = os.get_inheritable(inherited)   # the premise: it would reach children
    late = os.open(os.devnull, os.O_RDONLY)
    os.set_inheritable(late, True)
    r = cmd(list_fds).run()
    return {**show(r), "inheritable": inheritable,
            "listed": sorted(int(line[1]) for line in cmd.lines)}


def descriptors_listed_without_closefrom(list_fds: list) -> dict:
    cmd = Commands(Spawner(closefrom=False))
    r = cmd(list_fds).run()
    return {**show(r), "listed": sorted(int(line[1]) for line in cmd.lines),
            "closefrom": cmd.runner.closefrom is not None}


def out_of_descriptors(name: str) -> dict:
    cmd = Commands(runner(name))
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
    return {"no_pipes": no_pipes, "no_start": no_start, "leaked": leaked,
            "after": show(cmd(["echo", "hi"]).run())}


def background_child(name: str, kill_group: bool) -> dict:
    cmd = Commands(runner(name))
    return show(cmd(["sh", "-c", "sleep 60 > /dev/null 2>&1 & echo $!"],
                    kill_group=kill_group).run())


def child_holding_the_output(name: str) -> dict:
    cmd = Commands(runner(name))
    t0 = time.monotonic()
    r = cmd(["sh", "-c", "sleep 60 & echo $!"], kill_group=False, kill_grace=1).run()
    return {**show(r), "took": time.monotonic() - t0}


def child_ignoring_term(name: str) -> dict:
    cmd = Commands(runner(name))
    c = cmd(["sh", "-c", "trap '' TERM; sleep 60 > /dev/null 2>&1 & echo $!"], kill_grace=2)
    t0 = time.monotonic()
    r = c.run()
    took = time.monotonic() - t0
    pid = int(r.stdout)
    alive_at_result = alive(pid)
    while alive(pid) and time.monotonic() - t0 < 20:
        gevent.sleep(0.05)
    return {**show(r), "took": took, "pid": pid, "alive_at_result": alive_at_result,
            "gone_after": time.monotonic() - t0 if not alive(pid) else None}


def shell_line(name: str, line: str, kill_group: bool) -> dict:
    return show(Commands(runner(name))(["sh", "-c", line], kill_group=kill_group).run())


def large_output(name: str) -> dict:
    cmd = Commands(runner(name))
    prog = ("import sys; [(sys.stdout.write('x' * 999 + chr(10)), "
            "sys.stderr.write('y' * 99 + chr(10))) for _ in range(5000)]; print('LAST')")
    r = cmd([sys.executable, "-c", prog], tail=1000).run()
    return {**show(r), "count": len(cmd.lines)}


def flood_without_newlines() -> dict:
    cmd = Commands(runner("spawn"))
    peak = [0]
    read_lines = command.Output._lines

    def watched(self, data):   # observe the partial line after every read
        read_lines(self, data)
        peak[0] = max(peak[0], len(self.partial))

    command.Output._lines = watched
    prog = "import sys; sys.stdout.write('x' * 3000000)"
    r = cmd([sys.executable, "-c", prog], tail=10).run()
    return {**show(r), "sizes": [len(t) for _s, t in cmd.lines], "peak": peak[0],
            "max_line": command.MAX_LINE}


def timeout_with_a_background_child(name: str, pidfile: str) -> dict:
    cmd = Commands(runner(name))
    c = cmd(["sh", "-c", f"sleep 60 & echo $! > {pidfile}; sleep 60"], kill_grace=2)
    return show(c.run(timeout=0.5))


def timeout_with_term_ignored(name: str) -> dict:
    cmd = Commands(runner(name))
    return show(cmd(["sh", "-c", "trap '' TERM; sleep 60 & wait"], kill_grace=1).run(timeout=0.3))


def stopped_and_pipe_holder(name: str, pidfile: str) -> list:
    cmd = Commands(runner(name))
    c = cmd(["sleep", "60"], kill_grace=1)
    gevent.spawn_later(0.3, c.stop, "cancel")
    first = show(c.run())
    # exits at once, but a background child keeps the output pipe open
    second = show(cmd(["sh", "-c", f"sleep 60 & echo $! > {pidfile}"]).run())
    return [first, second]


def stopped_before_it_exists(name: str) -> dict:
    cmd = Commands(runner(name))
    c = cmd(["sleep", "60"], kill_grace=1)
    gevent.spawn(c.stop, "cancel")   # runs at run()'s first wait, perhaps before the pid
    t0 = time.monotonic()
    return {**show(c.run()), "took": time.monotonic() - t0}


def many_at_once(name: str) -> dict:
    cmd = Commands(runner(name))
    ticks = []

    def tick():
        for _ in range(10**6):
            ticks.append(time.monotonic())
            gevent.sleep(0.01)

    ticker = gevent.spawn(tick)
    pool = gevent.pool.Pool(10)
    codes = pool.map(lambda i: cmd(["sh", "-c", f"sleep 0.2; exit {i % 3}"]).run().exit_code,
                     range(30))
    ticker.kill()
    return {"codes": codes, "max_gap": max(b - a for a, b in itertools.pairwise(ticks))}


def zombies_after_many() -> dict:
    cmd = Commands(runner("spawn"))
    codes = gevent.pool.Pool(20).map(lambda i: cmd(["sh", "-c", f"exit {i % 7}"]).run().exit_code,
                                     range(200))
    me = os.getpid()
    zombies = 0
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/stat") as f:
                    stat = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            zombies += stat[0] == "Z" and int(stat[1]) == me
    return {"zombies": zombies, "codes": codes, "threads": cmd.runner.threads}


def program_on_path(first: str, second: str) -> dict:
    """PATH is first:second; a program found there is run by its file for a while
    (runners.PATH_TTL, made short here), then looked for again."""
    from coyotes_lib import runners
    runners.PATH_TTL = 0.3
    os.environ["PATH"] = f"{first}:{second}"
    cmd = Commands(runner("spawn"))

    def put(folder: str, text: str, mode: int = 0o755) -> None:
        path = os.path.join(folder, "prog")
        with open(path + ".new", "w") as f:
            f.write(f"#!/bin/sh\necho {text}\n")
        os.chmod(path + ".new", mode)
        os.replace(path + ".new", path)

    def run() -> str:
        r = cmd(["prog"]).run()
        return r.stdout.strip() or f"exit {r.exit_code}: {r.error}"

    put(first, "not executable", 0o644)
    put(second, "second")
    out = {"skips_not_executable": run()}
    put(first, "first")
    out["within_ttl"] = run()
    time.sleep(0.4)
    out["after_ttl"] = run()
    os.unlink(os.path.join(first, "prog"))
    out["removed"] = run()   # the file found went away: searched again at once
    os.unlink(os.path.join(second, "prog"))
    out["none"] = run()
    return out
