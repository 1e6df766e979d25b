"""The examples in examples/ run and print what the docs say they print."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

EXAMPLES = pathlib.Path(__file__).parent.parent / "examples"


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ("bank.py", ["balance after failover: 60", "refused: ApplicationError"]),
        (
            "sessions_events.py",
            ["event: hello", "sequential: ['hello', 'world']", "b got the printer"],
        ),
        (
            # Real processes: a 3-member cluster, a producer and 3 workers (all stopped by
            # the example, within its 60 s bound, however it ends).
            "job_queue.py",
            [
                "all 20 jobs done once, by [",
                "ledger total: 2470 (expected 2470)",
                "workers still in the group: 0",
            ],
        ),
    ],
)
def test_example_runs(script: str, expected: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / script)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    for line in expected:
        assert line in result.stdout, result.stdout
