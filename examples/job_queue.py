"""A job queue worked by several processes, on one plain `copycat-trio serve` cluster.

A producer waits until three workers have joined the group "workers", then offers 20 jobs on
the queue "jobs" (and one "stop" per worker). Each worker process polls jobs (each is handed to
exactly one of them), and adds its result to a shared ledger, a map, under the lock "ledger":
the ledger checks the lock's fencing token against the largest it has accepted, as a storage
service would to refuse a paused former holder.

Run: python examples/job_queue.py
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import trio

from copycat_trio import open_client
from copycat_trio.recipes.resources import Group, Lock, Map, Queue
from copycat_trio.testing.processes import ProcessCluster

JOBS = 20
WORKERS = 3
STOP = "stop"


async def producer(addresses: list[str]) -> None:
    async with open_client(addresses) as client:
        async with Group(client, "workers").changes() as changes:
            joined: set[str] = set()
            async for change in changes:
                if change.type == "joined":
                    joined.add(change.member)
                if len(joined) == WORKERS:
                    break
        print(f"producer: {WORKERS} workers joined; offering {JOBS} jobs", flush=True)
        jobs = Queue(client, "jobs")
        for n in range(JOBS):
            await jobs.offer({"id": n, "n": n})
        for _ in range(WORKERS):
            await jobs.offer(STOP)


async def worker(addresses: list[str], name: str) -> None:
    async with open_client(addresses) as client:
        await Group(client, "workers").join(name, {"pid": os.getpid()})
        jobs, ledger, done = Queue(client, "jobs"), Map(client, "ledger"), 0
        while (job := await jobs.poll()) != STOP:
            result = job["n"] ** 2  # the work
            async with Lock(client, "ledger") as token:
                fence = await ledger.get("fence") or 0
                if token <= fence:  # a storage service would refuse this write
                    raise RuntimeError(f"{name}: token {token} is not above {fence}")
                await ledger.put("fence", token)
                await ledger.put("total", (await ledger.get("total") or 0) + result)
                await ledger.put(f"job-{job['id']}", name)
            done += 1
        await Group(client, "workers").leave(name)
        print(f"{name}: did {done} jobs", flush=True)


async def main() -> None:
    with tempfile.TemporaryDirectory() as workdir:
        cluster = ProcessCluster(Path(workdir), 3)  # `serve`'s default: the resources manager
        try:
            await cluster.start()
            await cluster.wait_for_leader(timeout=20)
            addresses = ",".join(cluster.addresses())
            me = [sys.executable, __file__]
            with trio.fail_after(60):
                async with trio.open_nursery() as nursery:
                    for i in range(1, WORKERS + 1):
                        nursery.start_soon(trio.run_process, [*me, "worker", addresses, f"w{i}"])
                    nursery.start_soon(trio.run_process, [*me, "producer", addresses])
            async with open_client(cluster.addresses()) as client:
                ledger = Map(client, "ledger")
                owners = [await ledger.get(f"job-{n}") for n in range(JOBS)]
                total = await ledger.get("total")
                members = await Group(client, "workers").members()
            expected = sum(n**2 for n in range(JOBS))
            if None not in owners:
                print(f"all {JOBS} jobs done once, by {sorted(set(owners))}")
            print(f"ledger total: {total} (expected {expected})")
            print(f"workers still in the group: {len(members)}")
        finally:
            await cluster.aclose()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "producer":
        trio.run(producer, sys.argv[2].split(","))
    elif len(sys.argv) > 1 and sys.argv[1] == "worker":
        trio.run(worker, sys.argv[2].split(","), sys.argv[3])
    else:
        trio.run(main)
