"""Operations the servers cannot run: a typed answer within one round trip, never a closed
connection and a wait for the client's timeout (issue 12's "unknown CBOR tag 33010" retry loop).
"""

from __future__ import annotations

import attrs
import cbor2
import pytest
import trio

from copycat_trio.protocol import (
    BUILTIN_TAGS,
    CommandRequest,
    ErrorResponse,
    ErrorType,
    RpcRequest,
    RpcResponse,
    StatusRequest,
    StatusResponse,
    UnknownOperationError,
    encode_frame,
    registry,
)
from copycat_trio.protocol.codec import register
from copycat_trio.protocol.operations import Command, Consistency, Query
from copycat_trio.recipes.kv import Get, KeyValueStore, Put
from copycat_trio.testing import open_memory_cluster


@register(40711)
@attrs.frozen
class Unregistered(Command):
    """Registered in this process only so the client can encode it; the tests take its tag
    away from the decoder, as a server process that never imported it would not know it."""

    value: int = 0


@register(40712)
@attrs.frozen
class UnregisteredQuery(Query):
    pass


@register(40713)
@attrs.frozen
class Unhandled(Command):
    """Known on the wire, but KeyValueStore has no handler for it."""


@pytest.fixture
def servers_do_not_know_them(monkeypatch: pytest.MonkeyPatch) -> None:
    for cls in (Unregistered, UnregisteredQuery):
        monkeypatch.delitem(registry._decoders, registry.tags[cls])


async def test_an_unregistered_command_is_refused_at_once_and_the_session_goes_on(
    autojump_clock: trio.abc.Clock, servers_do_not_know_them: None
) -> None:
    async with open_memory_cluster(3, KeyValueStore) as cluster:
        await cluster.wait_for_leader()
        async with cluster.client() as client:
            await client.submit(Put("before", 1))
            with trio.fail_after(1):
                with pytest.raises(UnknownOperationError) as info:
                    await client.submit(Unregistered(7))
            assert "40711" in str(info.value) and "KeyValueStore" in str(info.value)
            # Its sequence number was used in order: the session's next commands, pipelined
            # with another unknown one, are applied.
            async with trio.open_nursery() as nursery:
                for i in range(5):
                    nursery.start_soon(client.submit, Put("after", i))

                async def unknown() -> None:
                    with pytest.raises(UnknownOperationError):
                        await client.submit(Unregistered(8))

                nursery.start_soon(unknown)
            assert await client.submit(Get("before")) == 1
            assert await client.submit(Get("after")) in range(5)
        for server in cluster.servers.values():
            assert "unknown" not in server.state_machine.data


async def test_an_unregistered_query_is_refused_at_once(
    autojump_clock: trio.abc.Clock, servers_do_not_know_them: None
) -> None:
    async with open_memory_cluster(3, KeyValueStore) as cluster:
        await cluster.wait_for_leader()
        async with cluster.client() as client:
            for consistency in Consistency:
                with trio.fail_after(1):
                    with pytest.raises(UnknownOperationError, match="40712"):
                        await client.submit(UnregisteredQuery(), consistency=consistency)
            await client.submit(Put("k", 1))


async def test_a_command_without_a_handler_is_unknown_operation(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with open_memory_cluster(3, KeyValueStore) as cluster:
        await cluster.wait_for_leader()
        async with cluster.client() as client:
            with pytest.raises(UnknownOperationError) as info:
                await client.submit(Unhandled())
            assert info.value.error_type is ErrorType.UNKNOWN_OPERATION
            assert "Unhandled" in str(info.value)


async def test_a_request_with_an_unreadable_body_gets_a_protocol_error_on_an_open_connection(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with open_memory_cluster(1, KeyValueStore) as cluster:
        await cluster.wait_for_leader()
        stream = await cluster.network.transport("raw").connect(cluster.address(1))
        command = cbor2.CBORTag(BUILTIN_TAGS[CommandRequest], ["x", "y", None])
        request = cbor2.CBORTag(BUILTIN_TAGS[RpcRequest], [41, command])
        with trio.fail_after(1):
            await stream.send_raw(encode_frame(cbor2.dumps(request)))
            answer = await stream.receive()
            assert isinstance(answer, RpcResponse) and answer.id == 41
            assert isinstance(answer.body, ErrorResponse) and answer.body.error is not None
            assert answer.body.error.type is ErrorType.PROTOCOL
            assert "CommandRequest.session: expected int" in answer.body.error.message
            await stream.send(RpcRequest(42, StatusRequest()))
            status = await stream.receive()
        assert isinstance(status, RpcResponse) and isinstance(status.body, StatusResponse)
        await stream.aclose()
