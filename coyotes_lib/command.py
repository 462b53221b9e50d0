"""Run one command: argv without a shell, in its own session, output by line.

Each command is the leader of a new session (``start_new_session``), so a
Ctrl-C or a signal sent to the daemon's process group never reaches it, and
``stop`` can end the whole group (TERM, a grace time, then KILL). stdout and
stderr are read by two greenlets at once, line by line with a cap on line
length, so a command that prints megabytes never blocks on a full pipe.
A command that cannot start is a result (exit 127 or 126), not an exception.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import signal
import time

import gevent
from gevent import subprocess

MAX_LINE = 64 * 1024   # bytes; a longer line is cut into pieces
PIPE_LINGER = 2.0      # seconds to keep reading after exit (background children may hold the pipes)


@dataclasses.dataclass(frozen=True)
class Result:
    exit_code: int | None      # None when ended by a signal
    signal: int | None = None
    duration: float = 0.0
    error: str = ""            # why it could not start

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    def describe(self) -> str:
        if self.error:
            return f"failed to start ({self.error})"
        if self.signal is not None:
            return f"killed by signal {signal.Signals(self.signal).name}"
        return f"exited {self.exit_code}"


class Command:
    """One run of argv; ``on_line(stream, text)`` gets every output line."""

    def __init__(self, argv, on_line, env=None, cwd=None):
        self.argv, self.on_line, self.env, self.cwd = list(argv), on_line, env, cwd
        self.proc: subprocess.Popen | None = None
        self.killed = False   # stopped by ``stop()``: it did not finish on its own

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def run(self) -> Result:
        started = time.monotonic()
        try:
            self.proc = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, start_new_session=True, close_fds=True,
                env=self.env, cwd=self.cwd)
        except OSError as exc:
            code = 127 if exc.errno in (errno.ENOENT, errno.ENOTDIR) else 126
            return Result(code, duration=time.monotonic() - started,
                          error=f"{exc.strerror}: {self.argv[0]}")
        readers = [gevent.spawn(self._read, "stdout", self.proc.stdout),
                   gevent.spawn(self._read, "stderr", self.proc.stderr)]
        code = self.proc.wait()
        duration = time.monotonic() - started
        gevent.joinall(readers, timeout=PIPE_LINGER)
        if not all(r.dead for r in readers):
            # background processes of the command still hold its output: the task is
            # over, so its process group goes too
            self._end_group(1.0)
        gevent.killall([r for r in readers if not r.dead], block=True, timeout=1)
        for pipe in (self.proc.stdout, self.proc.stderr):
            pipe.close()
        if code < 0:
            return Result(None, -code, duration)
        return Result(code, None, duration)

    def _read(self, stream: str, pipe) -> None:
        for n, line in enumerate(iter(lambda: pipe.readline(MAX_LINE), b"")):
            self.on_line(stream, line.rstrip(b"\r\n").decode("utf-8", "replace"))
            if n % 64 == 63:
                # readline does not yield while the pipe's buffer holds data: a flood of
                # output would otherwise starve every other greenlet (heartbeat, API)
                gevent.sleep(0)

    def stop(self, grace: float = 5.0) -> None:
        """TERM the whole process group, then KILL what lingers past ``grace``."""
        if self.proc is None:
            return
        self.killed = self.proc.returncode is None
        self._end_group(grace)

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
