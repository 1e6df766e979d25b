"""`benchmarks/bench_cluster.py --compare etcd`: the ratio rows are printed, a missing etcd is
said in one line, and no process the benchmark started outlives it, Ctrl-C included.

Each run gets its own $TMPDIR, under which every server it starts keeps its data directory (so
the directory is on the server's command line): a process whose command line names it after
the benchmark has exited is a leftover.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

BENCH = Path(__file__).parent.parent / "benchmarks" / "bench_cluster.py"
TINY = [
    "--runs",
    "1",
    "--seconds",
    "0.3",
    "--warmup",
    "0.1",
    "--max-ops",
    "200",
    "--read-keys",
    "50",
]
SKIP_LINE = "comparison with etcd skipped"


def environment(tmp_path: Path, path: str | None = None) -> dict[str, str]:
    env = dict(os.environ, TMPDIR=str(tmp_path), PYTHONUNBUFFERED="1")
    if path is not None:
        env["PATH"] = path
    return env


@pytest.fixture(autouse=True)
def no_strays(tmp_path: Path) -> Iterator[None]:
    """Whatever a failed test leaves running is SIGKILLed (the checks below fail first)."""
    yield
    for line in leftovers(tmp_path):
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(line.split(":", 1)[0]), signal.SIGKILL)


def leftovers(tmp_path: Path) -> list[str]:
    """`pid: command line` of live processes that name the run's $TMPDIR."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(tmp_path) in cmdline:
            found.append(f"{entry.name}: {cmdline}")
    return found


def test_compare_etcd_prints_a_ratio_per_row_and_stops_everything(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(BENCH), "--compare", "etcd", "--writers", "2", "--reads", *TINY],
        env=environment(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert leftovers(tmp_path) == []
    if shutil.which("etcd") is None:  # nothing to compare with on this machine: it says so
        assert sum(SKIP_LINE in line for line in out.splitlines()) == 1, out
        return
    ratios = [line.split() for line in out.splitlines() if "copycat_trio/etcd" in line]
    assert [(r[0], r[1]) for r in ratios] == [("put", "2"), ("get-lin", "2"), ("get-seq", "2")]
    for row in ratios:
        assert row[3].endswith("x") and float(row[3][:-1]) > 0, out
    assert SKIP_LINE not in out


def test_compare_etcd_without_etcd_on_path_says_so_in_one_line(tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    result = subprocess.run(
        [sys.executable, str(BENCH), "--compare", "etcd", "--writers", "1", *TINY],
        env=environment(tmp_path, path=str(empty)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    skipped = [line for line in out.splitlines() if SKIP_LINE in line]
    assert len(skipped) == 1 and "etcd-server" in skipped[0], out
    assert "copycat_trio/etcd" not in out
    assert "put" in out  # copycat_trio's own table is still there
    assert leftovers(tmp_path) == []


def _default_sigint() -> None:
    """In the benchmark's process before it starts: SIGINT handled as by default and not
    blocked, whatever disposition or mask the test run passed on."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def test_ctrl_c_while_etcd_runs_stops_every_process(tmp_path: Path) -> None:
    """SIGINT once the peer's cluster is up (copycat_trio's, where etcd is not installed)."""
    marker = "etcd: " if shutil.which("etcd") else "servers: "
    process = subprocess.Popen(
        # A 5 s warm-up: the SIGINT must land while the peer runs (with TINY's 0.1 s one a
        # loaded machine let the benchmark finish first and exit 0).
        [sys.executable, str(BENCH), "--compare", "etcd", "--writers", "1", *TINY, "--warmup", "5"],
        env=environment(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # In two full runs the benchmark went on after the SIGINT and exited 0 (alone it
        # passes): an ignored or blocked SIGINT passed on to it is the likely cause, unconfirmed.
        preexec_fn=_default_sigint,
    )
    try:
        assert process.stdout is not None
        seen = []
        deadline = time.monotonic() + 60
        for line in process.stdout:  # ends when the benchmark exits
            seen.append(line)
            if line.startswith(marker):
                break
            assert time.monotonic() < deadline, "".join(seen)
        assert seen and seen[-1].startswith(marker), "".join(seen)
        assert leftovers(tmp_path), "the cluster should be running now"
        process.send_signal(signal.SIGINT)
        rest, _ = process.communicate(timeout=30)
        assert process.returncode == 130, "".join(seen) + rest
        assert leftovers(tmp_path) == []
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_summary_medians_each_follower_slot_across_runs_with_different_leaders() -> None:
    """Which members follow changes from run to run: the summary keeps one column per follower
    (in member order), not one per member that was ever a follower."""
    sys.path.insert(0, str(BENCH.parent))
    try:
        import bench_cluster as bc
        import compare
    finally:
        sys.path.remove(str(BENCH.parent))

    def run(cpu: dict[str, float | None]) -> list[bc.PhaseResult]:
        return [bc.PhaseResult("put", 1, ops=100, seconds=1.0, ops_per_s=100.0, cpu=cpu)]

    first = run({"client": 10.0, "leader": 40.0, "follower2": 20.0, "follower3": 30.0})
    second = run({"client": 10.0, "leader": 40.0, "follower1": 40.0, "follower2": 50.0})
    table, data = compare.format_summary([("put", 1)], {"copycat_trio": [first, second]})
    cpu = data["put x1"]["copycat_trio"]["cpu_us"]
    # 10% of a core over 100 ops/s = 1,000 us per op
    assert cpu == {
        "client": 1000.0,
        "leader": 4000.0,
        "follower#1": 3000.0,
        "follower#2": 4000.0,
        "sum": 12000.0,
    }
    assert "1000/4000/3000/4000" in table
