"""Durability with real processes: SIGKILL and restart under a write load, damaged files.

Members use disk storage in the test's directory and snapshot often, so restarts go through
snapshots and compaction as well as the log.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import trio

from copycat_trio import Consistency, OutcomeUnknownError, open_client
from tests.e2e.appendlog import Append, Items
from tests.e2e.procs import REPO_ROOT, ProcessCluster

pytestmark = pytest.mark.e2e


class Writer:
    """Appends numbered values from one session until stopped (bounded in count and time)."""

    def __init__(self, addresses: list[str]) -> None:
        self.addresses = addresses
        self.acknowledged: list[str] = []
        self.unknown: list[str] = []
        self.stop = trio.Event()

    async def run(self, *, limit: int = 3000) -> None:
        async with open_client(self.addresses, timeout=30, session_timeout=10) as client:
            for i in range(limit):
                if self.stop.is_set():
                    return
                value = f"w{i}"
                try:
                    await client.submit(Append(value))
                    self.acknowledged.append(value)
                except OutcomeUnknownError:
                    self.unknown.append(value)
                await trio.sleep(0.005)

    async def wait_for(self, count: int, timeout: float = 30) -> None:
        with trio.fail_after(timeout):
            while len(self.acknowledged) < count:
                await trio.sleep(0.02)


async def caught_up(cluster: ProcessCluster, timeout: float = 30) -> None:
    """Wait until every running member has applied what the leader has committed."""
    with trio.fail_after(timeout):
        while True:
            rows = await cluster.status()
            leaders = [r for r in rows if r["role"] == "leader"]
            if leaders and all(
                r["applied_index"] is not None and r["applied_index"] >= leaders[0]["commit_index"]
                for r in rows
            ):
                return
            await trio.sleep(0.05)


async def check_everything(cluster: ProcessCluster, writer: Writer) -> list[str]:
    async with open_client(cluster.addresses()) as client:
        items = await client.submit(Items())
    counts = Counter(items)
    for value in writer.acknowledged:
        assert counts[value] == 1, f"acknowledged {value} appears {counts[value]} times"
    assert all(n == 1 for n in counts.values()), "a value was applied twice"
    positions = [items.index(v) for v in writer.acknowledged]
    assert positions == sorted(positions), "acknowledged appends out of order"
    await caught_up(cluster)
    for member_id in cluster.ids():
        async with open_client([cluster.address(member_id)]) as client:
            replica = await client.submit(Items(), consistency=Consistency.SEQUENTIAL)
        assert replica[: len(items)] == items, f"member {member_id} diverged"
    return items


async def test_sigkill_and_restart_under_load_loses_no_acknowledged_write(
    start_cluster,
) -> None:
    cluster: ProcessCluster = await start_cluster(snapshot_every=150)
    writer = Writer(cluster.addresses())
    with trio.fail_after(150):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer.run)
            await writer.wait_for(100)
            # Each member in turn.
            for member_id in cluster.ids():
                await cluster.kill(member_id)
                await writer.wait_for(len(writer.acknowledged) + 60)
                await cluster.start([member_id])
                await cluster.wait_for_leader()
                await caught_up(cluster)
            # All three at once.
            for member_id in cluster.ids():
                await cluster.kill(member_id)
            killed_at = trio.current_time()
            await cluster.start()
            await cluster.wait_for_leader(timeout=30)
            took = trio.current_time() - killed_at
            print(f"all three restarted and agreed on a leader in {took:.2f}s")
            await writer.wait_for(len(writer.acknowledged) + 100)
            # The leader, while it compacts: snapshots every 150 entries, so one is always near.
            leader = (await cluster.wait_for_leader()).leader
            await cluster.kill(leader)
            await writer.wait_for(len(writer.acknowledged) + 100)
            await cluster.start([leader])
            await cluster.wait_for_leader()
            await writer.wait_for(len(writer.acknowledged) + 50)
            writer.stop.set()
        items = await check_everything(cluster, writer)
    print(
        f"{len(writer.acknowledged)} acknowledged, {len(writer.unknown)} unknown, "
        f"{len(items)} in the log"
    )
    snapshots = list(Path(cluster.workdir).glob("data*/snapshots/*.snapshot"))
    assert snapshots, "the load should have produced snapshots"


def serve_once(cluster: ProcessCluster, member_id: int) -> subprocess.CompletedProcess[str]:
    """Start one member in the foreground and let it fail (or give up after a few seconds)."""
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    return subprocess.run(
        [sys.executable, *cluster._command(member_id)[1:]],
        capture_output=True,
        text=True,
        timeout=15,
        env=env,
        cwd=cluster.workdir,
    )


async def test_damaged_log_is_refused_and_torn_tail_is_repaired(start_cluster) -> None:
    cluster: ProcessCluster = await start_cluster()
    async with open_client(cluster.addresses()) as client:
        for i in range(40):
            await client.submit(Append(f"v{i}"))
    leader = (await cluster.wait_for_leader()).leader
    victim = next(i for i in cluster.ids() if i != leader)
    await caught_up(cluster)
    await cluster.kill(victim)
    segment = sorted((cluster.data_dir(victim) / "log").glob("*.log"))[-1]
    original = segment.read_bytes()

    # A flipped bit in the middle, with valid records after it: refuse to start.
    damaged = bytearray(original)
    damaged[len(original) // 2] ^= 0x01
    segment.write_bytes(bytes(damaged))
    result = serve_once(cluster, victim)
    assert result.returncode != 0
    message = result.stderr.strip().splitlines()[-1]
    assert "refuses to start" in message or "corrupt" in message.lower(), result.stderr
    assert str(segment.name) in result.stderr and "Traceback" not in result.stderr

    # A torn tail, as a crash in the middle of an append leaves it (the start of a record that
    # was never acknowledged): cut away, and the member rejoins and catches up.
    segment.write_bytes(original + original[-60:-20])
    await cluster.start([victim])
    await cluster.wait_for_leader()
    await caught_up(cluster)
    async with open_client([cluster.address(victim)]) as client:
        client.last_index = 0
        items = await client.submit(Items())
    assert items == [f"v{i}" for i in range(40)]
