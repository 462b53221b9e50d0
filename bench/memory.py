"""Section ``memory``: the daemon's RSS idle, under load and with many channels,
against a bare gevent app with the same imports (bench/hello.py)."""

from __future__ import annotations

import contextlib
import time

from .context import progress, stop_process, tear_down, wait_until
from .measure import median, proc_status, timed_calls
from .push import start_hello
from .report import Report, ms, ratio
from .runs import daemon_run


def measure_floor(ctx, workdir) -> dict:
    """The floor: the same imports, nothing running."""
    hello, _port = start_hello(ctx, workdir)
    try:
        time.sleep(1)
        return proc_status(hello.pid)
    finally:
        stop_process(hello)


def measure_channels(ctx, workdir) -> dict:
    """A daemon idle, then with ``--channels`` channels made through POST /channels."""
    rds, channels = ctx.redis, ctx.args.channels
    rds.flush()
    daemon = ctx.daemon(workdir, ["-concurrent", "5"])
    try:
        time.sleep(3)
        m = {"idle": proc_status(daemon.pid),
             "clients0": rds.r.info("clients")["connected_clients"]}
        progress(f"memory: idle VmRSS {m['idle'].get('VmRSS', 0):.1f} MB; "
                 f"creating {channels} channels")
        t0 = time.perf_counter()
        m["refused"] = refused = []   # (channel number, reply): kept as a finding
        for i in range(channels):
            status, body = daemon.call("POST", "/channels", {"name": f"ch{i}"})
            if status != 200:
                refused.append((i, f"{status} {body[:160].decode(errors='replace')}"))
        m["created"] = time.perf_counter() - t0
        m["known"] = known = len(rds.r.hkeys("task:channels"))
        with contextlib.suppress(TimeoutError):
            wait_until(lambda: daemon.log().count("consuming with") >= known, 30, 0.2,
                       "the channels to be consumed")
        time.sleep(3)
        m["many"] = proc_status(daemon.pid)
        m["clients1"] = rds.r.info("clients")["connected_clients"]
        m["t_list"] = timed_calls(lambda: daemon.call("GET", "/channels"), 5)
        time.sleep(2)
        m["log_errors"] = [line for line in daemon.log().splitlines()
                           if "WARNING" in line or "ERROR" in line]
        if refused:
            progress(f"memory: {len(refused)} of {channels} POST /channels refused, first: "
                     f"#{refused[0][0]}: {refused[0][1]}")
        return m
    finally:
        daemon.stop(30)


def section_memory(ctx, report: Report) -> None:
    channels = ctx.args.channels
    workdir = ctx.workdir("memory-")
    try:
        floor = measure_floor(ctx, workdir)
        load = ctx.report.cache.get(("touch", 20))
        if load is None:
            n = min(ctx.args.tasks, 2000)
            progress(f"memory: load of {n} touch tasks at -concurrent 20")
            load = daemon_run(ctx, 20, n, "touch")
        m = measure_channels(ctx, workdir)
    finally:
        tear_down(None, workdir)
    fl, idle, many, known, refused = (floor.get("VmRSS", 0), m["idle"], m["many"], m["known"],
                                      m["refused"])
    report.add("memory", "VmRSS idle (-concurrent 5, 3 channels)", f"{idle.get('VmRSS', 0):.1f} MB",
               f"{fl:.1f} MB", ratio(idle.get("VmRSS", 0), fl),
               "bare gevent app with the same imports", "≤ 40 MB")
    report.add("memory", f"VmHWM under load ({load['n']} touch tasks, -concurrent 20)",
               f"{load['hwm']:.1f} MB", f"{fl:.1f} MB", ratio(load["hwm"], fl),
               "bare gevent app with the same imports", "")
    report.add("memory", f"VmRSS / VmHWM with {known} channels ({channels} asked for)",
               f"{many.get('VmRSS', 0):.1f} / {many.get('VmHWM', 0):.1f} MB", f"{fl:.1f} MB",
               ratio(many.get("VmRSS", 0), fl), "bare gevent app with the same imports", "")
    log_errors = m["log_errors"]
    report.details.append(
        "### Memory\n\n"
        f"Baseline: `bench/hello.py` idle (gevent, redis, bottle imported) VmRSS {fl:.1f} MB. "
        f"Daemon idle VmRSS {idle.get('VmRSS', 0):.1f} MB (VmHWM {idle.get('VmHWM', 0):.1f}). "
        f"Under load ({load['n']} tasks at -concurrent 20): VmHWM {load['hwm']:.1f} MB. "
        f"{channels} channels "
        f"asked for through POST /channels in {m['created']:.2f}s, {known} exist; Redis "
        f"connections {m['clients0']} → {m['clients1']} (bench's own included); GET /channels "
        f"with {known} channels: median {ms(median(m['t_list']))}."
        + (f" **{len(refused)} of {channels} POST /channels were refused**, the first at "
           f"channel #{refused[0][0]}: `{refused[0][1]}`." if refused else "")
        + (f" The daemon logged {len(log_errors)} warnings/errors meanwhile, e.g. "
           f"`{log_errors[0][:200]}`." if log_errors else ""))
    if refused:
        report.add("memory", "POST /channels refused while creating channels",
                   f"{len(refused)} of {channels}", "0", "", "", "")
