"""The command line: user mistakes give one line and a non-zero exit; the demo passes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

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
    assert "no member could be reached: 127.0.0.1:1" in result.stderr, result.stderr
    assert "Connection refused" in result.stderr and "Traceback" not in result.stderr


def test_an_unknown_host_is_named() -> None:
    result = run_cli("kv", "get", "k", "--cluster", "nosuch.invalid:1", "--timeout", "1")
    assert result.returncode == 1
    assert "nosuch.invalid:1 (unknown host" in result.stderr, result.stderr


def test_version() -> None:
    from copycat_trio import __version__

    result = run_cli("--version")
    assert (result.returncode, result.stdout.strip()) == (0, f"copycat-trio {__version__}")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["kv", "get", "k"], "kv needs --cluster"),
        (["status", "--cluster", "127.0.0.1:1", "--timeout", "0"], "--timeout must be positive"),
        (
            ["serve", "--id", "1", "--members", "1=127.0.0.1:1", "--election-timeout", "-1"],
            "election timeout must be positive",
        ),
    ],
)
def test_usage_errors_exit_2(args: list[str], message: str) -> None:
    result = run_cli(*args)
    env_free = "COPYCAT_CLUSTER" not in os.environ
    assert env_free and result.returncode == 2, result.stderr
    assert message in result.stderr


def test_serve_checks_everything_before_making_its_data_directory(tmp_path: Path) -> None:
    data = tmp_path / "data"
    for members in ("1=127.0.0.1:7001,1=127.0.0.1:7002", "1=127.0.0.1:7001,2=127.0.0.1:7001"):
        result = run_cli("serve", "--id", "1", "--members", members, "--data-dir", str(data))
        assert result.returncode == 2, result.stderr
        assert not data.exists(), f"{members}: {result.stderr}"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli(
            "serve", "--id", "1", "--members", f"1=127.0.0.1:{port}", "--data-dir", str(data)
        )
    assert result.returncode == 1 and f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert not data.exists()


def test_config_and_members_that_disagree(tmp_path: Path) -> None:
    config = tmp_path / "cluster.toml"
    config.write_text(
        '[[members]]\nid = 1\naddress = "127.0.0.1:7101"\n'
        '[[members]]\nid = 2\naddress = "127.0.0.1:7102"\n'
    )
    result = run_cli("serve", "--id", "1", "--config", str(config), "--members", "1=127.0.0.1:7201")
    assert result.returncode == 2
    assert "--members 1=127.0.0.1:7201 disagrees with the members of" in result.stderr
    assert "1=127.0.0.1:7101,2=127.0.0.1:7102" in result.stderr


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


def test_a_cluster_file_with_memory_storage_serves(tmp_path: Path) -> None:
    # It failed with "--data-dir goes with --storage disk": the file's directory was used anyway.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = tmp_path / "cluster.toml"
    config.write_text(
        f'[storage]\nlevel = "memory"\n[[members]]\nid = 1\naddress = "127.0.0.1:{port}"\n'
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "copycat_trio", "serve", "--id", "1", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert "member 1 serving at" in line and "memory" in line, line
    finally:
        process.terminate()
        process.wait(timeout=20)
    assert not (tmp_path / "copycat-data").exists()


def test_status_wait_waits_for_a_member_started_after_it(tmp_path: Path) -> None:
    """`status --wait` re-asks until a leader with a quorum answers: the README starts members
    in the background and runs a command at once, which failed when none was listening yet."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    address = f"127.0.0.1:{port}"
    cli = [sys.executable, "-m", "copycat_trio"]
    waiting = subprocess.Popen(
        [*cli, "status", "--cluster", address, "--wait", "--timeout", "40"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    server = None
    try:
        time.sleep(2.0)  # long enough for its first round to find nobody listening
        assert waiting.poll() is None, "it should still be waiting"
        server = subprocess.Popen(
            [*cli, "serve", "--id", "1", "--members", f"1={address}", "--storage", "memory"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=tmp_path,
        )
        out, err = waiting.communicate(timeout=60)
        assert waiting.returncode == 0, out + err
        assert "leader" in out
    finally:
        waiting.kill()
        waiting.wait()
        if server is not None:
            server.terminate()
            server.wait(timeout=20)


def test_tab_completion_offers_the_subcommands_and_their_options(tmp_path: Path) -> None:
    """With argcomplete (the optional extra `completion`), the shell hook gets candidates."""
    pytest.importorskip("argcomplete")  # the extra; the README's test command installs it
    out = tmp_path / "candidates"

    def complete(line: str) -> list[str]:
        env = dict(
            os.environ,
            _ARGCOMPLETE="1",
            COMP_LINE=line,
            COMP_POINT=str(len(line)),
            _ARGCOMPLETE_STDOUT_FILENAME=str(out),
        )
        subprocess.run(
            [sys.executable, "-m", "copycat_trio", "--"], env=env, timeout=60, check=False
        )
        return [candidate.strip() for candidate in out.read_text().split("\v")]

    assert complete("copycat-trio sta") == ["status"]
    assert "--wait" in complete("copycat-trio status --w")
