"""The nemesis's pictures: where they go, the one line said instead when there are none, and
(where the `plots` extra is installed) that both files are drawn from a run's report."""

from __future__ import annotations

from pathlib import Path

import pytest

from copycat_trio.testing import nemesis
from copycat_trio.testing.nemesis import NemesisConfig, NemesisReport, plots_directory, write_plots
from copycat_trio.testing.plots import FaultWindow
from tests.testing.test_plots import small_history


def report(workdir: Path) -> NemesisReport:
    ops = small_history().operations()
    return NemesisReport(
        config=NemesisConfig(seed=7),
        workdir=workdir,
        netns=False,
        netns_note="not played",
        schedule=[],
        problems=[],
        check=None,
        operations=len(ops),
        outcomes={},
        terms=1,
        seconds=3.0,
        fault_windows=[FaultWindow("pause", 0.8, 1.9)],
        history=ops,
    )


def test_plots_go_to_the_given_directory_or_a_kept_work_directory(tmp_path: Path) -> None:
    work, elsewhere = tmp_path / "seed7", tmp_path / "plots"
    assert plots_directory(elsewhere, work, kept=False) == elsewhere
    assert plots_directory(None, work, kept=True) == work
    assert plots_directory(None, work, kept=False) is None


def test_without_a_directory_or_matplotlib_one_line_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    line = write_plots(report(tmp_path), None)
    assert line.startswith("plots: none") and "--plots DIR" in line
    monkeypatch.setattr(nemesis, "matplotlib_missing", lambda: "matplotlib is not installed")
    assert write_plots(report(tmp_path), tmp_path) == "plots: skipped: matplotlib is not installed"
    assert list(tmp_path.iterdir()) == []


def test_both_plots_are_drawn_from_a_report(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="the optional extra copycat-trio[plots]")
    line = write_plots(report(tmp_path), tmp_path / "out")
    latency, throughput = (
        tmp_path / "out" / "seed7-latency.png",
        tmp_path / "out" / "seed7-throughput.png",
    )
    assert line == f"plots: {latency}, {throughput}"
    assert latency.read_bytes()[:4] == throughput.read_bytes()[:4] == b"\x89PNG"
