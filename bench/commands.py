"""Section ``commands``: Redis commands per task (INFO commandstats) and round
trips per task (MONITOR, the commands run by scripts told apart), against the
producer's one LPUSH."""

from __future__ import annotations

import re
import shutil
import socket
import threading
import time

from .context import progress, wait_until
from .report import Report
from .runs import daemon_run, push_tasks, settled


def monitor_run(ctx, n: int) -> dict:
    """n tasks at -concurrent 5 under MONITOR: the daemon's commands, split into those
    it sent (round trips, pipelines aside) and those its scripts ran."""
    rds = ctx.redis
    rds.flush()
    workdir = ctx.workdir("monitor-")
    daemon = ctx.daemon(workdir, ["-concurrent", "5"])
    lines: list[str] = []
    stop = threading.Event()
    sock = socket.create_connection(("127.0.0.1", rds.port))
    sock.settimeout(0.2)
    sock.sendall(b"MONITOR\r\n")

    def reader():
        buf = b""
        while not stop.is_set():
            try:
                data = sock.recv(1 << 16)
            except TimeoutError:
                continue
            except OSError:
                return
            if not data:
                return
            buf += data
            *done, buf = buf.split(b"\r\n")
            lines.extend(x.decode(errors="replace") for x in done)

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    try:
        wait_until(lambda: "+OK" in lines, 5, 0.01, "MONITOR to start")
        ours = {c["addr"] for c in rds.r.client_list() if c.get("name") == "bench"}
        t0 = time.perf_counter()
        push_tasks(rds.r, [f"true {i}" for i in range(n)])
        wait_until(lambda: settled(rds.r), max(60, n / 10), 0.01, "the tasks")
        elapsed = time.perf_counter() - t0
        time.sleep(0.3)
        ours |= {c["addr"] for c in rds.r.client_list() if c.get("name") == "bench"}
    finally:
        stop.set()
        thread.join(2)
        sock.close()
        daemon.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    sent, scripted = {}, {}
    pattern = re.compile(r'^\+?[\d.]+ \[\d+ ([^\]]+)\] "([^"]+)"')
    for line in lines:
        m = pattern.match(line)
        if not m or m.group(1) in ours:
            continue
        bucket = scripted if m.group(1) == "lua" else sent
        name = m.group(2).upper()
        bucket[name] = bucket.get(name, 0) + 1
    return {"n": n, "sent": sent, "scripted": scripted, "elapsed": elapsed}


def section_commands(ctx, report: Report) -> None:
    run = ctx.report.cache.get(("touch", 5))
    if run is None:
        n = min(ctx.args.tasks, 2000)
        progress(f"commands: {n} touch tasks at -concurrent 5 (INFO commandstats deltas)")
        run = daemon_run(ctx, 5, n, "touch")
    n = run["n"]
    stats = {k.removeprefix("cmdstat_"): v for k, v in run["commandstats"].items() if v > 0}
    total = sum(stats.values())
    top = sorted(stats.items(), key=lambda kv: -kv[1])[:10]
    m_n = ctx.args.monitor_tasks
    progress(f"commands: {m_n} `true` tasks under MONITOR")
    mon = monitor_run(ctx, m_n)
    sent, scripted = sum(mon["sent"].values()), sum(mon["scripted"].values())
    report.add("commands", f"Redis commands per task, scripts' inner calls included "
               f"(INFO commandstats, N={n})", f"{total / n:.1f}", "1", f"{total / n:.1f}x",
               "the producer's one LPUSH", "")
    report.add("commands", f"round trips per task (commands the daemon sent, MONITOR, "
               f"N={m_n})", f"{sent / m_n:.1f}", "1", f"{sent / m_n:.1f}x",
               "the producer's one LPUSH", "≤ 8")
    lines = ["### Redis commands per task", "",
             (f"INFO commandstats deltas around the `-concurrent 5` touch run (N={n}), less the "
             "bench's own LPUSH/LLEN/INFO; idle loops (1 s blocking moves, heartbeat) "
             "included. Commands run inside Lua scripts are counted by Redis as well as the "
             "EVALSHA itself."), "",
             "| Command | calls | per task |", "|---|---:|---:|"]
    lines += [f"| {name} | {calls} | {calls / n:.2f} |" for name, calls in top]
    lines += ["", (f"MONITOR over {m_n} `true` tasks ({mon['elapsed']:.2f}s): the daemon sent "
              f"{sent} commands ({sent / m_n:.2f} per task; a pipeline's commands count "
              f"one each), its scripts ran {scripted} ({scripted / m_n:.2f} per task)."), "",
              "| Sent by the daemon | per task |", "|---|---:|"]
    lines += [f"| {name} | {calls / m_n:.2f} |"
              for name, calls in sorted(mon["sent"].items(), key=lambda kv: -kv[1])]
    lines += ["", "| Run by its scripts | per task |", "|---|---:|"]
    lines += [f"| {name} | {calls / m_n:.2f} |"
              for name, calls in sorted(mon["scripted"].items(), key=lambda kv: -kv[1])[:12]]
    report.details.append("\n".join(lines))

