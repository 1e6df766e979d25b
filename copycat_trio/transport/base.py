"""What the server and client need from a network: message streams, listeners, connections."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import trio


class TransportError(ConnectionError):
    """A connection could not be made, or broke."""


class MessageStream(Protocol):
    """A connection that carries whole messages (already framed and decoded)."""

    @property
    def peer(self) -> str:
        """Who is at the other end, for logs."""
        ...

    async def send(self, message: Any) -> None:
        """Send one message; raises TransportError if the connection is gone."""
        ...

    async def receive(self) -> Any:
        """The next message; raises TransportError when closed, ProtocolError on garbage."""
        ...

    async def aclose(self) -> None: ...


async def send_messages(stream: MessageStream, messages: list[Any]) -> None:
    """Send messages in order: in one write where the stream can (a FramedStream's
    `send_many`: fewer system calls under load), else one at a time."""
    send_many = getattr(stream, "send_many", None)
    if send_many is not None:
        await send_many(messages)
    else:
        for message in messages:
            await stream.send(message)


ConnectionHandler = Callable[[MessageStream], Awaitable[None]]


class Transport(Protocol):
    """Listens and connects: TCP in production, an in-memory network in tests."""

    async def serve(
        self,
        address: str,
        handler: ConnectionHandler,
        *,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept connections at address until cancelled; `started(bound_address)` once bound."""
        ...

    async def connect(self, address: str) -> MessageStream:
        """Open a connection; raises TransportError if nobody answers."""
        ...


def split_address(address: str) -> tuple[str, int]:
    """'HOST:PORT' -> (host, port), with a sentence on error."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"address {address!r} is not HOST:PORT")
    return host.strip("[]"), int(port)
