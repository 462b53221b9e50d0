"""Section ``soak``: RSS after 10,000 and after 100,000 tasks through one
daemon, and the throughput over them, against the RSS after the first round."""

from __future__ import annotations

import time

from .context import progress, tear_down, wait_until
from .measure import proc_status
from .report import Report, ratio
from .runs import push_tasks, settled


def section_soak(ctx, report: Report) -> None:
    """N tasks through one daemon, in rounds of 10%: RSS after each round settles.
    The first round warms the daemon up; growth is measured from there."""
    rds, n = ctx.redis, ctx.args.soak
    rds.flush()
    workdir = ctx.workdir("soak-")
    daemon = ctx.daemon(workdir, ["-concurrent", "20", "-result-ttl", "60"])
    rounds, samples = 10, []
    try:
        t0 = time.perf_counter()
        for k in range(rounds):
            size = n // rounds
            push_tasks(rds.r, [f"true soak-{k}-{i}" for i in range(size)])
            wait_until(lambda: settled(rds.r), max(120.0, size / 20), 0.01, "a soak round")
            samples.append(proc_status(daemon.pid).get("VmRSS", 0))
            progress(f"soak: {(k + 1) * size:,} tasks, VmRSS {samples[-1]:.1f} MB")
        elapsed = time.perf_counter() - t0
    finally:
        tear_down(daemon, workdir)
    warm, last = samples[0], samples[-1]
    report.add("soak", f"VmRSS after {n // rounds:,} → after {n:,} tasks (-concurrent 20)",
               f"{warm:.1f} → {last:.1f} MB ({last - warm:+.1f} MB)", f"{warm:.1f} MB",
               ratio(last, warm), "RSS after the first round (warm)", "no growth")
    report.add("soak", f"throughput over the {n:,} tasks", f"{n / elapsed:.0f}/s", "", "", "",
               "")
