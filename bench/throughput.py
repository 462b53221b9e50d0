"""Section ``throughput``: N unique `touch DIR/<i>` tasks through
task:prepare:queue at each concurrency, against `seq N | xargs -P C -I{} touch
DIR/{}`; the same with `true`; the CPU each task costs."""

from __future__ import annotations

from .context import progress
from .report import Report, ratio
from .runs import SETTLE_POLL, daemon_run, xargs_run


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



def measure_throughput(ctx, report: Report) -> tuple[list[tuple], dict, dict]:
    """Every run of the section -> (rows (C, command, run, xargs rate, xargs CPU),
    the ratios of each target's rounds by C, the `-runner subprocess` run)."""
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
    return rows, spread, fork


def section_throughput(ctx, report: Report) -> None:
    n = ctx.args.tasks
    rows, spread, fork = measure_throughput(ctx, report)
    for c, command, run, xr, xcpu in rows:
        if c not in (5, 20):
            continue   # in the details and the plot only
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
    spawn = report.cache[("true", 5)]["rate"]
    report.add("throughput", f"`true` tasks/s, concurrency 5, `-runner subprocess` (N={n})",
               f"{fork['rate']:.0f}/s", f"{spawn:.0f}/s", ratio(fork["rate"], spawn),
               "the default runner (`spawn`), same tasks", "")
    report.details.append(throughput_details(ctx, rows))


def throughput_details(ctx, rows) -> str:
    n, pairs = ctx.args.tasks, ctx.args.pairs
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
        files = f"{run['rate_files']:.0f}" if run["rate_files"] else "-"
        cpu = run["cpu"]
        lines.append(f"| `{command}` | {c} | {files} | {run['rate']:.0f} | {xr:.0f} | "
                     f"{run['rate'] / xr:.2f}x | {cpu['daemon']:.3f} / {cpu['commands']:.3f} / "
                     f"{cpu['redis']:.3f} | {xcpu:.3f} | {cpu_ceiling(run, xcpu):.2f}x | "
                     f"{run['hwm']:.1f} MB |")
    return "\n".join(lines)

