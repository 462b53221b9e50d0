"""A run of N tasks: pushed at once to a fresh daemon and timed until every one
is recorded, or run by ``xargs -P`` (the baseline); the Redis helpers around them."""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import time
from pathlib import Path

import redis

from .context import NODE, PREPARE
from .measure import proc_cpu, proc_status, rusage_cpu

SETTLE_POLL = 0.05     # s between looks for the end of a throughput run


def settled(client: redis.Redis, chan: str = "default", peer: bool = False) -> bool:
    """Every pushed task recorded: nothing left in any list a task passes through.
    The peer (the Go original) keeps a channel's running tasks in a set instead."""
    with client.pipeline(transaction=False) as pipe:
        pipe.llen(PREPARE)
        pipe.llen(f"{chan}:tasks:queue")
        if peer:
            pipe.scard(f"{chan}:tasks:queue:exec")
        else:
            pipe.llen(f"task:node:{NODE}:prepare")
            pipe.llen(f"task:node:{NODE}:processing:{chan}")
        return not any(pipe.execute())


def last_finished(client: redis.Redis) -> float:
    """The latest ``finished_at`` of every task record (Redis TIME, epoch seconds)."""
    keys = list(client.scan_iter(match="task:record:*", count=1000))
    with client.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.hget(key, "finished_at")
        return max(float(value) for value in pipe.execute() if value)


def commandstats(client: redis.Redis) -> dict[str, int]:
    return {name: int(stats["calls"]) for name, stats in client.info("commandstats").items()}


def push_tasks(client: redis.Redis, commands: list[str], chan: str = "default") -> None:
    now = int(time.time())
    with client.pipeline(transaction=False) as pipe:
        for command in commands:
            pipe.lpush(PREPARE, json.dumps({"task": command, "chan": chan, "ts": now}))
        pipe.execute()


def wait_settled(side, files: Path, n: int, command: str, timeout: float) -> int:
    """Until every task has run (and, for the peer's `touch`, every file exists: it
    has no record to read), looking every ``SETTLE_POLL`` s -> the looks taken."""
    client, polls = side.redis.r, 0
    deadline = time.monotonic() + timeout
    while True:
        polls += 1
        if settled(client, peer=side.is_peer) and (
                not side.is_peer or command != "touch" or len(os.listdir(files)) >= n):
            return polls
        if time.monotonic() > deadline:
            raise TimeoutError(f"{side.name}: tasks not all recorded after {timeout:.0f}s")
        time.sleep(SETTLE_POLL)


def daemon_run(ctx, concurrency: int, n: int, command: str, extra: tuple = (),
               side=None) -> dict:
    """A fresh daemon with -concurrent C (and ``extra`` flags); N tasks pushed at once;
    timed until recorded. ``side``: Coyotes (the default) or the peer.

    The bench keeps off the CPU meanwhile, as it does while xargs runs: it looks
    for the end only every ``SETTLE_POLL`` seconds, and reads the times afterwards
    from what the run left (the records' ``finished_at``, the files' mtime). A
    watch of every file and RSS samples cost it 0.1 to 0.2 ms of CPU per task,
    taken from the daemon on these 2 CPUs and not from xargs. The peer keeps no
    record of a task: its clock is the files' (``rate`` is ``rate_files``)."""
    side = side or ctx.sides[0]
    rds = side.redis
    rds.flush()
    workdir = ctx.workdir(f"{side.name}{concurrency}-")
    files = workdir / "files"
    files.mkdir()
    daemon = side.start(workdir, ["-concurrent", str(concurrency), *extra])
    try:
        # unique command lines: the default channel is distinct (a repeated line is refused)
        cmds = [f"touch {files}/{i}" if command == "touch" else f"true {i}" for i in range(n)]
        before = commandstats(rds.r)
        cpu0, redis0 = proc_cpu(daemon.pid), proc_cpu(rds.pid)[0]
        t0 = time.time()   # wall clock: Redis TIME and file times are read against it
        push_tasks(rds.r, cmds)
        polls = wait_settled(side, files, n, command, max(60.0, n / 20))
        cpu1, redis1 = proc_cpu(daemon.pid), proc_cpu(rds.pid)[0]
        after = commandstats(rds.r)   # before the reads below add their own
        t_files = files_time(files, n, t0) if command == "touch" else None
        t_done = t_files if side.is_peer else last_finished(rds.r) - t0
        status = proc_status(daemon.pid)
        delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
        # our own commands: the pushes and the settled() polls (4 LLEN each)
        delta["cmdstat_lpush"] = delta.get("cmdstat_lpush", 0) - n
        delta["cmdstat_llen"] = delta.get("cmdstat_llen", 0) - 4 * polls
        delta["cmdstat_info"] = delta.get("cmdstat_info", 0) - 1
        return {"n": n, "t_files": t_files, "t_done": t_done,
                "rate": n / t_done, "rate_files": n / t_files if t_files else None,
                "hwm": status.get("VmHWM", 0), "commandstats": delta,
                # CPU ms per task: the daemon itself, the commands it ran, redis-server
                "cpu": {"daemon": 1000 * (cpu1[0] - cpu0[0]) / n,
                        "commands": 1000 * (cpu1[1] - cpu0[1]) / n,
                        "redis": 1000 * (redis1 - redis0) / n}}
    finally:
        daemon.stop(30)
        shutil.rmtree(workdir, ignore_errors=True)


def files_time(files: Path, n: int, t0: float) -> float:
    """Seconds from ``t0`` (wall clock) to the newest file's mtime, all n there."""
    names = os.listdir(files)
    if len(names) != n:
        raise RuntimeError(f"{len(names)} files of {n}")
    # file times come from a coarse clock (a tick behind): never before the push
    return max(max(os.stat(files / name).st_mtime for name in names) - t0, 1e-3)


def xargs_run(ctx, concurrency: int, n: int, command: str) -> tuple[float, float]:
    """(tasks/s, CPU ms per task of xargs and the commands it ran)."""
    workdir = ctx.workdir(f"xargs{concurrency}-")
    try:
        target = f"touch {workdir}/{{}}" if command == "touch" else "true"
        cpu0 = rusage_cpu(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        subprocess.run(f"seq {n} | xargs -P {concurrency} -I{{}} {target}", shell=True,
                       check=True, timeout=max(60, n / 20))
        elapsed = time.perf_counter() - t0
        if command == "touch" and len(os.listdir(workdir)) != n:
            raise RuntimeError("xargs did not create every file")
        cpu = rusage_cpu(resource.RUSAGE_CHILDREN) - cpu0
        return n / elapsed, 1000 * cpu / n
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

