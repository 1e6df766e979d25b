"""Pictures of a nemesis run and of benchmark latencies (the optional extra `copycat-trio[plots]`).

Two halves. The data preparation is pure (no matplotlib, no I/O) and always tested: which point
each operation becomes, how many operations finished in each second, which latency bin each
benchmark operation falls in. The drawing half imports matplotlib only when called; where it is
not installed, `matplotlib_missing()` says so in a sentence and the callers print that one line
instead of drawing.

- nemesis: `latency.png`, every operation at (time invoked, latency), coloured by outcome (ok,
  failed, unknown: drawn at the workload's operation timeout, since it never answered), with the
  fault windows shaded; `throughput.png`, operations finished per second by outcome, same shading.
- benchmark: one latency histogram per row (op, tasks), log-spaced bins, one outline per system
  or variant when several ran.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import attrs

from .history import Operation, Outcome

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = [
    "HISTOGRAM_EDGES_MS",
    "FaultWindow",
    "draw_latency_histogram",
    "draw_nemesis",
    "latency_histogram",
    "latency_points",
    "matplotlib_missing",
    "merge_histograms",
    "throughput_series",
]

OUTCOME_COLOURS = {"ok": "tab:blue", "failed": "tab:orange", "unknown": "tab:red"}
"""The colour of each outcome in the nemesis plots (also their legend order)."""

BINS_PER_DECADE = 10
LOWEST_MS = 0.01
HIGHEST_MS = 100_000.0
HISTOGRAM_EDGES_MS: tuple[float, ...] = tuple(
    LOWEST_MS * 10 ** (i / BINS_PER_DECADE)
    for i in range(round(math.log10(HIGHEST_MS / LOWEST_MS) * BINS_PER_DECADE) + 1)
)
"""Fixed, log-spaced bin edges (10 µs to 100 s, ten per decade): histograms of different runs
share them, so they add up bin by bin."""


@attrs.frozen
class FaultWindow:
    """One fault of a run: what it was and when it began and was healed (run seconds)."""

    fault: str
    began: float
    ended: float


# --- data preparation (pure) ----------------------------------------------------------------


def latency_points(
    operations: Iterable[Operation], unknown_latency: float
) -> dict[str, tuple[list[float], list[float]]]:
    """Per outcome, the (time invoked, latency in seconds) of every operation. An operation of
    unknown outcome has no latency: it is drawn at `unknown_latency` (the timeout after which
    its client gave up), so that it shows where it happened."""
    points: dict[str, tuple[list[float], list[float]]] = {o.value: ([], []) for o in Outcome}
    for op in operations:
        xs, ys = points[op.outcome.value]
        xs.append(op.invoked)
        if op.outcome is Outcome.UNKNOWN or op.completed is None:
            ys.append(unknown_latency)
        else:
            ys.append(op.completed - op.invoked)
    return points


def throughput_series(
    operations: Iterable[Operation], bucket: float = 1.0
) -> tuple[list[float], dict[str, list[float]]]:
    """Operations per second in consecutive buckets of `bucket` seconds from time 0, by outcome:
    the buckets' start times and, per outcome, each bucket's rate. An operation counts when it
    finished (ok, failed) or, having no end, when it was invoked (unknown)."""
    if bucket <= 0:
        raise ValueError(f"bucket must be positive, not {bucket}")
    counts: dict[str, list[int]] = {o.value: [] for o in Outcome}
    for op in operations:
        at = op.invoked if op.completed is None else op.completed
        index = max(0, math.floor(at / bucket))
        series = counts[op.outcome.value]
        if index >= len(series):
            series.extend([0] * (index + 1 - len(series)))
        series[index] += 1
    length = max((len(s) for s in counts.values()), default=0)
    rates = {
        outcome: [n / bucket for n in series] + [0.0] * (length - len(series))
        for outcome, series in counts.items()
    }
    return [i * bucket for i in range(length)], rates


def latency_histogram(latencies_ms: Iterable[float]) -> list[int]:
    """How many latencies fall in each bin of HISTOGRAM_EDGES_MS (lower edge inclusive); those
    below the lowest edge count in the first bin, those above the highest in the last."""
    counts = [0] * (len(HISTOGRAM_EDGES_MS) - 1)
    last = len(counts) - 1
    for value in latencies_ms:
        index = bisect.bisect_right(HISTOGRAM_EDGES_MS, value) - 1
        counts[min(max(index, 0), last)] += 1
    return counts


def merge_histograms(histograms: Iterable[Sequence[int]]) -> list[int]:
    """Bin-by-bin sums of histograms on HISTOGRAM_EDGES_MS (empty ones are skipped)."""
    total = [0] * (len(HISTOGRAM_EDGES_MS) - 1)
    for counts in histograms:
        if not counts:
            continue
        if len(counts) != len(total):
            raise ValueError(f"a histogram of {len(counts)} bins, not {len(total)}")
        total = [a + b for a, b in zip(total, counts, strict=True)]
    return total


def occupied_range(histograms: Iterable[Sequence[int]]) -> tuple[int, int] | None:
    """The first and one past the last bin that any of the histograms uses (None: all empty),
    so a plot shows the latencies that occurred and not eight empty decades."""
    used = [i for counts in histograms for i, n in enumerate(counts) if n]
    return (min(used), max(used) + 1) if used else None


# --- drawing (matplotlib, optional) ---------------------------------------------------------


def matplotlib_missing() -> str | None:
    """None when matplotlib can be imported; otherwise the one line to print instead of a plot."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return "matplotlib is not installed (pip install 'copycat-trio[plots]')"
    return None


def _shade(axes: Axes, windows: Sequence[FaultWindow]) -> None:
    """Grey bands over the fault windows, each labelled with its fault at the top."""
    for window in windows:
        axes.axvspan(window.began, window.ended, color="0.85", zorder=0)
        axes.text(
            window.began,
            1.0,
            window.fault,
            transform=axes.get_xaxis_transform(),
            rotation=90,
            fontsize=6,
            va="top",
            ha="left",
            color="0.35",
        )


def draw_nemesis(
    operations: Sequence[Operation],
    windows: Sequence[FaultWindow],
    directory: Path,
    *,
    title: str,
    unknown_latency: float,
    prefix: str = "",
) -> list[Path]:
    """Write `{prefix}latency.png` and `{prefix}throughput.png` into `directory`; their paths.
    Needs matplotlib (check matplotlib_missing() first)."""
    from matplotlib.figure import Figure

    directory.mkdir(parents=True, exist_ok=True)
    written = []

    figure = Figure(figsize=(11, 5), layout="constrained")
    axes = figure.add_subplot()
    _shade(axes, windows)
    for outcome, (xs, ys) in latency_points(operations, unknown_latency).items():
        if xs:
            axes.scatter(
                xs,
                ys,
                s=4,
                marker="x" if outcome == "unknown" else "o",
                color=OUTCOME_COLOURS[outcome],
                label=f"{outcome} ({len(xs)})",
                linewidths=0.6 if outcome == "unknown" else None,
            )
    axes.set_yscale("log")
    axes.set_xlabel("seconds since the run began (operation invoked)")
    axes.set_ylabel("latency, s (unknown: drawn at the timeout)")
    axes.set_title(f"{title}: latency of every operation; grey: faults")
    axes.legend(loc="upper right", fontsize=8, markerscale=3)
    path = directory / f"{prefix}latency.png"
    figure.savefig(path, dpi=110)
    written.append(path)

    starts, rates = throughput_series(operations)
    figure = Figure(figsize=(11, 4), layout="constrained")
    axes = figure.add_subplot()
    _shade(axes, windows)
    for outcome, series in rates.items():
        if any(series):
            axes.step(
                starts,
                series,
                where="post",
                color=OUTCOME_COLOURS[outcome],
                label=outcome,
                linewidth=1,
            )
    axes.set_xlabel("seconds since the run began (operation finished; unknown: invoked)")
    axes.set_ylabel("operations per second")
    axes.set_title(f"{title}: throughput by outcome; grey: faults")
    axes.legend(loc="upper right", fontsize=8)
    path = directory / f"{prefix}throughput.png"
    figure.savefig(path, dpi=110)
    written.append(path)
    return written


def _minor_label(value: float, _position: object) -> str:
    """Plain numbers at 2x and 5x each power of ten; the other minor ticks stay unlabelled."""
    if value <= 0:
        return ""
    leading = round(value / 10 ** math.floor(math.log10(value) + 1e-9), 6)
    return f"{value:g}" if leading in (2.0, 5.0) else ""


def draw_latency_histogram(
    series: Mapping[str, Sequence[int]], path: Path, *, title: str
) -> Path | None:
    """One benchmark row's latency histogram: a step outline per named series (a system or a
    variant; the share of its operations in each bin, so series of different sizes compare),
    over the bins any of them used. Writes `path` (None if every series is empty).
    Needs matplotlib."""
    from matplotlib.figure import Figure

    span = occupied_range(series.values())
    if span is None:
        return None
    lo, hi = span
    edges = list(HISTOGRAM_EDGES_MS[lo : hi + 1])
    from matplotlib.ticker import FuncFormatter

    figure = Figure(figsize=(8, 4), layout="constrained")
    axes = figure.add_subplot()
    for name, counts in series.items():
        total = sum(counts)
        if not total:
            continue
        shares = [100 * n / total for n in counts[lo:hi]]
        axes.stairs(shares, edges, label=f"{name} ({total} ops)", linewidth=1.2)
    axes.set_xscale("log")
    axes.xaxis.set_major_formatter(FuncFormatter(lambda value, _position: f"{value:g}"))
    axes.xaxis.set_minor_formatter(FuncFormatter(_minor_label))
    axes.tick_params(axis="x", which="minor", labelsize=7)
    axes.set_xlabel("latency, ms (log-spaced bins, 10 per decade)")
    axes.set_ylabel("share of the operations, %")
    axes.set_title(title)
    axes.legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    return path
