"""`bench_cluster.py --tls`, `--metrics-cost`, `--five-members`: one setting against its
baseline, side by side.

  --tls           "tls": members and client speak mutual TLS (trustme certificates made for
                  each run) against "plaintext"
  --metrics-cost  "metrics-on": every member runs `serve --metrics-address` (not scraped, as
                  when nobody has come to look yet; the counters still move on every command)
                  against "metrics-off"
  --five-members  "5-members": a cluster of five members against "3-members" (the client
                  and all the members share the machine's cores: read CPU per operation too)

Each run starts a fresh cluster (three members unless the setting says five), runs every phase
of the plan, prints its table and stops the cluster; the two settings alternate for --runs
rounds, counterbalanced (A B, B A, A B, ...) so that neither always goes first. The closing
table is compare.py's (medians, each run's ops/s in brackets, CPU per operation, the ratio of
the medians), followed by the ratios of throughput and of CPU per operation within each round
(the two runs of a round ran back to back, so they saw the most similar machine), their median,
range and middle half, and how far the baseline's own runs spread.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

import bench_cluster as bc
import compare

SETTINGS = {
    "tls": ("tls", "plaintext"),
    "metrics-cost": ("metrics-on", "metrics-off"),
    "five-members": ("5-members", "3-members"),
}
"""Per option: (the setting measured, the baseline); ratios are measured / baseline."""


def run_order(rounds: int, names: tuple[str, str]) -> list[tuple[int, str]]:
    """(round, setting) in the order run: A B, B A, A B, ... (counterbalanced alternation)."""
    first, second = names
    order = []
    for n in range(rounds):
        pair = (first, second) if n % 2 == 0 else (second, first)
        order += [(n, name) for name in pair]
    return order


def throughput(result: bc.PhaseResult) -> float | None:
    return result.ops_per_s


def cpu_per_op(result: bc.PhaseResult) -> float | None:
    """The four processes' CPU per operation, summed (µs)."""
    return compare.cpu_us_per_op(result).get("sum")


def round_ratios(
    plan: Sequence[tuple[str, int]],
    measured: Sequence[Sequence[bc.PhaseResult]],
    baseline: Sequence[Sequence[bc.PhaseResult]],
    measure: Callable[[bc.PhaseResult], float | None] = throughput,
) -> dict[tuple[str, int], list[float]]:
    """Per row, measure(measured) / measure(baseline) of each round that has both (rounds in
    order); the measure is ops/s unless given."""

    def value(results: Sequence[bc.PhaseResult], op: str, tasks: int) -> float | None:
        found = [measure(r) for r in results if (r.op, r.tasks) == (op, tasks)]
        return found[0] if found else None

    out: dict[tuple[str, int], list[float]] = {}
    for op, tasks in plan:
        ratios = []
        for ours, theirs in zip(measured, baseline, strict=False):
            r = compare.ratio(value(ours, op, tasks), value(theirs, op, tasks))
            if r is not None:
                ratios.append(r)
        out[(op, tasks)] = ratios
    return out


def spread(values: Sequence[float]) -> float | None:
    """(max - min) / median of a setting's runs: how much one run differs from another."""
    if len(values) < 2 or statistics.median(values) == 0:
        return None
    return (max(values) - min(values)) / statistics.median(values)


def median_interval(
    values: Sequence[float], confidence: float = 0.95
) -> tuple[float, float] | None:
    """The narrowest pair of order statistics (k-th smallest, k-th largest) that holds the true
    median with at least `confidence`, whatever the distribution (the sign test's interval: the
    chance that k or more values fall on each side is 1 - 2 P(Binomial(n, 1/2) < k)); None when
    there are too few values (under six for 95%)."""
    n = len(values)
    below = 0.0  # P(Binomial(n, 1/2) < k)
    best = None
    for k in range(1, n // 2 + 1):
        below += math.comb(n, k - 1) / 2**n
        if 1 - 2 * below < confidence:
            break
        best = k
    if best is None:
        return None
    ordered = sorted(values)
    return ordered[best - 1], ordered[n - best]


def describe(values: Sequence[float]) -> str:
    """Each value, their median, their range, (from four on) their middle half and (from six
    on) the 95% interval of their median."""
    text = " ".join(f"{v:.2f}" for v in values) + f"; median {statistics.median(values):.3f}"
    text += f" (range {min(values):.2f}-{max(values):.2f}"
    if len(values) >= 4:
        low, _, high = statistics.quantiles(values, n=4, method="inclusive")
        text += f", middle half {low:.2f}-{high:.2f}"
    interval = median_interval(values)
    if interval is not None:
        text += f", 95% interval of the median {interval[0]:.2f}-{interval[1]:.2f}"
    return text + ")"


def format_rounds(
    plan: Sequence[tuple[str, int]],
    runs: dict[str, list[list[bc.PhaseResult]]],
    names: tuple[str, str],
) -> tuple[str, dict[str, Any]]:
    """Two lines per row: the per-round ratios of throughput and of CPU per operation, each
    with its median and range, and the baseline's own spread; and the same as data."""
    measured, baseline = names
    ratios = round_ratios(plan, runs[measured], runs[baseline])
    cpu_ratios = round_ratios(plan, runs[measured], runs[baseline], cpu_per_op)
    lines = []
    data: dict[str, Any] = {}
    for op, tasks in plan:
        values = ratios[(op, tasks)]
        if not values:
            continue
        base = [
            r.ops_per_s
            for results in runs[baseline]
            for r in results
            if (r.op, r.tasks) == (op, tasks)
        ]
        base_spread = spread(base)
        lines.append(
            f"{op:9} x{tasks:<4} ops/s {measured}/{baseline} per round: {describe(values)}"
            + (
                ""
                if base_spread is None
                else f"; {baseline} runs alone differ by {100 * base_spread:.0f}% (max-min)/median"
            )
        )
        cpu = cpu_ratios[(op, tasks)]
        if cpu:
            lines.append(f"{'':15} cpu us/op (sum) per round: {describe(cpu)}")
        data[f"{op} x{tasks}"] = {
            "round_ratios": values,
            "median": statistics.median(values),
            "baseline_spread": base_spread,
            "cpu_round_ratios": cpu,
            "cpu_median": statistics.median(cpu) if cpu else None,
        }
    return "\n".join(lines), data


async def run_variants(args: argparse.Namespace, facts: dict[str, Any]) -> int:
    say = print
    option = "tls" if args.tls else "metrics-cost" if args.metrics_cost else "five-members"
    names = SETTINGS[option]
    runs: dict[str, list[list[bc.PhaseResult]]] = {name: [] for name in names}
    order = run_order(args.runs, names)
    failed = False
    try:
        for i, (n, name) in enumerate(order):
            say(f"--- run {i + 1} of {len(order)} (round {n + 1}): {name}; load {load()}")
            setting = copy.copy(args)
            setting.metrics = name == "metrics-on"
            members = 5 if name == "5-members" else 3
            results, rows = await bc.copycat_run(
                setting, facts, say, tls=name == "tls", members=members
            )
            if rows:
                say(f"final status: {rows}")
            runs[name].append(results)
            say(bc.format_results(results))
            errors, _ = bc.report_errors(results, say)
            failed = failed or errors
    except bc.BenchFailed as exc:
        say(f"FAILED: {exc}")
        return 1
    plan = bc.phase_plan(args)
    members_text = "5 and 3 members" if option == "five-members" else "3 members"
    say("")
    say(
        f"{option}: {args.runs} round(s) of {names[0]} and {names[1]}, alternating "
        f"(A B, B A, ...); {members_text} on 127.0.0.1, {args.storage} storage; 16-byte keys, "
        f"{args.value_bytes}-byte values; one client process; {args.seconds:g} s windows; "
        f"load at the end {load()}"
    )
    table, summary = compare.format_summary(plan, runs, ours=names[0])
    say(table)
    say(
        f"medians of each setting's runs; (runs): each run's ops/s in the order run; cpu us/op: "
        f"CPU time per operation of the client / leader / followers; sum: all of them; box%: the "
        f"whole machine's busy time ({100 * (facts['usable_cpus'] or 1)} = every core); ratio "
        f"lines: {names[0]} / {names[1]} (ops/s below 1, latency and CPU above 1: what "
        f"{names[0]} costs)"
    )
    rounds, round_data = format_rounds(plan, runs, names)
    say(rounds)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "facts": facts,
                    "order": order,
                    "runs": {k: [[asdict(r) for r in rs] for rs in v] for k, v in runs.items()},
                    "summary": summary,
                    "rounds": round_data,
                },
                f,
                indent=2,
            )
        say(f"wrote {args.json}")
    if args.plots:
        bc.write_histograms(args.plots, plan, runs, say)
    if failed:
        say("FAILED: unexpected errors (see above)")
        return 1
    return 0


def load() -> str:
    """The 1, 5 and 15 minute load averages, as uptime prints them."""
    return " ".join(f"{v:.2f}" for v in os.getloadavg())
