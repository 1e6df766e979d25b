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
    ],
)
def test_example_runs(script: str, expected: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / script)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    for line in expected:
        assert line in result.stdout, result.stdout
