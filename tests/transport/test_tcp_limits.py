"""The TCP listener's cap on connections: silent connections make room, active ones keep theirs."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from copycat_trio.protocol import PROTOCOL_VERSION, StatusRequest, encode, encode_frame
from copycat_trio.transport.base import MessageStream
from copycat_trio.transport.tcp import TcpTransport, default_max_connections


async def echo(stream: MessageStream) -> None:
    while True:
        message: Any = await stream.receive()
        await stream.send(message)


async def closed_by_server(stream: trio.SocketStream) -> bool:
    with trio.move_on_after(2):
        try:
            return await stream.receive_some(100) == b""
        except trio.BrokenResourceError:
            return True
    return False


async def roundtrip(stream: trio.SocketStream) -> bytes:
    frame = encode_frame(encode(StatusRequest()))
    await stream.send_all(frame)
    with trio.fail_after(2):
        return await stream.receive_some(100)


async def open_stream(address: str, *, hello: bool = True) -> trio.SocketStream:
    """A raw connection; with `hello`, it has sent the Hello that must open every connection."""
    host, port = address.rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    if hello:
        await stream.send_all(encode_frame(encode(PROTOCOL_VERSION)))
    return stream


async def test_silent_connections_make_room_and_active_ones_keep_theirs() -> None:
    transport = TcpTransport(max_connections=3)
    async with trio.open_nursery() as nursery:
        address = await nursery.start(transport.serve, "127.0.0.1:0", echo)
        active = await open_stream(address)
        assert await roundtrip(active)
        silent = [await open_stream(address, hello=False) for _ in range(2)]
        with trio.fail_after(2):
            while transport.open_connections < 3:  # the listener has taken all three in
                await trio.sleep(0.01)
        newcomer = await open_stream(address)  # the oldest silent one makes room for it
        assert await roundtrip(newcomer)
        assert await closed_by_server(silent[0])
        assert await roundtrip(active)
        late = await open_stream(address)  # evicts the other silent one
        assert await closed_by_server(silent[1])
        assert await roundtrip(late)
        refused = await open_stream(address)  # three active connections: no room at all
        assert await closed_by_server(refused)
        assert await roundtrip(active) and await roundtrip(newcomer) and await roundtrip(late)
        assert transport.refused_connections == 3
        for stream in [active, newcomer, late, refused, *silent]:
            await stream.aclose()
        nursery.cancel_scope.cancel()


def test_cap_follows_the_file_limit() -> None:
    assert 16 <= default_max_connections() <= 4096
    with pytest.raises(ValueError):
        TcpTransport(max_connections=0)
