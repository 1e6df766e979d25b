"""A flood of idle connections to the leader of a live cluster whose processes may open only
128 files: the leader keeps enough descriptors for its log, snapshots and peers, so it keeps
leading and nothing acknowledged is lost."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import trio

from copycat_trio import open_client
from tests.e2e.appendlog import Append, Items
from tests.e2e.conftest import StartCluster

pytestmark = pytest.mark.e2e

FILE_LIMIT = 128
FLOOD = 400  # over three times the file limit


@pytest.mark.skipif(shutil.which("prlimit") is None, reason="util-linux prlimit is not installed")
async def test_leader_survives_more_connections_than_it_has_file_descriptors(
    start_cluster: StartCluster, tmp_path: Path
) -> None:
    cluster = await start_cluster(
        3,
        snapshot_every=50,  # snapshots and segment files keep being opened during the flood
        command_prefix=lambda member_id: ["prlimit", f"--nofile={FILE_LIMIT}:{FILE_LIMIT}", "--"],
    )
    agreement = await cluster.wait_for_leader()
    leader = cluster.address(agreement.leader)
    host, port = leader.rsplit(":", 1)
    flood: list[trio.SocketStream] = []
    try:
        for _ in range(FLOOD):
            flood.append(await trio.open_tcp_stream(host, int(port)))
        async with open_client(cluster.addresses(), timeout=20) as client:
            for i in range(200):
                await client.submit(Append(f"during-{i}"))
        cluster.assert_running()
        assert (await cluster.wait_for_leader()).leader == agreement.leader
    finally:
        for stream in flood:
            await stream.aclose()
    # The flood is gone: a client that may talk only to the leader is served again.
    async with open_client([leader], timeout=20) as client:
        await client.submit(Append("after"))
        items = await client.submit(Items())
    assert items == [f"during-{i}" for i in range(200)] + ["after"]
    log = cluster.servers[agreement.leader].log_text()
    assert "connections open, the most allowed; closed silent" in log
    assert "Too many open files" not in log
