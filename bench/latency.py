"""Section ``latency``: LPUSH -> the task's file appears (inotify), one task at a
time on an idle daemon, against subprocess.Popen of the same command; with a
peer, its samples alternate with Coyotes' (each daemon on its own Redis)."""

from __future__ import annotations

import shutil
import subprocess
import time

from .context import progress, wait_until
from .measure import Inotify, percentile
from .report import Report, ms, peer_cells, ratio
from .runs import push_tasks, settled

WARM = 5   # samples of each side left out


class NotSeen(TimeoutError):
    """A task's file did not appear in time."""


def wait_name(watcher: Inotify, name: str, t0: float) -> float:
    """Seconds from ``t0`` (perf_counter) until ``name`` is created."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if name in watcher.read(1.0):
            return time.perf_counter() - t0
    raise NotSeen(f"{name} did not appear")


def one_task(side, files, watcher: Inotify, name: str, chan: str = "default") -> float:
    """One `touch` through ``side``'s prepare queue into ``chan`` -> seconds until its
    file appears (NotSeen after 10 s); returns once the task is done and the
    daemon idle again."""
    t0 = time.perf_counter()
    push_tasks(side.redis.r, [f"touch {files}/{name}"], chan)
    elapsed = wait_name(watcher, name, t0)
    wait_until(lambda: settled(side.redis.r, chan, peer=side.is_peer), 10, 0.002,
               f"the {side.name} task to be recorded")
    return elapsed


def measure_latency(ctx, files, watcher: Inotify) -> dict[str, list[float]]:
    """``--samples`` tasks through each daemon, one at a time, the sides taking
    turns, then as many bare Popen -> {side name or "popen": seconds}."""
    samples, sides = ctx.args.samples, ctx.sides
    out: dict[str, list[float]] = {side.name: [] for side in sides}
    daemons = []
    try:
        for side in sides:
            side.redis.flush()
            daemons.append(side.start(ctx.workdir(f"latency-{side.name}-"), ["-concurrent", "5"]))
        progress(f"latency: {samples} single tasks through "
                 f"{' and '.join(s.name for s in sides)} (+{WARM} warm-up), in turns")
        for i in range(samples + WARM):
            for side in (sides if i % 2 == 0 else sides[::-1]):
                elapsed = one_task(side, files, watcher, f"{side.name}{i}")
                if i >= WARM:
                    out[side.name].append(elapsed)
                time.sleep(0.02)   # idle again: every loop is back in its blocking call
    finally:
        for daemon in daemons:
            daemon.stop(30)
    progress(f"latency: {samples} bare subprocess.Popen of the same command")
    out["popen"] = []
    for i in range(samples + WARM):
        t0 = time.perf_counter()
        proc = subprocess.Popen(["touch", f"{files}/p{i}"])
        elapsed = wait_name(watcher, f"p{i}", t0)
        proc.wait()
        if i >= WARM:
            out["popen"].append(elapsed)
        time.sleep(0.02)
    return out


def section_latency(ctx, report: Report) -> None:
    samples = ctx.args.samples
    workdir = ctx.workdir("latency-")
    files = workdir / "files"
    files.mkdir()
    watcher = Inotify(files)
    try:
        got = measure_latency(ctx, files, watcher)
    finally:
        watcher.close()
        shutil.rmtree(workdir, ignore_errors=True)
    ours, base, theirs = got["coyotes"], got["popen"], got.get("peer")
    for p, target in ((50, "≤ 3 ms"), (99, "≤ 5 ms")):
        a, b = percentile(ours, p), percentile(base, p)
        report.add("latency", f"dispatch p{p}, LPUSH → file created (idle daemon, "
                   f"{samples} samples)", ms(a), ms(b), ratio(a, b),
                   "`subprocess.Popen(['touch', f])` → file created", target,
                   **peer_cells(theirs and (ms(percentile(theirs, p)),
                                            ratio(a, percentile(theirs, p)))))
    overhead = percentile(ours, 50) - percentile(base, 50)
    progress(f"latency: p50 {ms(percentile(ours, 50))} vs {ms(percentile(base, 50))}"
             + (f", peer {ms(percentile(theirs, 50))}" if theirs else ""))
    report.details.append(
        "### Dispatch latency\n\n"
        f"{samples} samples, one task at a time, 20 ms of idle between them. Coyotes: "
        f"p50 {ms(percentile(ours, 50))}, p90 {ms(percentile(ours, 90))}, p99 "
        f"{ms(percentile(ours, 99))}, max {ms(max(ours))}. Bare Popen: p50 "
        f"{ms(percentile(base, 50))}, p99 {ms(percentile(base, 99))}. The daemon's own "
        f"overhead at the median: {ms(overhead)} (includes the LPUSH round trip)."
        + (f" The peer, its samples taking turns with Coyotes' (each daemon idle on a Redis "
           f"of its own): p50 {ms(percentile(theirs, 50))}, p90 {ms(percentile(theirs, 90))}, "
           f"p99 {ms(percentile(theirs, 99))}, max {ms(max(theirs))}." if theirs else ""))
