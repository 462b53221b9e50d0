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
  http        wrk pushing unique tasks with POST /channels/bench/tasks and POST
              /channels/bench on a -task-mode=false daemon, against a trivial
              gevent.pywsgi app; RSS across three rounds
  status      status and listing calls with 1,000,000 queued, failed and
              delayed tasks, against redis-py LRANGE 0 99 (and PING)
  memory      RSS idle, under load, with 200 channels
  channels    10,000 channels made over HTTP (capped in time): time per
              creation, idle CPU, Redis connections, GET /channels, and a task
              pushed to a random channel
  commands    Redis commands per task (INFO commandstats) and round trips per
              task (MONITOR, commands run by scripts told apart)
  soak        RSS after 10,000 and after 100,000 tasks, and the throughput
  scale       tasks/s through 3 nodes on one Redis against 1 node, for `true`
              and for `sleep 0.1` commands

With --peer PATH (make bench PEER=PATH), PATH is run beside Coyotes: any daemon
that takes the Go original's flags. It gets a redis-server of its own and runs
in the same rounds as Coyotes (throughput at concurrency 5, 20 and 50, latency,
http, channels), and the table gives its figure and Coyotes' over it.

Progress goes to stderr, the table to stdout.
"""

from __future__ import annotations

import argparse
import compileall
import os
import shutil
import signal
import sys
import time

from .channels import section_channels
from .commands import section_commands
from .context import ROOT, T_START, Context, progress
from .latency import section_latency
from .memory import section_memory
from .push import section_http
from .report import Report, write_report
from .scale import section_scale
from .soak import section_soak
from .status import section_status
from .throughput import section_throughput

SECTIONS = {"throughput": section_throughput, "latency": section_latency,
            "http": section_http, "status": section_status, "memory": section_memory,
            "channels": section_channels, "commands": section_commands, "soak": section_soak,
            "scale": section_scale}
QUICK = {"tasks": 300, "samples": 30, "duration": 3, "fill": 20000, "channels": 20,
         "monitor_tasks": 50, "soak": 2000, "many_channels": 300, "channels_cap": 30}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--tasks", type=int, default=5000, help="N for throughput (5000)")
    p.add_argument("--pairs", type=int, default=None,
                   help="rounds of xargs and daemon for the targets, touch at 5 and 20 "
                        "(3, or 1 with --quick; the median is reported)")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run: small N, few samples, short wrk runs")
    p.add_argument("--only", default="", help=f"comma-separated: {', '.join(SECTIONS)}")
    p.add_argument("--levels", default="1,5,10,20,40",
                   help="concurrency levels for the plot (5 and 20 always run)")
    p.add_argument("--samples", type=int, default=200, help="dispatch latency samples")
    p.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    p.add_argument("--fill", type=int, default=1_000_000,
                   help="queued/failed/delayed entries for the status calls")
    p.add_argument("--channels", type=int, default=200, help="channels for memory")
    p.add_argument("--monitor-tasks", type=int, default=300,
                   help="tasks run under MONITOR to count round trips")
    p.add_argument("--daemon-args", default="",
                   help="extra flags for every daemon (e.g. a runner choice)")
    p.add_argument("--out", default="", help="report folder (docs; .bench for --quick or --only)")
    p.add_argument("--soak", type=int, default=100_000, help="tasks for the soak (100000)")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder")
    p.add_argument("--peer", default="",
                   help="another daemon taking the Go original's flags (make bench PEER=...): "
                        "run beside Coyotes in the same rounds, each figure also as a ratio "
                        "to it")
    p.add_argument("--many-channels", type=int, default=10_000,
                   help="channels created over HTTP by the channels section (10000)")
    p.add_argument("--channels-cap", type=float, default=120,
                   help="seconds a daemon may take to create them before the section "
                        "moves on with what it reached (120)")
    return p


def parse_args(argv=None) -> tuple[argparse.Namespace, list[str]]:
    """The options, the smaller defaults of --quick applied -> (args, sections to run)."""
    p = parser()
    args = p.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            if getattr(args, key) == p.get_default(key):
                setattr(args, key, value)
        if args.levels == p.get_default("levels"):
            args.levels = "5,20"
    if args.pairs is None:
        args.pairs = 1 if args.quick else 3
    if args.pairs < 1 or args.pairs % 2 == 0:
        p.error("--pairs must be odd (1, 3, 5...): the median is one of the rounds")
    only = [s.strip() for s in args.only.split(",") if s.strip()] or list(SECTIONS)
    unknown = [s for s in only if s not in SECTIONS]
    if unknown:
        p.error(f"unknown section(s) {unknown}; choose from {', '.join(SECTIONS)}")
    if args.peer and not os.access(args.peer, os.X_OK):
        p.error(f"--peer {args.peer}: not an executable file")
    if not shutil.which("redis-server"):
        p.error("redis-server is not installed (apt-get install redis-server)")
    return args, only


def run_sections(ctx: Context, only: list[str]) -> list[str]:
    """Each section in turn; one that fails gets a FAILED row -> the failed ones."""
    failed = []
    for name in only:
        progress(f"== {name}")
        try:
            SECTIONS[name](ctx, ctx.report)
        except KeyboardInterrupt:
            raise
        except Exception as exc:
            progress(f"{name}: FAILED: {exc!r}")
            failed.append(name)
            ctx.report.add(name, "FAILED", str(exc).splitlines()[0][:80], "", "", "", "")
    return failed


def main(argv=None) -> int:
    args, only = parse_args(argv)
    (ROOT / ".bench").mkdir(exist_ok=True)
    ctx = Context(args, Report(peer=bool(args.peer)))
    # as `make run` does: daemons load coyotes_lib's bytecode instead of compiling
    # it at each start (which leaves about 0.8 MB more resident)
    compileall.compile_dir(ROOT / "coyotes_lib", quiet=1)

    def on_term(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_term)
    try:
        ctx.start_redis()
        progress(f"redis-server on port {ctx.redis.port}, work in {ctx.tmp}; sections: "
                 f"{', '.join(only)}")
        failed = run_sections(ctx, only)
        write_report(ctx, ctx.report, time.monotonic() - T_START)
        print(ctx.report.table())
    except KeyboardInterrupt:
        progress("interrupted")
        return 130
    finally:
        ctx.close()
    progress(f"done in {time.monotonic() - T_START:.0f}s"
             + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
