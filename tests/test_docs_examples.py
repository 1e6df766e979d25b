"""Every code block of the README and docs/*.md runs, as tests/docs_runner.py describes.

One test per markdown file runs its blocks in a process of its own (operations register wire
tags in a process-wide registry, and the docs reuse tags from one page to the next). A block the
docs mark `<!-- not run: reason -->` shows up as a skipped test naming its file, line and reason.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

from tests.docs_runner import parse

ROOT = pathlib.Path(__file__).parent.parent
# Pages still being written by other work, once their blocks follow the rules (none today).
NOT_YET: set[str] = set()
DOCS = ["README.md"] + [
    path.relative_to(ROOT).as_posix()
    for path in sorted((ROOT / "docs").glob("*.md"))
    if path.relative_to(ROOT).as_posix() not in NOT_YET
]


def _not_run() -> list[object]:
    return [
        pytest.param(block.not_run, id=f"{doc}:{block.line - 1}")
        for doc in DOCS
        for block in parse(str(ROOT / doc)).blocks
        if block.not_run is not None
    ]


@pytest.mark.parametrize("doc", DOCS)
def test_every_block_of_the_page_runs(doc: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tests.docs_runner", doc],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    failures = [line for line in result.stdout.splitlines() if line.startswith("FAIL")]
    assert result.returncode == 0, (
        f"{doc}: {len(failures)} block(s) failed: {failures}\n{result.stdout}\n{result.stderr}"
    )


@pytest.mark.parametrize("reason", _not_run())
def test_block_marked_not_run(request: pytest.FixtureRequest, reason: str) -> None:
    where = request.node.callspec.id
    pytest.skip(f"{where}: not run: {reason}")


def run_runner(page: pathlib.Path) -> subprocess.CompletedProcess[str]:
    """The docs runner on one page, as the tests above run it on each doc."""
    return subprocess.run(
        [sys.executable, "-m", "tests.docs_runner", str(page)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_runner_names_each_failing_block_and_lists_the_unrun(tmp_path: pathlib.Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "```python\nx = 1\n```\n\n"  # line 1
        "```python\nimport trio\nawait trio.sleep(1)\nassert x == 2, x\n```\n"  # line 5
        "```sh\nexit 3\n```\n\n"  # line 10
        "<!-- not run: too slow -->\n```sh\nsleep 1000\n```\n"  # line 15
    )
    result = run_runner(page)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"ok   {page}:1 python" in result.stdout
    assert f"FAIL {page}:5: the block above raised:" in result.stdout
    assert f'File "{page.resolve()}", line 8' in result.stdout  # the assert, in the page
    assert "AssertionError: 1" in result.stdout
    assert f"FAIL {page}:10: the block above raised:" in result.stdout
    assert f"not run {page}:15 sh: too slow" in result.stdout


def test_the_runner_parses_yaml_and_ini_blocks(tmp_path: pathlib.Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "```yaml\ngroups:\n  - name: ok\n```\n\n"  # line 1
        "```yaml\ngroups: [unclosed\n```\n\n"  # line 6
        "```ini\n[Service]\nExecStart=/bin/true \\\n    --flag\n```\n\n"  # line 10
        "```ini\nno section header\n```\n"  # line 16
    )
    result = run_runner(page)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"ok   {page}:1 yaml" in result.stdout
    assert f"FAIL {page}:6: the block above raised:" in result.stdout
    assert f"ok   {page}:10 ini" in result.stdout
    assert f"FAIL {page}:16: the block above raised:" in result.stdout
