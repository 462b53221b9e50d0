"""How a command's process is started: the runners behind ``Command``.

A runner has one method, ``start(argv, env, stdout, stderr) -> Process``: it
starts argv in a new session (setsid) with stdin on /dev/null, the given
write ends of its output pipes (which it closes), the default disposition of
the signals Python ignores, and no other descriptor of the daemon's. It
raises OSError when the process cannot be started. ``Spawner`` (``spawn``,
the default) calls ``posix_spawn`` (finding the program on PATH as
``posix_spawnp`` does); ``Subprocess`` (``subprocess``) uses
``gevent.subprocess``, which forks the interpreter.
"""

from __future__ import annotations

import collections
import ctypes
import errno
import os
import resource
import signal
import stat
import time

import gevent
import gevent.event
from gevent import subprocess
from gevent.monkey import get_original

# gevent's os.close first looks for watchers of the fd to cancel; ours are all
# stopped before their fd is closed
close_fd = get_original("os", "close")
# a thread waits for a spawn in read() of a pipe, and is woken by a write() of one
# byte: both let go of the GIL during the call (see ``Spawner.start``)
READ, WRITE = get_original("os", "read"), get_original("os", "write")
START_NEW_THREAD = get_original("_thread", "start_new_thread")
MAX_UNCLAIMED_EXITS = 1000
# threads that call posix_spawn at once: each waits until its child has exec'ed
# (most of a millisecond on a busy machine), so one thread alone caps the spawns
MAX_SPAWN_THREADS = 8
SPAWN_THREAD_NAME = b"coyotes-spawn"   # what ps -L and top -H show for those threads
PR_SET_NAME = 15                       # <linux/prctl.h>
PATH_TTL = 2.0          # seconds a program found on PATH is run without looking again
MAX_PROGRAMS = 1024     # programs found on PATH that are kept
MAX_FILE_ACTIONS = 256   # kept file-action sets, one per (stdout, stderr) pair of descriptors
# <spawn.h> values, the same in glibc and musl (os.posix_spawn does not export them)
POSIX_SPAWN_SETSIGDEF, POSIX_SPAWN_SETSIGMASK, POSIX_SPAWN_SETSID = 0x04, 0x08, 0x80
# Python ignores these; a command gets them back at their default, as with
# subprocess's restore_signals (and Go's os/exec)
DEFAULT_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ)
SIG_IGN = 1   # the handler's value in a struct sigaction


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
    """The default runner: ``posix_spawn`` (setsid, default signals) of the file
    ``posix_spawnp`` would run, called by threads of its own through ctypes.

    posix_spawn is vfork-like: no copy of this interpreter and no Python in the
    child before exec, much faster than fork+exec from Python. But the thread
    that calls it waits until the child has exec'ed, which takes long on a busy
    machine (the child queued behind other work on the other CPU). ctypes lets go
    of the GIL during the call, so the hub goes on meanwhile; and several threads
    (one more each time every one is busy, up to MAX_SPAWN_THREADS) wait for
    their children at once, so that spawns do not queue behind one another. The plain
    ``posix_spawnp`` is used, not gevent's wrapper, which files every child in a
    table that each SIGCHLD scans.

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
        for sig in default_signals(libc):
            libc.sigaddset(signals, sig)   # refuses glibc's own signals: they are left out
        libc.posix_spawnattr_setsigdefault(self.attr, signals)
        libc.posix_spawnattr_setflags(self.attr, ctypes.c_short(
            POSIX_SPAWN_SETSID | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        self.environ = environ_array(os.environ)   # the daemon's own, read once
        # posix_spawnp searches the daemon's PATH (not the command's environment), in
        # the child: a failed execve for every directory before the program's, on
        # the command's CPU, for each command. The daemon looks once in a while
        path = os.environ.get("PATH")
        self.path = None if path is None else [os.fsencode(d or ".") for d in path.split(":")]
        self.found: dict[bytes, tuple[bytes, float]] = {}   # program -> (its file, until)
        # (stdout, stderr) -> its file actions, made once: glibc checks each descriptor
        # against the rlimit as an action is added (a system call each)
        self.actions: dict[tuple[int, int], ctypes.Array] = {}
        self.jobs: collections.deque[SpawnJob] = collections.deque()
        self.ring, self.bell = os.pipe2(os.O_CLOEXEC)   # a byte per job handed over
        self.done: collections.deque[SpawnJob] = collections.deque()
        self.exits: dict[int, tuple[int, int]] = {}   # pid -> (reap number, wait status)
        self.reaps = 0                                 # exits seen so far
        self.waiters: dict[int, gevent.event.AsyncResult] = {}   # pid -> its Process.wait
        self.pending = 0                           # jobs handed to the threads
        self.threads = 0
        loop = gevent.get_hub().loop
        # libev's SIGCHLD handler only goes in with a first child watcher: a command
        # that ended before it would never be reaped
        loop.install_sigchld()
        self.reaper = loop.child(0, False)
        self.reaper.start(self._reaped, self.reaper)
        self.wake = loop.async_()
        self.wake.start(self._deliver)
        self._add_thread()

    def program(self, name: bytes) -> bytes | None:
        """The file posix_spawnp would run for ``name``, found as it finds it (the
        first regular, executable file of that name along PATH) at most once every
        PATH_TTL seconds; None to leave it to posix_spawnp (a path, no PATH, or
        nothing found: its error is then the command's)."""
        if self.path is None or b"/" in name or not name:
            return None
        now = time.monotonic()
        known = self.found.get(name)
        if known is not None and known[1] > now:
            return known[0]
        for folder in self.path:
            candidate = os.path.join(folder, name)
            try:
                regular = stat.S_ISREG(os.stat(candidate).st_mode)
            except (OSError, ValueError):
                continue
            if regular and os.access(candidate, os.X_OK):
                if len(self.found) >= MAX_PROGRAMS:
                    self.found.clear()
                self.found[name] = (candidate, now + PATH_TTL)
                return candidate
        self.found.pop(name, None)
        return None

    def _add_thread(self) -> None:
        START_NEW_THREAD(self._serve, ())
        self.threads += 1

    def start(self, argv, env, stdout: int, stderr: int) -> Process:
        """Start argv with these write ends of its output pipes, which it closes
        (once the child has them: a greenlet killed meanwhile cannot close them
        under the spawning thread)."""
        try:
            actions = self.actions.get((stdout, stderr))
            owned = actions is None
            if owned:
                actions = file_actions(self.libc, stdout, stderr, self.closefrom)
                if len(self.actions) < MAX_FILE_ACTIONS:
                    # read only by posix_spawn, and two spawns in flight never share
                    # a descriptor: safe to use again once this one is done
                    self.actions[(stdout, stderr)], owned = actions, False
            args = [os.fsencode(a) for a in argv]
            job = SpawnJob(self.libc, args, self.environ if env is None else environ_array(env),
                           actions, (stdout, stderr), owned, self.program(args[0]))
        except BaseException:
            close_fd(stdout)
            close_fd(stderr)
            raise
        since = self.reaps   # an exit seen before this is an older process's, same pid
        if self.waiters or self.pending:
            self.pending += 1
            if self.pending > self.threads and self.threads < MAX_SPAWN_THREADS:
                self._add_thread()   # every thread is busy with a spawn
            self.jobs.append(job)
            # the thread this wakes takes the GIL the write lets go of, and gets to
            # its spawn at once (a queue's lock, released with the GIL held, woke it
            # only to wait for the GIL, and often took this CPU from us to do so)
            WRITE(self.bell, b"\0")
            try:
                job.ready.wait()
            except BaseException:
                job.abandoned = True   # killed while waiting: its command, if any, goes too
                raise
        else:   # nothing else runs: no hub to keep going, and no hand-over to wait for
            job.run(self.attr)
            job.close()
            # the new process usually waits on this CPU behind us: let it run before
            # our bookkeeping, so that the command starts sooner
            os.sched_yield()
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
        """A thread: one spawn at a time, then a wake-up for the hub."""
        self.libc.prctl(PR_SET_NAME, SPAWN_THREAD_NAME, 0, 0, 0)   # a name only: may fail
        while True:
            READ(self.ring, 1)   # a pipe wakes one reader per byte
            job = self.jobs.popleft()
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


def default_signals(libc) -> list[int]:
    """The signals a command gets at their default disposition: DEFAULT_SIGNALS and
    every other one this process does not ignore (a handler does not survive exec;
    one ignored, as nohup ignores SIGHUP, stays ignored, as with subprocess).
    glibc's child sets each signal named so at once; any other it first asks about:
    one system call more per signal before exec, for each command."""
    action = ctypes.create_string_buffer(512)   # struct sigaction: 152 bytes in glibc
    out = []
    for sig in range(1, signal.NSIG):
        if sig in (signal.SIGKILL, signal.SIGSTOP):
            continue
        if sig not in DEFAULT_SIGNALS and libc.sigaction(sig, None, action) == 0 \
                and ctypes.c_void_p.from_buffer(action).value == SIG_IGN:
            continue
        out.append(sig)
    return out


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


def file_actions(libc, stdout: int, stderr: int, closefrom=None) -> ctypes.Array:
    """A child's descriptors: stdin on /dev/null, these write ends as 1 and 2, and
    (with ``closefrom``) nothing else."""
    actions = ctypes.create_string_buffer(256)   # 80 bytes in glibc
    libc.posix_spawn_file_actions_init(actions)
    libc.posix_spawn_file_actions_addopen(actions, 0, b"/dev/null", os.O_RDONLY, 0)
    libc.posix_spawn_file_actions_adddup2(actions, stdout, 1)
    libc.posix_spawn_file_actions_adddup2(actions, stderr, 2)
    if closefrom is not None:   # after the dup2s: their sources are 3 and up
        closefrom(actions, 3)
    return actions


class SpawnJob:
    """One posix_spawnp call, with the C data it needs kept alive until it is done
    (``owned`` file actions are destroyed then; the others are the spawner's)."""

    def __init__(self, libc, argv: list[bytes], envp, actions, fds: tuple[int, int],
                 owned: bool = True, program: bytes | None = None):
        self.libc, self.argv, self.envp, self.program = libc, argv, envp, program
        self.argv_array = c_strings(argv)
        self.actions, self.fds, self.owned = actions, fds, owned
        self.pid = ctypes.c_int()
        self.error = 0
        self.abandoned = False
        self.ready = gevent.event.Event()

    def run(self, attr) -> None:
        if self.program is not None:
            self.error = self.libc.posix_spawn(ctypes.byref(self.pid), self.program,
                                               self.actions, attr, self.argv_array, self.envp)
            if self.error not in (errno.ENOENT, errno.EACCES, errno.ENOTDIR):
                return
            # the file went away or changed since it was found: search as usual
        self.error = self.libc.posix_spawnp(ctypes.byref(self.pid), self.argv[0], self.actions,
                                            attr, self.argv_array, self.envp)

    def close(self) -> None:
        if self.owned:
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
