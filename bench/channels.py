"""Section ``channels``: many channels made over the HTTP API (nothing queued),
on Coyotes and on the peer: the time each creation takes, the daemon's idle CPU
and Redis connections with them, GET /channels, and how soon a task pushed to
a random one of them starts. A daemon that is slow at it is capped
(``--channels-cap`` seconds) and measured with what it reached."""

from __future__ import annotations

import http.client
import random
import shutil
import time

from .context import is_refusal, progress
from .latency import NotSeen, one_task
from .measure import Inotify, median, percentile, proc_cpu, timed_calls
from .report import Report, ms, peer_cells, ratio


def create_channels(ctx, side, daemon) -> dict:
    """POST /channels ``--many-channels`` times, one after the other, until done or
    ``--channels-cap`` seconds have gone -> the times and what was reached."""
    total, cap = ctx.args.many_channels, ctx.args.channels_cap
    times, refused, names = [], [], []
    start = last = time.monotonic()
    for i in range(total):
        left = cap - (time.monotonic() - start)
        if left <= 0:
            break
        t0 = time.perf_counter()
        try:
            status, body = daemon.call("POST", "/channels", {"name": f"ch{i}", "distinct": "true",
                                                             "worker": "1"},
                                       timeout=max(1.0, left))
        except (OSError, http.client.HTTPException) as exc:
            refused.append((i, f"no reply: {exc!r}"))
            break
        times.append(time.perf_counter() - t0)
        if is_refusal(status, body):
            refused.append((i, f"{status} {body[:160].decode(errors='replace')}"))
        else:
            names.append(f"ch{i}")
        if time.monotonic() - last >= 5:
            last = time.monotonic()
            progress(f"channels: {side.name}: {i + 1:,} of {total:,} in {last - start:.0f}s")
    elapsed = time.monotonic() - start
    progress(f"channels: {side.name}: {len(names):,} of {total:,} made in {elapsed:.1f}s"
             + (f", {len(refused)} refused" if refused else "")
             + (" (capped)" if len(times) < total else ""))
    return {"times": times, "names": names, "refused": refused, "elapsed": elapsed,
            "capped": len(times) < total}


def daemon_clients(rds) -> int:
    """Redis connections other than the bench's own."""
    return sum(1 for c in rds.r.client_list() if c.get("name") != "bench")


def idle_cpu(daemon, seconds: float) -> float:
    """% of one CPU the daemon used (its own, children aside) over ``seconds``."""
    cpu0, t0 = proc_cpu(daemon.pid)[0], time.monotonic()
    time.sleep(seconds)
    return 100 * (proc_cpu(daemon.pid)[0] - cpu0) / (time.monotonic() - t0)


def push_to_start(ctx, side, names: list[str], files, watcher: Inotify) -> dict:
    """A `touch` task at a time to a random channel of ``names`` through the
    prepare queue -> seconds until each file appeared, and the tasks that never ran."""
    count, rng, out, missed = max(10, ctx.args.samples // 4), random.Random(7), [], 0
    deadline = time.monotonic() + ctx.args.channels_cap
    for i in range(count if names else 0):
        if time.monotonic() > deadline:
            break
        try:
            out.append(one_task(side, files, watcher, f"{side.name}-{i}", rng.choice(names)))
        except NotSeen:
            missed += 1
            continue
        time.sleep(0.02)
    return {"times": out, "missed": missed, "asked": count}


def measure_side(ctx, side) -> dict:
    side.redis.flush()
    workdir = ctx.workdir(f"channels-{side.name}-")
    files = workdir / "files"
    files.mkdir()
    watcher = Inotify(files)
    daemon = side.start(workdir, ["-concurrent", "1"])
    try:
        m = create_channels(ctx, side, daemon)
        time.sleep(1 if ctx.args.quick else 3)   # the last channels start consuming
        window = 3 if ctx.args.quick else 10
        progress(f"channels: {side.name}: idle CPU over {window}s")
        m["cpu"], m["window"] = idle_cpu(daemon, window), window
        m["clients"] = daemon_clients(side.redis)
        progress(f"channels: {side.name}: GET /channels; tasks to random channels")
        m["list"] = timed_calls(lambda: daemon.call("GET", "/channels", timeout=120), 3)
        m["push"] = push_to_start(ctx, side, m["names"], files, watcher)
        return m
    finally:
        watcher.close()
        daemon.stop(30)
        side.redis.flush()
        shutil.rmtree(workdir, ignore_errors=True)


def section_channels(ctx, report: Report) -> None:
    got = {side.name: measure_side(ctx, side) for side in ctx.sides}
    total, cap = ctx.args.many_channels, ctx.args.channels_cap
    ours, theirs = got["coyotes"], got.get("peer")
    figures = (
        ((f"POST /channels: time per creation, median ({total:,} asked for, cap {cap:.0f}s; "
         "made in the cell)"), lambda m: f"{ms(median(m['times']))} ({len(m['names']):,} made)",
         lambda m: median(m["times"])),
        ("POST /channels: time per creation, p99", lambda m: ms(percentile(m["times"], 99)),
         lambda m: percentile(m["times"], 99)),
        ("idle daemon CPU with them, % of one CPU (over 10 s; 3 s with --quick)",
         lambda m: f"{m['cpu']:.1f} %", lambda m: m["cpu"]),
        ("Redis connections of the daemon with them (CLIENT LIST)",
         lambda m: f"{m['clients']:,}", lambda m: m["clients"]),
        ("GET /channels with them (median of 3)", lambda m: ms(median(m["list"])),
         lambda m: median(m["list"])),
        ("push-to-start p99: a `touch` task to a random channel, LPUSH → file created",
         lambda m: ms(percentile(m["push"]["times"], 99)) + (
             f" ({m['push']['missed']} never ran)" if m["push"]["missed"] else ""),
         lambda m: percentile(m["push"]["times"], 99)),
    )
    for measure, show, value in figures:
        report.add("channels", measure, show(ours), "", "", "", "",
                   **peer_cells(theirs and (show(theirs), ratio(value(ours), value(theirs)))))
    report.details.append(channels_details(ctx, got))


def channels_details(ctx, got: dict) -> str:
    lines = ["### Many channels", "",
             (f"{ctx.args.many_channels:,} channels asked for, one `POST /channels` after the "
              "other (`distinct=true`, `worker=1`, nothing queued), on a fresh daemon "
              f"(`-concurrent 1`), for at most {ctx.args.channels_cap:.0f}s: a daemon that is "
              "slower is measured with the channels it made by then. Then its own CPU while "
              "idle, its Redis connections (CLIENT LIST less the bench's), GET /channels, "
              "and `touch` tasks pushed one at a time through `task:prepare:queue` to random "
              "channels among those made (inotify sees the file)."
              + (" Coyotes first, then the peer, each on a Redis of its own."
                 if len(got) > 1 else "")), "",
             ("| Daemon | Made | In | Creation p50 / p99 / max | Refused | Idle CPU | "
              "Redis connections | GET /channels | Push-to-start p50 / p99 (samples) |"),
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, m in got.items():
        t, p = m["times"], m["push"]["times"]
        lines.append(
            f"| {name} | {len(m['names']):,}{' (capped)' if m['capped'] else ''} | "
            f"{m['elapsed']:.1f}s | {ms(median(t))} / {ms(percentile(t, 99))} / "
            f"{ms(max(t) if t else float('nan'))} | {len(m['refused'])} | {m['cpu']:.1f} % | "
            f"{m['clients']:,} | {ms(median(m['list']))} | {ms(percentile(p, 50))} / "
            f"{ms(percentile(p, 99))} ({len(p)} of {m['push']['asked']}) |")
    for name, m in got.items():
        if m["refused"]:
            lines += ["", (f"{name}: {len(m['refused'])} refused, the first at channel "
                      f"#{m['refused'][0][0]}: `{m['refused'][0][1]}`.")]
    return "\n".join(lines)
