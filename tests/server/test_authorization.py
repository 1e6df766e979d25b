"""Roles and identities on whole servers (in-memory network, MockClock; issue 13, item 3): a
request beyond its role is answered UNAUTHORIZED naming the identity and the missing role, and
the connection and the session stay usable; member-to-member traffic (a follower forwarding)
is not checked against client roles; state machines see the session's identity, on every
member and after a snapshot."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import cbor2
import pytest
import trio

from copycat_trio.client.admin import admin_request
from copycat_trio.core.sessions import Session
from copycat_trio.protocol.codec import register, registry
from copycat_trio.protocol.errors import UnauthorizedError
from copycat_trio.protocol.messages import (
    BUILTIN_TAGS,
    AppendRequest,
    CommandRequest,
    Envelope,
    Hello,
    LeaveRequest,
    Member,
    NoOpEntry,
    RegisterEntry,
    TransferRequest,
)
from copycat_trio.protocol.operations import Command, Query
from copycat_trio.recipes.kv import KeyValueStore, Put
from copycat_trio.server.authz import AuthPolicy, Role
from copycat_trio.server.snapshots import _decode_session, _encode_session
from copycat_trio.state_machine import Commit, ServerSession, StateMachine
from copycat_trio.testing import open_memory_cluster
from copycat_trio.testing.cluster import MemoryCluster, fake_certificate
from copycat_trio.testing.simdisk import SimDisk
from copycat_trio.transport.base import TransportError


@register(40800)
@attrs.frozen
class Note(Command):
    text: str


@register(40801)
@attrs.frozen
class Notes(Query):
    pass


class Notebook(StateMachine):
    """Notes by the identity that wrote them; an application's own rule by identity: only
    `ops` may write a note starting with "!"."""

    def __init__(self) -> None:
        self.notes: list[list[str]] = []
        self.registered: list[str] = []

    def note(self, commit: Commit[Note]) -> str:
        assert commit.session is not None
        who = commit.session.identity
        if commit.operation.text.startswith("!") and who != "ops":
            raise PermissionError(f"{who or 'anonymous'} may not write urgent notes")
        self.notes.append([who, commit.operation.text])
        return who

    def read(self, commit: Commit[Notes]) -> list[list[str]]:
        return list(self.notes)

    def on_register(self, session: ServerSession) -> None:
        self.registered.append(session.identity)


POLICY = AuthPolicy(roles={"ops": Role.ADMIN, "viewer": Role.READ})


@asynccontextmanager
async def secured_cluster(
    policy: AuthPolicy = POLICY, size: int = 3
) -> AsyncIterator[MemoryCluster]:
    """A cluster whose members check roles (each has a certificate for its host); the client
    hosts `ops`, `writer` and `viewer` show certificates with those common names (as if over
    TLS), the host `anonymous` none."""
    identities = {name: name for name in ("ops", "writer", "viewer")}
    async with open_memory_cluster(size, Notebook, auth=policy, identities=identities) as cluster:
        await cluster.wait_for_leader()
        yield cluster


def follower(cluster: MemoryCluster) -> int:
    leader = cluster.leaders()[0]
    return next(i for i in cluster.all_ids() if i != leader)


async def leave(cluster: MemoryCluster, host: str, member_id: int, via: int) -> Any:
    """A `members remove` of `member_id`, sent by a client on `host` to member `via`."""
    return await admin_request(
        [cluster.address(via)],
        LeaveRequest(member=Member(member_id, cluster.address(member_id))),
        timeout=10,
        transport=cluster.network.transport(host),
    )


async def test_a_write_client_commands_and_queries_but_is_refused_a_removal(
    autojump_clock: Any,
) -> None:
    async with secured_cluster() as cluster:
        victim = follower(cluster)
        async with cluster.client(host="writer") as client:
            assert await client.submit(Note("hello")) == "writer"
            assert await client.submit(Notes()) == [["writer", "hello"]]
        with pytest.raises(UnauthorizedError) as refused:
            await leave(cluster, "writer", victim, via=victim)
        assert "'writer'" in str(refused.value) and "admin role" in str(refused.value)
        with pytest.raises(UnauthorizedError):
            await admin_request(
                [cluster.address(victim)],
                TransferRequest(member=victim),
                transport=cluster.network.transport("writer"),
            )
        await trio.sleep(5)
        leader = cluster.servers[cluster.leaders()[0]]
        assert victim in {m.id for m in leader.status().members}


async def test_an_admin_client_removes_a_member_through_a_follower(autojump_clock: Any) -> None:
    async with secured_cluster() as cluster:
        victim = follower(cluster)
        # Sent to the victim, a follower: it forwards to the leader over a member connection,
        # which is not checked against the client's role (a member checked it first).
        await leave(cluster, "ops", victim, via=victim)
        leader = cluster.servers[cluster.leaders()[0]]
        assert victim not in {m.id for m in leader.status().members}


async def test_a_read_client_is_refused_a_command_and_its_session_stays_usable(
    autojump_clock: Any,
) -> None:
    async with secured_cluster() as cluster:
        async with cluster.client(host="writer") as writer:
            await writer.submit(Note("first"))
        async with cluster.client(host="viewer") as viewer:
            for _ in range(2):
                with pytest.raises(UnauthorizedError) as refused:
                    await viewer.submit(Note("mine"))
                assert "'viewer' has the read role" in str(refused.value)
                assert "write role" in str(refused.value)
                # The same session queries on: the refused command holds nothing up.
                with trio.fail_after(5):
                    assert await viewer.submit(Notes()) == [["writer", "first"]]


async def test_a_forwarded_command_keeps_the_identity_of_the_client_that_sent_it(
    autojump_clock: Any,
) -> None:
    async with secured_cluster() as cluster:
        via = follower(cluster)
        async with cluster.client([via], host="ops") as ops:
            assert await ops.submit(Note("!urgent")) == "ops"
        async with cluster.client([via], host="writer") as writer:
            with pytest.raises(Exception, match="writer may not write urgent notes"):
                await writer.submit(Note("!urgent too"))
        async with cluster.client([via], host="anonymous") as anonymous:
            assert await anonymous.submit(Note("plain")) == ""
        await trio.sleep(1)
        for server in cluster.servers.values():
            machine = server.state_machine
            assert machine.notes == [["ops", "!urgent"], ["", "plain"]]
            assert machine.registered == ["ops", "writer", ""]


async def test_an_anonymous_role_of_read_refuses_anonymous_commands(autojump_clock: Any) -> None:
    policy = attrs.evolve(POLICY, anonymous_role=Role.READ)
    async with secured_cluster(policy) as cluster, cluster.client(host="anonymous") as anonymous:
        with pytest.raises(UnauthorizedError, match="an anonymous client has the read role"):
            await anonymous.submit(Note("x"))


async def test_without_a_policy_a_client_cannot_claim_an_identity(autojump_clock: Any) -> None:
    """No TLS and no policy: everything is allowed, as before, and every identity is ""."""
    async with open_memory_cluster(3, Notebook) as cluster:
        cluster.network.certificates["ops"] = fake_certificate("ops")
        async with cluster.client(host="ops") as client:
            assert await client.submit(Note("plain")) == ""
        victim = follower(cluster)
        await leave(cluster, "ops", victim, via=victim)
        leader = cluster.servers[cluster.leaders()[0]]
        assert victim not in {m.id for m in leader.status().members}


def test_a_sessions_identity_survives_a_snapshot_and_old_snapshots_load() -> None:
    session = Session(id=7, client="c", timeout=5000, last_active=3, identity="ops")
    record = _encode_session(session)
    assert _decode_session(record).identity == "ops"
    assert _decode_session(record[:9]).identity == ""


async def test_a_client_cannot_use_a_session_another_identity_opened(autojump_clock: Any) -> None:
    """Session ids are log indexes, easy to guess: a command in another identity's session
    would apply as that identity, so members answer it UNAUTHORIZED, at any member."""
    async with secured_cluster() as cluster:
        async with cluster.client(host="writer") as writer:
            await writer.submit(Note("mine"))
            assert writer.session_id
            for member_id in cluster.all_ids():
                hijack = CommandRequest(
                    session=writer.session_id, sequence=2, operation=Note("!as writer")
                )
                with pytest.raises(UnauthorizedError, match="belongs to client 'writer'"):
                    await admin_request(
                        [cluster.address(member_id)],
                        hijack,
                        transport=cluster.network.transport("ops"),
                    )
            assert await writer.submit(Note("still mine")) == "writer"
        leader = cluster.servers[cluster.leaders()[0]]
        assert leader.state_machine.notes == [["writer", "mine"], ["writer", "still mine"]]


async def test_a_member_restored_from_a_snapshot_knows_who_opened_each_session(
    autojump_clock: Any,
) -> None:
    disks: dict[int, SimDisk] = {}

    def storage(member_id: int) -> SimDisk:
        return disks.setdefault(member_id, SimDisk(f"m{member_id}", random.Random(member_id)))

    async with open_memory_cluster(
        3,
        KeyValueStore,
        storage=storage,
        snapshot_every=10,
        catch_up_entries=0,
        auth=POLICY,
        identities={"ops": "ops"},
    ) as cluster:
        leader = await cluster.wait_for_leader()
        behind = next(i for i in cluster.all_ids() if i != leader)
        cluster.isolate(behind)
        others = [i for i in cluster.all_ids() if i != behind]
        async with cluster.client(others, host="ops") as client:
            for i in range(30):
                await client.submit(Put(f"k{i}", "v"))
            target = cluster.servers[leader].status().commit_index
            cluster.network.heal()
            follower = cluster.servers[behind]
            with trio.fail_after(30):
                while follower.status().applied_index < target:
                    await trio.sleep(0.01)
            assert follower._replication is not None and follower._replication.installed == 1
            assert follower._executor is not None
            assert follower._executor.handles[client.session_id].identity == "ops"


def test_register_entries_and_hellos_from_before_identities_still_decode() -> None:
    old_entry = cbor2.dumps(cbor2.CBORTag(BUILTIN_TAGS[RegisterEntry], [3, 7, 1000, "c", 5000]))
    entry = registry.decode(old_entry)
    assert entry == RegisterEntry(term=3, index=7, timestamp=1000, client="c", timeout=5000)
    assert entry.identity == ""
    old_hello = registry.decode(cbor2.dumps(cbor2.CBORTag(BUILTIN_TAGS[Hello], [1, 1, "x", ""])))
    assert old_hello.token == ""


async def test_a_client_with_a_certificate_cannot_send_raft_messages(autojump_clock: Any) -> None:
    """Raft messages are member traffic (docs/security.md): an Envelope from a client's
    connection, even an admin's, closes that connection and reaches no core. Forged, it could
    depose the leader with a higher term or put entries into a follower's log."""
    async with secured_cluster() as cluster:
        victim = follower(cluster)
        server = cluster.servers[victim]
        term = server.status().term
        leader = cluster.leaders()[0]
        last = server.status().last_log_index
        forged = AppendRequest(
            term=term + 5,
            leader=leader,
            prev_log_index=last,
            prev_log_term=term,
            entries=(NoOpEntry(term=term + 5, index=last + 1, timestamp=0),),
        )
        for host in ("ops", "writer", "anonymous"):
            stream = await cluster.network.transport(host).connect(cluster.address(victim))
            await stream.send(Envelope(source=leader, target=victim, message=forged))
            with trio.fail_after(5), pytest.raises(TransportError):
                await stream.receive()  # the member closes the connection
            await stream.aclose()
        await trio.sleep(1)
        assert server.status().term == term
        assert all(s.status().term == term for s in cluster.servers.values())
        async with cluster.client(host="writer") as client:
            assert await client.submit(Note("after")) == "writer"
