"""Issue 12 on real processes: one plain `serve` cluster (the resources manager) used from the
command line and from several client processes at once, through a leader's SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from copycat_trio import open_client
from copycat_trio.recipes.resources import Counter, Group, Map
from tests.e2e.conftest import StartCluster
from tests.e2e.resource_procs import (
    JSON_LOGS,
    RESOURCES,
    Lines,
    check_pass_on_after_a_leader_kill,
    client_process,
)
from tests.e2e.test_cli_processes import cli

pytestmark = pytest.mark.e2e


@asynccontextmanager
async def running(*args: str, env: dict[str, str] | None = None) -> AsyncIterator[trio.Process]:
    """A long-running `copycat-trio ARGS` with its stdout piped; killed if still running."""
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "copycat_trio", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
        with trio.CancelScope(shield=True):
            await process.wait()


async def interrupt(process: trio.Process, timeout: float = 10.0) -> tuple[int, str]:
    """SIGINT it; its exit status and what it wrote on stderr."""
    process.send_signal(signal.SIGINT)
    with trio.fail_after(timeout):
        code = await process.wait()
    assert process.stderr is not None
    err = b""
    while chunk := await process.stderr.receive_some():
        err += chunk
    return code, err.decode()


async def test_resources_from_the_command_line(start_cluster: StartCluster) -> None:
    cluster = await start_cluster(state_machine=RESOURCES)
    env = {"COPYCAT_CLUSTER": ",".join(cluster.addresses())}

    # kv on a named map, options before and after the subcommand; the default map is apart.
    code, out, err, _ = await cli("kv", "--map", "users", "put", "alice", "1", env=env)
    assert (code, out.strip()) == (0, "ok"), err
    code, out, err, _ = await cli("kv", "put", "bob", "-", "--map", "users", env=env, stdin="2")
    assert (code, out.strip()) == (0, "ok"), err
    code, out, err, _ = await cli("kv", "get", "alice", "--map", "users", env=env)
    assert (code, out.strip()) == (0, "1"), err
    code, out, err, _ = await cli("kv", "get", "alice", env=env)
    assert code == 1 and "alice: not found" in err, (code, out, err)
    code, out, err, _ = await cli("kv", "--map", "users", "keys", "--prefix", "b", env=env)
    assert (code, out.split()) == (0, ["bob"]), err
    code, out, err, _ = await cli("kv", "--map", "users", "cas", "bob", "2", "3", env=env)
    assert (code, out.strip()) == (0, "true"), err
    code, out, err, _ = await cli("kv", "--map", "users", "cas", "bob", "2", "4", env=env)
    assert (code, out.strip()) == (1, "false"), err
    code, out, err, _ = await cli("kv", "--map", "users", "delete", "nobody", env=env)
    assert code == 1 and "nobody: not found in map 'users'" in err, (code, out, err)

    # A watch replays the map's history from --since, then goes on live; SIGINT ends it
    # quietly with 130.
    async with running("kv", "watch", "--map", "users", "--since", "0", env=env) as watch:
        lines = Lines(watch)
        assert [await lines.next() for _ in range(3)] == [
            "1 put alice 1",
            "2 put bob 2",
            "3 put bob 3",
        ]
        code, _, err, _ = await cli("kv", "--map", "users", "delete", "alice", env=env)
        assert code == 0, err
        assert (await lines.next()).split()[1:] == ["delete", "alice"]
        code, err = await interrupt(watch)
        assert (code, err) == (130, ""), err

    # Counters.
    code, out, err, _ = await cli("counter", "hits", "incr", env=env)
    assert (code, out.strip()) == (0, "1"), err
    code, out, err, _ = await cli("counter", "hits", "incr", "5", env=env)
    assert (code, out.strip()) == (0, "6"), err
    code, out, err, _ = await cli("counter", "--cluster", env["COPYCAT_CLUSTER"], "hits", "get")
    assert (code, out.strip()) == (0, "6"), err

    # A lock runs the command with its token and exits with its status; a second waits for
    # the first's release and gets a larger token.
    show = "import os, sys; print(os.environ['COPYCAT_LOCK_TOKEN']); sys.exit(3)"
    code, out, err, _ = await cli("lock", "jobs", "--", sys.executable, "-c", show, env=env)
    assert code == 3 and out.strip().isdigit(), (code, out, err)
    first = int(out)
    hold = "import os, sys; print(os.environ['COPYCAT_LOCK_TOKEN'], flush=True); sys.stdin.read()"
    async with running("lock", "jobs", "--", sys.executable, "-c", hold, env=env) as holder:
        second = int(await Lines(holder).next())
        assert second > first
        code, out, err, _ = await cli("lock", "jobs", "--wait", "0.5", "--", "true", env=env)
        assert code == 1 and "not granted within 0.5s" in err, (code, out, err)
        async with trio.open_nursery() as nursery:
            waited: list[tuple[int, str, str, float]] = []

            async def wait_for_it() -> None:
                waited.append(await cli("lock", "jobs", "--", sys.executable, "-c", show, env=env))

            nursery.start_soon(wait_for_it)
            code, err = await interrupt(holder)  # stops its command, releases the lock
            assert code == 130, err
        code, out, err, _ = waited[0]
        assert code == 3 and int(out) > second, (code, out, err)
    code, _, err, _ = await cli("lock", "jobs", env=env)
    assert code == 2 and "lock needs a command" in err, err

    # Elections: the second candidate sees the first lead, then leads once it is interrupted.
    async with running("elect", "scheduler", "alpha", env=env) as alpha:
        alpha_lines = Lines(alpha)
        line = await alpha_lines.next()
        if line == "(no leader)":  # it observed before its campaign was applied
            line = await alpha_lines.next()
        assert line.startswith("alpha (term "), line
        async with running("elect", "scheduler", "beta", env=env) as beta:
            beta_lines = Lines(beta)
            assert (await beta_lines.next()).startswith("alpha (term ")
            code, err = await interrupt(alpha)
            assert (code, err) == (130, ""), err
            later = [await beta_lines.next()]
            if later[0] == "(no leader)":
                later.append(await beta_lines.next())
            assert later[-1].startswith("beta (term "), later
            code, err = await interrupt(beta)
            assert (code, err) == (130, ""), err

    # Groups.
    async with open_client(cluster.addresses()) as client:
        await Group(client, "workers").join("w1", {"host": "a"})
        await Group(client, "workers").join("w2")
        code, out, err, _ = await cli("group", "workers", "members", env=env)
        assert (code, out.splitlines()) == (0, ['w1 {"host": "a"}', "w2"]), err
        code, out, err, _ = await cli("group", "workers", "members", "--json", env=env)
        assert code == 0 and [m["member"] for m in json.loads(out)] == ["w1", "w2"], err


ELECTION_TIMEOUT = 0.5
HOLDER_SESSION_TIMEOUT = 1.5  # resource_client.py's for the holder


async def test_every_kind_at_once_through_a_leader_kill(
    start_cluster: StartCluster, tmp_path: Path
) -> None:
    cluster = await start_cluster(
        state_machine=RESOURCES,
        election_timeout=ELECTION_TIMEOUT,
        serve_options=lambda _: JSON_LOGS,
    )
    addresses = cluster.addresses()
    roles = [
        ("watcher", 40),
        ("holder", 0),
        ("waiter", 0),
        ("mapper", 40),
        ("locker", 15),
        ("locker", 15),
        ("producer", 40),
        ("consumer", 0),
        ("consumer", 0),
        ("elector", 8),
        ("elector", 8),
        ("grouper", 1),
        ("grouper", 2),
    ]
    outs = [tmp_path / f"{i}-{role}.json" for i, (role, _) in enumerate(roles)]
    async with AsyncExitStack() as stack:
        procs: list[tuple[trio.Process, Lines]] = []
        for (role, count), out in zip(roles, outs, strict=True):
            procs.append(
                await stack.enter_async_context(client_process(role, addresses, out, count))
            )
            if role in ("watcher", "holder"):  # the watch before any change; the lock first
                assert await procs[-1][1].next(timeout=20) == "ready"
        for (role, _), (_, lines) in zip(roles, procs, strict=True):
            if role not in ("watcher", "holder"):
                assert await lines.next(timeout=20) == "ready", role
        for (role, _), (_, lines) in zip(roles, procs, strict=True):
            if role in ("mapper", "locker", "producer"):
                assert await lines.next(timeout=20) == "progress", role
        # In the middle of it all: the leader and the lock's holder die.
        leader = (await cluster.wait_for_leader()).leader
        procs[1][0].kill()
        killed_at = time.time()
        await cluster.kill(leader)
        with trio.fail_after(40):
            for (role, _), (process, _) in zip(roles, procs, strict=True):
                if role != "holder":
                    assert await process.wait() == 0, f"{role} failed"
    results = [json.loads(out.read_text()) if out.exists() else None for out in outs]
    by_role: dict[str, list[Any]] = {}
    for (role, _), result in zip(roles, results, strict=True):
        by_role.setdefault(role, []).append(result)

    async with open_client(cluster.addresses(cluster.running_ids())) as client:
        data = Map(client, "data")
        mapped = {key: await data.get(key) for key in await data.keys()}
        hits = await Counter(client, "hits").value()
        members = await Group(client, "workers").members()
        fence = await Map(client, "ledger").get("fence")

    # The map and the counter lost no acknowledged change.
    (mapper,) = by_role["mapper"]
    assert mapper["puts"] == list(range(40))
    assert all(mapped[f"k{i:03}"] == i for i in mapper["puts"]), mapped
    assert mapper["increments"] == list(range(1, 41)) and hits == 40
    # The watch saw every change once, in order.
    (watcher,) = by_role["watcher"]
    changes = watcher["changes"]
    revisions = [c[0] for c in changes]
    assert revisions == sorted(set(revisions)), revisions
    assert [(c[1], c[2], c[3]) for c in changes] == [
        *(("put", f"k{i:03}", i) for i in range(40)),
        ("put", "done", 40),
    ]
    # Each queue item once.
    (producer,) = by_role["producer"]
    taken = [item for consumer in by_role["consumer"] for item in consumer["taken"]]
    assert sorted(taken) == producer["offered"] == list(range(40)), taken
    # Fencing tokens strictly increasing per lock, never refused by the ledger.
    lockers = by_role["locker"]
    all_tokens = sorted(t for locker in lockers for t in locker["tokens"])
    assert len(set(all_tokens)) == len(all_tokens) == 30 and fence == all_tokens[-1]
    for locker in lockers:
        assert locker["tokens"] == sorted(set(locker["tokens"])) and locker["refused"] == []
    # Elections: every leadership a term of its own, increasing.
    terms = sorted(t for elector in by_role["elector"] for t in elector["terms"])
    assert len(set(terms)) == 16
    for elector in by_role["elector"]:
        assert elector["terms"] == sorted(elector["terms"])
    # Groups: each member saw itself, left, and nobody is left over.
    assert all(g["present"] and g["left"] for g in by_role["grouper"]) and members == {}
    # The dead holder's lock passed on within its session timeout after the new leader's
    # election (which gave every session a fresh timeout), and that within [T, 2T) of the
    # kills unless a vote split: each part checked against the design.
    (waiter,) = by_role["waiter"]
    await check_pass_on_after_a_leader_kill(
        cluster, killed_at, waiter["granted_at"], HOLDER_SESSION_TIMEOUT
    )
