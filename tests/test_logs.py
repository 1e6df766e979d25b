"""serve's log output: JSON lines carrying the member's id, term and role; leader and
configuration changes logged once each."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys

import pytest
import trio

from copycat_trio.recipes.kv import KeyValueStore
from copycat_trio.testing import open_memory_cluster


async def test_serve_logs_json_lines_with_member_term_and_role() -> None:
    with trio.socket.socket() as probe:
        await probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = await trio.lowlevel.open_process(
        [
            sys.executable,
            "-m",
            "copycat_trio",
            "serve",
            "--id",
            "1",
            "--members",
            f"1=127.0.0.1:{port}",
            "--storage",
            "memory",
            "--log-format",
            "json",
            "--log-level",
            "debug",
        ],
        stdout=subprocess.DEVNULL,
        stderr=-1,
        env={**os.environ},
    )
    assert process.stderr is not None
    received = b""
    try:
        with trio.fail_after(30):
            while b"leader for term" not in received:
                chunk = await process.stderr.receive_some()
                assert chunk, received.decode()
                received += chunk
    finally:
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(10):
            await process.wait()
    lines = [json.loads(line) for line in received.decode().splitlines() if line.strip()]
    assert lines and all({"time", "level", "logger", "message"} <= set(e) for e in lines)
    elected = next(e for e in lines if "leader for term" in e["message"])
    assert (elected["member"], elected["level"]) == (1, "info"), elected
    assert {e["level"] for e in lines} <= {"debug", "info", "warning", "error"}


async def test_leader_and_configuration_changes_are_logged_once(
    autojump_clock: trio.abc.Clock, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="copycat_trio"):
        async with open_memory_cluster(3, KeyValueStore) as cluster:
            leader = await cluster.wait_for_leader()
            await trio.sleep(2)
            for member_id in cluster.all_ids():
                if member_id != leader:
                    following = f"member {member_id}: following leader {leader} in term"
                    assert caplog.text.count(following) == 1, caplog.text
            gone = next(i for i in cluster.all_ids() if i != leader)
            await cluster.servers[gone].leave()
            await trio.sleep(1)
            in_force = f"member {leader}: configuration"
            lines = [r.getMessage() for r in caplog.records if in_force in r.getMessage()]
            assert len(lines) == 1 and f"{gone}=" not in lines[0], lines
