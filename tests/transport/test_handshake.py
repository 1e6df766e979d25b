"""The protocol version handshake: each side's first frame is a Hello, sent with its first message.

A peer one minor version newer (or older) is accepted, and a message class that gained a field
crosses between them both ways; a peer of another major version is refused with
IncompatibleVersionError on both sides; a connection that starts with anything but a Hello is
refused, and garbage as the first frame gets the codec's own error, as before the handshake.
"""

from __future__ import annotations

from typing import Any

import attrs
import cbor2
import pytest
import trio
import trio.testing

from copycat_trio.client import open_client
from copycat_trio.protocol import (
    PROTOCOL_VERSION,
    FrameDecoder,
    Hello,
    IncompatibleVersionError,
    Member,
    ProtocolError,
    RpcRequest,
    RpcResponse,
    StatusRequest,
    TypeRegistry,
    decode,
    encode,
    encode_frame,
)
from copycat_trio.recipes.kv import Get, KeyValueStore, Put
from copycat_trio.server.server import CopycatServer
from copycat_trio.storage.memory import MemoryStorage
from copycat_trio.testing.processes import free_ports
from copycat_trio.transport.base import MessageStream, TransportError
from copycat_trio.transport.framed import FramedStream
from copycat_trio.transport.rpc import ResponseLost, RpcConnection
from copycat_trio.transport.tcp import TcpTransport

NEWER_MINOR = Hello(PROTOCOL_VERSION.major, PROTOCOL_VERSION.minor + 1)
NEXT_MAJOR = Hello(PROTOCOL_VERSION.major + 1, 0)
TAG = 40910


@attrs.frozen
class NoteV1:
    """A message as this minor version knows it."""

    text: str


@attrs.frozen
class NoteV2:
    """The same message one minor version later: it gained a trailing optional field."""

    text: str
    urgent: bool = False


def build(cls: type) -> TypeRegistry:
    """The registry of one build: the library's messages plus its version of the note."""
    registry = TypeRegistry(builtins=True)
    registry.register(cls, TAG)
    return registry


OLD_BUILD = build(NoteV1)
NEW_BUILD = build(NoteV2)


def framed_pair(
    a_version: Hello = PROTOCOL_VERSION,
    b_version: Hello = PROTOCOL_VERSION,
    a_codec: TypeRegistry = OLD_BUILD,
    b_codec: TypeRegistry = OLD_BUILD,
) -> tuple[FramedStream, FramedStream]:
    a, b = trio.testing.memory_stream_pair()
    return (
        FramedStream(a, "b", codec=a_codec, version=a_version),
        FramedStream(b, "a", codec=b_codec, version=b_version),
    )


def frames_of(data: bytes | bytearray) -> list[Any]:
    decoder = FrameDecoder()
    decoder.feed(data)
    return [decode(frame) for frame in decoder.frames()]


async def test_the_hello_goes_with_the_first_message_and_only_once() -> None:
    a, raw = trio.testing.memory_stream_pair()
    stream = FramedStream(a, "raw")
    await stream.send(StatusRequest())
    assert frames_of(await raw.receive_some()) == [PROTOCOL_VERSION, StatusRequest()]
    await stream.send_many([StatusRequest(), StatusRequest()])
    assert frames_of(await raw.receive_some()) == [StatusRequest(), StatusRequest()]


async def test_no_round_trip_the_first_message_arrives_before_any_answer() -> None:
    a, b = framed_pair()
    with trio.fail_after(1):
        await a.send(StatusRequest())  # a has received nothing: no waiting for b's Hello
        assert await b.receive() == StatusRequest()
    assert b.peer_version == PROTOCOL_VERSION and a.peer_version is None
    await b.send(RpcResponse(1, "ok"))
    assert await a.receive() == RpcResponse(1, "ok")
    assert a.peer_version == PROTOCOL_VERSION


async def test_a_newer_minor_is_accepted_and_the_gained_field_crosses_both_ways() -> None:
    new, old = framed_pair(NEWER_MINOR, PROTOCOL_VERSION, NEW_BUILD, OLD_BUILD)
    with trio.fail_after(1):
        await new.send(NoteV2("from the new build", urgent=True))
        assert await old.receive() == NoteV1("from the new build")
        assert old.peer_version == NEWER_MINOR
        await old.send(NoteV1("from the old build"))
        assert await new.receive() == NoteV2("from the old build", urgent=False)
        assert new.peer_version == PROTOCOL_VERSION


async def test_another_major_is_refused_on_both_sides_with_both_versions_named() -> None:
    newer, current = framed_pair(NEXT_MAJOR, PROTOCOL_VERSION)
    with trio.fail_after(1):
        await newer.send(StatusRequest())
        with pytest.raises(IncompatibleVersionError) as refused:
            await current.receive()
        message = str(refused.value)
        assert f"speaks protocol {NEXT_MAJOR.major}.0" in message
        assert f"this side speaks {PROTOCOL_VERSION.major}.{PROTOCOL_VERSION.minor}" in message
        await current.aclose()
        # The refusing side sent its own Hello first, so the other learns why, not just "closed".
        with pytest.raises(IncompatibleVersionError, match="another major version"):
            await newer.receive()


async def test_the_first_frame_must_be_a_hello() -> None:
    a, raw = trio.testing.memory_stream_pair()
    stream = FramedStream(raw, "no hello")
    await a.send_all(encode_frame(encode(RpcRequest(1, StatusRequest()))))
    with pytest.raises(ProtocolError, match=r"expected a Hello .* first frame, got RpcRequest"):
        await stream.receive()


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        (cbor2.dumps(cbor2.CBORTag(39999, [1])), "unknown CBOR tag 39999"),
        (b"\xff\xff", "malformed CBOR"),
        (cbor2.dumps(cbor2.CBORTag(32774, ["1", 0])), "Hello.major: expected int, got str"),
        (cbor2.dumps(cbor2.CBORTag(32774, [1])), "Hello: expected 5 fields, got 1"),
    ],
)
async def test_garbage_as_the_first_frame_gets_the_codec_error(payload: bytes, error: str) -> None:
    a, raw = trio.testing.memory_stream_pair()
    stream = FramedStream(raw, "garbage")
    await a.send_all(encode_frame(payload))
    with pytest.raises(ProtocolError, match=error):
        await stream.receive()


async def test_a_later_hello_is_an_ordinary_message_for_the_caller_to_refuse() -> None:
    a, b = framed_pair()
    await a.send_many([StatusRequest(), PROTOCOL_VERSION])
    assert await b.receive() == StatusRequest()
    assert await b.receive() == PROTOCOL_VERSION


async def answer_requests(stream: MessageStream, refusals: list[Exception]) -> None:
    try:
        while True:
            message = await stream.receive()
            assert isinstance(message, RpcRequest)
            await stream.send(RpcResponse(message.id, "answered"))
    except IncompatibleVersionError as exc:
        refusals.append(exc)
    except TransportError:
        pass


async def test_over_tcp_a_newer_minor_is_served_and_another_major_refused(
    caplog: pytest.LogCaptureFixture,
) -> None:
    refusals: list[Exception] = []

    async def handler(stream: MessageStream) -> None:
        await answer_requests(stream, refusals)

    async with trio.open_nursery() as nursery:
        address = await nursery.start(TcpTransport().serve, "127.0.0.1:0", handler)
        for version in (PROTOCOL_VERSION, NEWER_MINOR):
            connection = RpcConnection(await TcpTransport(version=version).connect(address))
            nursery.start_soon(connection.run)
            with trio.fail_after(5):
                assert await connection.request(StatusRequest()) == "answered"
                assert await connection.request(StatusRequest()) == "answered"
            await connection.stream.aclose()
        connection = RpcConnection(await TcpTransport(version=NEXT_MAJOR).connect(address))
        nursery.start_soon(connection.run)
        with trio.fail_after(5), pytest.raises(ResponseLost, match="another major version"):
            await connection.request(StatusRequest())
        assert len(refusals) == 1 and isinstance(refusals[0], IncompatibleVersionError)
        warnings = [r.getMessage() for r in caplog.records if r.name.endswith("transport.rpc")]
        assert any("another major version is refused" in w for w in warnings), warnings
        nursery.cancel_scope.cancel()


async def test_a_member_one_minor_newer_serves_in_a_cluster_and_is_rolled_back() -> None:
    """Real TCP, in one process: member 3 announces the next minor version, then restarts on
    the current one with its log; the cluster commits throughout, with 3 needed for a quorum
    at the end."""
    members = [Member(i, f"127.0.0.1:{port}") for i, port in enumerate(free_ports(3), start=1)]
    storages = {member.id: MemoryStorage() for member in members}
    scopes: dict[int, trio.CancelScope] = {}

    async def run(
        member: Member, version: Hello, *, task_status: trio.TaskStatus[CopycatServer]
    ) -> None:
        server = CopycatServer(
            member.id,
            member.address,
            state_machine=KeyValueStore,
            transport=TcpTransport(version=version),
            storage=storages[member.id],
            election_timeout=0.5,
            heartbeat_interval=0.1,
        )
        with trio.CancelScope() as scopes[member.id]:
            await server.bootstrap(members, task_status=task_status)

    async def stop(member_id: int) -> None:
        scopes[member_id].cancel()
        await trio.lowlevel.checkpoint()

    addresses = [member.address for member in members]
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            async with trio.open_nursery() as starting:
                for member in members:
                    version = NEWER_MINOR if member.id == 3 else PROTOCOL_VERSION
                    starting.start_soon(nursery.start, run, member, version)
            async with open_client(addresses, timeout=20) as client:
                await client.submit(Put("before", "1"))
                status = await client.status(members[2].address)
                assert status.id == 3 and status.leader is not None
                await stop(3)
                await nursery.start(run, members[2], PROTOCOL_VERSION)  # rolled back
                await client.submit(Put("rolled back", "2"))
                await stop(1)  # from here on, no quorum without member 3
                await client.submit(Put("after", "3"))
                for key, value in (("before", "1"), ("rolled back", "2"), ("after", "3")):
                    assert await client.submit(Get(key)) == value
            nursery.cancel_scope.cancel()
