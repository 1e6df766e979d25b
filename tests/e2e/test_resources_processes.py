"""Issue 12 on real processes: one plain `serve` cluster (the resources manager) used from the
command line and from several client processes at once, through a leader's SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from copycat_trio import open_client
from copycat_trio.recipes.resources import Group
from tests.e2e.conftest import StartCluster
from tests.e2e.test_cli_processes import cli

pytestmark = pytest.mark.e2e

RESOURCES = "copycat_trio.recipes:Resources"
HERE = Path(__file__).parent


class Lines:
    """A child process's stdout, line by line, each wait bounded."""

    def __init__(self, process: trio.Process) -> None:
        assert process.stdout is not None
        self.stream = process.stdout
        self.buffer = b""
        self.seen: list[str] = []

    async def next(self, timeout: float = 15.0) -> str:
        with trio.fail_after(timeout):
            while b"\n" not in self.buffer:
                data = await self.stream.receive_some()
                if not data:
                    raise EOFError(f"the process ended; it printed {self.seen}")
                self.buffer += data
        line, _, self.buffer = self.buffer.partition(b"\n")
        self.seen.append(line.decode())
        return self.seen[-1]


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
