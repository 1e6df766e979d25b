"""`copycat-trio demo`: three real server processes on loopback, writes, a SIGKILLed leader,
a new leader, and every acknowledged write read back. Exits non-zero if anything is wrong."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

import trio

from .cli import collect_status, format_table
from .client import open_client
from .protocol.errors import OutcomeUnknownError
from .recipes.kv import Get, Put

ELECTION_TIMEOUT = 1.0


def free_ports(count: int) -> list[int]:
    """Ports the kernel just handed out on 127.0.0.1 (closed again for the servers to take)."""
    sockets = []
    for _ in range(count):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        sockets.append(s)
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


class DemoCluster:
    """Three `copycat-trio serve` child processes and their log files."""

    def __init__(self, workdir: str) -> None:
        ports = free_ports(3)
        self.addresses = {i + 1: f"127.0.0.1:{port}" for i, port in enumerate(ports)}
        self.members = ",".join(f"{i}={a}" for i, a in self.addresses.items())
        self.workdir = workdir
        self.processes: dict[int, trio.Process] = {}

    async def start(self, member_id: int) -> None:
        log_path = os.path.join(self.workdir, f"server{member_id}.log")
        with open(log_path, "ab") as log_file:
            self.processes[member_id] = await trio.lowlevel.open_process(
                [
                    sys.executable,
                    "-m",
                    "copycat_trio",
                    "serve",
                    "--id",
                    str(member_id),
                    "--members",
                    self.members,
                    "--election-timeout",
                    str(ELECTION_TIMEOUT),
                    "--data-dir",
                    os.path.join(self.workdir, f"data{member_id}"),
                ],
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )

    def kill(self, member_id: int) -> None:
        self.processes[member_id].send_signal(signal.SIGKILL)

    async def stop_all(self) -> None:
        with trio.CancelScope(shield=True):
            for process in self.processes.values():
                if process.returncode is None:
                    process.terminate()
            with trio.move_on_after(5):
                for process in self.processes.values():
                    await process.wait()
            for process in self.processes.values():
                if process.returncode is None:
                    process.kill()
                    await process.wait()

    def live_addresses(self) -> list[str]:
        return [self.addresses[i] for i, p in self.processes.items() if p.returncode is None]


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
        cluster = DemoCluster(workdir)
        try:
            say(f"starting 3 servers on {', '.join(cluster.addresses.values())}")
            for member_id in cluster.addresses:
                await cluster.start(member_id)
            leader = await wait_for_leader(list(cluster.addresses.values()), timeout=30)
            say(f"leader elected: member {leader['id']} (term {leader['term']})")

            expected: dict[str, str] = {}
            batch = [(f"key-{i}", f"value-{i}") for i in range(writes)]
            started = time.perf_counter()
            await put_all(cluster.live_addresses(), batch)
            elapsed = time.perf_counter() - started
            expected.update(batch)
            say(f"wrote {writes} keys through the cluster in {elapsed:.2f}s")
            missing = await check_all(cluster.live_addresses(), expected)
            if missing:
                say(f"FAILED: {len(missing)} acknowledged writes not readable: {missing[:5]}")
                return 1
            say(f"read all {writes} keys back (linearizable reads)")

            victim = leader["id"]
            say(f"SIGKILL the leader, member {victim}")
            killed_at = time.perf_counter()
            cluster.kill(victim)
            await cluster.processes[victim].wait()
            survivors = cluster.live_addresses()
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
            rows = await collect_status(list(cluster.addresses.values()), timeout=0.5)
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
            for name in sorted(os.listdir(workdir)):
                with open(os.path.join(workdir, name)) as f:
                    say(f"--- {name}\n{f.read()[-3000:]}")
            return 1
        finally:
            await cluster.stop_all()
