"""Run one command: argv without a shell, in its own session, output by line.

Each command is the leader of a new session (setsid), so a
Ctrl-C or a signal sent to the daemon's process group never reaches it, and
``stop`` can end the whole group (TERM, a grace time, then KILL) on a
timeout, a cancel or a shutdown. stdout and stderr are read as they come, in
the hub's callbacks, line by line with a cap on line length, so a command that
prints megabytes never blocks on a full pipe; the last bytes of each are kept.
A command that cannot start is a result (exit 127 or 126), not an exception;
when the cause may pass (out of descriptors, processes or memory) the result
says so (``transient``). Only 0, 1 and 2 reach a command: no descriptor of the
daemon's, inherited or not. When the command exits, what it left running in
its process group is ended too (``kill_group``).
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import errno
import logging
import os
import signal
import time

import gevent
import gevent.event
from gevent.monkey import get_original

from .config import Config
from .runners import Process

MAX_LINE = 64 * 1024   # bytes; a longer line is cut into pieces
CHUNK = 16 * 1024      # bytes of output read per turn of the loop
# gevent's os.close first looks for watchers of the fd to cancel; ours are all
# stopped before their fd is closed
close_fd = get_original("os", "close")
log = logging.getLogger("coyotes.command")
PIPE_LINGER = 2.0      # seconds to keep reading after exit (background children may hold the pipes)
# errors that say "not now" rather than "never": the task can run again later
TRANSIENT_ERRORS = frozenset((errno.EMFILE, errno.ENFILE, errno.EAGAIN, errno.ENOMEM,
                              errno.ENOBUFS))


class Stop(enum.StrEnum):
    """Why ``Command.stop`` ended a command."""
    TIMEOUT = "timeout"
    CANCEL = "cancel"       # a caller killed its task
    SHUTDOWN = "shutdown"   # the daemon is stopping: the task runs again later
    OUTPUT = "output"       # it wrote more than its channel's output cap


@dataclasses.dataclass(frozen=True)
class Result:
    exit_code: int | None      # None when ended by a signal
    signal: int | None = None
    duration: float = 0.0
    error: str = ""            # why it could not start
    stopped: str = ""          # why ``stop`` ended it: a Stop, or
    stdout: str = ""           # the last bytes of each stream (see ``tail``)
    stderr: str = ""
    transient: bool = False    # it could not start for a reason that may pass (EMFILE...)

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


class Output:
    """One output stream of a command, read in the hub's own callbacks (no greenlet,
    no file object): a chunk per turn of the loop, so a flood of output shares the
    hub with everything else. Lines go to ``on_line`` (cut at MAX_LINE), the last
    bytes to ``tail``; ``done`` is set at end of file (or on ``close``)."""

    def __init__(self, fd: int, stream: str, tail: Tail, on_line, counted=None):
        self.fd, self.stream, self.tail, self.on_line = fd, stream, tail, on_line
        self.counted = counted   # told the size of each chunk read, if given
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
                if self.counted is not None:
                    self.counted(len(data))
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
            close_fd(self.fd)
            self.done.set()


class Command:
    """One run of argv; ``on_line(stream, text)`` gets every output line, and the
    last ``tail`` bytes of each stream come back in the result. ``runner`` starts
    the process (``runner()``: spawn or subprocess); both behave the same.

    With ``kill_group`` (the default), when the command exits what is left of its
    process group (background children) is ended too: TERM at once, KILL after
    ``kill_grace``, without holding up the result. Off, a background child that
    does not hold the output pipes outlives the task. A child that calls setsid
    or setpgid has left the group and escapes either way."""

    def __init__(self, argv, on_line, runner, tail: int = Config.output_tail,
                 kill_grace: float = Config.kill_grace, env=None, kill_group: bool = True,
                 output_max: int = 0):
        self.argv, self.on_line, self.env = list(argv), on_line, env
        self.output_max, self.output_seen = output_max, 0   # bytes: past the cap, it stops
        self.kill_grace, self.kill_group = kill_grace, kill_group
        self.spawn = runner.start
        self.tails = {"stdout": Tail(tail), "stderr": Tail(tail)}
        self.proc: Process | None = None
        self.began: float | None = None      # when ``launch`` was called
        self.unstarted: Result | None = None   # why it could not start
        self.pipes: tuple[int, int] = (-1, -1)   # read ends of stdout and stderr
        self.stopped = ""   # why ``stop()`` ended it, if it did

    def launch(self) -> None:
        """Start the process (once; ``run`` does if nobody did): a caller that has the
        command ready starts it before the greenlet that waits for it gets its turn.
        A command that cannot start leaves its result in ``unstarted``."""
        if self.began is not None:
            return
        self.began = time.monotonic()
        out_r = err_r = None
        try:
            out_r, out_w = os.pipe2(os.O_CLOEXEC)
            try:
                err_r, err_w = os.pipe2(os.O_CLOEXEC)
            except BaseException:
                close_fd(out_w)
                raise
            self.proc = self.spawn(self.argv, self.env, out_w, err_w)   # closes out_w, err_w
        except BaseException as exc:
            for fd in (out_r, err_r):
                if fd is not None:
                    close_fd(fd)
            if not isinstance(exc, OSError):
                raise
            code = 127 if exc.errno in (errno.ENOENT, errno.ENOTDIR) else 126
            self.unstarted = Result(code, duration=time.monotonic() - self.began,
                                    error=f"{exc.strerror}: {self.argv[0]}",
                                    transient=exc.errno in TRANSIENT_ERRORS)
            return
        self.pipes = (out_r, err_r)

    def run(self, timeout: float = 0, on_start=None) -> Result:
        """Start the command (unless ``launch`` did), wait for it (and its output);
        ``on_start(pid)`` is called once the process exists."""
        self.launch()
        if self.unstarted is not None:
            return self.unstarted
        started, (out_r, err_r) = self.began, self.pipes
        if self.stopped:   # asked while it was being started
            gevent.spawn(self._end_group, self.kill_grace)
        if on_start is not None:
            on_start(self.proc.pid)
        counted = self._counted if self.output_max else None
        outputs = [Output(out_r, "stdout", self.tails["stdout"], self.on_line, counted),
                   Output(err_r, "stderr", self.tails["stderr"], self.on_line, counted)]
        timer = gevent.spawn_later(timeout, self.stop, Stop.TIMEOUT) if timeout else None
        code = self.proc.wait()
        duration = time.monotonic() - started
        if timer is not None and self.stopped != Stop.TIMEOUT:
            timer.kill(block=False)
        # TERM now, so that pipe holders let go; KILL, if needed, later. Not when
        # ``stop`` ended it: its own _end_group is at work
        if self.kill_group and not self.stopped and self._signal_group(signal.SIGTERM):
            gevent.spawn(self._end_group, self.kill_grace, termed=True)
        linger = time.monotonic() + PIPE_LINGER
        if not all(o.done.wait(max(0.0, linger - time.monotonic())) for o in outputs):
            # background processes of the command still hold its output: the task is
            # over, so its process group goes too
            self._end_group(1.0)
            for o in outputs:
                o.done.wait(1)
                o.close()
        if timer is not None and self.stopped == Stop.TIMEOUT:
            timer.join(timeout=self.kill_grace + 1)   # its stop ends what is left of the group
        tails = {name: tail.text() for name, tail in self.tails.items()}
        if code < 0:
            return Result(None, -code, duration, stopped=self.stopped, **tails)
        return Result(code, None, duration, stopped=self.stopped, **tails)

    def _counted(self, size: int) -> None:
        before, self.output_seen = self.output_seen, self.output_seen + size
        if before <= self.output_max < self.output_seen:   # once, as it passes the cap
            gevent.spawn(self.stop, Stop.OUTPUT)

    def stop(self, reason: Stop = Stop.SHUTDOWN, grace: float | None = None) -> None:
        """TERM the whole process group, then KILL what lingers past the grace time
        (at once if it is running, else as soon as ``run`` has started it)."""
        if not self.stopped and (self.proc is None or self.proc.returncode is None):
            self.stopped = reason
        if self.proc is not None:
            self._end_group(self.kill_grace if grace is None else grace)

    def _end_group(self, grace: float, termed: bool = False) -> None:
        if not termed and not self._signal_group(signal.SIGTERM):
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
