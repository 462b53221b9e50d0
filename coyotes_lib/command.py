"""Run one command: argv without a shell, in its own session, output by line.

Each command is the leader of a new session (``start_new_session``), so a
Ctrl-C or a signal sent to the daemon's process group never reaches it, and
``stop`` can end the whole group (TERM, a grace time, then KILL) on a
timeout, a cancel or a shutdown. stdout and stderr are read as they come, in
the hub's callbacks, line by line with a cap on line length, so a command that
prints megabytes never blocks on a full pipe; the last bytes of each are kept.
A command that cannot start is a result (exit 127 or 126), not an exception.
"""

from __future__ import annotations

import collections
import dataclasses
import errno
import logging
import os
import signal
import time

import gevent
import gevent.event
from gevent import subprocess
from gevent.monkey import get_original

MAX_LINE = 64 * 1024   # bytes; a longer line is cut into pieces
CHUNK = 16 * 1024      # bytes of output read per turn of the loop
RAW_POSIX_SPAWNP = get_original("os", "posix_spawnp")
log = logging.getLogger("coyotes.command")
PIPE_LINGER = 2.0      # seconds to keep reading after exit (background children may hold the pipes)
# Python ignores these; a command gets them back at their default, as with
# subprocess's restore_signals (and Go's os/exec)
DEFAULT_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ)


@dataclasses.dataclass(frozen=True)
class Result:
    exit_code: int | None      # None when ended by a signal
    signal: int | None = None
    duration: float = 0.0
    error: str = ""            # why it could not start
    stopped: str = ""          # why ``stop`` ended it: timeout, cancel, shutdown
    stdout: str = ""           # the last bytes of each stream (see ``tail``)
    stderr: str = ""

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.stopped

    def describe(self) -> str:
        if self.error:
            return f"failed to start ({self.error})"
        how = (f"killed by signal {signal.Signals(self.signal).name}"
               if self.signal is not None else f"exited {self.exit_code}")
        return f"{how} (stopped: {self.stopped})" if self.stopped else how


class Tail:
    """The last ``cap`` bytes of a stream."""

    def __init__(self, cap: int):
        self.cap, self.size = cap, 0
        self.chunks: collections.deque[bytes] = collections.deque()

    def add(self, data: bytes) -> None:
        if not self.cap:
            return
        self.chunks.append(data)
        self.size += len(data)
        while self.size - len(self.chunks[0]) >= self.cap:
            self.size -= len(self.chunks.popleft())

    def text(self) -> str:
        return b"".join(self.chunks)[-self.cap:].decode("utf-8", "replace") if self.cap else ""


class Process:
    """A started command: its pid and a way to wait for it."""

    def __init__(self, pid: int, wait):
        self.pid, self._wait = pid, wait
        self.returncode: int | None = None

    def wait(self) -> int:
        """Cooperatively wait for the exit: the code, or -N for signal N."""
        if self.returncode is None:
            self.returncode = self._wait()
        return self.returncode


def start_spawn(argv, env, stdout: int, stderr: int) -> Process:
    """posix_spawn with setsid: no copy of this interpreter and no Python in the child
    before exec (vfork-like in glibc), about 5x faster than fork+exec from Python.
    The exit is seen by a libev child watcher started before anything yields (as
    libev requires). The plain posix_spawnp is used, not gevent's wrapper: that one
    also files every child in a table that each SIGCHLD scans, which cost a tenth
    of the daemon's time at a few hundred tasks a second."""
    loop = gevent.get_hub().loop
    # libev's SIGCHLD handler is only put in place by the first child watcher: a
    # first command that ended before it would never be reaped (and its task would
    # hang), so it goes in before anything is started
    loop.install_sigchld()
    actions = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
               (os.POSIX_SPAWN_DUP2, stdout, 1), (os.POSIX_SPAWN_DUP2, stderr, 2)]
    pid = RAW_POSIX_SPAWNP(argv[0], argv, os.environ if env is None else env,
                           file_actions=actions, setsid=True, setsigmask=(),
                           setsigdef=DEFAULT_SIGNALS)
    watcher = loop.child(pid, False)
    exited = gevent.event.Event()
    watcher.start(exited.set)

    def wait() -> int:
        exited.wait()
        watcher.stop()
        return os.waitstatus_to_exitcode(watcher.rstatus)

    return Process(pid, wait)


def start_subprocess(argv, env, stdout: int, stderr: int) -> Process:
    """gevent.subprocess: forks the interpreter; kept as the conservative runner."""
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
                            start_new_session=True, close_fds=True, env=env)
    return Process(proc.pid, proc.wait)


RUNNERS = {"spawn": start_spawn, "subprocess": start_subprocess}


class Output:
    """One output stream of a command, read in the hub's own callbacks (no greenlet,
    no file object): a chunk per turn of the loop, so a flood of output shares the
    hub with everything else. Lines go to ``on_line`` (cut at MAX_LINE), the last
    bytes to ``tail``; ``done`` is set at end of file (or on ``close``)."""

    def __init__(self, fd: int, stream: str, tail: Tail, on_line):
        self.fd, self.stream, self.tail, self.on_line = fd, stream, tail, on_line
        self.partial = b""
        self.done = gevent.event.Event()
        os.set_blocking(fd, False)
        self.watcher = gevent.get_hub().loop.io(fd, 1)
        self.watcher.start(self._readable)

    def _readable(self) -> None:
        try:
            data = os.read(self.fd, CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        try:
            if data:
                self.tail.add(data)
                self._lines(data)
            else:
                if self.partial:
                    self._emit(self.partial)
                self.close()
        except Exception:   # a bug of ours (or of a log handler) must not kill the hub
            log.exception("reading the %s of a command", self.stream)
            self.close()

    def _lines(self, data: bytes) -> None:
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop()
        for line in lines:
            self._emit(line)
        while len(self.partial) >= MAX_LINE:
            self._emit(self.partial[:MAX_LINE])
            self.partial = self.partial[MAX_LINE:]

    def _emit(self, line: bytes) -> None:
        for start in range(0, max(len(line), 1), MAX_LINE):
            self.on_line(self.stream, line[start:start + MAX_LINE].rstrip(b"\r")
                         .decode("utf-8", "replace"))

    def close(self) -> None:
        if not self.done.is_set():
            self.watcher.stop()
            self.watcher.close()
            os.close(self.fd)
            self.done.set()


class Command:
    """One run of argv; ``on_line(stream, text)`` gets every output line, and the
    last ``tail`` bytes of each stream come back in the result. ``runner`` names
    how the process is started (``RUNNERS``); both behave the same."""

    def __init__(self, argv, on_line, tail: int = 64 * 1024, kill_grace: float = 5.0,
                 env=None, runner: str = "spawn"):
        self.argv, self.on_line, self.env = list(argv), on_line, env
        self.kill_grace = kill_grace
        self.start = RUNNERS[runner]
        self.tails = {"stdout": Tail(tail), "stderr": Tail(tail)}
        self.proc: Process | None = None
        self.stopped = ""   # why ``stop()`` ended it, if it did

    def run(self, timeout: float = 0) -> Result:
        started = time.monotonic()
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        try:
            self.proc = self.start(self.argv, self.env, out_w, err_w)
        except OSError as exc:
            os.close(out_r)
            os.close(err_r)
            code = 127 if exc.errno in (errno.ENOENT, errno.ENOTDIR) else 126
            return Result(code, duration=time.monotonic() - started,
                          error=f"{exc.strerror}: {self.argv[0]}")
        finally:
            os.close(out_w)
            os.close(err_w)
        outputs = [Output(out_r, "stdout", self.tails["stdout"], self.on_line),
                   Output(err_r, "stderr", self.tails["stderr"], self.on_line)]
        timer = gevent.spawn_later(timeout, self.stop, "timeout") if timeout else None
        code = self.proc.wait()
        duration = time.monotonic() - started
        if timer is not None and self.stopped != "timeout":
            timer.kill(block=False)
        linger = time.monotonic() + PIPE_LINGER
        if not all(o.done.wait(max(0.0, linger - time.monotonic())) for o in outputs):
            # background processes of the command still hold its output: the task is
            # over, so its process group goes too
            self._end_group(1.0)
            for o in outputs:
                o.done.wait(1)
                o.close()
        if timer is not None and self.stopped == "timeout":
            timer.join(timeout=self.kill_grace + 1)   # its stop ends what is left of the group
        tails = {name: tail.text() for name, tail in self.tails.items()}
        if code < 0:
            return Result(None, -code, duration, stopped=self.stopped, **tails)
        return Result(code, None, duration, stopped=self.stopped, **tails)

    def stop(self, reason: str = "shutdown", grace: float | None = None) -> None:
        """TERM the whole process group, then KILL what lingers past the grace time."""
        if self.proc is None:
            return
        if self.proc.returncode is None and not self.stopped:
            self.stopped = reason
        self._end_group(self.kill_grace if grace is None else grace)

    def _end_group(self, grace: float) -> None:
        if not self._signal_group(signal.SIGTERM):
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and self._signal_group(0):
            gevent.sleep(0.05)
        self._signal_group(signal.SIGKILL)

    def _signal_group(self, sig: int) -> bool:
        """False once no process of the group is left."""
        try:
            os.killpg(self.proc.pid, sig)
            return True
        except (ProcessLookupError, PermissionError):
            return False


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
