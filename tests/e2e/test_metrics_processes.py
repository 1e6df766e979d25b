"""Metrics and health of real `serve --metrics-address` processes on loopback: every listed
metric parses and moves under load, leader changes are counted after a SIGKILL, and a member cut
off from the majority says 503 with the reason within about two election timeouts."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from copycat_trio import open_client
from copycat_trio.recipes.kv import Put
from copycat_trio.server.http import http_get
from copycat_trio.testing.processes import free_ports
from tests.e2e.conftest import StartCluster
from tests.e2e.procs import ProcessCluster
from tests.server.test_metrics import LISTED

pytestmark = pytest.mark.e2e

ELECTION_TIMEOUT = 0.5
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(cluster: ProcessCluster, member_id: int) -> dict[str, Samples]:
    address = cluster.servers[member_id].metrics_address
    assert address is not None
    status, body = await http_get(address, "/metrics")
    assert status == 200, body
    return {
        family.name: {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for sample in family.samples
        }
        for family in text_string_to_metric_families(body.decode())
    }


def sample(families: dict[str, Samples], name: str, suffix: str = "", **labels: str) -> float:
    return families[name][(name + suffix, tuple(sorted(labels.items())))]


async def health(cluster: ProcessCluster, member_id: int, path: str = "/health") -> tuple[int, Any]:
    address = cluster.servers[member_id].metrics_address
    assert address is not None
    status, body = await http_get(address, path, timeout=2.0)
    return status, json.loads(body)


async def test_metrics_move_and_health_follows_the_majority(start_cluster: StartCluster) -> None:
    cluster = await start_cluster(
        3,
        metrics=True,
        state_machine="copycat_trio.recipes.kv:KeyValueStore",
        snapshot_every=50,
        election_timeout=ELECTION_TIMEOUT,
    )
    with trio.fail_after(60):
        leader = (await cluster.wait_for_leader()).leader
        before = await scrape(cluster, leader)
        async with open_client(cluster.addresses(), timeout=10) as client:
            for i in range(120):
                await client.submit(Put(f"key{i}", "value"))
            after = await scrape(cluster, leader)
        assert set(after) >= LISTED, LISTED - set(after)
        assert sample(after, "copycat_server_is_leader") == 1
        assert sample(after, "copycat_server_has_leader") == 1
        assert sample(after, "copycat_server_term") >= 1
        for gauge in ("copycat_server_commit_index", "copycat_server_applied_index"):
            assert sample(after, gauge) >= sample(before, gauge) + 120, gauge
        for counter in ("copycat_server_proposals_committed", "copycat_server_leader_changes_seen"):
            assert sample(after, counter, "_total") >= 1, counter
        committed = "copycat_server_proposals_committed"
        assert sample(after, committed, "_total") >= sample(before, committed, "_total") + 120
        assert sample(after, "copycat_server_proposals_pending") >= 0
        assert "copycat_server_proposals_failed_total" in {
            n for n, _ in after["copycat_server_proposals_failed"]
        }
        assert sample(after, "copycat_sessions_open") >= 1
        for histogram in (
            "copycat_disk_fsync_duration_seconds",
            "copycat_disk_backend_commit_batch_entries",
        ):
            assert sample(after, histogram, "_count") > sample(before, histogram, "_count")
        assert sample(after, "copycat_snapshot_save_duration_seconds", "_count") >= 1
        assert (
            sample(after, "copycat_client_requests", "_total", type="command", status="ok") >= 120
        )
        for peer in (str(i) for i in cluster.ids() if i != leader):
            assert (
                sample(after, "copycat_network_peer_round_trip_time_seconds", "_count", peer=peer)
                > 0
            )
            sent = "copycat_network_peer_sent_bytes"
            assert sample(after, sent, "_total", peer=peer) > sample(
                before, sent, "_total", peer=peer
            )
        for member in cluster.ids():
            assert set(await scrape(cluster, member)) >= LISTED
            status, body = await health(cluster, member)
            assert status == 200 and body["health"] is True, body
            status, body = await health(cluster, member, "/ready")
            assert status == 200 and body["ready"] is True, body

        # SIGKILL the leader: each survivor counts the new leader it sees.
        survivors = [i for i in cluster.ids() if i != leader]
        changes = "copycat_server_leader_changes_seen"
        seen = {i: sample(await scrape(cluster, i), changes, "_total") for i in survivors}
        await cluster.kill(leader)
        new_leader = (await cluster.wait_for_leader(survivors)).leader
        for member in survivors:
            assert sample(await scrape(cluster, member), changes, "_total") >= seen[member] + 1
            status, body = await health(cluster, member)
            assert status == 200, body

        # Freeze the other survivor: the last member is cut off from the majority.
        frozen = new_leader
        alone = next(i for i in survivors if i != frozen)
        cluster.pause(frozen)
        started = trio.current_time()
        while True:
            status, body = await health(cluster, alone)
            if status == 503:
                break
            assert status == 200, body
            await trio.sleep(0.05)
        elapsed = trio.current_time() - started
        print(f"member {alone} said 503 {elapsed:.2f}s after member {frozen} froze: {body}")
        assert body["health"] is False and body["reason"], body
        assert "leader" in body["reason"], body
        assert elapsed <= 3 * ELECTION_TIMEOUT, f"503 only after {elapsed:.2f}s: {body}"
        status, body = await health(cluster, alone, "/ready")
        assert status == 200  # started and joined: still ready, only unhealthy


async def test_cluster_file_metrics_on_port_zero_are_announced(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    config = tmp_path / "cluster.toml"
    config.write_text(
        "[cluster]\nelection_timeout = 0.5\nheartbeat_interval = 0.1\n\n"
        f'[storage]\ndirectory = "{tmp_path}/data-{{id}}"\n\n'
        '[metrics]\naddress = "127.0.0.1:0"\n\n'
        f'[[members]]\nid = 1\naddress = "127.0.0.1:{port}"\n'
    )
    command = [sys.executable, "-m", "copycat_trio", "serve", "--id", "1", "--config", str(config)]
    process = await trio.lowlevel.open_process(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    try:
        assert process.stdout is not None
        output = b""
        with trio.fail_after(30):
            while b"\n" not in output:
                chunk = await process.stdout.receive_some(4096)
                assert chunk, f"serve ended before its banner: {output!r}"
                output += chunk
        banner = output.split(b"\n", 1)[0].decode()
        match = re.search(r"metrics at http://(127\.0\.0\.1:(\d+))", banner)
        assert match is not None and match.group(2) != "0", banner
        status, body = await http_get(match.group(1), "/ready")
        assert status == 200, body
        status, body = await http_get(match.group(1), "/health")
        assert status == 200, body
    finally:
        with trio.CancelScope(shield=True):
            process.kill()
            await process.wait()
