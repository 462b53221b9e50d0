"""Section ``scale``: what adding nodes buys. The same tasks through one node and
through three nodes on one Redis (each with -concurrent 5, on this same
machine): short commands (`true`), which the CPU bounds, and 100 ms ones
(`sleep 0.1`), which the workers bound."""

from __future__ import annotations

import json
import time

from .context import Coyotes, progress, wait_until
from .report import Report, ratio
from .runs import last_finished

CHANNEL = "scale"   # not distinct: the same command line may wait many times


def nodes_run(ctx, count: int, n: int, command: str) -> float:
    """``count`` fresh nodes on the run's Redis; N ``command`` tasks pushed at once
    through the prepare queue -> tasks/s until the last one is recorded."""
    rds = ctx.redis
    rds.flush()
    workdir = ctx.workdir(f"scale{count}-")
    daemons = []
    try:
        for i in range(count):
            daemon = Coyotes(rds.port, workdir, ["-concurrent", "5", *ctx.daemon_args],
                             node_id=f"scale-{i}")
            ctx.procs.add(daemon)
            daemons.append(daemon.start(timeout=30))
        status, _ = daemons[0].request("POST", "/channels", {"name": CHANNEL, "worker": 5})
        assert status == 200, status
        for daemon in daemons:   # every node consumes it before the tasks come
            wait_until(lambda d=daemon: rds.r.sismember(f"task:node:{d.node_id}:channels",
                                                        CHANNEL), 10, 0.05, "the channel")
        t0 = time.time()
        entry = json.dumps({"task": command, "chan": CHANNEL})
        with rds.r.pipeline(transaction=False) as pipe:
            for _ in range(n):
                pipe.lpush("task:prepare:queue", entry)
            pipe.execute()

        def done() -> bool:
            with rds.r.pipeline(transaction=False) as pipe:
                pipe.llen("task:prepare:queue")
                pipe.llen(f"{CHANNEL}:tasks:queue")
                pipe.scard(f"{CHANNEL}:tasks:queue:exec")
                for daemon in daemons:   # its staging list, its claims
                    pipe.llen(f"task:node:{daemon.node_id}:prepare")
                    pipe.llen(f"task:node:{daemon.node_id}:processing:{CHANNEL}")
                return not any(pipe.execute())
        wait_until(done, max(120.0, n / 10), 0.05, f"{n} tasks through {count} node(s)")
        return n / (last_finished(rds.r) - t0)
    finally:
        for daemon in daemons:
            daemon.stop(30)


def section_scale(ctx, report: Report) -> None:
    short = ctx.args.tasks
    slow = max(60, short // 20)
    for command, n, label in (("true", short, "`true` (CPU-bound here)"),
                              ("sleep 0.1", slow, "`sleep 0.1` (worker-bound)")):
        rates = {}
        for count in (1, 3):
            rates[count] = nodes_run(ctx, count, n, command)
            progress(f"scale: {command}: {count} node(s), {rates[count]:.0f} tasks/s")
        report.add("scale", f"{label} tasks/s, 3 nodes on one Redis, -concurrent 5 each "
                   f"(N={n})", f"{rates[3]:.0f}/s", f"{rates[1]:.0f}/s", ratio(rates[3], rates[1]),
                   "1 node, same tasks", "")
