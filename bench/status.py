"""Section ``status``: status and listing calls with 1,000,000 queued, failed
and delayed tasks, against redis-py LRANGE 0 99 (and PING)."""

from __future__ import annotations

import http.client
import json
import time

import redis

from .context import progress, tear_down
from .measure import median, proc_status, timed_calls
from .report import Report, ms, ratio


def fill(client: redis.Redis, n: int) -> str:
    """n queued, n failed (hash + index) and n delayed tasks of channel default; records
    for the newest 1,000 failed ones. Returns a task id that has a record."""
    now = time.time()
    batch = 10000
    for start in range(0, n, batch):
        ids = range(start, min(n, start + batch))
        q = [json.dumps({"id": f"q{i}", "task": f"true {i}", "chan": "default", "ts": int(now)},
                        separators=(",", ":")) for i in ids]
        f = {f"f{i}": json.dumps({"id": f"f{i}", "task": f"false {i}", "chan": "default",
                                  "ts": int(now)}, separators=(",", ":")) for i in ids}
        d = {json.dumps({"id": f"d{i}", "task": f"true {i}", "chan": "default", "ts": int(now),
                         "execute_at": now + 86400 + i}, separators=(",", ":")): now + 86400 + i
             for i in ids}
        with client.pipeline(transaction=False) as pipe:
            pipe.lpush("default:tasks:queue", *q)
            pipe.hset("default:tasks:queue:failed", mapping=f)
            pipe.zadd("default:tasks:queue:failed:index", {k: now - n + i for k, i in
                                                           zip(f, ids, strict=True)})
            pipe.zadd("task:delay:queue", d)
            pipe.execute()
        if start and start % (batch * 20) == 0:
            progress(f"status: filled {start} of {n}")
    with client.pipeline(transaction=False) as pipe:
        for i in range(max(0, n - 1000), n):
            pipe.hset(f"task:record:f{i}", mapping={
                "id": f"f{i}", "channel": "default", "task_name": f"false {i}",
                "argv": json.dumps(["false", str(i)]), "status": "failed", "attempt": 1,
                "exit_code": 1, "queued_at": now, "started_at": now, "finished_at": now,
                "duration": "0.001", "stdout": "", "stderr": "x" * 200})
        pipe.execute()
    return f"f{n - 1}"



def get_call(port: int, path: str, conn=None):
    """A GET of ``path`` on a fresh connection (as curl does), or on ``conn``
    (keep-alive), as a function that returns the body."""
    def fn():
        c = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        try:
            c.request("GET", path)
            resp = c.getresponse()
            body = resp.read()
        finally:
            if conn is None:
                c.close()
        if resp.status != 200:
            raise RuntimeError(f"GET {path}: {resp.status} {body[:200]!r}")
        return body
    return fn


CALLS = (("/channels/default", "GET /channels/default"), ("/channels", "GET /channels"),
         ("/channels/default/failed-tasks", "GET /channels/default/failed-tasks"),
         ("/delay-tasks", "GET /delay-tasks"), ("/tasks/{id}", "GET /tasks/{id}"))


def measure_status(ctx, daemon) -> dict:
    """Fill Redis, then time each call (20 each, after a warm-up)."""
    n, rds = ctx.args.fill, ctx.redis
    progress(f"status: filling {n:,} queued, {n:,} failed and {n:,} delayed tasks")
    t0 = time.perf_counter()
    record_id = fill(rds.r, n)
    progress(f"status: filled in {time.perf_counter() - t0:.1f}s; "
             f"redis used_memory {rds.r.info('memory')['used_memory_human']}")
    out = {"before": proc_status(daemon.pid), "ping": timed_calls(rds.r.ping),
           "lrange": timed_calls(lambda: rds.r.lrange("default:tasks:queue", 0, 99)),
           "results": []}
    for path, what in CALLS:
        path = path.replace("{id}", record_id)
        progress(f"status: {what} x20")
        body = get_call(daemon.http_port, path)()   # its size; the warm-up as well
        out["results"].append((what, timed_calls(get_call(daemon.http_port, path), warm=False),
                               len(body)))
    conn = http.client.HTTPConnection("127.0.0.1", daemon.http_port, timeout=120)
    out["keepalive"] = timed_calls(get_call(daemon.http_port, f"/tasks/{record_id}", conn))
    conn.close()
    out["after"] = proc_status(daemon.pid)
    return out


def section_status(ctx, report: Report) -> None:
    n = ctx.args.fill
    ctx.redis.flush()
    workdir = ctx.workdir("status-")
    daemon = None
    try:
        daemon = ctx.daemon(workdir, ["-task-mode=false"])
        m = measure_status(ctx, daemon)
    finally:
        tear_down(daemon, workdir)
        ctx.redis.flush()
    base, ping, results = median(m["lrange"]), m["ping"], m["results"]
    before, after = m["before"], m["after"]
    for what, times, _size in results:
        target = "≤ 50 ms" if what != "GET /tasks/{id}" and what != "GET /channels" else ""
        report.add("status", f"{what}, {n:,} queued/failed/delayed (median of 20)",
                   ms(median(times)), ms(base), ratio(median(times), base),
                   "redis-py `LRANGE queue 0 99`", target)
    lines = ["### Status and listings", "",
             (f"{n:,} entries each in `default:tasks:queue`, the failed hash and its index, and "
             "`task:delay:queue` (records for the newest 1,000 failed tasks), on a "
             f"`-task-mode=false` daemon. redis-py PING median {ms(median(ping))}, "
             f"LRANGE 0 99 median {ms(base)}. Daemon VmRSS {before.get('VmRSS', 0):.1f} MB "
             f"before the calls, {after.get('VmRSS', 0):.1f} MB after (VmHWM "
             f"{after.get('VmHWM', 0):.1f} MB). Each call on a fresh connection, as curl "
             "makes it; GET /tasks/{id} on one keep-alive connection instead: median "
             f"{ms(median(m['keepalive']))} (see the HTTP push notes on delayed ACKs)."), "",
             "| Call | median | min | max | reply bytes | ratio to PING |",
             "|---|---:|---:|---:|---:|---:|"]
    for what, times, size in results:
        lines.append(f"| {what} | {ms(median(times))} | {ms(min(times))} | {ms(max(times))} | "
                     f"{size:,} | {ratio(median(times), median(ping))} |")
    report.details.append("\n".join(lines))
