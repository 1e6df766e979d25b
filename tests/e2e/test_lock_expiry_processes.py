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


async def start(start_cluster: StartCluster) -> ProcessCluster:
    return await start_cluster(
        state_machine=RESOURCES,
        election_timeout=ELECTION_TIMEOUT,
        serve_options=lambda _: JSON_LOGS,
    )


@asynccontextmanager
async def holder_and_waiter(
    cluster: ProcessCluster, tmp_path: Path
) -> AsyncIterator[tuple[trio.Process, trio.Process, Path]]:
    """A client process holding lock "held", and another one waiting for it (whose result,
    with the time it was granted, goes to the path)."""
    addresses, out = cluster.addresses(), tmp_path / "waiter.json"
    holding = client_process("holder", addresses, tmp_path / "holder.json", 0, SESSION_TIMEOUT)
    async with holding as (holder, held):
        assert await held.next(timeout=20) == "ready"
        async with client_process("waiter", addresses, out, 0, SESSION_TIMEOUT) as waiting:
            assert await waiting[1].next(timeout=20) == "ready"
            yield holder, waiting[0], out


async def granted_at(waiter: trio.Process, out: Path) -> float:
    """When the waiter got the lock (it exits once it has)."""
    with trio.fail_after(30):
        assert await waiter.wait() == 0
    return float(json.loads(out.read_text())["granted_at"])


async def test_a_killed_holders_lock_passes_on_within_its_session_timeout(
    start_cluster: StartCluster, tmp_path: Path
) -> None:
    cluster = await start(start_cluster)
    leader = (await cluster.wait_for_leader()).leader
    async with holder_and_waiter(cluster, tmp_path) as (holder, waiter, out):
        holder.kill()
        killed_at = time.time()
        passed = await granted_at(waiter, out) - killed_at
    expired = first_logged(cluster, leader, EXPIRED, killed_at) - killed_at
    assert (await cluster.wait_for_leader()).leader == leader  # it led throughout
    print(f"holder killed: expired after {expired:.3f}s, lock passed on after {passed:.3f}s")
    # The holder's last keep-alive (they go every S/3) came at most S/3 before the kill, so its
    # session expires between 2S/3 and S after it, plus one commit; the grant is in the same
    # command and reaches the waiter by event. The issue asks for S + T.
    assert SESSION_TIMEOUT / 3 < expired < passed < SESSION_TIMEOUT + ELECTION_TIMEOUT, passed


async def test_a_holder_killed_with_the_leader_loses_its_lock_a_session_timeout_after_takeover(
    start_cluster: StartCluster, tmp_path: Path
) -> None:
    cluster = await start(start_cluster)
    leader = (await cluster.wait_for_leader()).leader
    async with holder_and_waiter(cluster, tmp_path) as (holder, waiter, out):
        holder.kill()
        killed_at = time.time()
        await cluster.kill(leader)
        granted = await granted_at(waiter, out)
    # Under 2T + S, plus round trips (each part checked: see the function).
    pass_on = await check_pass_on_after_a_leader_kill(cluster, killed_at, granted, SESSION_TIMEOUT)
    # With the leader polling for expiry every 0.5 s from its takeover (before the expiry
    # followed the deadline) it came 1.5 s after the takeover, not S = 1.1 s.
    assert pass_on.expiry < 1.4, pass_on
