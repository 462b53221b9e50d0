"""`make bench` (`python -m bench`) as a smoke run, so that the benchmark suite keeps
working between the runs that refresh docs/BENCHMARKS.md: every throughput row
the issue asks for is there, with its baseline, CPU accounting and Redis figures.
Timing goals are not checked here (they belong to the bench itself).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

from conftest import ROOT


def test_quick_bench_reports_throughput_cpu_and_redis_figures(tmp_path):
    out = tmp_path / "report"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--only",
         "throughput,commands", "--tasks", "100", "--levels", "5", "--monitor-tasks", "30",
         "--pairs", "3", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = (out / "BENCHMARKS.md").read_text()
    for row in ("`touch` tasks/s, concurrency 5 (N=100, median of 3 pairs: ",
                "`touch` tasks/s, concurrency 20 (N=100, median of 3 pairs: ",
                "`true` tasks/s, concurrency 5", "`-runner subprocess`",
                "CPU ms per `touch` task, concurrency 20", "Redis commands per task",
                "round trips per task"):
        assert row in report, row
    # every rate was measured: Coyotes and its xargs baseline both above zero
    rates = re.findall(r"tasks/s, concurrency \d+ \(N=100[^)]*\) \| (\d+)/s \| (\d+)/s \| "
                       r"([\d.]+)x", report)
    assert len(rates) == 4 and all(int(ours) > 0 and int(base) > 0 for ours, base, _ in rates)
    # the targets are the middle of three alternated rounds: the ratio shown is the median
    for c in (5, 20):
        shown = re.search(rf"concurrency {c} \(N=100, median of 3 pairs: ([\d.]+) / ([\d.]+) / "
                          r"([\d.]+)\) \| \d+/s \| \d+/s \| ([\d.]+)x", report)
        assert shown, c
        low, middle, high, ratio = map(float, shown.groups())
        assert low <= middle <= high and abs(ratio - middle) <= 0.01
    # the clocks are read after the run (last file's mtime, last record's finished_at):
    # a file appears before its task is recorded, so files/s is never the lower rate
    table = re.findall(r"^\| `touch` \| (\d+) \| (\d+) \| (\d+) \|", report, re.M)
    assert len(table) == 2 and all(int(files) >= int(recorded) > 0
                                   for _, files, recorded in table), table
    # the machine's cost of a wake-up, measured in the run (across two CPUs if it may use two)
    shape = (r"([\d.]+) µs on one CPU, ([\d.]+) µs across two"
             if len(os.sched_getaffinity(0)) > 1 else r"([\d.]+) µs \(one CPU\)")
    wakeups = re.search(rf"^- Wake-ups: .*: {shape}\.", report, re.M)
    assert wakeups and all(float(cost) > 0 for cost in wakeups.groups()), report[:2000]
    # CPU per task: daemon + commands + redis-server, each a measured number
    cpu = re.findall(r"\| ([\d.]+) \+ ([\d.]+) \+ ([\d.]+) \| ([\d.]+) \|", report)
    assert len(cpu) == 4 and all(float(daemon) > 0 and float(xargs) > 0
                                 for daemon, _, _, xargs in cpu)
