"""A client process of tests/e2e/test_resources_processes.py: one role against the resources of
one cluster, its acknowledged results written as JSON to OUT when it is done.

    python resource_client.py ROLE ADDRESSES OUT COUNT [SESSION_TIMEOUT]

It prints "ready" once it is set up (a watch registered, a lock taken), "progress" half-way.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import trio

from copycat_trio import open_client
from copycat_trio.client.client import CopycatClient
from copycat_trio.recipes.resources import Counter, Election, Group, Lock, Map, Queue

STOP = "stop"


def say(line: str) -> None:
    print(line, flush=True)


async def mapper(client: CopycatClient, count: int) -> dict[str, Any]:
    """Puts data/k0.. one after another and counts them; then puts data/done."""
    data, hits = Map(client, "data"), Counter(client, "hits")
    puts, increments = [], []
    say("ready")
    for i in range(count):
        await data.put(f"k{i:03}", i)
        puts.append(i)
        increments.append(await hits.increment())
        if i == count // 3:
            say("progress")
    await data.put("done", count)
    return {"puts": puts, "increments": increments}


async def watcher(client: CopycatClient, count: int) -> dict[str, Any]:
    """Every change of the map "data" from before the first put until "done"."""
    seen = []
    async with Map(client, "data").watch() as changes:
        say("ready")
        async for change in changes:
            seen.append([change.revision, change.type, change.key, change.value])
            if change.key == "done":
                break
    return {"changes": seen}


async def locker(client: CopycatClient, count: int) -> dict[str, Any]:
    """Takes lock "ledger" `count` times; under it, checks its fencing token against the
    largest the ledger key has accepted and writes its own."""
    ledger, tokens, refused = Map(client, "ledger"), [], []
    say("ready")
    for i in range(count):
        async with Lock(client, "ledger") as token:
            tokens.append(token)
            last = await ledger.get("fence")
            if last is not None and last >= token:
                refused.append([token, last])
            await ledger.put("fence", token)
        if i == count // 3:
            say("progress")
    return {"tokens": tokens, "refused": refused}


async def producer(client: CopycatClient, count: int) -> dict[str, Any]:
    """Offers jobs 0..count-1, then one STOP per consumer (two)."""
    jobs, offered = Queue(client, "jobs"), []
    say("ready")
    for i in range(count):
        await jobs.offer(i)
        offered.append(i)
        if i == count // 3:
            say("progress")
    for _ in range(2):
        await jobs.offer(STOP)
    return {"offered": offered}


async def consumer(client: CopycatClient, count: int) -> dict[str, Any]:
    """Polls jobs until a STOP."""
    jobs, taken = Queue(client, "jobs"), []
    say("ready")
    while (item := await jobs.poll()) != STOP:
        taken.append(item)
    return {"taken": taken}


async def elector(client: CopycatClient, count: int) -> dict[str, Any]:
    """Campaigns, leads for a moment, resigns, `count` times."""
    election, terms = Election(client, "scheduler"), []
    say("ready")
    for _ in range(count):
        terms.append(await election.campaign(client.session_id))
        await trio.sleep(0.01)
        await election.resign()
    return {"terms": terms}


async def grouper(client: CopycatClient, count: int) -> dict[str, Any]:
    """Joins group "workers" under its session id, sees itself, and leaves."""
    workers = Group(client, "workers")
    name = f"member-{client.session_id}"
    say("ready")
    await workers.join(name, {"pid": count})
    present = name in await workers.members()
    left = await workers.leave(name)
    return {"present": present, "left": left}


async def holder(client: CopycatClient, count: int) -> dict[str, Any]:
    """Takes lock "held" and sits on it until killed."""
    await Lock(client, "held").acquire()
    say("ready")
    await trio.sleep_forever()
    raise AssertionError("unreachable")


async def waiter(client: CopycatClient, count: int) -> dict[str, Any]:
    """Waits for lock "held" (after the holder), and notes when it got it."""
    say("ready")
    async with Lock(client, "held") as token:
        return {"granted_at": time.time(), "token": token}


ROLES = {
    f.__name__: f
    for f in (mapper, watcher, locker, producer, consumer, elector, grouper, holder, waiter)
}


async def main(
    role: str, addresses: list[str], out: str, count: int, session_timeout: float | None
) -> None:
    if session_timeout is None:
        session_timeout = 1.5 if role in ("holder", "waiter") else 5.0
    async with open_client(addresses, session_timeout=session_timeout) as client:
        result = await ROLES[role](client, count)
    with open(out, "w") as file:
        json.dump(result, file)


if __name__ == "__main__":
    timeout = float(sys.argv[5]) if len(sys.argv) > 5 else None
    trio.run(main, sys.argv[1], sys.argv[2].split(","), sys.argv[3], int(sys.argv[4]), timeout)
