"""Garbage on the wire of a live three-process cluster.

Each attack opens its own raw TCP connection to the leader. The server must close that connection
(reading gives EOF within a few seconds) or answer with a typed error, and nothing else: after every
attack no process has died, the leader and term are unchanged, and a client still writes and reads.
Garbage comes as the first frame (where the Hello with the protocol version belongs) unless an
attack says otherwise; a connection that means to be served sends the Hello first.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable

import cbor2
import pytest
import trio
from trio_util import AsyncValue

from copycat_trio import Consistency, CopycatClient, open_client
from copycat_trio.protocol import (
    BUILTIN_TAGS,
    DEFAULT_MAX_FRAME_SIZE,
    PROTOCOL_VERSION,
    CommandRequest,
    CommandResponse,
    ErrorResponse,
    ErrorType,
    FrameDecoder,
    Hello,
    Member,
    RpcRequest,
    RpcResponse,
    StatusRequest,
    StatusResponse,
    decode,
    encode,
    encode_frame,
)
from tests.e2e.appendlog import Append, Items
from tests.e2e.procs import Agreement, ProcessCluster, RawConnection

pytestmark = pytest.mark.e2e

CLOSE_WITHIN = 5.0


async def expect_closed(connection: RawConnection, attack: str) -> None:
    """The server closes the connection within CLOSE_WITHIN seconds. Whatever it sent first
    must be typed PROTOCOL errors: no other answer to garbage is acceptable."""
    received = bytearray()
    with trio.move_on_after(CLOSE_WITHIN):
        while data := await connection.receive_bytes():
            received += data
        frames = FrameDecoder()
        frames.feed(received)
        for frame in frames.frames():
            message = decode(frame)
            body = message.body if isinstance(message, RpcResponse) else message
            assert isinstance(body, ErrorResponse), f"{attack}: answered with {message!r}"
            assert body.error is not None and body.error.type is ErrorType.PROTOCOL
        assert frames.buffered == 0, f"{attack}: the server sent a partial frame"
        return
    raise AssertionError(f"{attack}: connection still open after {CLOSE_WITHIN}s")


class Attacker:
    """Raw connections to one member, and the checks made after each attack."""

    def __init__(self, cluster: ProcessCluster, agreement: Agreement, client: CopycatClient):
        self.cluster = cluster
        self.target = agreement.leader
        self.term = agreement.term
        self.client = client
        self.address = cluster.address(self.target)
        self.log_path = cluster.servers[self.target].log_path

    async def connect(self, *, hello: bool = True) -> RawConnection:
        return await RawConnection.open(self.address, hello=hello)

    async def expect_logged(self, needle: str, attack: str) -> None:
        """The server logged a line with `needle` (it writes it before it closes the socket)."""
        with trio.move_on_after(CLOSE_WITHIN):
            while True:
                for line in self.log_path.read_text(errors="replace").splitlines():
                    if needle in line:
                        return
                await trio.sleep(0.05)
        raise AssertionError(f"{attack}: no log line with {needle!r} in {self.log_path}")

    async def garbage(self, data: bytes, attack: str, logged: str, *, hello: bool = False) -> None:
        """Send bytes (after a Hello if `hello`); the server logs `logged` about this very
        connection and closes it."""
        async with await self.connect(hello=hello) as connection:
            peer = connection.local_name
            await connection.send_bytes(data)
            await expect_closed(connection, attack)
        await self.expect_logged(f"closing connection from {peer}: {logged}", attack)

    async def check_cluster_serves(self, attack: str) -> None:
        self.cluster.assert_running()
        agreement = await self.cluster.wait_for_leader(timeout=5)
        assert (agreement.leader, agreement.term) == (self.target, self.term), (
            f"after {attack}: leadership changed: {agreement.rows}"
        )
        value = f"after {attack}"
        position = await self.client.submit(Append(value))
        items = await self.client.submit(Items(), consistency=Consistency.LINEARIZABLE)
        assert items[position] == value and items.count(value) == 1, f"after {attack}: {items}"


async def random_bytes(attacker: Attacker) -> None:
    data = random.Random(20240229).randbytes(4096)
    announced = int.from_bytes(data[:4], "big")
    assert announced > DEFAULT_MAX_FRAME_SIZE  # how the server reads these bytes (fixed seed)
    await attacker.garbage(data, "random bytes", f"peer announced a frame of {announced} bytes")


async def random_payloads(attacker: Attacker) -> None:
    """Well-framed random payloads (no valid message among them), each on its own connection."""
    rng = random.Random(7)
    for i in range(10):
        payload = rng.randbytes(rng.randint(1, 512))
        await attacker.garbage(encode_frame(payload), f"random payload {i}", "")


async def truncated_frame(attacker: Attacker) -> None:
    """A length prefix for 1000 bytes, 10 of them, then the end of our stream: the server lets the
    connection go (the peer ended cleanly, so there is nothing to log)."""
    async with await attacker.connect(hello=False) as connection:
        await connection.send_bytes((1000).to_bytes(4, "big") + b"0123456789")
        await connection.stream.send_eof()
        await expect_closed(connection, "truncated frame")


async def one_gibibyte_announced(attacker: Attacker) -> None:
    size = 1 << 30
    logged = f"peer announced a frame of {size} bytes"
    await attacker.garbage(size.to_bytes(4, "big"), "1 GiB length prefix", logged)


async def unknown_tag(attacker: Attacker) -> None:
    payload = cbor2.dumps(cbor2.CBORTag(39999, [1, "two", b"three"]))
    logged = "message contains unknown CBOR tag 39999"
    await attacker.garbage(encode_frame(payload), "unknown tag", logged)
    await attacker.garbage(encode_frame(payload), "unknown tag after a Hello", logged, hello=True)


async def next_response(connection: RawConnection) -> RpcResponse:
    """The next RpcResponse on the connection (skipping the server's Hello)."""
    while not isinstance(message := await connection.receive(), RpcResponse):
        assert isinstance(message, Hello), f"expected a response, got {message!r}"
    return message


async def wrong_field_types(attacker: Attacker) -> None:
    """A request whose id can be read but whose body does not decode: a typed PROTOCOL answer
    to that id, on a connection that stays open."""
    # RpcRequest(id=1, body=CommandRequest(session="x", sequence="y", operation=None)), built by
    # hand: a registered object travels as CBORTag(tag, [field values in attrs field order]).
    command = cbor2.CBORTag(BUILTIN_TAGS[CommandRequest], ["x", "y", None])
    payload = cbor2.dumps(cbor2.CBORTag(BUILTIN_TAGS[RpcRequest], [1, command]))
    async with await attacker.connect() as connection:
        with trio.fail_after(CLOSE_WITHIN):
            await connection.send_bytes(encode_frame(payload))
            answer = await next_response(connection)
            status = await connection.request(StatusRequest())
    assert isinstance(answer, RpcResponse) and answer.id == 1, answer
    assert isinstance(answer.body, ErrorResponse) and answer.body.error is not None
    assert answer.body.error.type is ErrorType.PROTOCOL
    assert "CommandRequest.session: expected int, got str" in answer.body.error.message
    assert isinstance(status, StatusResponse) and status.id == attacker.target


async def unknown_operation_tag(attacker: Attacker) -> None:
    """A command whose operation has a tag the server never registered (a client that knows
    more types): answered with a typed error, the connection kept. Without a session it is
    refused for that; with one, tests/e2e/test_unknown_operations_processes.py."""
    operation = cbor2.CBORTag(45678, ["payload"])
    command = cbor2.CBORTag(BUILTIN_TAGS[CommandRequest], [0, 1, operation])
    payload = cbor2.dumps(cbor2.CBORTag(BUILTIN_TAGS[RpcRequest], [2, command]))
    async with await attacker.connect() as connection:
        with trio.fail_after(CLOSE_WITHIN):
            await connection.send_bytes(encode_frame(payload))
            answer = await next_response(connection)
            status = await connection.request(StatusRequest())
    assert isinstance(answer, RpcResponse) and answer.id == 2, answer
    assert isinstance(answer.body, CommandResponse) and answer.body.error is not None, answer
    assert answer.body.error.type is ErrorType.UNKNOWN_SESSION, answer
    assert isinstance(status, StatusResponse) and status.id == attacker.target


async def unsupported_request_bodies(attacker: Attacker) -> None:
    """Well-formed requests whose bodies no handler takes: a typed PROTOCOL error for each, on a
    connection that stays open and then answers a real request."""
    bodies = ["hello", Member(9, "127.0.0.1:1"), Append("not wrapped in a CommandRequest")]
    async with await attacker.connect() as connection:
        with trio.fail_after(CLOSE_WITHIN):
            for body in bodies:
                answer = await connection.request(body)
                assert isinstance(answer, ErrorResponse), f"{body!r} got {answer!r}"
                assert answer.error is not None and answer.error.type is ErrorType.PROTOCOL
                assert "unsupported request type" in answer.error.message
            status = await connection.request(StatusRequest())
        assert isinstance(status, StatusResponse) and status.id == attacker.target


async def unsolicited_response(attacker: Attacker) -> None:
    """An RpcResponse is a legal message to a server (clients answer event pushes with them);
    one that answers nothing is ignored, and the connection goes on serving."""
    async with await attacker.connect() as connection:
        with trio.fail_after(CLOSE_WITHIN):
            await connection.send(RpcResponse(12345, "nobody asked"))
            status = await connection.request(StatusRequest())
        assert isinstance(status, StatusResponse) and status.id == attacker.target


async def command_that_is_not_a_command(attacker: Attacker) -> None:
    """A CommandRequest carrying a plain value, not a Command: refused with a typed COMMAND error
    before it reaches the log. (Logged, it would be applied on every member and come back as an
    APPLICATION error with the entry's index.)"""
    async with await attacker.connect() as connection:
        with trio.fail_after(CLOSE_WITHIN):
            answer = await connection.request(CommandRequest(operation=42))
    assert isinstance(answer, CommandResponse), answer
    assert answer.error is not None and answer.error.type is ErrorType.COMMAND, answer
    assert answer.index == 0, f"the refused command has a log index: {answer}"


async def not_a_request(attacker: Attacker) -> None:
    """Messages that are neither requests nor responses: a bare request body, a plain value."""
    bare = encode_frame(encode(StatusRequest()))
    logged = "unexpected StatusRequest on a connection"
    await attacker.garbage(bare, "bare StatusRequest", logged, hello=True)
    plain = encode_frame(encode(["just", "a", "list"]))
    await attacker.garbage(plain, "plain list", "unexpected list on a connection", hello=True)
    again = encode_frame(encode(PROTOCOL_VERSION))
    await attacker.garbage(again, "a second Hello", "unexpected Hello on a connection", hello=True)


async def no_hello(attacker: Attacker) -> None:
    """A valid request, but not after a Hello: refused before it is read."""
    request = encode_frame(encode(RpcRequest(1, StatusRequest())))
    logged = "expected a Hello (the protocol version) as the first frame, got RpcRequest"
    await attacker.garbage(request, "request without a Hello", logged)


async def another_major_version(attacker: Attacker) -> None:
    """A Hello of the next major version: the server answers with its own Hello, so the peer
    learns why, and closes the connection without reading the request that followed."""
    newer = Hello(PROTOCOL_VERSION.major + 1, 0)
    async with await attacker.connect(hello=False) as connection:
        peer = connection.local_name
        # One write, as a client sends them: the server reads both before it closes, so its
        # close is a FIN, not a reset that could discard its Hello before we read it.
        request = RpcRequest(1, StatusRequest())
        await connection.send_bytes(encode_frame(encode(newer)) + encode_frame(encode(request)))
        received = bytearray()
        with trio.fail_after(CLOSE_WITHIN):
            while data := await connection.receive_bytes():
                received += data
    frames = FrameDecoder()
    frames.feed(received)
    (hello,) = (decode(frame) for frame in frames.frames())
    # Its version; its cluster id (a trailing field of 1.1) is the cluster's own.
    assert (hello.major, hello.minor) == (PROTOCOL_VERSION.major, PROTOCOL_VERSION.minor)
    assert frames.buffered == 0
    logged = f"closing connection from {peer}: {peer} speaks protocol {newer.major}.0"
    await attacker.expect_logged(logged, "another major version")


async def newer_minor_version(attacker: Attacker) -> None:
    """A Hello of the next minor version is served like our own."""
    newer = Hello(PROTOCOL_VERSION.major, PROTOCOL_VERSION.minor + 1)
    async with await attacker.connect(hello=False) as connection:
        await connection.send(newer)
        with trio.fail_after(CLOSE_WITHIN):
            status = await connection.request(StatusRequest())
        assert isinstance(status, StatusResponse) and status.id == attacker.target


ATTACKS: list[Callable[[Attacker], Awaitable[None]]] = [
    random_bytes,
    random_payloads,
    truncated_frame,
    one_gibibyte_announced,
    unknown_tag,
    wrong_field_types,
    unknown_operation_tag,
    unsupported_request_bodies,
    unsolicited_response,
    command_that_is_not_a_command,
    not_a_request,
    no_hello,
    another_major_version,
    newer_minor_version,
]


async def test_garbage_closes_only_that_connection(cluster: ProcessCluster) -> None:
    with trio.fail_after(60):
        agreement = await cluster.wait_for_leader()
        background: list[tuple[str, int]] = []
        acks = AsyncValue(0)
        attacks_done = trio.Event()

        async def write_meanwhile() -> None:
            """Another client writes throughout the attacks; every write must succeed."""
            async with open_client(cluster.addresses(), timeout=10) as writer:
                i = 0
                while not attacks_done.is_set():
                    value = f"meanwhile {i}"
                    background.append((value, await writer.submit(Append(value))))
                    acks.value += 1
                    i += 1

        async with open_client(cluster.addresses(), timeout=10) as client:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(write_meanwhile)
                attacker = Attacker(cluster, agreement, client)
                await attacker.check_cluster_serves("nothing")
                for attack in ATTACKS:
                    acked_before = acks.value
                    await attack(attacker)
                    await attacker.check_cluster_serves(attack.__name__)
                    await acks.wait_value(lambda n, before=acked_before: n > before)
                attacks_done.set()
            # Read only once the writer has stopped: a write still in flight at attacks_done is
            # concurrent with a read made then, and may be ordered after it (it was, 1 run in 20).
            items = await client.submit(Items(), consistency=Consistency.LINEARIZABLE)
        assert background, "the writer never wrote"
        for value, position in background:
            assert position < len(items), f"{value!r} acknowledged at {position}, not in {items}"
            assert items[position] == value and items.count(value) == 1, (value, position, items)
        for member_id, server in cluster.servers.items():
            assert "Traceback" not in server.log_text(), f"member {member_id} logged a traceback"
