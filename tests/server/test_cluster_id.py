"""Cluster identity: bootstrap makes an id stored with the member id in the data directory, a
joining member adopts it, and a server refuses another member's or another cluster's data and
peers of another cluster (real TCP on 127.0.0.1, real clock: the Hello carries the id)."""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import attrs
import pytest
import trio

from copycat_trio.protocol.errors import ConfigurationError
from copycat_trio.protocol.messages import (
    JoinRequest,
    Member,
    RpcRequest,
    StatusRequest,
    StatusResponse,
)
from copycat_trio.recipes.kv import KeyValueStore
from copycat_trio.server.server import CopycatServer
from copycat_trio.storage.disk import DiskStorage
from copycat_trio.storage.identity import IDENTITY_FILE, Identity, read_identity
from copycat_trio.testing.processes import free_ports
from copycat_trio.transport.framed import RefusedError
from copycat_trio.transport.rpc import ConnectionPool
from copycat_trio.transport.tcp import TcpTransport


def make_server(
    member_id: int, address: str, directory: Path, cluster_id: str | None = None
) -> CopycatServer:
    return CopycatServer(
        member_id,
        address,
        state_machine=KeyValueStore,
        storage=DiskStorage(directory),
        election_timeout=0.3,
        heartbeat_interval=0.05,
        session_timeout=1.0,
        cluster_id=cluster_id,
    )


def only_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one error inside nested nursery groups."""
    errors: list[BaseException] = []
    stack: list[BaseException] = [group]
    while stack:
        error = stack.pop()
        if isinstance(error, BaseExceptionGroup):
            stack.extend(error.exceptions)
        else:
            errors.append(error)
    assert len(errors) == 1, errors
    return errors[0]


async def run_once(server: CopycatServer) -> None:
    """Start a one-member cluster (or restart it), then stop it; a failure to start raises
    its error itself."""
    try:
        async with trio.open_nursery() as nursery:
            with trio.fail_after(10):
                await nursery.start(server.bootstrap)
            nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        raise only_error(group) from None


async def test_bootstrap_stores_a_cluster_id_that_status_shows(tmp_path: Path) -> None:
    server = make_server(1, f"127.0.0.1:{free_ports(1)[0]}", tmp_path / "d1")
    async with trio.open_nursery() as nursery:
        await nursery.start(server.bootstrap)
        stored = read_identity(tmp_path / "d1")
        assert stored is not None and stored.member_id == 1 and len(stored.cluster_id) == 16
        assert server.status().cluster_id == stored.cluster_id
        pool = ConnectionPool(TcpTransport(), nursery)
        answer = await pool.request(server.address, StatusRequest(), 5)
        assert isinstance(answer, StatusResponse) and answer.cluster_id == stored.cluster_id
        nursery.cancel_scope.cancel()
    await run_once(make_server(1, server.address, tmp_path / "d1"))  # a restart keeps it
    assert read_identity(tmp_path / "d1") == stored


async def test_another_members_or_clusters_data_is_refused_with_both_ids(tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_ports(1)[0]}"
    await run_once(make_server(1, address, tmp_path / "d1"))
    stored = read_identity(tmp_path / "d1")
    assert stored is not None
    with pytest.raises(ConfigurationError) as refused:
        await run_once(make_server(2, address, tmp_path / "d1"))
    assert "belongs to member 1 of cluster " + stored.cluster_id in str(refused.value)
    assert "not to member 2" in str(refused.value)
    with pytest.raises(ConfigurationError) as refused:
        await run_once(make_server(1, address, tmp_path / "d1", cluster_id="feedfacefeedface"))
    assert f"belongs to cluster {stored.cluster_id}, not to cluster feedfacefeedface" in str(
        refused.value
    )
    await run_once(make_server(1, address, tmp_path / "d1"))  # the directory is still usable


async def test_a_data_directory_from_before_cluster_ids_keeps_working(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    address = f"127.0.0.1:{free_ports(1)[0]}"
    await run_once(make_server(1, address, tmp_path / "d1"))
    (tmp_path / "d1" / IDENTITY_FILE).unlink()  # as an older version left it
    await run_once(make_server(1, address, tmp_path / "d1"))
    assert read_identity(tmp_path / "d1") == Identity("", 1)
    assert any("has no identity file" in r.getMessage() for r in caplog.records)
    with pytest.raises(ConfigurationError, match="not to member 3"):
        await run_once(make_server(3, address, tmp_path / "d1"))


async def test_a_joining_member_adopts_the_cluster_id_and_a_foreign_peer_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    first, second = (f"127.0.0.1:{port}" for port in free_ports(2))
    one = make_server(1, first, tmp_path / "d1")
    two = make_server(2, second, tmp_path / "d2")
    async with trio.open_nursery() as nursery:
        with trio.fail_after(15):
            await nursery.start(one.bootstrap)
            await nursery.start(two.join, [first])
        assert two.cluster_id == one.cluster_id != ""
        assert read_identity(tmp_path / "d2") == Identity(one.cluster_id, 2)
        # A member of another cluster cannot join: its Hello names that cluster; it is told why.
        foreign = TcpTransport()
        foreign.version = attrs.evolve(foreign.version, cluster="0123456789abcdef")
        for _ in range(2):
            stream = await foreign.connect(first)
            with trio.fail_after(5), pytest.raises(RefusedError, match="of cluster 0123456789"):
                await stream.send(RpcRequest(1, JoinRequest(member=Member(3, "127.0.0.1:1"))))
                await stream.receive()
            await stream.aclose()
        assert {m.id for m in one.status().members} == {1, 2}  # member 3 did not join
        nursery.cancel_scope.cancel()
    refusals = [r.getMessage() for r in caplog.records if "refusing connection" in r.getMessage()]
    assert len(refusals) == 1, refusals  # once per peer
    assert one.cluster_id in refusals[0] and "0123456789abcdef" in refusals[0]


async def test_members_bootstrapped_together_share_the_lowest_members_id(tmp_path: Path) -> None:
    members = [Member(i, f"127.0.0.1:{port}") for i, port in enumerate(free_ports(3), start=1)]
    servers = [make_server(m.id, m.address, tmp_path / f"d{m.id}") for m in members]
    async with trio.open_nursery() as nursery:
        with trio.fail_after(15):
            async with trio.open_nursery() as starting:
                for server in servers:
                    starting.start_soon(functools.partial(nursery.start, server.bootstrap, members))
            made = servers[0].cluster_id
            assert made and all(s.cluster_id in ("", made) for s in servers)
            while any(s.cluster_id != made for s in servers):  # told by Raft messages
                await trio.sleep(0.05)
        for server in servers:
            assert read_identity(tmp_path / f"d{server.id}") == Identity(made, server.id)
        nursery.cancel_scope.cancel()
