"""Soak: many small commands against three disk-backed server processes on loopback.

    python benchmarks/soak.py [--commands N] [--keys K] [--writers W] [--restart-keys M]

Phase 1 writes N small commands (Put over K distinct keys, so the state stays bounded) from W
concurrent tasks of one client, sampling every few seconds the total size of the data
directories and each server's resident memory: with snapshots and compaction both must stay
bounded however large N is. Phase 2 (if --restart-keys > 0) fills M distinct keys, lets a
snapshot happen, SIGKILLs all three servers, restarts them, and times how long until a leader
is agreed and every member has applied everything again.

Only 127.0.0.1 is used; every loop is bounded by its count and by --max-seconds; the servers are
always stopped at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

import trio

from copycat_trio.client import open_client
from copycat_trio.client.status import collect_status
from copycat_trio.protocol.errors import OutcomeUnknownError
from copycat_trio.recipes.kv import Get, Put
from copycat_trio.testing.processes import ProcessCluster


class SoakCluster(ProcessCluster):
    """Three disk-backed members on free loopback ports, with serve's default timing."""

    def __init__(self, workdir: Path, snapshot_every: int) -> None:
        super().__init__(
            workdir,
            3,
            election_timeout=None,
            heartbeat_interval=None,
            snapshot_every=snapshot_every,
        )

    async def kill_all(self) -> None:
        for member_id in self.running_ids():
            await self.kill(member_id)

    def disk_bytes(self) -> int:
        total = 0
        for member_id in self.servers:
            for root, _dirs, files in os.walk(self.data_dir(member_id)):
                for name in files:
                    with contextlib.suppress(OSError):  # a file compacted away meanwhile
                        total += os.path.getsize(os.path.join(root, name))
        return total

    def rss_bytes(self) -> list[int]:
        out = []
        for server in self.servers.values():
            if server.process is None:
                continue
            try:
                with open(f"/proc/{server.process.pid}/status") as f:
                    for line in f:
                        if line.startswith("VmRSS:"):
                            out.append(int(line.split()[1]) * 1024)
            except OSError:
                out.append(0)
        return out

    async def settled(self, timeout: float) -> float:
        """Seconds until a leader is agreed and every member applied the leader's commit index."""
        started = time.perf_counter()
        with trio.fail_after(timeout):
            while True:
                rows = await collect_status(self.addresses(), timeout=1.0)
                leaders = [r for r in rows if r["role"] == "leader"]
                if len(leaders) == 1 and all(
                    r["applied_index"] is not None
                    and r["applied_index"] >= leaders[0]["commit_index"]
                    for r in rows
                ):
                    return time.perf_counter() - started
                await trio.sleep(0.05)


def mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


async def write_load(
    cluster: SoakCluster, commands: int, keys: int, writers: int, deadline: float
) -> dict[str, float]:
    done = 0
    unknown = 0
    peak_disk = 0
    peak_rss = 0
    samples: list[str] = []
    started = time.perf_counter()

    async def writer(task: int) -> None:
        nonlocal done, unknown
        async with open_client(cluster.addresses(), timeout=30) as client:
            i = task
            while i < commands and time.perf_counter() < deadline:
                try:
                    await client.submit(Put(f"k{i % keys}", i))
                    done += 1
                except OutcomeUnknownError:
                    unknown += 1
                i += writers

    async def sampler() -> None:
        nonlocal peak_disk, peak_rss
        while True:
            disk, rss = cluster.disk_bytes(), max(cluster.rss_bytes())
            peak_disk, peak_rss = max(peak_disk, disk), max(peak_rss, rss)
            elapsed = time.perf_counter() - started
            line = f"  {elapsed:7.1f}s  {done:>9} done  disk {mib(disk)}  rss {mib(rss)}"
            samples.append(line)
            print(line, flush=True)
            await trio.sleep(5)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sampler)
        async with trio.open_nursery() as writers_nursery:
            for task in range(writers):
                writers_nursery.start_soon(writer, task)
        nursery.cancel_scope.cancel()
    elapsed = time.perf_counter() - started
    return {
        "done": done,
        "unknown": unknown,
        "seconds": elapsed,
        "rate": done / elapsed if elapsed else 0.0,
        "peak_disk": peak_disk,
        "final_disk": cluster.disk_bytes(),
        "peak_rss": peak_rss,
    }


async def restart_from_snapshot(
    cluster: SoakCluster, keys: int, writers: int, deadline: float
) -> dict[str, float]:
    async def fill(task: int) -> None:
        async with open_client(cluster.addresses(), timeout=60) as client:
            for i in range(task, keys, writers):
                if time.perf_counter() > deadline:
                    return
                await client.submit(Put(f"r{i}", i))

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for task in range(writers):
            nursery.start_soon(fill, task)
    filled = time.perf_counter() - started
    await trio.sleep(2)  # let the last snapshot finish
    snapshot_bytes = sum(
        p.stat().st_size for p in cluster.workdir.glob("data*/snapshots/*.snapshot")
    )
    await cluster.kill_all()
    killed = time.perf_counter()
    await cluster.start()
    recovered = await cluster.settled(timeout=max(60.0, deadline - time.perf_counter()))
    total = time.perf_counter() - killed
    async with open_client(cluster.addresses(), timeout=30) as client:
        assert await client.submit(Get(f"r{keys - 1}")) == keys - 1
        assert await client.submit(Get("r0")) == 0
    return {
        "keys": keys,
        "fill_seconds": filled,
        "snapshot_bytes": snapshot_bytes,
        "restart_seconds": total,
        "settle_seconds": recovered,
    }


async def main(args: argparse.Namespace) -> int:
    deadline = time.perf_counter() + args.max_seconds
    with tempfile.TemporaryDirectory(prefix="copycat-soak-") as tmp:
        cluster = SoakCluster(Path(tmp), args.snapshot_every)
        try:
            await cluster.start()
            await cluster.settled(timeout=30)
            print(
                f"phase 1: {args.commands} commands over {args.keys} keys, {args.writers} writers"
            )
            load = await write_load(cluster, args.commands, args.keys, args.writers, deadline)
            print(
                f"phase 1: {load['done']:.0f} acknowledged ({load['unknown']:.0f} unknown) in "
                f"{load['seconds']:.1f}s = {load['rate']:.0f}/s; data dirs peak "
                f"{mib(load['peak_disk'])}, final {mib(load['final_disk'])}; "
                f"largest server RSS {mib(load['peak_rss'])}"
            )
            if args.restart_keys:
                print(f"phase 2: {args.restart_keys} distinct keys, then SIGKILL all and restart")
                restart = await restart_from_snapshot(
                    cluster, args.restart_keys, args.writers, deadline
                )
                print(
                    f"phase 2: filled in {restart['fill_seconds']:.1f}s; snapshots "
                    f"{mib(restart['snapshot_bytes'])}; restart to all applied in "
                    f"{restart['restart_seconds']:.2f}s"
                )
            return 0
        finally:
            await cluster.aclose()


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--commands", type=int, default=100_000)
    parser.add_argument("--keys", type=int, default=10_000)
    parser.add_argument("--writers", type=int, default=64)
    parser.add_argument("--restart-keys", type=int, default=100_000)
    parser.add_argument("--snapshot-every", type=int, default=20_000)
    parser.add_argument("--max-seconds", type=float, default=1800.0)
    return parser.parse_args()


if __name__ == "__main__":
    sys.exit(trio.run(main, parse()))
