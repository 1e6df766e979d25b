"""`bench_cluster.py --compare etcd,pysyncobj`: copycat_trio side by side with other systems.

The systems run one after another, never two at once, alternating (copycat_trio, etcd,
pysyncobj, copycat_trio, etcd, ... for --runs rounds); each run starts its own fresh cluster,
runs every phase of the plan that system has, prints its table and stops the cluster. At the
end, for each row (op, tasks): each system's medians over its runs (throughput, p50, p99, CPU
per operation of each process and summed), and the ratio copycat_trio/peer of throughput and
latency. A peer that cannot run here is named in one line and left out: etcd when `etcd` (the
Debian package etcd-server) is not on PATH or h11 is not installed, PySyncObj when it is not
installed.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Any

import bench_cluster as bc

COPYCAT = "copycat_trio"

Runner = Callable[[], Awaitable[list[bc.PhaseResult]]]


def available_peers(
    wanted: list[str], args: argparse.Namespace, say: Callable[[str], None]
) -> tuple[list[tuple[str, Runner]], list[Callable[[], None]], dict[str, str]]:
    """The runnable peers (name, runner), their synchronous last-resort cleanups, and a
    version line for each; a peer that cannot run is said in one line and skipped."""
    runners: list[tuple[str, Runner]] = []
    cleanups: list[Callable[[], None]] = []
    versions: dict[str, str] = {}
    for peer in wanted:
        if peer == "etcd":
            import shutil

            binary = shutil.which("etcd")
            if binary is None:
                say(
                    "etcd: not on PATH (it is the Debian package etcd-server: "
                    "apt-get install etcd-server); comparison with etcd skipped"
                )
                continue
            try:
                import peers_etcd
            except ImportError as exc:
                say(f"etcd: cannot drive it ({exc}; pip install h11); comparison skipped")
                continue
            versions["etcd"] = f"etcd {peers_etcd.etcd_version(binary)} ({binary})"

            def etcd(binary: str = binary) -> Awaitable[list[bc.PhaseResult]]:
                return peers_etcd.etcd_run(args, print, binary)

            runners.append(("etcd", etcd))
            cleanups.append(peers_etcd.kill_leftovers)
        elif peer == "pysyncobj":
            import peers_pysyncobj

            if not peers_pysyncobj.available():
                say(
                    "pysyncobj: not installed (pip install pysyncobj; `nox -s bench -- "
                    "--compare pysyncobj` installs it); comparison with pysyncobj skipped"
                )
                continue
            versions["pysyncobj"] = f"pysyncobj {peers_pysyncobj.version()}"

            def pysyncobj() -> Awaitable[list[bc.PhaseResult]]:
                return peers_pysyncobj.pysyncobj_run(args, print)

            runners.append(("pysyncobj", pysyncobj))
            cleanups.append(peers_pysyncobj.kill_leftovers)
    return runners, cleanups, versions


# --- medians and ratios (pure) -------------------------------------------------------------


def median_or_none(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def cpu_us_per_op(result: bc.PhaseResult) -> dict[str, float | None]:
    """Each process's CPU per operation in microseconds (the window's CPU / its operations),
    keyed client / leader / follower#1, follower#2 (the followers in member order: which
    members follow changes from run to run); `sum` is all of them together."""
    out: dict[str, float | None] = {}
    total = 0.0
    complete = True
    followers = sorted(role for role in result.cpu if role.startswith("follower"))
    for role, pct in result.cpu.items():
        if role in ("machine", "leader_waiting"):
            continue
        if role in followers:
            role = f"follower#{followers.index(role) + 1}"
        if pct is None or result.ops_per_s <= 0:
            out[role] = None
            complete = False
            continue
        out[role] = pct / 100 / result.ops_per_s * 1e6
        total += out[role] or 0.0
    out["sum"] = total if complete and out else None
    return out


def summarize(results: list[bc.PhaseResult]) -> dict[str, Any]:
    """The medians of one row over a system's runs."""
    cpus = [cpu_us_per_op(r) for r in results]
    roles = list(dict.fromkeys(role for c in cpus for role in c))
    return {
        "runs": len(results),
        "ops_per_s": median_or_none([r.ops_per_s for r in results]),
        "ops_per_s_all": [r.ops_per_s for r in results],
        "p50_ms": median_or_none([r.p50_ms for r in results]),
        "p99_ms": median_or_none([r.p99_ms for r in results]),
        "box": median_or_none([r.cpu.get("machine") for r in results]),
        "cpu_us": {role: median_or_none([c.get(role) for c in cpus]) for role in roles},
        "errors": sum(r.errors for r in results),
        "unknown": sum(r.unknown for r in results),
    }


def ratio(ours: float | None, theirs: float | None) -> float | None:
    if ours is None or theirs is None or theirs == 0:
        return None
    return ours / theirs


def format_summary(
    plan: list[tuple[str, int]],
    runs: dict[str, list[list[bc.PhaseResult]]],
    ours: str = COPYCAT,
) -> tuple[str, dict[str, Any]]:
    """The comparison table (one line per system per row, then one ratio line `ours/peer` per
    other system) and the same figures as data."""

    def num(v: float | None, fmt: str = "{:.0f}") -> str:
        return "-" if v is None else fmt.format(v)

    def times(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}x"

    def cpu_cell(cpu: dict[str, float | None]) -> str:
        client = num(cpu["client"]) if "client" in cpu else "-"
        followers = [num(v) for k, v in sorted(cpu.items()) if k.startswith("follower")]
        return "/".join([client, num(cpu.get("leader")), *followers])

    header = (
        "op",
        "tasks",
        "system",
        "ops/s",
        "(runs)",
        "p50 ms",
        "p99 ms",
        "cpu us/op cl/L/F/F",
        "sum us/op",
        "box%",
    )
    lines: list[tuple[str, ...]] = [header]
    data: dict[str, Any] = {}
    peers = [name for name in runs if name != ours]
    for op, tasks in plan:
        row: dict[str, Any] = {}
        for name, system_runs in runs.items():
            per_run = [
                r for results in system_runs for r in results if (r.op, r.tasks) == (op, tasks)
            ]
            if not per_run:
                continue
            s = summarize(per_run)
            row[name] = s
            lines.append(
                (
                    op,
                    str(tasks),
                    name,
                    num(s["ops_per_s"]),
                    "(" + ", ".join(f"{v:.0f}" for v in s["ops_per_s_all"]) + ")",
                    num(s["p50_ms"], "{:.2f}"),
                    num(s["p99_ms"], "{:.2f}"),
                    cpu_cell(s["cpu_us"]),
                    num(s["cpu_us"].get("sum")),
                    num(s["box"]),
                )
            )
        mine = row.get(ours)
        for peer in peers:
            theirs = row.get(peer)
            if mine is None or theirs is None:
                continue
            r = {
                "ops_per_s": ratio(mine["ops_per_s"], theirs["ops_per_s"]),
                "p50_ms": ratio(mine["p50_ms"], theirs["p50_ms"]),
                "p99_ms": ratio(mine["p99_ms"], theirs["p99_ms"]),
                "cpu_sum": ratio(mine["cpu_us"].get("sum"), theirs["cpu_us"].get("sum")),
            }
            row[f"ratio/{peer}"] = r
            lines.append(
                (
                    op,
                    str(tasks),
                    f"{ours}/{peer}",
                    times(r["ops_per_s"]),
                    "",
                    times(r["p50_ms"]),
                    times(r["p99_ms"]),
                    "",
                    times(r["cpu_sum"]),
                    "",
                )
            )
        if row:
            data[f"{op} x{tasks}"] = row
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for n, line in enumerate(lines):
        cells = [
            c.ljust(w) if i in (0, 2) else c.rjust(w)
            for i, (c, w) in enumerate(zip(line, widths, strict=True))
        ]
        out.append("  ".join(cells).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out), data


LEGEND = (
    "medians of each system's runs; (runs): each run's ops/s in the order run; "
    "cpu us/op: CPU time per operation of the client / leader / followers (- : no process of "
    "its own, e.g. PySyncObj's writers run in its leader); sum: all of them; box%: the whole "
    "machine's busy time ({every} = every core); ratio lines: copycat_trio / peer (ops/s above "
    "1 and latency or CPU below 1 favour copycat_trio)"
)


async def run_comparison(args: argparse.Namespace, facts: dict[str, Any]) -> int:
    say = print
    peers, cleanups, versions = available_peers(args.compare, args, say)
    for line in versions.values():
        say(f"peer:    {line}")

    async def copycat() -> list[bc.PhaseResult]:
        results, rows = await bc.copycat_run(args, facts, say)
        if rows:
            say(f"final status: {rows}")
        return results

    systems: list[tuple[str, Runner]] = [(COPYCAT, copycat), *peers]
    runs: dict[str, list[list[bc.PhaseResult]]] = {name: [] for name, _ in systems}
    failed = False
    try:
        for n in range(args.runs):
            for name, runner in systems:
                say(f"--- run {n + 1} of {args.runs}: {name}")
                results = await runner()
                runs[name].append(results)
                say(bc.format_results(results))
                errors, _ = bc.report_errors(results, say)
                failed = failed or errors
    except bc.BenchFailed as exc:
        say(f"FAILED: {exc}")
        return 1
    finally:
        for cleanup in cleanups:
            cleanup()
    say("")
    say(
        f"comparison: {args.runs} alternating run(s) of {', '.join(name for name, _ in systems)}; "
        f"3 members on 127.0.0.1; 16-byte keys, {args.value_bytes}-byte values; one client "
        f"process (this one; PySyncObj: its leader); {args.seconds:g} s windows"
    )
    table, data = format_summary(bc.phase_plan(args), runs)
    say(table)
    say(LEGEND.format(every=100 * (facts["usable_cpus"] or 1)))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "facts": facts,
                    "peers": versions,
                    "runs": {k: [[asdict(r) for r in rs] for rs in v] for k, v in runs.items()},
                    "summary": data,
                },
                f,
                indent=2,
            )
        say(f"wrote {args.json}")
    if args.plots:
        bc.write_histograms(args.plots, bc.phase_plan(args), runs, say)
    if failed:
        say("FAILED: unexpected errors (see above)")
        return 1
    return 0
