"""Helpers for the resources tests on real processes: resource_client.py processes, their output
line by line, and what the servers' JSON logs say of a dead lock holder's expiry."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path

import attrs
import trio

from tests.e2e.procs import ProcessCluster

RESOURCES = "copycat_trio.recipes:Resources"
HERE = Path(__file__).parent
CLIENT = HERE / "resource_client.py"
JSON_LOGS = ["--log-format", "json"]
"""`serve` options for logs whose millisecond timestamps `first_logged` reads."""
EXPIRED = r"session \d+ expired \(client .*\)"


class Lines:
    """A child process's stdout, line by line, each wait bounded."""

    def __init__(self, process: trio.Process) -> None:
        assert process.stdout is not None
        self.stream = process.stdout
        self.buffer = b""
        self.seen: list[str] = []

    async def next(self, timeout: float = 15.0) -> str:
        with trio.fail_after(timeout):
            while b"\n" not in self.buffer:
                data = await self.stream.receive_some()
                if not data:
                    raise EOFError(f"the process ended; it printed {self.seen}")
                self.buffer += data
        line, _, self.buffer = self.buffer.partition(b"\n")
        self.seen.append(line.decode())
        return self.seen[-1]


@asynccontextmanager
async def client_process(
    role: str, addresses: list[str], out: Path, count: int, session_timeout: float | None = None
) -> AsyncIterator[tuple[trio.Process, Lines]]:
    """A resource_client.py process in `role`, its stdout as lines; killed if still running.
    `session_timeout`: its client's (default: resource_client.py's for the role)."""
    timeout = [] if session_timeout is None else [str(session_timeout)]
    process = await trio.lowlevel.open_process(
        [sys.executable, str(CLIENT), role, ",".join(addresses), str(out), str(count), *timeout],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(HERE.parents[1])},
    )
    try:
        yield process, Lines(process)
    finally:
        if process.returncode is None:
            process.kill()
        with trio.CancelScope(shield=True):
            await process.wait()


def first_logged(cluster: ProcessCluster, member_id: int, pattern: str, after: float) -> float:
    """When (time.time()) `member_id` first logged a message matching `pattern` at or after
    `after` (to the millisecond); its servers must log JSON (JSON_LOGS)."""
    seen = []
    for line in cluster.servers[member_id].log_text().splitlines():
        with contextlib.suppress(ValueError):
            row = json.loads(line)
            if not isinstance(row, dict) or "time" not in row:
                continue
            at = datetime.fromisoformat(row["time"]).timestamp()
            seen.append(row["message"])
            if at >= after - 0.001 and re.fullmatch(pattern, row["message"]):
                return at
    raise AssertionError(f"member {member_id} never logged {pattern!r} after {after}: {seen}")


@attrs.frozen
class PassOn:
    """How a dead holder's lock passed on after the leader died with it, in seconds."""

    election: float
    """From the kills to the new leader's election."""
    expiry: float
    """From the election to the new leader's applying the holder's expiry."""
    passed: float
    """From the kills to the waiter's grant."""

    def __str__(self) -> str:
        return (
            f"new leader after {self.election:.3f}s, expiry {self.expiry:.3f}s after that, "
            f"lock passed on after {self.passed:.3f}s"
        )


async def check_pass_on_after_a_leader_kill(
    cluster: ProcessCluster, killed_at: float, granted_at: float, session_timeout: float
) -> PassOn:
    """Check the design's bound on a SIGKILLed holder's lock passing on when the leader was
    SIGKILLed with it (docs/resources.md, "When a dead holder's lock passes on"), part by
    part, with margins for a loaded two-core machine."""
    assert cluster.election_timeout is not None
    t, s = cluster.election_timeout, session_timeout
    new = (await cluster.wait_for_leader()).leader
    took_over = first_logged(cluster, new, rf"member {new}: leader for term \d+", killed_at)
    expired = first_logged(cluster, new, EXPIRED, took_over)
    pass_on = PassOn(took_over - killed_at, expired - took_over, granted_at - killed_at)
    print(f"holder and leader killed: {pass_on}")
    # A follower's election timeout, drawn from [T, 2T), runs from the last heartbeat (at most
    # one interval before the kill); then a poll and a vote round trip. A split vote (both
    # survivors time out within a round trip of each other: rare, likelier under load) costs
    # another [T, 2T).
    assert pass_on.election < 4 * t + 0.3, pass_on
    # The new leader gives every session a fresh timeout S at its first entry (so that no
    # client is expired for not reaching it during the election) and proposes the expiry when
    # S has passed in log time: applied one commit later. A leader polling for expiry every
    # P from its takeover is late by ceil(S / P) * P - S.
    assert s - 0.05 < pass_on.expiry < s + 0.25, pass_on
    # The grant is part of the command that expires the holder and reaches the waiter by event.
    # So under 2T + S after the kills when the first election round succeeds, plus round trips.
    assert pass_on.passed - pass_on.election - pass_on.expiry < 0.5, pass_on
    return pass_on
