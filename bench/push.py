"""Section ``http``: wrk pushing POST /channels/bench/tasks to a
-task-mode=false daemon, against a trivial gevent.pywsgi app (with and without
TCP_NODELAY); the daemon's RSS across two runs."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
import time

from .context import HELLO, free_port, progress, stop_process, tear_down, wait_until
from .measure import proc_status
from .report import Report, ms, ratio

WRK_LUA = """wrk.method = "POST"
wrk.body = "task=true"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
"""
UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


def parse_wrk(text: str) -> dict:
    out = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))}
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s|m)\s*$", text, re.M)
        out[f"p{pct}"] = float(m.group(1)) * UNITS[m.group(2)] if m else float("nan")
    m = re.search(r"(\d+) requests in", text)
    out["requests"] = int(m.group(1)) if m else 0
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    out["non2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: (.*)", text)
    out["errors"] = m.group(1).strip() if m else ""
    return out


def wrk(ctx, url: str, duration: int) -> dict:
    script = ctx.tmp / "post.lua"
    script.write_text(WRK_LUA)
    argv = ["wrk", "-t2", "-c20", f"-d{duration}s", "--latency", "-s", str(script), url]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60,
                         check=True).stdout
    return parse_wrk(out)



def start_hello(ctx, workdir, nodelay: bool = False):
    """bench/hello.py on a free port, once it accepts -> (process, port)."""
    port = free_port()
    hello = ctx.procs.start([sys.executable, str(HELLO), str(port),
                             *(["--nodelay"] if nodelay else [])], cwd=workdir)
    wait_until(lambda: socket.create_connection(("127.0.0.1", port), 1).close() or True,
               20, what="the hello app")
    return hello, port


def measure_bare_app(ctx, workdir) -> tuple[dict, dict]:
    """wrk against the hello app, stock and with TCP_NODELAY -> ({variant: wrk
    figures}, the stock app's idle memory)."""
    d, bases = ctx.args.duration, {}
    for variant in ("stock", "nodelay"):
        hello, port = start_hello(ctx, workdir, variant == "nodelay")
        try:
            time.sleep(0.5)
            hello_idle = proc_status(hello.pid)
            progress(f"http: wrk -t2 -c20 -d{d}s against the bare gevent.pywsgi app ({variant})")
            bases[variant] = wrk(ctx, f"http://127.0.0.1:{port}/channels/bench/tasks", d)
            progress(f"http: bare app ({variant}): {bases[variant]['rps']:.0f} req/s, "
                     f"p99 {ms(bases[variant]['p99'])}")
        finally:
            stop_process(hello)
    return bases, hello_idle


def measure_daemon_http(ctx, workdir) -> tuple[dict, list[dict], int]:
    """Two wrk runs against a -task-mode=false daemon -> (its memory before,
    each run's figures with the memory after it, the tasks queued)."""
    d, rds = ctx.args.duration, ctx.redis
    daemon = ctx.daemon(workdir, ["-task-mode=false"])
    try:
        status, body = daemon.call("POST", "/channels", {"name": "bench", "distinct": "false",
                                                         "worker": "1000"})
        if status != 200:
            raise RuntimeError(f"POST /channels: {status} {body[:200]!r}")
        time.sleep(0.5)
        rss0 = proc_status(daemon.pid)
        url = f"http://127.0.0.1:{daemon.http_port}/channels/bench/tasks"
        runs = []
        for k in (1, 2):
            progress(f"http: wrk -t2 -c20 -d{d}s POST /channels/bench/tasks, run {k} of 2")
            runs.append(wrk(ctx, url, d))
            runs[-1]["rss"] = proc_status(daemon.pid)
            progress(f"http: run {k}: {runs[-1]['rps']:.0f} req/s, p99 {ms(runs[-1]['p99'])}, "
                     f"non-2xx {runs[-1]['non2xx']}, RSS {runs[-1]['rss'].get('VmRSS', 0):.1f} MB")
        return rss0, runs, rds.r.llen("bench:tasks:queue")
    finally:
        daemon.stop(30)


def section_http(ctx, report: Report) -> None:
    if not shutil.which("wrk"):
        progress("http: wrk not found (apt-get install wrk): skipped")
        report.add("http", "push rate", "skipped: no wrk", "", "", "", "")
        return
    d = ctx.args.duration
    ctx.redis.flush()
    workdir = ctx.workdir("http-")
    try:
        bases, hello_idle = measure_bare_app(ctx, workdir)
        rss0, runs, queued = measure_daemon_http(ctx, workdir)
    finally:
        tear_down(None, None, workdir)
    base, fast = bases["stock"], bases["nodelay"]
    best = max(runs, key=lambda r: r["rps"])
    report.add("http", f"POST /channels/{{c}}/tasks, wrk -t2 -c20 -d{d}s (best of 2)",
               f"{best['rps']:.0f} req/s", f"{base['rps']:.0f} req/s",
               ratio(best["rps"], base["rps"]), "wrk, same script, bare gevent.pywsgi app",
               "≥ 4,000 req/s")
    report.add("http", "p99 latency of that run", ms(best["p99"]), ms(base["p99"]),
               ratio(best["p99"], base["p99"]), "the same wrk run on the bare app", "≤ 25 ms")
    report.add("http", "the same push rate against a bare app with TCP_NODELAY",
               f"{best['rps']:.0f} req/s", f"{fast['rps']:.0f} req/s",
               ratio(best["rps"], fast["rps"]), "wrk, bare gevent.pywsgi app, TCP_NODELAY", "")
    report.add("http", "its p99 latency", ms(best["p99"]), ms(fast["p99"]),
               ratio(best["p99"], fast["p99"]), "the same wrk run on that app", "")
    r1, r2 = runs[0]["rss"].get("VmRSS", 0), runs[1]["rss"].get("VmRSS", 0)
    report.add("http", "daemon VmRSS before → after run 1 → after run 2",
               f"{rss0.get('VmRSS', 0):.1f} → {r1:.1f} → {r2:.1f} MB",
               f"{hello_idle.get('VmRSS', 0):.1f} MB", ratio(r2, hello_idle.get("VmRSS", 0)),
               "bare app idle (same imports)",
               "flat across runs" + (" (flat)" if r2 - r1 < max(2.0, 0.05 * r1) else ""))
    report.details.append(
        "### HTTP push\n\n"
        f"`wrk -t2 -c20 -d{d}s --latency -s post.lua` (body `task=true`, form-encoded) against "
        "a `-task-mode=false` daemon, channel `bench` created with `distinct=false` so every "
        "push is queued. "
        + "; ".join(f"run {i + 1}: {r['rps']:.0f} req/s, p50 {ms(r['p50'])}, p99 {ms(r['p99'])}, "
                    f"{r['requests']} requests, {r['non2xx']} non-2xx"
                    + (f", socket errors {r['errors']}" if r["errors"] else "")
                    for i, r in enumerate(runs))
        + f". Queued after both runs: {queued}. Bare app: {base['rps']:.0f} req/s, p50 "
        f"{ms(base['p50'])}, p99 {ms(base['p99'])}; with TCP_NODELAY {fast['rps']:.0f} req/s, "
        f"p50 {ms(fast['p50'])}, p99 {ms(fast['p99'])}. gevent.pywsgi writes a reply's "
        "headers and body with two send calls: on a keep-alive connection (wrk's) the body "
        "then waits for the client's delayed ACK, about 40 ms, unless TCP_NODELAY is set. "
        "Daemon VmHWM after run 2: "
        f"{runs[1]['rss'].get('VmHWM', 0):.1f} MB.")
