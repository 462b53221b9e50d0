"""`make bench` (`python -m bench`) as a smoke run, so that the benchmark suite keeps
working between the runs that refresh docs/BENCHMARKS.md: every throughput row
the issue asks for is there, with its baseline, CPU accounting and Redis figures,
and, when the Go original can be built, its figures beside them (``--peer``).
Timing goals are not checked here (they belong to the bench itself).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

# builds the Go original (v1.0-beta) with Debian's Go, installed when missing (as root)
GO_BUILD = Path(os.environ.get("COYOTES_GO_BUILD",
                               "/work/shared/peers/build-go-original.sh"))
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def go_peer(directory: Path) -> tuple[Path | None, str]:
    """The Go original built into ``directory`` -> (its path, or None and why not)."""
    if not GO_BUILD.exists():
        return None, f"no build script at {GO_BUILD} (set COYOTES_GO_BUILD)"
    if not shutil.which("go") and os.geteuid() != 0:
        return None, "no `go` on PATH and not root, so it cannot be installed"
    out = directory / "coyotes-go"
    proc = subprocess.run(["bash", str(GO_BUILD), str(out)], capture_output=True, text=True,
                          timeout=600, stdin=subprocess.DEVNULL)
    if proc.returncode != 0 or not out.exists():
        return None, f"the build failed ({proc.returncode}): {proc.stderr[-2000:]}"
    return out, ""


@pytest.fixture(scope="module")
def peer(tmp_path_factory):
    path, why = go_peer(tmp_path_factory.mktemp("go-peer"))
    return path, why


def test_the_go_original_is_built_for_the_peer_columns(peer):
    path, why = peer
    if path is None:
        message = f"the Go original could not be built, so the peer path goes untested: {why}"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    assert os.access(path, os.X_OK)


def run_bench(out: Path, peer_path: Path | None) -> str:
    sections = "throughput,commands,scale" + (",latency,http,channels" if peer_path else "")
    argv = [sys.executable, "-m", "bench", "--quick", "--only", sections, "--tasks", "100",
            "--levels", "5", "--monitor-tasks", "30", "--pairs", "3", "--samples", "10",
            "--duration", "1", "--many-channels", "60", "--channels-cap", "10", "--out",
            str(out), *(["--peer", str(peer_path)] if peer_path else [])]
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return (out / "BENCHMARKS.md").read_text()


def test_quick_bench_reports_throughput_cpu_and_redis_figures(tmp_path, peer):
    peer_path = peer[0]
    report = run_bench(tmp_path / "report", peer_path)
    for row in ("`touch` tasks/s, concurrency 5 (N=100, median of 3 pairs: ",
                "`touch` tasks/s, concurrency 20 (N=100, median of 3 pairs: ",
                "`touch` tasks/s, concurrency 50 (N=100, median of 3 pairs: ",
                "`true` tasks/s, concurrency 5", "`-runner subprocess`",
                "CPU ms per `touch` task, concurrency 20", "Redis commands per task",
                "round trips per task"):
        assert row in report, row
    # every rate was measured: Coyotes and its xargs baseline both above zero
    rates = re.findall(r"tasks/s, concurrency \d+ \(N=100[^)]*\) \| (\d+)/s \| (\d+)/s \| "
                       r"([\d.]+)x", report)
    assert len(rates) == 5 and all(int(ours) > 0 and int(base) > 0 for ours, base, _ in rates)
    # the targets are the middle of three alternated rounds: the ratio shown is the median
    for c in (5, 20, 50):
        shown = re.search(rf"concurrency {c} \(N=100, median of 3 pairs: ([\d.]+) / ([\d.]+) / "
                          r"([\d.]+)\) \| \d+/s \| \d+/s \| ([\d.]+)x", report)
        assert shown, c
        low, middle, high, ratio = map(float, shown.groups())
        assert low <= middle <= high and abs(ratio - middle) <= 0.01
    # the clocks are read after the run (last file's mtime, last record's finished_at):
    # a file appears before its task is recorded, so files/s is never the lower rate
    table = re.findall(r"^\| `touch` \| (\d+) \| (\d+) \| (\d+) \|", report, re.M)
    assert len(table) == 3 and all(int(files) >= int(recorded) > 0
                                   for _, files, recorded in table), table
    # the machine's cost of a wake-up, measured in the run (across two CPUs if it may use two)
    shape = (r"([\d.]+) µs on one CPU, ([\d.]+) µs across two"
             if len(os.sched_getaffinity(0)) > 1 else r"([\d.]+) µs \(one CPU\)")
    wakeups = re.search(rf"^- Wake-ups: .*: {shape}\.", report, re.M)
    assert wakeups and all(float(cost) > 0 for cost in wakeups.groups()), report[:2000]
    # CPU per task: daemon + commands + redis-server, each a measured number
    cpu = re.findall(r"\| ([\d.]+) \+ ([\d.]+) \+ ([\d.]+) \| ([\d.]+) \|", report)
    assert len(cpu) == 5 and all(float(daemon) > 0 and float(xargs) > 0
                                 for daemon, _, _, xargs in cpu)
    # what three nodes on one Redis do against one, both rates measured
    scale = re.findall(r"tasks/s, 3 nodes on one Redis, -concurrent 5 each \(N=\d+\) \| "
                       r"(\d+)/s \| (\d+)/s \| ([\d.]+)x", report)
    assert len(scale) == 2 and all(int(three) > 0 and int(one) > 0 for three, one, _ in scale)
    assert not any(p in report for p in ("/tmp/", "/work/", "/root/", "/home/")), \
        "the report names a machine path"
    if peer_path:
        check_peer_columns(report)
    else:
        assert "Peer (same run)" not in report   # without a peer, the table of today


def check_peer_columns(report: str) -> None:
    """The peer's figure and Coyotes' over it, beside every figure the comparison
    asks for; n/a for the route the Go original lacks."""
    assert "| Peer (same run) | Ratio to peer |" in report
    for c in (5, 20, 50):
        row = re.search(rf"`touch` tasks/s, concurrency {c} .*\| (\d+)/s \(files\) \| "
                        r"([\d.]+)x \(files\) \|", report)
        assert row and int(row.group(1)) > 0, c
        cpu = re.search(rf"CPU ms per `touch` task, concurrency {c}:.*\| ([\d.]+) \+ [\d.]+ \+ "
                        r"[\d.]+ \| ([\d.]+)x \(daemon's own\) \|", report)
        assert cpu and float(cpu.group(1)) > 0, c
    for p in ("p50", "p99"):
        assert re.search(rf"dispatch {p}, .*\| ([\d.]+) ms \| ([\d.]+)x \| ≤", report), p
    if shutil.which("wrk"):
        assert re.search(r"POST /channels/\{c\}/tasks, unique tasks.*\| n/a \| n/a \|", report)
        assert re.search(r"POST /channels/\{c\}, unique tasks.*\| (\d+) req/s \| ([\d.]+)x \|",
                         report)
        assert re.search(r"VmRSS before → after round 1 → 2 → 3 .*→.*→.*→.* MB "
                         r"\((flat|growing)\) \|", report)
    for measure in ("time per creation, median", "time per creation, p99", "idle daemon CPU",
                    "Redis connections of the daemon", "GET /channels with them",
                    "push-to-start p99"):
        row = next((line for line in report.splitlines()
                    if line.startswith("| channels |") and measure in line), None)
        assert row, measure
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[2] and cells[6] and cells[7], row   # Coyotes, the peer, the ratio
