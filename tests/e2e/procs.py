"""Helpers for end-to-end tests: the process cluster with the tests' defaults, and a raw
connection for sending what no client would send."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio

from copycat_trio.protocol import (
    PROTOCOL_VERSION,
    FrameDecoder,
    RpcRequest,
    RpcResponse,
    decode,
    encode,
    encode_frame,
)
from copycat_trio.testing.processes import Agreement, ServerProcess
from copycat_trio.testing.processes import ProcessCluster as _ProcessCluster
from copycat_trio.transport.base import split_address

__all__ = ["APPEND_LOG", "REPO_ROOT", "Agreement", "ProcessCluster", "ServerProcess"]

REPO_ROOT = Path(__file__).resolve().parents[2]
APPEND_LOG = "tests.e2e.appendlog:AppendLog"


class ProcessCluster(_ProcessCluster):
    """The package's process cluster running the tests' AppendLog state machine by default,
    importable in the children through PYTHONPATH (as a user's own module would be)."""

    def __init__(self, workdir: Path, size: int = 3, **options: Any) -> None:
        options.setdefault("state_machine", APPEND_LOG)
        options.setdefault("pythonpath", [REPO_ROOT])
        super().__init__(workdir, size, **options)


class ConnectionClosed(Exception):
    """The server closed a RawConnection (end of stream, or a reset)."""


class RawConnection:
    """One TCP connection to a member, speaking the wire protocol by hand: for sending what no
    client would send, and for seeing exactly what a server answers to one request."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self._decoder = FrameDecoder()
        self._ids = iter(range(1, 2**62))

    @classmethod
    async def open(cls, address: str, *, hello: bool = True) -> RawConnection:
        """Connect; with `hello`, first send the Hello every connection must start with."""
        host, port = split_address(address)
        connection = cls(await trio.open_tcp_stream(host, port))
        if hello:
            await connection.send(PROTOCOL_VERSION)
        return connection

    async def __aenter__(self) -> RawConnection:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stream.aclose()

    @property
    def local_name(self) -> str:
        """Our end, as the server names its peer in its log: 'HOST:PORT'."""
        host, port = self.stream.socket.getsockname()[:2]
        return f"{host}:{port}"

    async def send_bytes(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def send(self, message: Any) -> None:
        await self.stream.send_all(encode_frame(encode(message)))

    async def receive_bytes(self) -> bytes:
        """Whatever arrives next; b"" once the server has closed (a reset counts as closed)."""
        try:
            return await self.stream.receive_some(65536)
        except trio.BrokenResourceError:
            return b""

    async def receive(self) -> Any:
        """The next whole message; raises ConnectionClosed if the server closes first."""
        while (frame := next(self._decoder.frames(), None)) is None:
            data = await self.receive_bytes()
            if not data:
                raise ConnectionClosed("the server closed the connection")
            self._decoder.feed(data)
        return decode(frame)

    async def request(self, body: Any) -> Any:
        """Send `body` in an RpcRequest and return the body of the response with its id
        (skipping anything else, such as the server's Hello)."""
        request_id = next(self._ids)
        await self.send(RpcRequest(request_id, body))
        while True:
            message = await self.receive()
            if isinstance(message, RpcResponse) and message.id == request_id:
                return message.body
