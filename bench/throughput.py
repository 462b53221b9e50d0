"""Section ``throughput``: N unique `touch DIR/<i>` tasks through
task:prepare:queue at each concurrency, against `seq N | xargs -P C -I{} touch
DIR/{}`; the same with `true`; the CPU each task costs."""

from __future__ import annotations

from .context import progress
from .report import Report, peer_cells, ratio
from .runs import SETTLE_POLL, daemon_run, xargs_run

TARGETS = (5, 20, 50)   # the concurrencies of the rows (the others: plot and details)


def cpu_ceiling(run: dict, xargs_cpu: float) -> float:
    """The best ratio to xargs that this CPU allows, if both are CPU-bound: what a
    task costs xargs (its commands included) over what it costs here (the daemon,
    its commands and redis-server together)."""
    ours = sum(run["cpu"].values())
    return xargs_cpu / ours if ours else float("nan")


def one_round(ctx, c: int, n: int, command: str, order: list[str], label: str) -> dict:
    """One run of each of ``order`` (xargs, daemon, peer) -> {side: its figures}."""
    out = {}
    for side in order:
        if side == "xargs":
            progress(f"throughput: {label}xargs -P {c} {command} x{n}")
            out["xargs"] = xargs_run(ctx, c, n, command)
        elif side == "daemon":
            progress(f"throughput: {label}daemon -concurrent {c}, {n} {command} tasks")
            out["daemon"] = daemon_run(ctx, c, n, command)
        else:
            progress(f"throughput: {label}peer -concurrent {c}, {n} {command} tasks")
            out["peer"] = daemon_run(ctx, c, n, command, side=ctx.sides[1])
    return out


def paired_runs(ctx, c: int, n: int, command: str, pairs: int,
                peer: bool = False) -> list[tuple]:
    """``pairs`` rounds of xargs and the daemon (and the peer) on the same commands,
    the order switched each round so that a drift of the machine weighs on every
    side -> [(daemon run, xargs rate, xargs CPU ms/task, peer run or None)], by
    ratio to xargs."""
    sides = ["xargs", "daemon", *(["peer"] if peer else [])]
    rounds = []
    for i in range(pairs):
        label = f"round {i + 1} of {pairs}: " if pairs > 1 else ""
        got = one_round(ctx, c, n, command, sides if i % 2 == 0 else sides[::-1], label)
        run, (xr, xcpu), other = got["daemon"], got["xargs"], got.get("peer")
        files = f" (files {run['rate_files']:.0f}/s)" if run["rate_files"] else ""
        progress(f"throughput: c={c} {command}: daemon {run['rate']:.0f}/s{files}, "
                 f"xargs {xr:.0f}/s, ratio {run['rate'] / xr:.2f}"
                 + (f"; peer {other['rate']:.0f}/s (files)" if other else ""))
        rounds.append((run, xr, xcpu, other))
    return sorted(rounds, key=lambda r: r[0]["rate"] / r[1])


def peer_figures(rounds: list[tuple]) -> dict | None:
    """The peer's median over the rounds: its rate (files), the median of each
    round's ratio (Coyotes' files/s over the peer's), and its CPU per task."""
    peers = [r for r in rounds if r[3]]
    if not peers:
        return None
    by_rate = sorted(peers, key=lambda r: r[3]["rate"])
    ratios = sorted(r[0]["rate_files"] / r[3]["rate"] for r in peers)
    return {"rate": by_rate[len(by_rate) // 2][3]["rate"], "ratio": ratios[len(ratios) // 2],
            "ratios": ratios, "cpu": by_rate[len(by_rate) // 2][3]["cpu"],
            "hwm": by_rate[len(by_rate) // 2][3]["hwm"]}


def measure_throughput(ctx, report: Report) -> tuple[list[tuple], dict, dict]:
    """Every run of the section -> (rows (C, command, run, xargs rate, xargs CPU,
    peer figures), the ratios of each target's rounds by C, the `-runner
    subprocess` run)."""
    n, pairs, peer = ctx.args.tasks, ctx.args.pairs, len(ctx.sides) > 1
    levels = sorted(set(ctx.levels) | set(TARGETS))
    rows, spread = [], {}
    for c in levels:
        # the targets (touch at 5, 20 and 50) are the median of alternated rounds
        target = c in TARGETS
        rounds = paired_runs(ctx, c, n, "touch", pairs if target else 1, peer and target)
        run, xr, xcpu, _ = rounds[len(rounds) // 2]
        spread[c] = [r[0]["rate"] / r[1] for r in rounds]
        theirs = peer_figures(rounds)
        report.curve.setdefault("coyotes (touch, until recorded)", {})[c] = run["rate"]
        report.curve.setdefault("xargs -P (touch)", {})[c] = xr
        if theirs:
            report.curve.setdefault("peer (touch, files)", {})[c] = theirs["rate"]
        report.cache[("touch", c)] = run
        rows.append((c, "touch", run, xr, xcpu, theirs))
    for c in (5, 20):
        run, xr, xcpu, _ = paired_runs(ctx, c, n, "true", 1)[0]
        report.cache[("true", c)] = run
        rows.append((c, "true", run, xr, xcpu, None))
    # the other runner, on the same commands: it forks the daemon for each one
    progress(f"throughput: daemon -concurrent 5 -runner subprocess, {n} true tasks")
    fork = daemon_run(ctx, 5, n, "true", extra=("-runner", "subprocess"))
    return rows, spread, fork


def section_throughput(ctx, report: Report) -> None:
    n = ctx.args.tasks
    rows, spread, fork = measure_throughput(ctx, report)
    for c, command, run, xr, xcpu, theirs in rows:
        if c not in (TARGETS if command == "touch" else (5, 20)):
            continue   # in the details and the plot only
        ratios = spread[c] if command == "touch" else []
        how = (f", median of {len(ratios)} pairs: {' / '.join(f'{r:.2f}' for r in ratios)}"
               if len(ratios) > 1 else "")
        report.add("throughput", f"`{command}` tasks/s, concurrency {c} (N={n}{how})",
                   f"{run['rate']:.0f}/s", f"{xr:.0f}/s", ratio(run["rate"], xr),
                   f"`seq N \\| xargs -P {c} -I{{}} {command} ...`",
                   "≥ 0.85x" if c in (5, 20) else "",
                   **peer_cells(theirs and (f"{theirs['rate']:.0f}/s (files)",
                                            f"{theirs['ratio']:.2f}x (files)")))
        cpu = run["cpu"]
        report.add("throughput", f"CPU ms per `{command}` task, concurrency {c}: "
                   "daemon + its commands + redis-server",
                   f"{cpu['daemon']:.3f} + {cpu['commands']:.3f} + {cpu['redis']:.3f}",
                   f"{xcpu:.3f}", ratio(sum(cpu.values()), xcpu),
                   "xargs and its commands (getrusage)",
                   f"ceiling {cpu_ceiling(run, xcpu):.2f}x",
                   **peer_cells(theirs and (
                       " + ".join(f"{theirs['cpu'][k]:.3f}" for k in ("daemon", "commands",
                                                                      "redis")),
                       f"{ratio(cpu['daemon'], theirs['cpu']['daemon'])} (daemon's own)")))
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
             f"5, 20 and 50 are the median (by ratio) of {pairs} rounds of xargs and the daemon, "
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
    for c, command, run, xr, xcpu, _ in rows:
        files = f"{run['rate_files']:.0f}" if run["rate_files"] else "-"
        cpu = run["cpu"]
        lines.append(f"| `{command}` | {c} | {files} | {run['rate']:.0f} | {xr:.0f} | "
                     f"{run['rate'] / xr:.2f}x | {cpu['daemon']:.3f} / {cpu['commands']:.3f} / "
                     f"{cpu['redis']:.3f} | {xcpu:.3f} | {cpu_ceiling(run, xcpu):.2f}x | "
                     f"{run['hwm']:.1f} MB |")
    peers = [(c, theirs) for c, _, _, _, _, theirs in rows if theirs]
    if peers:
        lines += ["", ("The peer (`--peer`) ran the same `touch` tasks in the same rounds, the "
                  "order of xargs, Coyotes and the peer switched each round, against a "
                  "redis-server of its own. It keeps no record of a task, so its clock is the "
                  "files': its rate and the ratio to it are *files* figures on both sides "
                  "(the median of each round's ratio). Its CPU is read as Coyotes' is."), "",
                  ("| C | Peer files/s | Coyotes files/s over peer's, by round | "
                   "Peer CPU ms/task: daemon / commands / redis | Peer VmHWM |"),
                  "|---:|---:|---:|---:|---:|"]
        for c, theirs in peers:
            cpu = theirs["cpu"]
            lines.append(f"| {c} | {theirs['rate']:.0f} | "
                         f"{' / '.join(f'{r:.2f}' for r in theirs['ratios'])} | "
                         f"{cpu['daemon']:.3f} / {cpu['commands']:.3f} / {cpu['redis']:.3f} | "
                         f"{theirs['hwm']:.1f} MB |")
    return "\n".join(lines)

