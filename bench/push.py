"""Section ``http``: wrk pushing unique tasks with POST /channels/bench/tasks and
POST /channels/bench to -task-mode=false daemons, against a trivial
gevent.pywsgi app (with and without TCP_NODELAY); the daemons' RSS across
three rounds. With a peer, its runs take turns with Coyotes' in each round."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
import time

from .context import HELLO, free_port, is_refusal, progress, stop_process, tear_down, wait_until
from .measure import median, proc_status
from .report import Report, ms, peer_cells, ratio

# every request a new command line (`true <tag>-<thread>-<n>`), as producers send
WRK_LUA = """local counter, threads = 0, 0
function setup(thread)
  thread:set("id", threads)
  threads = threads + 1
end
function init(args)
  prefix = "task=true+" .. (args[1] or "run") .. "-" .. id .. "-"
end
function request()
  counter = counter + 1
  return wrk.format("POST", nil,
    {["Content-Type"] = "application/x-www-form-urlencoded"}, prefix .. counter)
end
"""
UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}
ROUNDS = 3
# the route, and how the report names it (the Go original has only the second)
ROUTES = (("/channels/bench/tasks", "POST /channels/{c}/tasks"),
          ("/channels/bench", "POST /channels/{c}"))


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


def wrk(ctx, url: str, duration: int, tag: str = "run") -> dict:
    script = ctx.tmp / "post.lua"
    script.write_text(WRK_LUA)
    argv = ["wrk", "-t2", "-c20", f"-d{duration}s", "--latency", "-s", str(script), url,
            "--", tag]
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
    d, bases, idle = ctx.args.duration, {}, {}
    for variant in ("stock", "nodelay"):
        hello, port = start_hello(ctx, workdir, variant == "nodelay")
        try:
            time.sleep(0.5)
            idle[variant] = proc_status(hello.pid)
            progress(f"http: wrk -t2 -c20 -d{d}s against the bare gevent.pywsgi app ({variant})")
            bases[variant] = wrk(ctx, f"http://127.0.0.1:{port}/channels/bench/tasks", d)
            progress(f"http: bare app ({variant}): {bases[variant]['rps']:.0f} req/s, "
                     f"p99 {ms(bases[variant]['p99'])}")
        finally:
            stop_process(hello)
    return bases, idle["stock"]


def push_daemon(ctx, side, workdir):
    """``side``'s daemon with -task-mode=false and channel ``bench`` (not distinct)
    -> (daemon, the routes it has)."""
    side.redis.flush()
    daemon = side.start(workdir, ["-task-mode=false"])
    status, body = daemon.call("POST", "/channels", {"name": "bench", "distinct": "false",
                                                     "worker": "1000"})
    if is_refusal(status, body):
        raise RuntimeError(f"{side.name}: POST /channels: {status} {body[:200]!r}")
    routes = [path for path, _ in ROUTES
              if daemon.call("POST", path, {"task": "true probe"})[0] != 404]
    return daemon, routes


def measure_daemons(ctx) -> dict:
    """``ROUNDS`` rounds; in each, every route on every daemon that has it, the
    daemons taking turns -> {side: {"runs": {path: [figures]}, "rss": [before, after
    each round], "queued": N, "routes": [...]}}."""
    d, sides, out, daemons = ctx.args.duration, ctx.sides, {}, {}
    try:
        for side in sides:
            daemon, routes = push_daemon(ctx, side, ctx.workdir(f"http-{side.name}-"))
            daemons[side.name] = daemon
            out[side.name] = {"runs": {p: [] for p in routes}, "routes": routes, "rss": []}
        time.sleep(0.5)
        for side in sides:
            out[side.name]["rss"].append(proc_status(daemons[side.name].pid))
        for k in range(ROUNDS):
            for path, _ in ROUTES:
                for side in (sides if k % 2 == 0 else sides[::-1]):
                    if path not in out[side.name]["routes"]:
                        continue
                    progress(f"http: round {k + 1} of {ROUNDS}: {side.name}, wrk -t2 -c20 "
                             f"-d{d}s POST {path}")
                    daemon = daemons[side.name]
                    run = wrk(ctx, f"{daemon.url}{path}", d, f"r{k}")
                    out[side.name]["runs"][path].append(run)
                    progress(f"http: {run['rps']:.0f} req/s, p99 {ms(run['p99'])}, non-2xx "
                             f"{run['non2xx']}")
            for side in sides:
                out[side.name]["rss"].append(proc_status(daemons[side.name].pid))
        for side in sides:
            out[side.name]["queued"] = side.redis.r.llen("bench:tasks:queue")
    finally:
        for daemon in daemons.values():
            daemon.stop(30)
    return out


def middle(runs: list[dict]) -> dict:
    """The run of median rate."""
    return sorted(runs, key=lambda r: r["rps"])[len(runs) // 2]


def rss_trail(samples: list[dict]) -> str:
    return " → ".join(f"{s.get('VmRSS', 0):.1f}" for s in samples) + " MB"


def flat(samples: list[dict]) -> bool:
    first, last = samples[1].get("VmRSS", 0), samples[-1].get("VmRSS", 0)
    return last - first < max(2.0, 0.05 * first)


def section_http(ctx, report: Report) -> None:
    if not shutil.which("wrk"):
        progress("http: wrk not found (apt-get install wrk): skipped")
        report.add("http", "push rate", "skipped: no wrk", "", "", "", "")
        return
    workdir = ctx.workdir("http-")
    try:
        bases, hello_idle = measure_bare_app(ctx, workdir)
        got = measure_daemons(ctx)
    finally:
        tear_down(None, workdir)
    report_http(ctx, report, bases, hello_idle, got)


def peer_pair(ctx, got, path: str, fn) -> dict:
    """``peer_cells`` of a route's figure: ``fn(our median run, theirs)``, or n/a."""
    if len(ctx.sides) < 2:
        return {}
    ours, theirs = got["coyotes"]["runs"].get(path), got["peer"]["runs"].get(path)
    if not theirs:
        return peer_cells(("n/a", "n/a"))
    return peer_cells(fn(middle(ours), middle(theirs)))


def report_http(ctx, report: Report, bases: dict, hello_idle: dict, got: dict) -> None:
    d, base, fast = ctx.args.duration, bases["stock"], bases["nodelay"]
    ours = got["coyotes"]
    for path, name in ROUTES:
        if path not in ours["runs"]:
            report.add("http", f"{name}: not answered", "404", "", "", "", "")
            continue
        best = middle(ours["runs"][path])
        report.add("http", f"{name}, unique tasks, wrk -t2 -c20 -d{d}s (median of {ROUNDS})",
                   f"{best['rps']:.0f} req/s", f"{base['rps']:.0f} req/s",
                   ratio(best["rps"], base["rps"]), "wrk, same script, bare gevent.pywsgi app",
                   "≥ 4,000 req/s",
                   **peer_pair(ctx, got, path, lambda a, b: (f"{b['rps']:.0f} req/s",
                                                             ratio(a["rps"], b["rps"]))))
        report.add("http", "p99 latency of that run", ms(best["p99"]), ms(base["p99"]),
                   ratio(best["p99"], base["p99"]), "the same wrk run on the bare app",
                   "≤ 25 ms", **peer_pair(ctx, got, path, lambda a, b: (
                       ms(b["p99"]), ratio(a["p99"], b["p99"]))))
        if path == ROUTES[0][0]:
            report.add("http", "the same push rate against a bare app with TCP_NODELAY",
                       f"{best['rps']:.0f} req/s", f"{fast['rps']:.0f} req/s",
                       ratio(best["rps"], fast["rps"]),
                       "wrk, bare gevent.pywsgi app, TCP_NODELAY", "")
            report.add("http", "its p99 latency", ms(best["p99"]), ms(fast["p99"]),
                       ratio(best["p99"], fast["p99"]), "the same wrk run on that app", "")
    report_http_memory(ctx, report, hello_idle, got)
    report.details.append(http_details(ctx, bases, got))


def report_http_memory(ctx, report: Report, hello_idle: dict, got: dict) -> None:
    rss, idle = got["coyotes"]["rss"], hello_idle.get("VmRSS", 0)
    theirs = got["peer"]["rss"] if "peer" in got else None
    report.add("http", "daemon VmRSS before → after round 1 → 2 → 3",
               rss_trail(rss), f"{idle:.1f} MB", ratio(rss[-1].get("VmRSS", 0), idle),
               "bare app idle (same imports)",
               "flat across runs" + (" (flat)" if flat(rss) else " (growing)"),
               **peer_cells(theirs and (
                   rss_trail(theirs) + (" (flat)" if flat(theirs) else " (growing)"),
                   ratio(rss[-1].get("VmRSS", 0), theirs[-1].get("VmRSS", 0)))))


def http_details(ctx, bases: dict, got: dict) -> str:
    d, base, fast = ctx.args.duration, bases["stock"], bases["nodelay"]
    lines = [
        "### HTTP push", "",
        f"`wrk -t2 -c20 -d{d}s --latency -s post.lua`: each request a new command line "
        "(`task=true+<round>-<thread>-<n>`, form-encoded), against a `-task-mode=false` "
        "daemon, channel `bench` created with `distinct=false` so every push is queued; "
        f"{ROUNDS} rounds, each route in each round"
        + (", Coyotes and the peer taking turns (each on a Redis of its own)"
           if len(ctx.sides) > 1 else "")
        + f"; the rows give the run of median rate. Bare app: {base['rps']:.0f} req/s, p50 "
        f"{ms(base['p50'])}, p99 {ms(base['p99'])}; with TCP_NODELAY {fast['rps']:.0f} req/s, "
        f"p50 {ms(fast['p50'])}, p99 {ms(fast['p99'])}. gevent.pywsgi writes a reply's "
        "headers and body with two send calls: on a keep-alive connection (wrk's) the body "
        "then waits for the client's delayed ACK, about 40 ms, unless TCP_NODELAY is set.", "",
        "| Daemon | Route | Runs: req/s (p50, p99, non-2xx) | Median req/s | Queued after |",
        "|---|---|---|---:|---:|"]
    for name, figures in got.items():
        for path, label in ROUTES:
            runs = figures["runs"].get(path)
            if not runs:
                lines.append(f"| {name} | {label} | not answered (404) | n/a | |")
                continue
            each = "; ".join(f"{r['rps']:.0f} ({ms(r['p50'])}, {ms(r['p99'])}, {r['non2xx']}"
                             + (f", socket errors {r['errors']}" if r["errors"] else "") + ")"
                             for r in runs)
            lines.append(f"| {name} | {label} | {each} | {median([r['rps'] for r in runs]):.0f} "
                         f"| {figures['queued']:,} |")
    lines += ["", "Daemon VmRSS / VmHWM after the last round: " + "; ".join(
        f"{name} {f['rss'][-1].get('VmRSS', 0):.1f} / {f['rss'][-1].get('VmHWM', 0):.1f} MB"
        for name, f in got.items()) + "."]
    return "\n".join(lines)
