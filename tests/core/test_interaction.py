"""The golden interaction scripts (tests/core/testdata/*.txt, see interaction.py): each must
print exactly what it says. After a deliberate change of behaviour, regenerate them with
`pytest tests/core/test_interaction.py --rewrite` (or COPYCAT_REWRITE=1) and read the diff."""

from __future__ import annotations

import difflib
import os
from pathlib import Path

import pytest

from .interaction import run_script

SCRIPTS = sorted((Path(__file__).parent / "testdata").glob("*.txt"))


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.stem for s in SCRIPTS])
def test_script(script: Path, request: pytest.FixtureRequest) -> None:
    expected = script.read_text()
    actual = run_script(expected)
    if request.config.getoption("--rewrite") or os.environ.get("COPYCAT_REWRITE") == "1":
        script.write_text(actual)
        return
    diff = "".join(
        difflib.unified_diff(
            expected.splitlines(keepends=True),
            actual.splitlines(keepends=True),
            f"{script.name} (expected)",
            f"{script.name} (got)",
        )
    )
    assert not diff, f"\n{diff}"


def test_there_are_scripts() -> None:
    assert len(SCRIPTS) >= 8
