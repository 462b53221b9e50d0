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
import ctypes
import dataclasses
import errno
import logging
import os
import resource
import signal
import time

import gevent
import gevent.event
from gevent import subprocess
from gevent.monkey import get_original

MAX_LINE = 64 * 1024   # bytes; a longer line is cut into pieces
CHUNK = 16 * 1024      # bytes of output read per turn of the loop
# gevent's os.close first looks for watchers of the fd to cancel (3% of the
# daemon's time per task); ours are all stopped before their fd is closed
close_fd = get_original("os", "close")
SIMPLE_QUEUE = get_original("queue", "SimpleQueue")           # waits without the GIL
START_NEW_THREAD = get_original("_thread", "start_new_thread")
MAX_UNCLAIMED_EXITS = 1000
# <spawn.h> values, the same in glibc and musl (os.posix_spawn does not export them)
POSIX_SPAWN_SETSIGDEF, POSIX_SPAWN_SETSIGMASK, POSIX_SPAWN_SETSID = 0x04, 0x08, 0x80
log = logging.getLogger("coyotes.command")
PIPE_LINGER = 2.0      # seconds to keep reading after exit (background children may hold the pipes)
# errors that say "not now" rather than "never": the task can run again later
TRANSIENT_ERRORS = frozenset((errno.EMFILE, errno.ENFILE, errno.EAGAIN, errno.ENOMEM,
                              errno.ENOBUFS))
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


class Spawner:
    """The default runner: ``posix_spawnp`` (setsid, default signals), called by a
    thread of its own through ctypes.

    posix_spawn is vfork-like: no copy of this interpreter and no Python in the
    child before exec, about 5x faster than fork+exec from Python. But the thread
    that calls it waits until the child has exec'ed, and on a busy machine (the
    child queued behind other work on the other CPU) that wait was half of the
    daemon's time per task. ctypes lets go of the GIL during the call, so the hub
    goes on meanwhile. The plain ``posix_spawnp`` is used, not gevent's wrapper,
    which files every child in a table that each SIGCHLD scans.

    When nothing else runs (an idle daemon), the call is made right here: no
    hand-over to wait for. Exits are seen by one libev child watcher for every
    pid: a child may end before the greenlet that started it has heard of its
    pid.

    Descriptors 3 and up are closed in the child as subprocess's close_fds does,
    by ``posix_spawn_file_actions_addclosefrom_np`` where libc has it (glibc
    2.34+); elsewhere (musl, older glibc; or ``closefrom=False``) those open when
    the spawner is made are marked close-on-exec."""

    def __init__(self, closefrom: bool = True):
        libc = self.libc = ctypes.CDLL(None, use_errno=True)
        try:
            self.closefrom = libc.posix_spawn_file_actions_addclosefrom_np if closefrom else None
        except AttributeError:   # musl, glibc before 2.34
            self.closefrom = None
        if self.closefrom is None:
            # covers what the daemon inherited; one it opens later without O_CLOEXEC
            # (Python never does by default) would still reach commands
            close_on_exec_from(3)
        self.attr = ctypes.create_string_buffer(1024)   # posix_spawnattr_t: 336 bytes in glibc
        signals = ctypes.create_string_buffer(128)       # sigset_t
        libc.posix_spawnattr_init(self.attr)
        libc.sigemptyset(signals)
        libc.posix_spawnattr_setsigmask(self.attr, signals)   # nothing blocked
        for sig in DEFAULT_SIGNALS:
            libc.sigaddset(signals, sig)
        libc.posix_spawnattr_setsigdefault(self.attr, signals)
        libc.posix_spawnattr_setflags(self.attr, ctypes.c_short(
            POSIX_SPAWN_SETSID | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        self.environ = environ_array(os.environ)   # the daemon's own, read once
        self.jobs = SIMPLE_QUEUE()
        self.done: collections.deque[SpawnJob] = collections.deque()
        self.exits: dict[int, tuple[int, int]] = {}   # pid -> (reap number, wait status)
        self.reaps = 0                                 # exits seen so far
        self.waiters: dict[int, gevent.event.AsyncResult] = {}   # pid -> its Process.wait
        self.pending = 0                           # jobs handed to the thread
        loop = gevent.get_hub().loop
        # libev's SIGCHLD handler only goes in with a first child watcher: a command
        # that ended before it would never be reaped
        loop.install_sigchld()
        self.reaper = loop.child(0, False)
        self.reaper.start(self._reaped, self.reaper)
        self.wake = loop.async_()
        self.wake.start(self._deliver)
        START_NEW_THREAD(self._serve, ())

    def start(self, argv, env, stdout: int, stderr: int) -> Process:
        """Start argv with these write ends of its output pipes, which it closes
        (once the child has them: a greenlet killed meanwhile cannot close them
        under the spawning thread)."""
        try:
            job = SpawnJob(self.libc, [os.fsencode(a) for a in argv],
                           self.environ if env is None else environ_array(env), stdout, stderr,
                           self.closefrom)
        except BaseException:
            close_fd(stdout)
            close_fd(stderr)
            raise
        since = self.reaps   # an exit seen before this is an older process's, same pid
        if self.waiters or self.pending:
            self.pending += 1
            self.jobs.put(job)
            try:
                job.ready.wait()
            except BaseException:
                job.abandoned = True   # killed while waiting: its command, if any, goes too
                raise
        else:   # nothing else runs: no hub to keep going, and no hand-over to wait for
            job.run(self.attr)
            job.close()
        if job.error:
            raise OSError(job.error, os.strerror(job.error), argv[0])
        pid = job.pid.value

        def wait() -> int:
            seen, status = self.exits.pop(pid, (since, None))
            if status is None or seen <= since:
                waiter = self.waiters[pid] = gevent.event.AsyncResult()
                try:
                    status = waiter.get()
                finally:
                    self.waiters.pop(pid, None)
            return os.waitstatus_to_exitcode(status)

        return Process(pid, wait)

    def _serve(self) -> None:
        """The thread: one spawn at a time, then a wake-up for the hub."""
        while True:
            job = self.jobs.get()
            try:
                job.run(self.attr)
            except BaseException:   # never leave a job unanswered (nor the thread dead)
                job.error = errno.EAGAIN
            self.done.append(job)
            self.wake.send()

    def _deliver(self) -> None:
        while self.done:
            job = self.done.popleft()
            self.pending -= 1
            try:
                job.close()
                if job.abandoned and not job.error:
                    os.killpg(job.pid.value, signal.SIGKILL)
            except OSError:
                pass
            finally:
                job.ready.set()

    def _reaped(self, watcher) -> None:
        self.reaps += 1
        waiter = self.waiters.pop(watcher.rpid, None)
        if waiter is not None:
            waiter.set(watcher.rstatus)
            return
        # not waited for yet, or never (a child whose spawn failed, an abandoned one)
        self.exits[watcher.rpid] = (self.reaps, watcher.rstatus)
        while len(self.exits) > MAX_UNCLAIMED_EXITS:
            del self.exits[next(iter(self.exits))]


def close_on_exec_from(first: int) -> None:
    """Mark every open descriptor from ``first`` up close-on-exec."""
    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except FileNotFoundError:   # no /proc: every number the limit allows
        fds = range(first, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    for fd in fds:
        if fd >= first:
            try:
                os.set_inheritable(fd, False)
            except OSError:   # not open (the listing's own descriptor, now closed)
                pass


def c_strings(items: list[bytes]):
    """A NULL-terminated ``char *[]``, as argv and envp are."""
    return (ctypes.c_char_p * (len(items) + 1))(*items, None)


def environ_array(env) -> ctypes.Array:
    return c_strings([os.fsencode(f"{key}={value}") for key, value in env.items()])


class SpawnJob:
    """One posix_spawnp call, with the C data it needs kept alive until it is done."""

    def __init__(self, libc, argv: list[bytes], envp, stdout: int, stderr: int,
                 closefrom=None):
        self.libc, self.argv, self.envp = libc, argv, envp
        self.argv_array = c_strings(argv)
        self.actions = ctypes.create_string_buffer(256)   # 80 bytes in glibc
        libc.posix_spawn_file_actions_init(self.actions)
        libc.posix_spawn_file_actions_addopen(self.actions, 0, b"/dev/null", os.O_RDONLY, 0)
        libc.posix_spawn_file_actions_adddup2(self.actions, stdout, 1)
        libc.posix_spawn_file_actions_adddup2(self.actions, stderr, 2)
        if closefrom is not None:   # after the dup2s: their sources are 3 and up
            closefrom(self.actions, 3)
        self.fds = (stdout, stderr)
        self.pid = ctypes.c_int()
        self.error = 0
        self.abandoned = False
        self.ready = gevent.event.Event()

    def run(self, attr) -> None:
        self.error = self.libc.posix_spawnp(ctypes.byref(self.pid), self.argv[0], self.actions,
                                            attr, self.argv_array, self.envp)

    def close(self) -> None:
        self.libc.posix_spawn_file_actions_destroy(self.actions)
        for fd in self.fds:
            close_fd(fd)


class Subprocess:
    """gevent.subprocess: forks the interpreter; kept as the conservative runner."""

    @staticmethod
    def start(argv, env, stdout: int, stderr: int) -> Process:
        """As ``Spawner.start`` (the write ends are closed)."""
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=stdout,
                                    stderr=stderr, start_new_session=True, close_fds=True,
                                    env=env)
        finally:
            close_fd(stdout)
            close_fd(stderr)
        return Process(proc.pid, proc.wait)


RUNNERS = {"spawn": Spawner, "subprocess": Subprocess}


def runner(name: str):
    """A runner for ``Command`` (one per process: the spawner has a thread)."""
    return RUNNERS[name]()


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

    def __init__(self, argv, on_line, runner, tail: int = 64 * 1024,
                 kill_grace: float = 5.0, env=None, kill_group: bool = True):
        self.argv, self.on_line, self.env = list(argv), on_line, env
        self.kill_grace, self.kill_group = kill_grace, kill_group
        self.start = runner.start
        self.tails = {"stdout": Tail(tail), "stderr": Tail(tail)}
        self.proc: Process | None = None
        self.stopped = ""   # why ``stop()`` ended it, if it did

    def run(self, timeout: float = 0, on_start=None) -> Result:
        """Start the command, wait for it (and its output); ``on_start(pid)`` is called
        once the process exists."""
        started = time.monotonic()
        out_r = err_r = None
        try:
            out_r, out_w = os.pipe2(os.O_CLOEXEC)
            try:
                err_r, err_w = os.pipe2(os.O_CLOEXEC)
            except BaseException:
                close_fd(out_w)
                raise
            self.proc = self.start(self.argv, self.env, out_w, err_w)   # closes out_w, err_w
        except BaseException as exc:
            for fd in (out_r, err_r):
                if fd is not None:
                    close_fd(fd)
            if not isinstance(exc, OSError):
                raise
            code = 127 if exc.errno in (errno.ENOENT, errno.ENOTDIR) else 126
            return Result(code, duration=time.monotonic() - started,
                          error=f"{exc.strerror}: {self.argv[0]}",
                          transient=exc.errno in TRANSIENT_ERRORS)
        if self.stopped:   # asked while it was being started
            gevent.spawn(self._end_group, self.kill_grace)
        if on_start is not None:
            on_start(self.proc.pid)
        outputs = [Output(out_r, "stdout", self.tails["stdout"], self.on_line),
                   Output(err_r, "stderr", self.tails["stderr"], self.on_line)]
        timer = gevent.spawn_later(timeout, self.stop, "timeout") if timeout else None
        code = self.proc.wait()
        duration = time.monotonic() - started
        if timer is not None and self.stopped != "timeout":
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
        if timer is not None and self.stopped == "timeout":
            timer.join(timeout=self.kill_grace + 1)   # its stop ends what is left of the group
        tails = {name: tail.text() for name, tail in self.tails.items()}
        if code < 0:
            return Result(None, -code, duration, stopped=self.stopped, **tails)
        return Result(code, None, duration, stopped=self.stopped, **tails)

    def stop(self, reason: str = "shutdown", grace: float | None = None) -> None:
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
