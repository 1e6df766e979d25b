"""`benchmarks/bench_cluster.py --tls` and `--metrics-cost`: the two settings alternate,
counterbalanced, every row gets its ratio line and its per-round ratios, `--plots` draws a
histogram per row (or says in one line that matplotlib is missing), and nothing outlives the
benchmark."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.test_bench_compare import BENCH, TINY, environment, leftovers

sys.path.insert(0, str(BENCH.parent))
import bench_cluster
import variants


def result(op: str, tasks: int, ops_per_s: float) -> bench_cluster.PhaseResult:
    return bench_cluster.PhaseResult(op, tasks, ops_per_s=ops_per_s)


def test_the_settings_alternate_counterbalanced() -> None:
    assert variants.run_order(3, ("tls", "plaintext")) == [
        (0, "tls"),
        (0, "plaintext"),
        (1, "plaintext"),
        (1, "tls"),
        (2, "tls"),
        (2, "plaintext"),
    ]


def test_round_ratios_divide_the_runs_of_one_round_row_by_row() -> None:
    plan = [("put", 1), ("put", 64)]
    measured = [[result("put", 1, 90), result("put", 64, 950)], [result("put", 1, 80)]]
    baseline = [[result("put", 1, 100), result("put", 64, 1000)], [result("put", 1, 100)]]
    ratios = variants.round_ratios(plan, measured, baseline)
    assert ratios[("put", 1)] == pytest.approx([0.9, 0.8])
    assert ratios[("put", 64)] == pytest.approx([0.95])  # round 2 had no x64 row
    text, data = variants.format_rounds(plan, {"on": measured, "off": baseline}, ("on", "off"))
    first = text.splitlines()[0]
    assert "on/off per round: 0.90 0.80; median 0.850 (range 0.80-0.90)" in first
    assert "off runs alone differ by 0%" in first
    assert data["put x1"]["median"] == pytest.approx(0.85)
    assert variants.spread([100.0, 150.0, 50.0]) == pytest.approx(1.0)
    assert variants.spread([100.0]) is None


def test_cpu_per_operation_is_compared_round_by_round_too() -> None:
    def with_cpu(ops_per_s: float, leader: float) -> bench_cluster.PhaseResult:
        r = result("put", 1, ops_per_s)
        r.cpu = {"client": 10.0, "leader": leader, "follower2": 5.0, "machine": 200.0}
        return r

    # 100 ops/s at 10 + 20 + 5 % of a core = 3,500 µs per op; then 100 at 10 + 55 + 5: 7,000.
    ratios = variants.round_ratios(
        [("put", 1)], [[with_cpu(100, 55.0)]], [[with_cpu(100, 20.0)]], variants.cpu_per_op
    )
    assert ratios[("put", 1)] == pytest.approx([2.0])
    text, data = variants.format_rounds(
        [("put", 1)], {"on": [[with_cpu(100, 55.0)]], "off": [[with_cpu(100, 20.0)]]}, ("on", "off")
    )
    assert "cpu us/op (sum) per round: 2.00; median 2.000" in text.splitlines()[1]
    assert data["put x1"]["cpu_median"] == pytest.approx(2.0)
    assert "middle half 2.00-4.00" in variants.describe([1.0, 2.0, 3.0, 4.0, 5.0])


def test_the_median_of_the_rounds_gets_a_distribution_free_interval() -> None:
    ten = [1.0, 0.9, 1.1, 0.8, 1.2, 0.95, 1.05, 0.85, 1.15, 1.3]
    # Ten rounds: the 2nd and 9th smallest hold the median with 97.9% (the 3rd and 8th: 89%).
    assert variants.median_interval(ten) == (0.85, 1.2)
    assert variants.median_interval(ten[:6]) == (0.8, 1.2)  # 96.9%: the whole range
    assert variants.median_interval(ten[:5]) is None  # no pair of five reaches 95%
    assert "95% interval of the median 0.85-1.20" in variants.describe(ten)
    assert "interval" not in variants.describe(ten[:5])


def run_bench(tmp_path: Path, *options: str) -> str:
    plots = tmp_path / "plots"
    completed = subprocess.run(
        [sys.executable, str(BENCH), *options, "--writers", "1", *TINY, "--plots", str(plots)],
        env=environment(tmp_path),
        capture_output=True,
        text=True,
        timeout=180,
    )
    out = completed.stdout
    assert completed.returncode == 0, out + completed.stderr
    assert leftovers(tmp_path) == []
    plot_lines = [line for line in out.splitlines() if line.startswith("plots: ")]
    assert len(plot_lines) == 1, out
    if importlib.util.find_spec("matplotlib") is None:
        assert "skipped: matplotlib is not installed" in plot_lines[0]
    else:
        assert (plots / "latency-put-x1.png").read_bytes()[:4] == b"\x89PNG"
    return out


@pytest.mark.e2e
def test_tls_runs_each_row_with_and_without_tls_and_prints_the_ratio(tmp_path: Path) -> None:
    out = run_bench(tmp_path, "--tls", "--reads")
    runs = [line for line in out.splitlines() if line.startswith("--- run ")]
    assert [line.split(": ")[1].split(";")[0] for line in runs] == ["tls", "plaintext"], out
    servers = [line for line in out.splitlines() if line.startswith("servers: ")]
    assert ["TLS on" in line for line in servers] == [True, False], out
    ratios = [line.split() for line in out.splitlines() if "tls/plaintext" in line.split()[2:3]]
    assert [(r[0], r[1]) for r in ratios] == [
        ("put", "1"),
        ("get-lin", "1"),
        ("get-lease", "1"),
        ("get-seq", "1"),
    ], out
    for row in ratios:
        assert row[3].endswith("x") and float(row[3][:-1]) > 0, out
    assert "ops/s tls/plaintext per round: " in out


@pytest.mark.e2e
def test_metrics_cost_runs_the_rows_with_metrics_on_and_off(tmp_path: Path) -> None:
    out = run_bench(tmp_path, "--metrics-cost")
    servers = [line for line in out.splitlines() if line.startswith("servers: ")]
    assert ["metrics on" in line for line in servers] == [True, False], out
    assert any(line.split()[2:3] == ["metrics-on/metrics-off"] for line in out.splitlines()), out
    assert "ops/s metrics-on/metrics-off per round: " in out


def test_five_members_runs_the_rows_on_five_members_and_on_three(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The settings alternate as for --tls, each run asks for its cluster size, and the ratio
    lines read 5-members/3-members (the clusters themselves are BenchCluster's, which the
    --tls and --metrics-cost runs above start for real)."""
    asked: list[int] = []

    async def copycat_run(args: Any, facts: Any, say: Any, *, tls: bool, members: int) -> Any:
        asked.append(members)
        return [result("put", 1, 100.0 if members == 3 else 70.0)], []

    monkeypatch.setattr(bench_cluster, "copycat_run", copycat_run)
    args = bench_cluster.build_parser().parse_args(["--five-members", "--writers", "1"])
    args.storage = "disk"
    lines: list[str] = []
    monkeypatch.setattr("builtins.print", lambda *a, **k: lines.append(" ".join(map(str, a))))
    assert trio.run(variants.run_variants, args, {"usable_cpus": 2}) == 0
    assert asked == [5, 3, 3, 5]
    out = "\n".join(lines)
    assert "5 and 3 members on 127.0.0.1" in out
    assert "ops/s 5-members/3-members per round: 0.70 0.70" in out, out


def test_tls_and_metrics_cost_do_not_go_with_compare() -> None:
    completed = subprocess.run(
        [sys.executable, str(BENCH), "--tls", "--compare", "etcd"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode != 0
    assert "--compare runs with none of --tls, --metrics-cost, --five-members" in completed.stderr
