"""Membership with real processes and the command line: a cluster file, `members` commands,
automatic replacement of a SIGKILLed voter by a RESERVE member, leadership transfer."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

from copycat_trio import open_client
from copycat_trio.demo import free_ports
from copycat_trio.recipes.kv import Get, Put
from tests.e2e.procs import REPO_ROOT

pytestmark = pytest.mark.e2e


def cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "copycat_trio", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)),
    )


def members_json(cluster: str) -> list[dict[str, object]]:
    """The member list, or [] while no leader with a quorum can answer yet."""
    result = cli("members", "--cluster", cluster, "list", "--json")
    if result.returncode != 0:
        reasons = ("no quorum", "could not be reached", "no member could be reached")
        assert any(reason in result.stderr for reason in reasons), result.stderr
        return []
    return json.loads(result.stdout)  # type: ignore[no-any-return]


async def test_cluster_file_replacement_and_transfer(tmp_path: Path) -> None:
    ports = free_ports(4)
    addresses = {i + 1: f"127.0.0.1:{p}" for i, p in enumerate(ports)}
    cluster_file = tmp_path / "cluster.toml"
    member_tables = "\n".join(
        f'[[members]]\nid = {i}\naddress = "{a}"\ntype = "{"reserve" if i == 4 else "active"}"\n'
        for i, a in addresses.items()
    )
    cluster_file.write_text(
        "[cluster]\nelection_timeout = 0.5\nheartbeat_interval = 0.1\nreplace_after = 2.0\n\n"
        f'[storage]\ndirectory = "{tmp_path}/data/m{{id}}"\n\n' + member_tables
    )
    processes: dict[int, trio.Process] = {}
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    try:
        for member_id in addresses:
            log = open(tmp_path / f"server{member_id}.log", "wb")  # noqa: SIM115
            processes[member_id] = await trio.lowlevel.open_process(
                [
                    sys.executable,
                    "-m",
                    "copycat_trio",
                    "serve",
                    "--config",
                    str(cluster_file),
                    "--id",
                    str(member_id),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
            log.close()
        everyone = ",".join(addresses.values())
        with trio.fail_after(60):
            while True:
                rows = await trio.to_thread.run_sync(members_json, everyone)
                if len(rows) == 4:
                    break
                await trio.sleep(0.2)
        assert {r["id"]: r["type"] for r in rows} == {
            1: "active",
            2: "active",
            3: "active",
            4: "reserve",
        }

        async with open_client(list(addresses.values())[:3]) as client:
            await client.submit(Put("k", "v"))

        # Transfer leadership by command, and time it.
        status = cli("status", "--cluster", everyone, "--json")
        leader = next(r["id"] for r in json.loads(status.stdout) if r["role"] == "leader")
        target = next(i for i in (1, 2, 3) if i != leader)
        started = time.perf_counter()
        result = await trio.to_thread.run_sync(
            lambda: cli("members", "--cluster", everyone, "transfer-leader", str(target))
        )
        took = time.perf_counter() - started
        assert result.returncode == 0, result.stderr
        print(f"leadership transfer {leader} -> {target} took {took:.2f}s (CLI round trip)")
        status = cli("status", "--cluster", everyone, "--json")
        assert [r["id"] for r in json.loads(status.stdout) if r["role"] == "leader"] == [target]

        # SIGKILL a voter that is not the leader: the RESERVE member takes its place.
        victim = next(i for i in (1, 2, 3) if i != target)
        processes[victim].send_signal(signal.SIGKILL)
        await processes[victim].wait()
        alive = ",".join(a for i, a in addresses.items() if i != victim)
        with trio.fail_after(60):
            while True:
                rows = await trio.to_thread.run_sync(members_json, alive)
                kinds = {r["id"]: r["type"] for r in rows}
                if kinds.get(4) == "active" and kinds.get(victim) == "reserve":
                    break
                await trio.sleep(0.5)
        # Three voters again: the cluster survives one more failure.
        third = next(i for i in (1, 2, 3) if i not in (victim, target))
        processes[third].send_signal(signal.SIGKILL)
        await processes[third].wait()
        async with open_client([addresses[target], addresses[4]], timeout=30) as client:
            await client.submit(Put("after", "two failures"))
            assert await client.submit(Get("k")) == "v"
    finally:
        with trio.CancelScope(shield=True):
            for process in processes.values():
                if process.returncode is None:
                    process.kill()
                    await process.wait()
