"""Section ``latency``: LPUSH -> the task's file appears (inotify), one task at a
time on an idle daemon, against subprocess.Popen of the same command."""

from __future__ import annotations

import json
import shutil
import subprocess
import time

from .context import PREPARE, progress, wait_until
from .measure import Inotify, percentile
from .report import Report, ms, ratio
from .runs import settled


def section_latency(ctx, report: Report) -> None:
    samples = ctx.args.samples
    rds = ctx.redis
    rds.flush()
    workdir = ctx.workdir("latency-")
    files = workdir / "files"
    files.mkdir()
    watcher = Inotify(files)
    daemon = ctx.daemon(workdir, ["-concurrent", "5"])
    ours, base = [], []
    try:
        def wait_name(name: str, t0: float) -> float:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                if name in watcher.read(1.0):
                    return time.perf_counter() - t0
            raise TimeoutError(f"{name} did not appear")

        warm = 5
        progress(f"latency: {samples} single tasks through the daemon (+{warm} warm-up)")
        for i in range(samples + warm):
            name = f"d{i}"
            entry = json.dumps({"task": f"touch {files}/{name}", "chan": "default",
                                "ts": int(time.time())})
            t0 = time.perf_counter()
            rds.r.lpush(PREPARE, entry)
            elapsed = wait_name(name, t0)
            if i >= warm:
                ours.append(elapsed)
            wait_until(lambda: settled(rds.r), 10, 0.002, "the task to be recorded")
            time.sleep(0.02)   # idle again: every loop is back in its blocking call
        progress(f"latency: {samples} bare subprocess.Popen of the same command")
        for i in range(samples + warm):
            name = f"p{i}"
            t0 = time.perf_counter()
            proc = subprocess.Popen(["touch", f"{files}/{name}"])
            elapsed = wait_name(name, t0)
            proc.wait()
            if i >= warm:
                base.append(elapsed)
            time.sleep(0.02)
    finally:
        watcher.close()
        daemon.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    for p, target in ((50, "≤ 3 ms"), (99, "≤ 5 ms")):
        a, b = percentile(ours, p), percentile(base, p)
        report.add("latency", f"dispatch p{p}, LPUSH → file created (idle daemon, "
                   f"{samples} samples)", ms(a), ms(b), ratio(a, b),
                   "`subprocess.Popen(['touch', f])` → file created", target)
    overhead = percentile(ours, 50) - percentile(base, 50)
    progress(f"latency: p50 {ms(percentile(ours, 50))} vs {ms(percentile(base, 50))}")
    report.details.append(
        "### Dispatch latency\n\n"
        f"{samples} samples, one task at a time, 20 ms of idle between them. Coyotes: "
        f"p50 {ms(percentile(ours, 50))}, p90 {ms(percentile(ours, 90))}, p99 "
        f"{ms(percentile(ours, 99))}, max {ms(max(ours))}. Bare Popen: p50 "
        f"{ms(percentile(base, 50))}, p99 {ms(percentile(base, 99))}. The daemon's own "
        f"overhead at the median: {ms(overhead)} (includes the LPUSH round trip).")

