"""What the sections measure with: a process's memory and CPU from /proc,
percentiles, file creation seen through inotify, timed calls, and the
machine's cost of a wake-up between two processes."""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import select
import statistics
import struct
import time
from pathlib import Path


def proc_status(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM of a process, in MB."""
    out = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) / 1024
    return out


def proc_cpu(pid: int) -> tuple[float, float]:
    """(CPU seconds of the process, of its children it has waited for) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tick, (int(fields[13]) + int(fields[14])) / tick


def rusage_cpu(*who: int) -> float:
    """CPU seconds (user and system) so far of ``resource.RUSAGE_*`` ``who``, summed."""
    return sum(u.ru_utime + u.ru_stime for u in map(resource.getrusage, who))


def median(values):
    return statistics.median(values) if values else float("nan")


def percentile(values, p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)



# -- inotify (ctypes, no dependency): when did a file appear, without polling ---
IN_CREATE, IN_Q_OVERFLOW = 0x100, 0x4000
_libc = ctypes.CDLL(None, use_errno=True)


class Inotify:
    def __init__(self, directory: Path):
        self.fd = _libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        if _libc.inotify_add_watch(self.fd, str(directory).encode(), IN_CREATE) < 0:
            os.close(self.fd)
            raise OSError(ctypes.get_errno(), "inotify_add_watch")
        self.overflow = False

    def read(self, timeout: float) -> list[str]:
        """Names created since the last call (waits up to ``timeout`` for the first)."""
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return []
        try:
            data = os.read(self.fd, 1 << 16)
        except BlockingIOError:
            return []
        names, pos = [], 0
        while pos + 16 <= len(data):
            _wd, mask, _cookie, length = struct.unpack_from("iIII", data, pos)
            name = data[pos + 16:pos + 16 + length].rstrip(b"\0").decode()
            pos += 16 + length
            if mask & IN_Q_OVERFLOW:
                self.overflow = True
            elif mask & IN_CREATE:
                names.append(name)
        return names

    def close(self) -> None:
        os.close(self.fd)



def timed_calls(fn, count: int = 20, warm: bool = True) -> list[float]:
    if warm:
        fn()   # a first call, not timed
    out = []
    for _ in range(count):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out



def wakeup_cost(cpus: tuple[int, int], rounds: int = 5000) -> float:
    """CPU µs (both sides) per round trip of one byte between two processes over
    pipes, the first on CPU ``cpus[0]`` and the second on ``cpus[1]``: two wake-ups,
    as each task needs several (Redis replies, the spawning thread, exits)."""
    mask = os.sched_getaffinity(0)
    (there_r, there_w), (back_r, back_w) = os.pipe(), os.pipe()
    both = (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    before = rusage_cpu(*both)
    pid = os.fork()
    if pid == 0:   # the echo side: os calls only, and out without any of our clean-up
        code = 1
        try:
            os.close(there_w)
            os.close(back_r)
            os.sched_setaffinity(0, {cpus[1]})
            for _ in range(rounds):
                byte = os.read(there_r, 1)
                if not byte:   # the other side gave up
                    break
                os.write(back_w, byte)
            code = 0
        finally:
            os._exit(code)
    os.close(there_r)
    os.close(back_w)   # a dead echo side is then an end of file here, not a hang
    try:
        os.sched_setaffinity(0, {cpus[0]})
        for _ in range(rounds):
            os.write(there_w, b"x")
            if not os.read(back_r, 1):
                raise OSError("the echo side of the wake-up probe ended early")
    finally:
        os.sched_setaffinity(0, mask)
        os.close(there_w)   # an echo side still waiting reads the end of file and exits
        os.close(back_r)
        os.waitpid(pid, 0)
    return 1e6 * (rusage_cpu(*both) - before) / rounds

