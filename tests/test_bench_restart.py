"""`benchmarks/restart.py`: a whole cluster restarted from a restored snapshot serves again, the
keys read back, and nothing outlives the benchmark."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_bench_compare import environment, leftovers

RESTART = Path(__file__).parent.parent / "benchmarks" / "restart.py"


@pytest.mark.e2e
def test_a_restart_from_a_restored_snapshot_is_timed_and_reads_back(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, str(RESTART), "--keys", "1000", "--log-entries", "20", "--runs", "1"],
        env=environment(tmp_path),
        capture_output=True,
        text=True,
        timeout=180,
    )
    out = completed.stdout
    assert completed.returncode == 0, out + completed.stderr
    assert "backup of 1000 keys" in out, out
    assert "run 1: SIGKILL all, restart, until every member applied all: " in out, out
    assert "median of 1: " in out, out
    assert leftovers(tmp_path) == []
