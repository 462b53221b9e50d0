"""The report, apart from the measuring: the rows and details the sections
add, the Markdown table, the machine's description, the plot, and the files
written (BENCHMARKS.md, throughput.png, .bench/last-results.json)."""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

from .context import ROOT, progress
from .measure import wakeup_cost


class Report:
    def __init__(self, peer: bool = False):
        # section, measure, ours, baseline, ratio, what the baseline is, target,
        # the peer's figure, ours over the peer's
        self.rows: list[tuple] = []
        self.peer = peer                 # the table has the peer's columns
        self.details: list[str] = []     # Markdown blocks after the table
        self.curve: dict[str, dict[int, float]] = {}   # label -> {concurrency: tasks/s}
        self.cache: dict = {}

    def add(self, section, measure, ours, baseline, ratio, base_label, target="", *,
            peer="", peer_ratio=""):
        self.rows.append((section, measure, ours, baseline, ratio, base_label, target,
                          peer, peer_ratio))

    def table(self) -> str:
        if not self.peer:
            out = [("| Section | Measure | Coyotes | Baseline (same run) | Ratio | Baseline is "
                   "| Issue target |"),
                   "|---|---|---:|---:|---:|---|---|"]
            out += ["| " + " | ".join(str(c) for c in row[:7]) + " |" for row in self.rows]
            return "\n".join(out)
        out = [("| Section | Measure | Coyotes | Baseline (same run) | Ratio | Baseline is "
               "| Peer (same run) | Ratio to peer | Issue target |"),
               "|---|---|---:|---:|---:|---|---:|---:|---|"]
        for row in self.rows:
            cells = (*row[:6], row[7], row[8], row[6])
            out.append("| " + " | ".join(str(c) for c in cells) + " |")
        return "\n".join(out)


def peer_cells(pair) -> dict:
    """``Report.add`` keywords for the peer's figure and ours over it, or none
    (``pair`` None: the row has no peer figure)."""
    return {"peer": pair[0], "peer_ratio": pair[1]} if pair else {}


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def ratio(a: float, b: float) -> str:
    """``a`` over ``b``, two decimals (one significant digit below 0.01x); n/a
    when ``b`` is zero or either is unknown (NaN)."""
    if not b or a != a or b != b:
        return "n/a"
    return f"{a / b:.2f}x" if a / b >= 0.01 or a == 0 else f"{a / b:.1g}x"



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


def command_line(ctx, argv: list[str]) -> str:
    """The make command that ran this bench, without this machine's paths."""
    argv, peer = list(argv), ""
    for i, arg in enumerate(argv):
        if arg == "--peer" and i + 1 < len(argv):
            peer = argv[i + 1]
            del argv[i:i + 2]
            break
        if arg.startswith("--peer="):
            peer = arg.partition("=")[2]
            del argv[i]
            break
    command = "make bench" + (f" PEER=.../{Path(peer).name}" if peer else "")
    command += f" BENCH_ARGS='{' '.join(argv)}'" if argv else ""
    return ctx.redact(command)


def peer_line(ctx) -> list[str]:
    if not ctx.peer:
        return []
    digest = hashlib.sha256(Path(ctx.peer).read_bytes()).hexdigest()[:12]
    return [(f"- Peer: `{Path(ctx.peer).name}` (sha256 {digest}), the daemon given as "
            "`PEER` (any daemon that takes the Go original's flags), with a `redis-server` "
            "of its own")]


def write_report(ctx, report: Report, elapsed: float) -> str:
    out = ctx.out
    out.mkdir(parents=True, exist_ok=True)
    has_plot = plot(report, out / "throughput.png")
    text = ["# Coyotes benchmarks", "",
            f"Made by `{command_line(ctx, sys.argv[1:])}` (`python -m bench`) in "
            f"{elapsed:.0f}s. Each figure stands next "
            "to a baseline measured in the same run on the same machine; the ratio is what "
            "compares across machines. Other jobs may have shared the machine, so single "
            "figures are noisy. Redis: a private `redis-server` (no persistence) started "
            "by the bench; the daemon runs as `coyotes.py` under the bench's virtualenv"
            + (f", with extra flags `{' '.join(ctx.daemon_args)}`" if ctx.daemon_args else "")
            + "." + (" The peer's columns give its figure, measured in the same rounds, and "
                     "Coyotes' over it (for rates higher is better for Coyotes, for times, "
                     "memory and counts lower; *n/a*: the peer has no such call)."
                     if report.peer else ""),
            "", "## Machine", "", *machine(), *peer_line(ctx), "", "## Results", "",
            report.table(), ""]
    if has_plot:
        text += ["![throughput against concurrency](throughput.png)", ""]
    text += ["## Details", ""]
    for block in report.details:
        text += [block, ""]
    doc = ctx.redact("\n".join(text))
    (out / "BENCHMARKS.md").write_text(doc)
    raw = {"argv": sys.argv[1:], "rows": report.rows, "curve": report.curve,
           "runs": {f"{k[0]} c={k[1]}": v for k, v in report.cache.items()}}
    (ROOT / ".bench" / "last-results.json").write_text(json.dumps(raw, indent=1, default=str))
    progress(f"wrote {out / 'BENCHMARKS.md'}" + (f" and {out / 'throughput.png'}"
                                                   if has_plot else ""))
    return doc
