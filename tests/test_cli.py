"""The command line: user mistakes give one line and a non-zero exit; the demo passes."""

from __future__ import annotations

import subprocess
import sys

import pytest

from copycat_trio.cli import main, parse_members


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "copycat_trio", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["serve", "--id", "4", "--members", "1=127.0.0.1:1"], "--id 4 is not among the members"),
        (["serve", "--id", "1", "--members", "1=nowhere"], "--members"),
        (["serve", "--id", "1", "--members", "x=127.0.0.1:1"], "is not ID=HOST:PORT"),
        (
            ["serve", "--id", "1", "--members", "1=127.0.0.1:1", "--state-machine", "nope:X"],
            "cannot import nope",
        ),
        (
            ["serve", "--id", "1", "--members", "1=127.0.0.1:1", "--state-machine", "os:path"],
            "is not a StateMachine subclass",
        ),
        (
            ["serve", "--id", "1", "--members", "1=127.0.0.1:1", "--election-timeout", "0.1"],
            "at least twice the heartbeat",
        ),
        (["kv", "--cluster", "bad", "get", "k"], "--cluster"),
    ],
)
def test_mistakes_print_one_line_and_exit_non_zero(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code != 0
    err = capsys.readouterr().err.strip()
    assert message in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_members_parse() -> None:
    members = parse_members("1=127.0.0.1:5001, 2=127.0.0.1:5002")
    assert [(m.id, m.address) for m in members] == [(1, "127.0.0.1:5001"), (2, "127.0.0.1:5002")]


def test_kv_against_nobody_fails_cleanly() -> None:
    result = run_cli("kv", "--cluster", "127.0.0.1:1", "--timeout", "1", "get", "k")
    assert result.returncode == 1
    assert "NoLeaderError" in result.stderr and "Traceback" not in result.stderr


def test_status_against_nobody_reports_unreachable() -> None:
    result = run_cli("status", "--cluster", "127.0.0.1:1", "--json", "--timeout", "0.5")
    assert result.returncode == 1
    assert '"role": "unreachable"' in result.stdout


@pytest.mark.e2e
def test_demo_passes() -> None:
    result = run_cli("demo", "--writes", "20", timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "demo passed" in result.stdout
    assert "new leader: member" in result.stdout
