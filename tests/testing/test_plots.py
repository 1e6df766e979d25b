"""The plots' data preparation (runs without matplotlib) and, where the `plots` extra is
installed, that the drawings are written as PNG files."""

from __future__ import annotations

from pathlib import Path

import pytest

from copycat_trio.testing.history import History, OpKind
from copycat_trio.testing.plots import (
    HISTOGRAM_EDGES_MS,
    FaultWindow,
    latency_histogram,
    latency_points,
    matplotlib_missing,
    merge_histograms,
    occupied_range,
    throughput_series,
)


def small_history() -> History:
    """ok at 0.5->0.7 and 1.2->2.5, failed at 1.0->1.1, unknown invoked at 2.0."""
    now = [0.0]
    history = History(clock=lambda: now[0])
    a = history.invoke(1, OpKind.PUT, "k", 1, time=0.5)
    history.complete(a, None, time=0.7)
    b = history.invoke(2, OpKind.PUT, "k", 2, time=1.0)
    history.fail(b, time=1.1)
    c = history.invoke(3, OpKind.GET, "k", time=1.2)
    history.complete(c, 1, time=2.5)
    history.invoke(4, OpKind.PUT, "k", 3, time=2.0)  # never answered: unknown
    return history


def test_latency_points_put_each_outcome_in_its_series_and_unknowns_at_the_timeout() -> None:
    points = latency_points(small_history().operations(), unknown_latency=3.0)
    assert set(points) == {"ok", "failed", "unknown"}
    xs, ys = points["ok"]
    assert xs == [0.5, 1.2] and ys == pytest.approx([0.2, 1.3])
    assert points["failed"][0] == [1.0] and points["failed"][1] == pytest.approx([0.1])
    assert points["unknown"] == ([2.0], [3.0])


def test_throughput_counts_finished_operations_per_bucket_and_unknowns_when_invoked() -> None:
    starts, rates = throughput_series(small_history().operations(), bucket=1.0)
    assert starts == [0.0, 1.0, 2.0]
    assert rates["ok"] == [1.0, 0.0, 1.0]  # finished at 0.7 and at 2.5
    assert rates["failed"] == [0.0, 1.0, 0.0]  # finished at 1.1
    assert rates["unknown"] == [0.0, 0.0, 1.0]  # invoked at 2.0
    starts, rates = throughput_series(small_history().operations(), bucket=0.5)
    assert len(starts) == 6 and rates["ok"][1] == 2.0  # one op in half a second: 2/s
    with pytest.raises(ValueError):
        throughput_series([], bucket=0)
    assert throughput_series([]) == ([], {"ok": [], "failed": [], "unknown": []})


def test_latency_histogram_uses_fixed_log_bins_that_add_up_across_runs() -> None:
    edges = HISTOGRAM_EDGES_MS
    assert edges[0] == pytest.approx(0.01) and edges[-1] == pytest.approx(100_000.0)
    assert edges[10] == pytest.approx(0.1)  # ten bins per decade
    counts = latency_histogram([0.001, 1.0, 1.0, 1.1, 5.0, 1e9])
    assert sum(counts) == 6
    assert counts[0] == 1 and counts[-1] == 1  # out of range: clamped to the end bins
    one_ms = next(i for i, e in enumerate(edges) if e == pytest.approx(1.0))
    assert counts[one_ms] == 3  # 1.0, 1.0 and 1.1 lie in [1.0, 1.259)
    assert merge_histograms([counts, [], counts]) == [2 * n for n in counts]
    with pytest.raises(ValueError):
        merge_histograms([[1, 2]])
    assert occupied_range([counts]) == (0, len(counts))
    assert occupied_range([latency_histogram([1.0]), latency_histogram([])]) == (
        one_ms,
        one_ms + 1,
    )
    assert occupied_range([[0, 0]]) is None


def test_the_drawings_are_written_as_png_files(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="the optional extra copycat-trio[plots]")
    from copycat_trio.testing.plots import draw_latency_histogram, draw_nemesis

    assert matplotlib_missing() is None
    written = draw_nemesis(
        small_history().operations(),
        [FaultWindow("kill", 0.8, 1.6), FaultWindow("pause", 2.1, 2.4)],
        tmp_path,
        title="seed 1",
        unknown_latency=3.0,
        prefix="seed1-",
    )
    assert [p.name for p in written] == ["seed1-latency.png", "seed1-throughput.png"]
    for path in written:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    histogram = draw_latency_histogram(
        {"plaintext": latency_histogram([1.0, 2.0]), "tls": latency_histogram([3.0])},
        tmp_path / "latency-put-x1.png",
        title="put x1",
    )
    assert histogram is not None and histogram.read_bytes()[:4] == b"\x89PNG"
    assert draw_latency_histogram({"a": [0] * 3}, tmp_path / "empty.png", title="t") is None
