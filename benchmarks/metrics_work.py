"""The metrics' own work per put, in CPU microseconds: what `bench_cluster.py --metrics-cost`
tries to see through the noise of whole runs, measured where noise moves it little.

    python benchmarks/metrics_work.py [--writers 1,64] [--puts 3000] [--repeats 9]
        [--bench-json FILE]

Runs three members with metrics on in this process (in-memory network, disk storage in a
temporary directory, the real clock), puts --puts values with each number of writers, and
records every call the members make into the metrics' hot-path hooks, with its arguments:
count_request (always on, metrics or not), the round-trip probe on each AppendRequest sent and
each AppendResponse received, and a histogram sample per log save and per fsync. Each member's
calls are then replayed, in their order, on fresh metric objects and timed in CPU time (the
least of --repeats replays: another process taking the core stops this one's CPU clock, and
the least is the replay least disturbed by caches and preemption), less the same loop without
the calls. Per put = that CPU / puts. With --bench-json (written by `bench_cluster.py
--metrics-cost --json FILE`), each row's figure is also given as a share of the leader's CPU
per put in that run's metrics-off runs (their median).
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from copycat_trio.recipes.kv import KeyValueStore, Put
from copycat_trio.server import connections as server_module
from copycat_trio.server.observations import (
    BATCH_BUCKETS,
    FSYNC_BUCKETS,
    Buckets,
    RequestCounts,
    RoundTrips,
    count_request,
)
from copycat_trio.storage.disk import DiskStorage
from copycat_trio.testing import open_memory_cluster

GROUPS = {
    "requests": ("count",),
    "round trips": ("sent", "answered"),
    "batch": ("batch",),
    "fsync": ("fsync",),
}
"""The hooks by what they serve, each group replayed alone too (the groups share no state)."""

Call = tuple[str, tuple[Any, ...]]
"""A recorded hook call: its kind (count, sent, answered, batch, fsync) and its arguments."""


def recording(calls: list[Call], kind: str, hook: Callable[..., None]) -> Callable[..., None]:
    """`hook`, which also appends (kind, its arguments) to `calls`."""

    def record(*args: Any) -> None:
        calls.append((kind, args))
        hook(*args)

    return record


async def record_puts(
    writers: int, puts: int, directory: Path
) -> tuple[int, dict[str, list[Call]]]:
    """Puts `puts` values with `writers` tasks on a fresh cluster; returns the leader's id and
    each member's hook calls made meanwhile, keyed leader / follower#1 / follower#2."""

    def storage(member_id: int) -> DiskStorage:
        return DiskStorage(directory / f"member{member_id}")

    async with open_memory_cluster(
        3, KeyValueStore, storage=storage, metrics_address="127.0.0.1:0"
    ) as cluster:
        leader = await cluster.wait_for_leader()
        calls: dict[int, list[Call]] = {i: [] for i in cluster.all_ids()}
        by_counts = {id(cluster.servers[i].request_counts): i for i in cluster.all_ids()}
        for i in cluster.all_ids():
            metrics = cluster.servers[i].metrics
            assert metrics is not None
            trips, mine = metrics.round_trips, calls[i]
            trips.sent = recording(mine, "sent", trips.sent)  # type: ignore[method-assign]
            trips.answered = recording(mine, "answered", trips.answered)  # type: ignore[method-assign]
            batches = metrics.batch_entries
            batches.observe = recording(mine, "batch", batches.observe)  # type: ignore[method-assign]
            cluster.servers[i].storage.observe_fsyncs(  # type: ignore[attr-defined]
                recording(mine, "fsync", metrics.fsync.observe)
            )

        def counted(counts: RequestCounts, request: object, response: object) -> None:
            calls[by_counts[id(counts)]].append(("count", (request, response)))
            count_request(counts, request, response)

        server_module.count_request = counted  # type: ignore[attr-defined]
        try:
            async with cluster.client() as client:
                per_writer = puts // writers

                async def write(task: int) -> None:
                    for n in range(per_writer):
                        await client.submit(Put(f"w{task:04}k{n:010}", "v" * 100))

                async with trio.open_nursery() as nursery:
                    for task in range(writers):
                        nursery.start_soon(write, task)
        finally:
            server_module.count_request = count_request  # type: ignore[attr-defined]
        followers = [i for i in cluster.all_ids() if i != leader]
        roles = {"leader": leader, **{f"follower#{n + 1}": i for n, i in enumerate(followers)}}
        return per_writer * writers, {role: calls[i] for role, i in roles.items()}


def replay_cpu(calls: list[Call], repeats: int) -> float:
    """CPU seconds the hooks take for `calls`, on fresh metric objects: the least of `repeats`
    replays, less the least of the same loop without the calls (so the calls themselves are
    counted, as the members pay them). Runs in Trio: the probes read its clock."""

    def replay(real: bool) -> float:
        counts: RequestCounts = {}
        trips = RoundTrips()
        hooks: dict[str, Callable[..., None]] = {
            "count": functools.partial(count_request, counts),
            "sent": trips.sent,
            "answered": trips.answered,
            "batch": Buckets(BATCH_BUCKETS).observe,
            "fsync": Buckets(FSYNC_BUCKETS).observe,
        }
        bound = [(hooks[kind], args) for kind, args in calls]
        started = time.thread_time()
        if real:
            for hook, args in bound:
                hook(*args)
        else:
            for _hook, _args in bound:
                pass
        return time.thread_time() - started

    async def best() -> float:
        real = min(replay(True) for _ in range(repeats))
        idle = min(replay(False) for _ in range(repeats))
        return max(real - idle, 0.0)

    return trio.run(best)


def leader_us_per_put(path: str) -> dict[int, float]:
    """Writers -> the median leader CPU per put (µs) of the metrics-off runs in a
    `bench_cluster.py --metrics-cost --json` file."""
    with open(path) as f:
        data = json.load(f)
    found: dict[int, list[float]] = {}
    for results in data["runs"]["metrics-off"]:
        for r in results:
            leader = r["cpu"].get("leader")
            if r["op"] == "put" and leader is not None and r["ops_per_s"] > 0:
                found.setdefault(r["tasks"], []).append(leader / 100 / r["ops_per_s"] * 1e6)
    return {tasks: statistics.median(values) for tasks, values in found.items()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--writers", default="1,64", help="comma-separated writer counts")
    p.add_argument("--puts", type=int, default=3000, help="puts per writer count")
    p.add_argument("--repeats", type=int, default=9, help="replays timed; the least counts")
    p.add_argument("--bench-json", help="a bench_cluster.py --metrics-cost --json file")
    args = p.parse_args()
    against = leader_us_per_put(args.bench_json) if args.bench_json else {}
    for writers in (int(w) for w in args.writers.split(",")):
        with tempfile.TemporaryDirectory(prefix="metrics-work-") as directory:
            puts, calls = trio.run(record_puts, writers, args.puts, Path(directory))
        for role, recorded in calls.items():
            kinds = collections.Counter(kind for kind, _ in recorded)
            per_put = replay_cpu(recorded, args.repeats) / puts * 1e6
            parts = []
            for group, members in GROUPS.items():
                mine = [call for call in recorded if call[0] in members]
                if mine:
                    us = replay_cpu(mine, args.repeats) / puts * 1e6
                    calls_per_put = sum(kinds[k] for k in members) / puts
                    parts.append(f"{group} {us:.3f} ({calls_per_put:.2f} calls)")
            line = f"put x{writers:<3} {role:10} {per_put:6.3f} us per put: " + ", ".join(parts)
            if role == "leader" and writers in against:
                line += (
                    f"; {100 * per_put / against[writers]:.2f}% of the leader's "
                    f"{against[writers]:.0f} us per put with metrics off"
                )
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
