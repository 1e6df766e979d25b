"""Issue 12 on real processes: a SIGKILLed lock holder's lock passes to the next waiter within
the session timeout plus an election timeout, on a plain `serve` cluster (the resources
manager); and when the leader dies with the holder, within the bound that follows from how a new
leader treats sessions (docs/resources.md, "When a dead holder's lock passes on").

The servers log JSON, whose millisecond timestamps say when the new leader took over and when it
applied the holder's expiry: so the test checks the expiry itself, not only the sum of an
election (random in [T, 2T)), the expiry and the grant's delivery."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import pytest
import trio

from tests.e2e.conftest import StartCluster
from tests.e2e.procs import ProcessCluster
from tests.e2e.resource_procs import (
    EXPIRED,
    JSON_LOGS,
    RESOURCES,
    check_pass_on_after_a_leader_kill,
    client_process,
    first_logged,
)

pytestmark = pytest.mark.e2e

SESSION_TIMEOUT = 1.1
"""S: the holder's and the waiter's session timeout. Not a multiple of the interval at which
the leader used to poll for expiry (min(S_serve / 4, T) = 0.5 s, serve's default session timeout
being 5 s), so that a poll started at the takeover would miss the deadline by 0.4 s."""
ELECTION_TIMEOUT = 0.5
"""T: the servers' election timeout; a follower's own is drawn from [T, 2T)."""


@attrs.frozen
class KilledHolder:
    """A cluster whose `leader` led when the lock holder was SIGKILLed, at `killed_at`, and the
    waiter for the lock, which writes when it got it to `out` and exits."""

    cluster: ProcessCluster
    leader: int
    killed_at: float
    waiter: trio.Process
    out: Path

    async def granted_at(self) -> float:
        """When the waiter got the lock (time.time())."""
        with trio.fail_after(30):
            assert await self.waiter.wait() == 0
        return float(json.loads(self.out.read_text())["granted_at"])


@asynccontextmanager
async def killed_holder(start_cluster: StartCluster, tmp_path: Path) -> AsyncIterator[KilledHolder]:
    """A cluster, a client process holding lock "held", and another one waiting for it; the
    holder is SIGKILLed before this yields."""
    cluster = await start_cluster(
        state_machine=RESOURCES,
        election_timeout=ELECTION_TIMEOUT,
        serve_options=lambda _: JSON_LOGS,
    )
    leader = (await cluster.wait_for_leader()).leader
    addresses, out = cluster.addresses(), tmp_path / "waiter.json"
    holding = client_process("holder", addresses, tmp_path / "holder.json", 0, SESSION_TIMEOUT)
    async with holding as (holder, held):
        assert await held.next(timeout=20) == "ready"
        async with client_process("waiter", addresses, out, 0, SESSION_TIMEOUT) as waiting:
            assert await waiting[1].next(timeout=20) == "ready"
            holder.kill()
            yield KilledHolder(cluster, leader, time.time(), waiting[0], out)


async def test_a_killed_holders_lock_passes_on_within_its_session_timeout(
    start_cluster: StartCluster, tmp_path: Path
) -> None:
    async with killed_holder(start_cluster, tmp_path) as killed:
        passed = await killed.granted_at() - killed.killed_at
    cluster, leader = killed.cluster, killed.leader
    expired = first_logged(cluster, leader, EXPIRED, killed.killed_at) - killed.killed_at
    assert (await cluster.wait_for_leader()).leader == leader  # it led throughout
    print(f"holder killed: expired after {expired:.3f}s, lock passed on after {passed:.3f}s")
    # The holder's last keep-alive (they go every S/3) came at most S/3 before the kill, so its
    # session expires between 2S/3 and S after it, plus one commit; the grant is in the same
    # command and reaches the waiter by event. The issue asks for S + T.
    assert SESSION_TIMEOUT / 3 < expired < passed < SESSION_TIMEOUT + ELECTION_TIMEOUT, passed


async def test_a_holder_killed_with_the_leader_loses_its_lock_a_session_timeout_after_takeover(
    start_cluster: StartCluster, tmp_path: Path
) -> None:
    async with killed_holder(start_cluster, tmp_path) as killed:
        await killed.cluster.kill(killed.leader)
        granted = await killed.granted_at()
    # Under 2T + S, plus round trips (each part checked: see the function).
    pass_on = await check_pass_on_after_a_leader_kill(
        killed.cluster, killed.killed_at, granted, SESSION_TIMEOUT
    )
    # With the leader polling for expiry every 0.5 s from its takeover (before the expiry
    # followed the deadline) it came 1.5 s after the takeover, not S = 1.1 s.
    assert pass_on.expiry < 1.4, pass_on
