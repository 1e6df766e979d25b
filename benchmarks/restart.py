"""Restart of a whole cluster from a large snapshot: how long until every member serves again.

    python benchmarks/restart.py [--keys 1000000] [--log-entries 20000] [--runs 3]

Builds, in this process, a backup file holding serve's default state machine (the resources
manager) after --keys Puts (`r0` ... with integer values, as benchmarks/soak.py fills them),
restores it into three new data directories (`copycat-trio snapshot restore`'s code), starts
three disk-backed `serve` processes with serve's default timing, writes --log-entries more Puts
from 64 tasks (a log after the snapshot, which a restart replays), then --runs times: SIGKILL
all three, start them again and time how long until a leader is agreed and every member has
applied the leader's commit index (the same test as soak.py's phase 2), and read two keys back.
soak.py measures the same after filling the keys through the cluster, which takes about 1,000 s
for a million; this takes seconds.

Only 127.0.0.1 is used; every wait is bounded; the servers are always stopped at the end.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

import trio

from copycat_trio.backup import BackupHeader, restore_backup, write_backup
from copycat_trio.cli import parse_members
from copycat_trio.client import open_client
from copycat_trio.core.sessions import SessionTable
from copycat_trio.recipes import Resources
from copycat_trio.recipes.kv import Get, Put
from copycat_trio.server.snapshots import SnapshotHeader, ThreadSink, write_snapshot
from copycat_trio.state_machine import Commit, ServerSession, StateMachineContext

sys.path.insert(0, str(Path(__file__).parent))
from soak import SoakCluster, mib  # beside this file

WRITERS = 64


class _Context(StateMachineContext):
    """No sessions and no timers: all a Put needs."""

    @property
    def sessions(self) -> dict[int, ServerSession]:
        return {}


class _Collect:
    """A snapshot writer that keeps the bytes in memory."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    async def write(self, data: bytes) -> None:
        self.chunks.append(data)


async def make_backup(path: Path, keys: int) -> int:
    """A backup of serve's default state machine after `keys` Puts (`r0` = 0, ...) at log
    indexes 1 to `keys`: its size in bytes."""
    store = Resources()
    store.context = _Context()
    for i in range(keys):
        store.apply(Commit(Put(f"r{i}", i), index=i + 1, time=0))
    header = SnapshotHeader(
        index=keys, term=1, log_time=0, members=(), configuration_index=0, timer_sequence=0
    )
    collect = _Collect()
    sink: Any = ThreadSink(collect)  # type: ignore[arg-type]
    await trio.to_thread.run_sync(write_snapshot, sink, header, SessionTable(), store)
    data = b"".join(collect.chunks)
    write_backup(path, BackupHeader(keys, 1, len(data), zlib.crc32(data)), data)
    return len(data)


async def write_log(cluster: SoakCluster, entries: int) -> None:
    async def writer(task: int) -> None:
        async with open_client(cluster.addresses(), timeout=30) as client:
            for i in range(task, entries, WRITERS):
                await client.submit(Put(f"log{i % 1000}", i))

    async with trio.open_nursery() as nursery:
        for task in range(WRITERS):
            nursery.start_soon(writer, task)


async def main(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="copycat-restart-") as tmp:
        workdir = Path(tmp)
        # Snapshots only from the restored one: the log written below stays a log to replay.
        cluster = SoakCluster(workdir, snapshot_every=10 * (args.log_entries + 1))
        try:
            backup = workdir / "keys.backup"
            started = time.perf_counter()
            size = await make_backup(backup, args.keys)
            members = parse_members(cluster.members)
            for member_id in cluster.ids():
                await restore_backup(backup, cluster.data_dir(member_id), members)
            print(
                f"backup of {args.keys} keys: {mib(size)}, made and restored into "
                f"{len(cluster.ids())} data directories in {time.perf_counter() - started:.1f}s"
            )
            await cluster.start()
            first = await cluster.settled(timeout=args.max_wait)
            print(f"first start (snapshot installed, election): {first:.2f}s")
            started = time.perf_counter()
            await write_log(cluster, args.log_entries)
            print(
                f"{args.log_entries} Puts after the snapshot from {WRITERS} tasks in "
                f"{time.perf_counter() - started:.1f}s"
            )
            seconds = []
            for run in range(1, args.runs + 1):
                await cluster.kill_all()
                killed = time.perf_counter()
                await cluster.start()
                await cluster.settled(timeout=args.max_wait)
                seconds.append(time.perf_counter() - killed)
                async with open_client(cluster.addresses(), timeout=30) as client:
                    assert await client.submit(Get(f"r{args.keys - 1}")) == args.keys - 1
                    assert await client.submit(Get("r0")) == 0
                print(
                    f"run {run}: SIGKILL all, restart, until every member applied all: "
                    f"{seconds[-1]:.2f}s"
                )
            print(f"median of {len(seconds)}: {statistics.median(seconds):.2f}s")
            return 0
        except (trio.TooSlowError, AssertionError):
            print(cluster.logs_report(), file=sys.stderr)
            raise
        finally:
            await cluster.aclose()


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--log-entries", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--max-wait", type=float, default=120.0, help="per start, seconds")
    args = parser.parse_args()
    if args.keys < 1 or args.log_entries < 0 or args.runs < 1:
        parser.error("--keys and --runs must be at least 1, --log-entries at least 0")
    return args


if __name__ == "__main__":
    sys.exit(trio.run(main, parse()))
