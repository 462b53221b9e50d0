#!/usr/bin/env python3
"""Coyotes benchmark suite (`make bench`): every figure against a baseline of the same run.

It starts its own redis-server on a free port (never the shared 6379) and the
daemon (coyotes.py) as real processes, measures, and prints a Markdown table
in which each figure stands next to a baseline measured in the same run on
the same machine, with their ratio (this 2-core machine is noisy, so only
the ratios travel). The full report goes to docs/BENCHMARKS.md and the plot
of throughput against concurrency to docs/throughput.png (to .bench/ for a
--quick or --only run, so that a smoke run never overwrites the real one).

Sections (``--only NAME[,NAME]``):
  throughput  N unique `touch DIR/<i>` tasks through task:prepare:queue at each
              concurrency, against `seq N | xargs -P C -I{} touch DIR/{}`; the
              same with `true`
  latency     LPUSH -> the task's file appears (inotify), one task at a time on
              an idle daemon, against subprocess.Popen of the same command
  http        wrk POST /channels/bench/tasks on a -task-mode=false daemon,
              against a trivial gevent.pywsgi app; RSS across two runs
  status      status and listing calls with 1,000,000 queued, failed and
              delayed tasks, against redis-py LRANGE 0 99 (and PING)
  memory      RSS idle, under load, with 200 channels
  commands    Redis commands per task (INFO commandstats) and round trips per
              task (MONITOR, commands run by scripts told apart)

Progress goes to stderr, the table to stdout.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import ctypes
import datetime
import http.client
import json
import os
import platform
import re
import resource
import select
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "coyotes.py"
HELLO = Path(__file__).resolve().parent / "hello.py"
NODE = "bench"
PREPARE = "task:prepare:queue"
SETTLE_POLL = 0.05     # s between looks for the end of a throughput run
T_START = time.monotonic()


def progress(message: str) -> None:
    print(f"[bench {time.monotonic() - T_START:6.1f}s] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:   # not ready yet
            last = exc
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}"
                       + (f" (last error: {last!r})" if last else ""))


def proc_status(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM of a process, in MB."""
    out = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) / 1024
    return out


def proc_cpu(pid: int) -> tuple[float, float]:
    """(CPU seconds of the process, of its children it has waited for) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tick, (int(fields[13]) + int(fields[14])) / tick


def rusage_cpu(*who: int) -> float:
    """CPU seconds (user and system) so far of ``resource.RUSAGE_*`` ``who``, summed."""
    return sum(u.ru_utime + u.ru_stime for u in map(resource.getrusage, who))


def median(values):
    return statistics.median(values) if values else float("nan")


def percentile(values, p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


# -- processes -----------------------------------------------------------------
class Processes:
    """Every process we start, ended in ``close`` whatever happened."""

    def __init__(self):
        self.procs: list[subprocess.Popen] = []

    def start(self, argv, **popen) -> subprocess.Popen:
        proc = subprocess.Popen(argv, **popen)
        self.procs.append(proc)
        return proc

    @staticmethod
    def stop(proc: subprocess.Popen, timeout: float = 15) -> None:
        if proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def close(self) -> None:
        for proc in reversed(self.procs):
            with contextlib.suppress(Exception):
                self.stop(proc, 10)


class RedisServer:
    def __init__(self, procs: Processes, workdir: Path):
        self.port = free_port()
        self.dir = workdir
        self.proc = procs.start(
            [shutil.which("redis-server") or "redis-server", "--port", str(self.port),
             "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir),
             "--logfile", str(workdir / "redis.log"), "--maxclients", "10000"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.client = redis.Redis(port=self.port, decode_responses=True, socket_timeout=60,
                                  client_name="bench")
        wait_until(self.client.ping, 10, "redis-server to answer")

    def flush(self) -> None:
        self.client.flushall()


class Daemon:
    """coyotes.py as a real process against our redis, logging to a file."""

    def __init__(self, procs: Processes, rds: RedisServer, workdir: Path, args=(),
                 extra=()):
        self.http_port = free_port()
        self.log_path = workdir / f"coyotes-{self.http_port}.log"
        self.procs = procs
        argv = [sys.executable, str(SCRIPT), "-redis-host", f"127.0.0.1:{rds.port}",
                "-http-addr", f"127.0.0.1:{self.http_port}",
                "-pidfile", str(workdir / f"coyotes-{self.http_port}.pid"),
                "-node-id", NODE, *args, *extra]
        self.log_file = open(self.log_path, "ab")
        self.proc = procs.start(argv, stdout=self.log_file, stderr=subprocess.STDOUT,
                                cwd=workdir)
        self.pid = self.proc.pid

        def ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"coyotes exited {self.proc.returncode}:\n{self.log()[-2000:]}")
            text = self.log()
            return ("coyotes ready" in text or "task mode off" in text) and self.get("/")[0] == 200
        wait_until(ready, 30, "coyotes to be ready", 0.1)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def request(self, method: str, path: str, form: dict | None = None):
        conn = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=120)
        try:
            body = urllib.parse.urlencode(form).encode() if form is not None else None
            headers = {"Content-Type": "application/x-www-form-urlencoded"} if form else {}
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def get(self, path: str):
        return self.request("GET", path)

    def rss(self) -> dict[str, float]:
        return proc_status(self.pid)

    def stop(self) -> None:
        try:
            Processes.stop(self.proc, 30)
        finally:
            self.log_file.close()


# -- inotify (ctypes, no dependency): when did a file appear, without polling ---
IN_CREATE, IN_Q_OVERFLOW = 0x100, 0x4000
_libc = ctypes.CDLL(None, use_errno=True)


class Inotify:
    def __init__(self, directory: Path):
        self.fd = _libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        if _libc.inotify_add_watch(self.fd, str(directory).encode(), IN_CREATE) < 0:
            os.close(self.fd)
            raise OSError(ctypes.get_errno(), "inotify_add_watch")
        self.overflow = False

    def read(self, timeout: float) -> list[str]:
        """Names created since the last call (waits up to ``timeout`` for the first)."""
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return []
        try:
            data = os.read(self.fd, 1 << 16)
        except BlockingIOError:
            return []
        names, pos = [], 0
        while pos + 16 <= len(data):
            _wd, mask, _cookie, length = struct.unpack_from("iIII", data, pos)
            name = data[pos + 16:pos + 16 + length].rstrip(b"\0").decode()
            pos += 16 + length
            if mask & IN_Q_OVERFLOW:
                self.overflow = True
            elif mask & IN_CREATE:
                names.append(name)
        return names

    def close(self) -> None:
        os.close(self.fd)


# -- results -----------------------------------------------------------------
class Report:
    def __init__(self):
        # section, measure, ours, baseline, ratio, what the baseline is, target
        self.rows: list[tuple] = []
        self.details: list[str] = []     # Markdown blocks after the table
        self.curve: dict[str, dict[int, float]] = {}   # label -> {concurrency: tasks/s}
        self.cache: dict = {}

    def add(self, section, measure, ours, baseline, ratio, base_label, target=""):
        self.rows.append((section, measure, ours, baseline, ratio, base_label, target))

    def table(self) -> str:
        out = [("| Section | Measure | Coyotes | Baseline (same run) | Ratio | Baseline is "
               "| Issue target |"),
               "|---|---|---:|---:|---:|---|---|"]
        for row in self.rows:
            out.append("| " + " | ".join(str(c) for c in row) + " |")
        return "\n".join(out)


def tear_down(daemon, hello, workdir) -> None:
    """End a section: stop its daemon and baseline app, remove its files."""
    if daemon:
        daemon.stop()
    if hello:
        Processes.stop(hello)
    shutil.rmtree(workdir, ignore_errors=True)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "n/a"


# -- throughput ------------------------------------------------------------------
def settled(client: redis.Redis, chan: str = "default") -> bool:
    """Every pushed task recorded: nothing left in any list a task passes through."""
    with client.pipeline(transaction=False) as pipe:
        pipe.llen(PREPARE)
        pipe.llen(f"task:node:{NODE}:prepare")
        pipe.llen(f"{chan}:tasks:queue")
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


def push_tasks(client: redis.Redis, commands: list[str]) -> None:
    now = int(time.time())
    with client.pipeline(transaction=False) as pipe:
        for command in commands:
            pipe.lpush(PREPARE, json.dumps({"task": command, "chan": "default", "ts": now}))
        pipe.execute()


def daemon_run(ctx, concurrency: int, n: int, command: str, extra: tuple = ()) -> dict:
    """A fresh daemon with -concurrent C (and ``extra`` flags); N tasks pushed at once;
    timed until recorded.

    The bench keeps off the CPU meanwhile, as it does while xargs runs: it looks
    for the end only every ``SETTLE_POLL`` seconds, and reads the times afterwards
    from what the run left (the records' ``finished_at``, the files' mtime). A
    watch of every file and RSS samples cost it 0.1 to 0.2 ms of CPU per task,
    taken from the daemon on these 2 CPUs and not from xargs."""
    rds, tmp = ctx.redis, ctx.tmp
    rds.flush()
    workdir = Path(tempfile.mkdtemp(prefix=f"tp{concurrency}-", dir=tmp))
    files = workdir / "files"
    files.mkdir()
    daemon = Daemon(ctx.procs, rds, workdir, ["-concurrent", str(concurrency), *extra],
                    ctx.daemon_args)
    try:
        idle = daemon.rss()
        # unique command lines: the default channel is distinct (a repeated line is refused)
        cmds = [f"touch {files}/{i}" if command == "touch" else f"true {i}" for i in range(n)]
        before = commandstats(rds.client)
        cpu0, redis0 = proc_cpu(daemon.pid), proc_cpu(rds.proc.pid)[0]
        timeout = max(60.0, n / 20)
        polls = 0
        t0 = time.time()   # wall clock: Redis TIME and file times are read against it
        push_tasks(rds.client, cmds)
        deadline = time.monotonic() + timeout
        while True:
            polls += 1
            if settled(rds.client):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"tasks not all recorded after {timeout:.0f}s")
            time.sleep(SETTLE_POLL)
        cpu1, redis1 = proc_cpu(daemon.pid), proc_cpu(rds.proc.pid)[0]
        after = commandstats(rds.client)   # before the reads below add their own
        t_done = last_finished(rds.client) - t0
        t_files = None
        if command == "touch":
            names = os.listdir(files)
            if len(names) != n:
                raise RuntimeError(f"{len(names)} files of {n}")
            # file times come from a coarse clock (a tick behind): never before the push
            t_files = max(max(os.stat(files / name).st_mtime for name in names) - t0, 1e-3)
        status = daemon.rss()
        ok = sum(1 for line in daemon.log().splitlines() if " exited 0 in " in line)
        delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
        # our own commands: the pushes and the settled() polls (4 LLEN each)
        delta["cmdstat_lpush"] = delta.get("cmdstat_lpush", 0) - n
        delta["cmdstat_llen"] = delta.get("cmdstat_llen", 0) - 4 * polls
        delta["cmdstat_info"] = delta.get("cmdstat_info", 0) - 1
        return {"n": n, "concurrency": concurrency, "t_files": t_files, "t_done": t_done,
                "rate": n / t_done, "rate_files": n / t_files if t_files else None,
                "ok_lines": ok, "idle": idle, "hwm": status.get("VmHWM", 0), "commandstats": delta,
                # CPU ms per task: the daemon itself, the commands it ran, redis-server
                "cpu": {"daemon": 1000 * (cpu1[0] - cpu0[0]) / n,
                        "commands": 1000 * (cpu1[1] - cpu0[1]) / n,
                        "redis": 1000 * (redis1 - redis0) / n}}
    finally:
        daemon.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def xargs_run(ctx, concurrency: int, n: int, command: str) -> tuple[float, float]:
    """(tasks/s, CPU ms per task of xargs and the commands it ran)."""
    workdir = Path(tempfile.mkdtemp(prefix=f"xargs{concurrency}-", dir=ctx.tmp))
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


def cpu_ceiling(run: dict, xargs_cpu: float) -> float:
    """The best ratio to xargs that this CPU allows, if both are CPU-bound: what a
    task costs xargs (its commands included) over what it costs here (the daemon,
    its commands and redis-server together)."""
    ours = sum(run["cpu"].values())
    return xargs_cpu / ours if ours else float("nan")


def paired_runs(ctx, c: int, n: int, command: str, pairs: int) -> list[tuple]:
    """``pairs`` rounds of xargs and the daemon on the same commands, the order
    switched each round so that a drift of the machine weighs on both sides
    -> [(daemon run, xargs rate, xargs CPU ms/task)], by ratio."""
    rounds = []
    for i in range(pairs):
        label = f"round {i + 1} of {pairs}: " if pairs > 1 else ""
        for side in (("xargs", "daemon") if i % 2 == 0 else ("daemon", "xargs")):
            if side == "xargs":
                progress(f"throughput: {label}xargs -P {c} {command} x{n}")
                xr, xcpu = xargs_run(ctx, c, n, command)
            else:
                progress(f"throughput: {label}daemon -concurrent {c}, {n} {command} tasks")
                run = daemon_run(ctx, c, n, command)
        files = f" (files {run['rate_files']:.0f}/s)" if run["rate_files"] else ""
        progress(f"throughput: c={c} {command}: daemon {run['rate']:.0f}/s{files}, "
                 f"xargs {xr:.0f}/s, ratio {run['rate'] / xr:.2f}")
        rounds.append((run, xr, xcpu))
    return sorted(rounds, key=lambda r: r[0]["rate"] / r[1])


def section_throughput(ctx, report: Report) -> None:
    n, pairs = ctx.args.tasks, ctx.args.pairs
    levels = sorted(set(ctx.levels) | {5, 20})
    rows, spread = [], {}
    for c in levels:
        # the targets (touch at 5 and 20) are the median of alternated pairs
        rounds = paired_runs(ctx, c, n, "touch", pairs if c in (5, 20) else 1)
        run, xr, xcpu = rounds[len(rounds) // 2]
        spread[c] = [r[0]["rate"] / r[1] for r in rounds]
        report.curve.setdefault("coyotes (touch, until recorded)", {})[c] = run["rate"]
        report.curve.setdefault("xargs -P (touch)", {})[c] = xr
        report.cache[("touch", c)] = run
        rows.append((c, "touch", run, xr, xcpu))
    for c in (5, 20):
        run, xr, xcpu = paired_runs(ctx, c, n, "true", 1)[0]
        report.cache[("true", c)] = run
        rows.append((c, "true", run, xr, xcpu))
    # the other runner, on the same commands: it forks the daemon for each one
    progress(f"throughput: daemon -concurrent 5 -runner subprocess, {n} true tasks")
    fork = daemon_run(ctx, 5, n, "true", extra=("-runner", "subprocess"))
    rows.append((5, "true", fork, report.cache[("true", 5)]["rate"], None))
    for c, command, run, xr, xcpu in rows:
        if run is fork:
            report.add("throughput", f"`true` tasks/s, concurrency 5, `-runner subprocess` "
                       f"(N={n})", f"{run['rate']:.0f}/s", f"{xr:.0f}/s", ratio(run["rate"], xr),
                       "the default runner (`spawn`), same tasks", "")
        elif c in (5, 20):
            ratios = spread[c] if command == "touch" else []
            how = (f", median of {len(ratios)} pairs: {' / '.join(f'{r:.2f}' for r in ratios)}"
                   if len(ratios) > 1 else "")
            report.add("throughput", f"`{command}` tasks/s, concurrency {c} (N={n}{how})",
                       f"{run['rate']:.0f}/s", f"{xr:.0f}/s", ratio(run["rate"], xr),
                       f"`seq N \\| xargs -P {c} -I{{}} {command} ...`", "≥ 0.85x")
            cpu = run["cpu"]
            report.add("throughput", f"CPU ms per `{command}` task, concurrency {c}: "
                       "daemon + its commands + redis-server",
                       f"{cpu['daemon']:.3f} + {cpu['commands']:.3f} + {cpu['redis']:.3f}",
                       f"{xcpu:.3f}", ratio(sum(cpu.values()), xcpu),
                       "xargs and its commands (getrusage)",
                       f"ceiling {cpu_ceiling(run, xcpu):.2f}x")
    lines = ["### Throughput by concurrency", "",
             (f"N = {n} tasks pushed at once (one pipeline of LPUSH) to `task:prepare:queue`; a "
             "fresh daemon with `-concurrent C` for each row. The `touch` rows at concurrency "
             f"5 and 20 are the median (by ratio) of {pairs} rounds of xargs and the daemon, "
             "the order switched each round; the others are one round. *files* stops the clock"
             " at the newest file's mtime, *recorded* at the newest task record's "
             "`finished_at` (set by the FINISH script); both are read once the queues are "
             f"empty, which the bench checks every {SETTLE_POLL * 1000:.0f} ms and otherwise "
             "keeps off the CPU, as it does while xargs runs. CPU is per task, in ms, from "
             "`/proc/PID/stat` over the run: the daemon's own, that of the commands it ran "
             "(its waited-for children), and redis-server's; xargs's (with `seq`, the shell "
             "and the commands) from `getrusage(RUSAGE_CHILDREN)`. *Ceiling* is the ratio that"
             " the CPU allows when both sides are CPU-bound: xargs's CPU per task over ours "
             "(daemon, commands and Redis together)."), "",
             ("| Command | C | Coyotes files/s | Coyotes recorded/s | xargs -P C /s | Ratio "
             "(recorded) | CPU ms/task: daemon / commands / redis | xargs CPU ms/task | "
             "Ceiling | Daemon VmHWM |"),
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for c, command, run, xr, xcpu in rows:
        if run is fork:
            continue   # in the table above, against the spawn runner
        files = f"{run['rate_files']:.0f}" if run["rate_files"] else "-"
        cpu = run["cpu"]
        lines.append(f"| `{command}` | {c} | {files} | {run['rate']:.0f} | {xr:.0f} | "
                     f"{run['rate'] / xr:.2f}x | {cpu['daemon']:.3f} / {cpu['commands']:.3f} / "
                     f"{cpu['redis']:.3f} | {xcpu:.3f} | {cpu_ceiling(run, xcpu):.2f}x | "
                     f"{run['hwm']:.1f} MB |")
    report.details.append("\n".join(lines))


# -- dispatch latency ------------------------------------------------------------
def section_latency(ctx, report: Report) -> None:
    samples = ctx.args.samples
    rds = ctx.redis
    rds.flush()
    workdir = Path(tempfile.mkdtemp(prefix="latency-", dir=ctx.tmp))
    files = workdir / "files"
    files.mkdir()
    watcher = Inotify(files)
    daemon = Daemon(ctx.procs, rds, workdir, ["-concurrent", "5"], ctx.daemon_args)
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
            rds.client.lpush(PREPARE, entry)
            elapsed = wait_name(name, t0)
            if i >= warm:
                ours.append(elapsed)
            wait_until(lambda: settled(rds.client), 10, "the task to be recorded", 0.002)
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


# -- HTTP push -------------------------------------------------------------------
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


def section_http(ctx, report: Report) -> None:
    if not shutil.which("wrk"):
        progress("http: wrk not found (apt-get install wrk): skipped")
        report.add("http", "push rate", "skipped: no wrk", "", "", "", "")
        return
    d = ctx.args.duration
    rds = ctx.redis
    rds.flush()
    workdir = Path(tempfile.mkdtemp(prefix="http-", dir=ctx.tmp))
    daemon = hello = None
    try:
        bases = {}
        for variant in ("stock", "nodelay"):
            port = free_port()
            hello = ctx.procs.start([sys.executable, str(HELLO), str(port),
                                     *(["--nodelay"] if variant == "nodelay" else [])],
                                    cwd=workdir)
            wait_until(lambda p=port: socket.create_connection(("127.0.0.1", p), 1).close()
                       or True, 20, "the hello app")
            time.sleep(0.5)
            hello_idle = proc_status(hello.pid)
            progress(f"http: wrk -t2 -c20 -d{d}s against the bare gevent.pywsgi app ({variant})")
            bases[variant] = wrk(ctx, f"http://127.0.0.1:{port}/channels/bench/tasks", d)
            progress(f"http: bare app ({variant}): {bases[variant]['rps']:.0f} req/s, "
                     f"p99 {ms(bases[variant]['p99'])}")
            Processes.stop(hello)
        base, fast = bases["stock"], bases["nodelay"]
        daemon = Daemon(ctx.procs, rds, workdir, ["-task-mode=false"], ctx.daemon_args)
        status, body = daemon.request("POST", "/channels", {"name": "bench", "distinct": "false",
                                                            "worker": "1000"})
        if status != 200:
            raise RuntimeError(f"POST /channels: {status} {body[:200]!r}")
        time.sleep(0.5)
        rss0 = daemon.rss()
        url = f"http://127.0.0.1:{daemon.http_port}/channels/bench/tasks"
        runs = []
        for k in (1, 2):
            progress(f"http: wrk -t2 -c20 -d{d}s POST /channels/bench/tasks, run {k} of 2")
            runs.append(wrk(ctx, url, d))
            runs[-1]["rss"] = daemon.rss()
            progress(f"http: run {k}: {runs[-1]['rps']:.0f} req/s, p99 {ms(runs[-1]['p99'])}, "
                     f"non-2xx {runs[-1]['non2xx']}, RSS {runs[-1]['rss'].get('VmRSS', 0):.1f} MB")
        queued = rds.client.llen("bench:tasks:queue")
    finally:
        tear_down(daemon, hello, workdir)
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


# -- status and listings with a million queued -------------------------------------
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


def timed_calls(fn, count: int = 20) -> list[float]:
    fn()   # warm-up
    out = []
    for _ in range(count):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def section_status(ctx, report: Report) -> None:
    n = ctx.args.fill
    rds = ctx.redis
    rds.flush()
    workdir = Path(tempfile.mkdtemp(prefix="status-", dir=ctx.tmp))
    daemon = None
    try:
        daemon = Daemon(ctx.procs, rds, workdir, ["-task-mode=false"], ctx.daemon_args)
        progress(f"status: filling {n:,} queued, {n:,} failed and {n:,} delayed tasks")
        t0 = time.perf_counter()
        record_id = fill(rds.client, n)
        progress(f"status: filled in {time.perf_counter() - t0:.1f}s; "
                 f"redis used_memory {rds.client.info('memory')['used_memory_human']}")
        def call(path: str, conn=None):
            """GET on a fresh connection (as curl does), or on ``conn`` (keep-alive)."""
            def fn():
                c = conn or http.client.HTTPConnection("127.0.0.1", daemon.http_port,
                                                       timeout=120)
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

        before = daemon.rss()
        ping = timed_calls(rds.client.ping)
        lrange = timed_calls(lambda: rds.client.lrange("default:tasks:queue", 0, 99))
        base = median(lrange)
        results = []
        for path, what in (("/channels/default", "GET /channels/default"),
                           ("/channels", "GET /channels"),
                           ("/channels/default/failed-tasks", "GET /channels/default/failed-tasks"),
                           ("/delay-tasks", "GET /delay-tasks"),
                           (f"/tasks/{record_id}", "GET /tasks/{id}")):
            progress(f"status: {what} x20")
            body = call(path)()
            times = timed_calls(call(path))
            results.append((what, times, len(body)))
        conn = http.client.HTTPConnection("127.0.0.1", daemon.http_port, timeout=120)
        keepalive = timed_calls(call(f"/tasks/{record_id}", conn))
        conn.close()
        after = daemon.rss()
    finally:
        if daemon:
            daemon.stop()
        rds.flush()
        shutil.rmtree(workdir, ignore_errors=True)
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
             f"{ms(median(keepalive))} (see the HTTP push notes on delayed ACKs)."), "",
             "| Call | median | min | max | reply bytes | ratio to PING |",
             "|---|---:|---:|---:|---:|---:|"]
    for what, times, size in results:
        lines.append(f"| {what} | {ms(median(times))} | {ms(min(times))} | {ms(max(times))} | "
                     f"{size:,} | {ratio(median(times), median(ping))} |")
    report.details.append("\n".join(lines))


# -- memory ----------------------------------------------------------------------
def section_memory(ctx, report: Report) -> None:
    rds = ctx.redis
    channels = ctx.args.channels
    # the floor: the same imports, nothing running
    workdir = Path(tempfile.mkdtemp(prefix="memory-", dir=ctx.tmp))
    daemon = hello = None
    try:
        port = free_port()
        hello = ctx.procs.start([sys.executable, str(HELLO), str(port)], cwd=workdir)
        wait_until(lambda: socket.create_connection(("127.0.0.1", port), 1).close() or True,
                   20, "the hello app")
        time.sleep(1)
        floor = proc_status(hello.pid)
        Processes.stop(hello)
        load = ctx.report.cache.get(("touch", 20))
        if load is None:
            n = min(ctx.args.tasks, 2000)
            progress(f"memory: load of {n} touch tasks at -concurrent 20")
            load = daemon_run(ctx, 20, n, "touch")
        rds.flush()
        daemon = Daemon(ctx.procs, rds, workdir, ["-concurrent", "5"], ctx.daemon_args)
        time.sleep(3)
        idle = daemon.rss()
        clients0 = rds.client.info("clients")["connected_clients"]
        progress(f"memory: idle VmRSS {idle.get('VmRSS', 0):.1f} MB; creating {channels} channels")
        t0 = time.perf_counter()
        refused: list[tuple[int, str]] = []   # (channel number, reply): kept as a finding
        for i in range(channels):
            status, body = daemon.request("POST", "/channels", {"name": f"ch{i}"})
            if status != 200:
                refused.append((i, f"{status} {body[:160].decode(errors='replace')}"))
        created = time.perf_counter() - t0
        known = len(rds.client.hkeys("task:channels"))
        with contextlib.suppress(TimeoutError):
            wait_until(lambda: daemon.log().count("consuming with") >= known, 30,
                       "the channels to be consumed", 0.2)
        time.sleep(3)
        many = daemon.rss()
        clients1 = rds.client.info("clients")["connected_clients"]
        t_list = timed_calls(lambda: daemon.get("/channels"), 5)
        time.sleep(2)
        log_errors = [line for line in daemon.log().splitlines()
                      if "WARNING" in line or "ERROR" in line]
        if refused:
            progress(f"memory: {len(refused)} of {channels} POST /channels refused, first: "
                     f"#{refused[0][0]}: {refused[0][1]}")
    finally:
        tear_down(daemon, hello, workdir)
    fl = floor.get("VmRSS", 0)
    report.add("memory", "VmRSS idle (-concurrent 5, 3 channels)", f"{idle.get('VmRSS', 0):.1f} MB",
               f"{fl:.1f} MB", ratio(idle.get("VmRSS", 0), fl),
               "bare gevent app with the same imports", "≤ 40 MB")
    report.add("memory", f"VmHWM under load ({load['n']} touch tasks, -concurrent 20)",
               f"{load['hwm']:.1f} MB", f"{fl:.1f} MB", ratio(load["hwm"], fl),
               "bare gevent app with the same imports", "")
    report.add("memory", f"VmRSS / VmHWM with {known} channels ({channels} asked for)",
               f"{many.get('VmRSS', 0):.1f} / {many.get('VmHWM', 0):.1f} MB", f"{fl:.1f} MB",
               ratio(many.get("VmRSS", 0), fl), "bare gevent app with the same imports", "")
    report.details.append(
        "### Memory\n\n"
        f"Baseline: `bench/hello.py` idle (gevent, redis, bottle imported) VmRSS {fl:.1f} MB. "
        f"Daemon idle VmRSS {idle.get('VmRSS', 0):.1f} MB (VmHWM {idle.get('VmHWM', 0):.1f}). "
        f"Under load ({load['n']} tasks at -concurrent 20): VmHWM {load['hwm']:.1f} MB. "
        f"{channels} channels "
        f"asked for through POST /channels in {created:.2f}s, {known} exist; Redis "
        f"connections {clients0} → {clients1} (bench's own included); GET /channels with "
        f"{known} channels: median {ms(median(t_list))}."
        + (f" **{len(refused)} of {channels} POST /channels were refused**, the first at "
           f"channel #{refused[0][0]}: `{refused[0][1]}`." if refused else "")
        + (f" The daemon logged {len(log_errors)} warnings/errors meanwhile, e.g. "
           f"`{log_errors[0][:200]}`." if log_errors else ""))
    if refused:
        report.add("memory", "POST /channels refused while creating channels",
                   f"{len(refused)} of {channels}", "0", "", "", "")


# -- Redis commands per task -----------------------------------------------------
def monitor_run(ctx, n: int) -> dict:
    """n tasks at -concurrent 5 under MONITOR: the daemon's commands, split into those
    it sent (round trips, pipelines aside) and those its scripts ran."""
    rds = ctx.redis
    rds.flush()
    workdir = Path(tempfile.mkdtemp(prefix="monitor-", dir=ctx.tmp))
    daemon = Daemon(ctx.procs, rds, workdir, ["-concurrent", "5"], ctx.daemon_args)
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
        time.sleep(0.3)
        ours = {c["addr"] for c in rds.client.client_list() if c.get("name") == "bench"}
        t0 = time.perf_counter()
        push_tasks(rds.client, [f"true {i}" for i in range(n)])
        wait_until(lambda: settled(rds.client), max(60, n / 10), "the tasks", 0.01)
        elapsed = time.perf_counter() - t0
        time.sleep(0.3)
        ours |= {c["addr"] for c in rds.client.client_list() if c.get("name") == "bench"}
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


# -- report ----------------------------------------------------------------------
def wakeup_cost(cpus: tuple[int, int], rounds: int = 5000) -> float:
    """CPU µs (both sides) per round trip of one byte between two processes over
    pipes, the first on CPU ``cpus[0]`` and the second on ``cpus[1]``: two wake-ups,
    as each task needs several (Redis replies, the spawning thread, exits)."""
    mask = os.sched_getaffinity(0)
    (there_r, there_w), (back_r, back_w) = os.pipe(), os.pipe()
    both = (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    before = rusage_cpu(*both)
    pid = os.fork()
    if pid == 0:   # the echo side: os calls only, and out without any of our clean-up
        code = 1
        try:
            os.close(there_w)
            os.close(back_r)
            os.sched_setaffinity(0, {cpus[1]})
            for _ in range(rounds):
                byte = os.read(there_r, 1)
                if not byte:   # the other side gave up
                    break
                os.write(back_w, byte)
            code = 0
        finally:
            os._exit(code)
    os.close(there_r)
    os.close(back_w)   # a dead echo side is then an end of file here, not a hang
    try:
        os.sched_setaffinity(0, {cpus[0]})
        for _ in range(rounds):
            os.write(there_w, b"x")
            if not os.read(back_r, 1):
                raise OSError("the echo side of the wake-up probe ended early")
    finally:
        os.sched_setaffinity(0, mask)
        os.close(there_w)   # an echo side still waiting reads the end of file and exits
        os.close(back_r)
        os.waitpid(pid, 0)
    return 1e6 * (rusage_cpu(*both) - before) / rounds


def machine() -> list[str]:
    def first(pattern: str, path: str) -> str:
        with contextlib.suppress(OSError):
            m = re.search(pattern, Path(path).read_text(), re.M)
            if m:
                return m.group(1).strip()
        return "?"

    def run(*argv) -> str:
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=10,
                                  cwd=ROOT).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return "?"

    mem = first(r"^MemTotal:\s+(\d+)", "/proc/meminfo")
    cpu = first(r"^model name\s*:(.*)$", "/proc/cpuinfo")
    wrk_version = run("wrk", "-v").splitlines()[0] if shutil.which("wrk") else "not installed"
    cpus = sorted(os.sched_getaffinity(0))
    try:   # a figure of this report, not worth the report
        same = wakeup_cost((cpus[0], cpus[0]))
        wakeups = (f"{same:.1f} µs on one CPU, {wakeup_cost((cpus[0], cpus[1])):.1f} µs "
                   "across two" if len(cpus) > 1 else f"{same:.1f} µs (one CPU)")
    except OSError as exc:
        wakeups = f"? ({exc})"
    return [f"- CPU: {cpu}, {os.cpu_count()} cores",
            f"- RAM: {int(mem) / 1024 / 1024:.1f} GiB" if mem.isdigit() else "- RAM: ?",
            f"- Kernel: {platform.system()} {platform.release()}",
            f"- Python: {platform.python_version()} ({platform.python_implementation()})",
            f"- Redis: {run('redis-server', '--version')}",
            f"- wrk: {wrk_version}",
            ("- Wake-ups: CPU per round trip of one byte between two processes over "
             f"pipes (two wake-ups, both sides' CPU): {wakeups}. Each task needs several "
             "(a Redis reply, the spawning thread, the command's exit); xargs needs one"),
            "- Bytecode: coyotes_lib compiled before the run, as `make run` does",
            f"- Coyotes commit: {run('git', 'rev-parse', '--short', 'HEAD')}"
            + (" (with uncommitted changes)" if run('git', 'status', '--porcelain',
                                                    'coyotes.py', 'coyotes_lib') else ""),
            f"- Date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}"]


def plot(report: Report, path: Path) -> bool:
    if not report.curve:
        return False
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        progress("plot: matplotlib not installed, no PNG")
        return False
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for label, points in report.curve.items():
        xs = sorted(points)
        ax.plot(xs, [points[x] for x in xs], marker="o", label=label)
    ax.set_xlabel("concurrency (-concurrent / xargs -P)")
    ax.set_ylabel("tasks per second")
    ax.set_title("Throughput: touch DIR/<i>, same run")
    ticks = sorted({x for p in report.curve.values() for x in p})
    if len(ticks) > 2:
        ax.set_xscale("log", base=2)
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.minorticks_off()
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def write_report(ctx, report: Report, elapsed: float) -> str:
    out = ctx.out
    out.mkdir(parents=True, exist_ok=True)
    has_plot = plot(report, out / "throughput.png")
    command = "make bench" + (f" BENCH_ARGS='{' '.join(sys.argv[1:])}'" if sys.argv[1:] else "")
    text = ["# Coyotes benchmarks", "",
            f"Made by `{command}` (`bench/run.py`) in {elapsed:.0f}s. Each figure stands next "
            "to a baseline measured in the same run on the same machine; the ratio is what "
            "compares across machines. Other jobs may have shared the machine, so single "
            "figures are noisy. Redis: a private `redis-server` (no persistence) started "
            "by the bench; the daemon runs as `coyotes.py` under the bench's virtualenv"
            + (f", with extra flags `{' '.join(ctx.daemon_args)}`" if ctx.daemon_args else "")
            + ".", "", "## Machine", "", *machine(), "", "## Results", "", report.table(), ""]
    if has_plot:
        text += ["![throughput against concurrency](throughput.png)", ""]
    text += ["## Details", ""]
    for block in report.details:
        text += [block, ""]
    doc = "\n".join(text)
    (out / "BENCHMARKS.md").write_text(doc)
    raw = {"argv": sys.argv[1:], "rows": report.rows, "curve": report.curve,
           "runs": {f"{k[0]} c={k[1]}": v for k, v in report.cache.items()}}
    (ROOT / ".bench" / "last-results.json").write_text(json.dumps(raw, indent=1, default=str))
    progress(f"wrote {out / 'BENCHMARKS.md'}" + (f" and {out / 'throughput.png'}"
                                                   if has_plot else ""))
    return doc


def section_soak(ctx, report: Report) -> None:
    """N tasks through one daemon, in rounds of 10%: RSS after each round settles.
    The first round warms the daemon up; growth is measured from there."""
    rds, n = ctx.redis, ctx.args.soak
    rds.flush()
    workdir = Path(tempfile.mkdtemp(prefix="soak-", dir=ctx.tmp))
    daemon = Daemon(ctx.procs, rds, workdir, ["-concurrent", "20", "-result-ttl", "60"],
                    ctx.daemon_args)
    rounds, samples = 10, []
    try:
        t0 = time.perf_counter()
        for k in range(rounds):
            size = n // rounds
            push_tasks(rds.client, [f"true soak-{k}-{i}" for i in range(size)])
            wait_until(lambda: settled(rds.client), max(120.0, size / 20), "a soak round", 0.01)
            samples.append(daemon.rss().get("VmRSS", 0))
            progress(f"soak: {(k + 1) * size:,} tasks, VmRSS {samples[-1]:.1f} MB")
        elapsed = time.perf_counter() - t0
    finally:
        tear_down(daemon, None, workdir)
    warm, last = samples[0], samples[-1]
    report.add("soak", f"VmRSS after {n // rounds:,} → after {n:,} tasks (-concurrent 20)",
               f"{warm:.1f} → {last:.1f} MB ({last - warm:+.1f} MB)", f"{warm:.1f} MB",
               ratio(last, warm), "RSS after the first round (warm)", "no growth")
    report.add("soak", f"throughput over the {n:,} tasks", f"{n / elapsed:.0f}/s", "", "", "",
               "")


SECTIONS = {"throughput": section_throughput, "latency": section_latency,
            "http": section_http, "status": section_status, "memory": section_memory,
            "commands": section_commands, "soak": section_soak}


class Context:
    pass


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--tasks", type=int, default=5000, help="N for throughput (5000)")
    parser.add_argument("--pairs", type=int, default=None,
                        help="rounds of xargs and daemon for the targets, touch at 5 and 20 "
                             "(3, or 1 with --quick; the median is reported)")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: small N, few samples, short wrk runs")
    parser.add_argument("--only", default="", help=f"comma-separated: {', '.join(SECTIONS)}")
    parser.add_argument("--levels", default="1,5,10,20,40",
                        help="concurrency levels for the plot (5 and 20 always run)")
    parser.add_argument("--samples", type=int, default=200, help="dispatch latency samples")
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--fill", type=int, default=1_000_000,
                        help="queued/failed/delayed entries for the status calls")
    parser.add_argument("--channels", type=int, default=200, help="channels for memory")
    parser.add_argument("--monitor-tasks", type=int, default=300,
                        help="tasks run under MONITOR to count round trips")
    parser.add_argument("--daemon-args", default="",
                        help="extra flags for every daemon (e.g. a runner choice)")
    parser.add_argument("--out", default="",
                        help="report folder (docs; .bench for --quick or --only)")
    parser.add_argument("--soak", type=int, default=100_000, help="tasks for the soak (100000)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args(argv)
    if args.quick:
        defaults = {"tasks": 300, "samples": 30, "duration": 3, "fill": 20000, "channels": 20,
                    "monitor_tasks": 50, "soak": 2000}
        for key, value in defaults.items():
            if getattr(args, key) == parser.get_default(key):
                setattr(args, key, value)
        if args.levels == parser.get_default("levels"):
            args.levels = "5,20"
    if args.pairs is None:
        args.pairs = 1 if args.quick else 3
    if args.pairs < 1 or args.pairs % 2 == 0:
        parser.error("--pairs must be odd (1, 3, 5...): the median is one of the rounds")
    only = [s.strip() for s in args.only.split(",") if s.strip()] or list(SECTIONS)
    unknown = [s for s in only if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {unknown}; choose from {', '.join(SECTIONS)}")
    if not shutil.which("redis-server"):
        parser.error("redis-server is not installed (apt-get install redis-server)")

    ctx = Context()
    ctx.args = args
    ctx.levels = [int(x) for x in args.levels.split(",") if x.strip()]
    ctx.daemon_args = args.daemon_args.split()
    ctx.out = Path(args.out) if args.out else (
        ROOT / ".bench" if args.quick or args.only else ROOT / "docs")
    ctx.report = report = Report()
    ctx.procs = Processes()
    (ROOT / ".bench").mkdir(exist_ok=True)
    ctx.tmp = Path(tempfile.mkdtemp(prefix="coyotes-bench-"))
    # as `make run` does: daemons load coyotes_lib's bytecode instead of compiling
    # it at each start (which leaves about 0.8 MB more resident)
    compileall.compile_dir(ROOT / "coyotes_lib", quiet=1)

    def on_term(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_term)
    failed = []
    try:
        ctx.redis = RedisServer(ctx.procs, ctx.tmp)
        progress(f"redis-server on port {ctx.redis.port}, work in {ctx.tmp}; sections: "
                 f"{', '.join(only)}")
        for name in only:
            progress(f"== {name}")
            try:
                SECTIONS[name](ctx, report)
            except KeyboardInterrupt:
                raise
            except Exception as exc:
                progress(f"{name}: FAILED: {exc!r}")
                failed.append(name)
                report.add(name, "FAILED", str(exc).splitlines()[0][:80], "", "", "", "")
        elapsed = time.monotonic() - T_START
        write_report(ctx, report, elapsed)
        print(report.table())
    except KeyboardInterrupt:
        progress("interrupted")
        return 130
    finally:
        ctx.procs.close()
        if args.keep:
            progress(f"kept {ctx.tmp}")
        else:
            shutil.rmtree(ctx.tmp, ignore_errors=True)
    progress(f"done in {time.monotonic() - T_START:.0f}s"
             + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
