"""`copycat-trio demo`: three real server processes on loopback, writes, a SIGKILLed leader,
a new leader, and every acknowledged write read back. Exits non-zero if anything is wrong."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from .client import open_client
from .client.status import collect_status, format_table
from .protocol.errors import OutcomeUnknownError
from .recipes.kv import Get, Put
from .testing.processes import ProcessCluster
from .testing.processes import free_ports as free_ports

ELECTION_TIMEOUT = 1.0


async def wait_for_leader(addresses: list[str], timeout: float) -> dict[str, Any]:
    """Poll status until every address agrees on one leader among them."""
    with trio.fail_after(timeout):
        while True:
            rows = await collect_status(addresses, timeout=0.5)
            leaders = {row["leader"] for row in rows}
            roles = [row["role"] for row in rows]
            if len(leaders) == 1 and None not in leaders and roles.count("leader") == 1:
                return next(row for row in rows if row["role"] == "leader")
            await trio.sleep(0.05)


async def put_all(addresses: list[str], items: list[tuple[str, str]]) -> int:
    """Write each item; a write with an unknown outcome is retried (puts are idempotent)."""
    retried = 0
    async with open_client(addresses, timeout=30) as client:
        for key, value in items:
            while True:
                try:
                    await client.submit(Put(key, value))
                    break
                except OutcomeUnknownError:
                    retried += 1
    return retried


async def check_all(addresses: list[str], expected: dict[str, str]) -> list[str]:
    missing = []
    async with open_client(addresses, timeout=30) as client:
        for key, value in expected.items():
            if await client.submit(Get(key)) != value:
                missing.append(key)
    return missing


async def run_demo(writes: int = 50) -> int:
    say = print
    with tempfile.TemporaryDirectory(prefix="copycat-demo-") as workdir:
        cluster = ProcessCluster(
            Path(workdir),
            3,
            election_timeout=ELECTION_TIMEOUT,
            heartbeat_interval=None,  # serve's default
            # The servers run in the work directory; let them import copycat_trio from this
            # one too, as `python -m copycat_trio demo` in a source checkout does.
            pythonpath=[os.getcwd()],
        )
        try:
            say(f"starting 3 servers on {', '.join(cluster.addresses())}")
            await cluster.start()
            leader = await wait_for_leader(cluster.addresses(), timeout=30)
            say(f"leader elected: member {leader['id']} (term {leader['term']})")

            expected: dict[str, str] = {}
            batch = [(f"key-{i}", f"value-{i}") for i in range(writes)]
            started = time.perf_counter()
            await put_all(cluster.addresses(cluster.running_ids()), batch)
            elapsed = time.perf_counter() - started
            expected.update(batch)
            say(f"wrote {writes} keys through the cluster in {elapsed:.2f}s")
            missing = await check_all(cluster.addresses(cluster.running_ids()), expected)
            if missing:
                say(f"FAILED: {len(missing)} acknowledged writes not readable: {missing[:5]}")
                return 1
            say(f"read all {writes} keys back (linearizable reads)")

            victim = leader["id"]
            say(f"SIGKILL the leader, member {victim}")
            killed_at = time.perf_counter()
            await cluster.kill(victim)
            survivors = cluster.addresses(cluster.running_ids())
            new_leader = await wait_for_leader(survivors, timeout=30)
            failover = time.perf_counter() - killed_at
            say(
                f"new leader: member {new_leader['id']} (term {new_leader['term']}) "
                f"after {failover:.2f}s"
            )
            if new_leader["id"] == victim:
                say("FAILED: the killed member is still reported as leader")
                return 1

            missing = await check_all(survivors, expected)
            if missing:
                say(f"FAILED: {len(missing)} acknowledged writes lost: {missing[:5]}")
                return 1
            say(f"all {len(expected)} acknowledged writes survived the failover")
            batch = [(f"key-{writes + i}", f"value-{writes + i}") for i in range(writes)]
            retried = await put_all(survivors, batch)
            expected.update(batch)
            missing = await check_all(survivors, expected)
            if missing:
                say(f"FAILED: {len(missing)} writes after failover not readable")
                return 1
            say(f"wrote and read back {writes} more keys on the two survivors (retried {retried})")
            rows = await cluster.status()
            say(
                format_table(
                    rows,
                    ("id", "address", "role", "term", "leader", "commit_index", "applied_index"),
                )
            )
            say("demo passed")
            return 0
        except trio.TooSlowError:
            say("FAILED: the cluster did not settle in time; logs follow")
            for server in cluster.servers.values():
                say(f"--- {server.log_path.name}\n{server.log_text()[-3000:]}")
            return 1
        finally:
            await cluster.aclose()
