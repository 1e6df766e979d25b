"""Request/response over message streams: ids, many in flight per connection, a pool by address.

Failures are told apart because the difference matters to a consensus client: `RequestNotSent`
means the request never left (safe to retry anywhere); `ResponseLost` means it may have been acted
on (a timeout or a connection that broke after sending).
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import trio

from ..protocol.errors import ProtocolError
from ..protocol.messages import RpcRequest, RpcResponse
from .base import MessageStream, Transport, TransportError
from .framed import MaybeSentError

log = logging.getLogger(__name__)


class RequestNotSent(TransportError):
    """The request never reached the network: nothing can have happened."""


class ResponseLost(TransportError):
    """The request was sent but no response came: it may or may not have taken effect."""


@attrs.define
class _Waiter:
    event: trio.Event = attrs.Factory(trio.Event)
    response: Any = None
    error: Exception | None = None


RequestHandler = Callable[[Any], Awaitable[Any]]


class RpcConnection:
    """The requesting side of one connection; it may also answer requests the other side
    sends back over it (a server pushing session events), one at a time, in order."""

    def __init__(self, stream: MessageStream, on_request: RequestHandler | None = None) -> None:
        self.stream = stream
        self._on_request = on_request
        self._ids = itertools.count(1)
        self._waiters: dict[int, _Waiter] = {}
        self.closed = False

    async def run(self) -> None:
        """Read responses until the connection ends; then fail whoever still waits."""
        error: Exception = ResponseLost(f"connection to {self.stream.peer} closed")
        try:
            while True:
                message = await self.stream.receive()
                if isinstance(message, RpcRequest) and self._on_request is not None:
                    answer = await self._on_request(message.body)
                    await self.stream.send(RpcResponse(message.id, answer))
                    continue
                if not isinstance(message, RpcResponse):
                    raise ProtocolError(f"expected a response, got {type(message).__name__}")
                waiter = self._waiters.pop(message.id, None)
                if waiter is not None:
                    waiter.response = message.body
                    waiter.event.set()
        except (TransportError, ProtocolError) as exc:
            if isinstance(exc, ProtocolError):  # garbage, or another major version: say which
                log.warning("closing connection to %s: %s", self.stream.peer, exc)
            error = ResponseLost(f"connection to {self.stream.peer} lost: {exc}")
            error.__cause__ = exc  # a caller tells a refused connection (TLS) from a lost one
        finally:
            self.closed = True
            for waiter in self._waiters.values():
                waiter.error = error
                waiter.event.set()
            self._waiters.clear()
            await self.stream.aclose()

    async def request(self, body: Any, timeout: float = math.inf) -> Any:
        if self.closed:
            raise RequestNotSent(f"connection to {self.stream.peer} is closed")
        request_id = next(self._ids)
        waiter = self._waiters[request_id] = _Waiter()
        try:
            try:
                await self.stream.send(RpcRequest(request_id, body))
            except MaybeSentError as exc:
                raise ResponseLost(str(exc)) from exc  # it may have gone out with others
            except TransportError as exc:
                raise RequestNotSent(str(exc)) from exc
            with trio.move_on_after(timeout):
                await waiter.event.wait()
            if not waiter.event.is_set():
                raise ResponseLost(f"no response from {self.stream.peer} within {timeout:.1f}s")
            if waiter.error is not None:
                raise waiter.error
            return waiter.response
        finally:
            self._waiters.pop(request_id, None)


class ConnectionPool:
    """One RpcConnection per address, opened on first use and replaced when it breaks."""

    def __init__(
        self,
        transport: Transport,
        nursery: trio.Nursery,
        on_request: RequestHandler | None = None,
        on_reconnect: Callable[[str, RpcConnection], Awaitable[None]] | None = None,
    ) -> None:
        """`on_reconnect(address, connection)` runs when a connection to an address that had
        one before is opened (the old one broke: say, the member restarted), before any request
        uses it: a client re-registers there what the member forgot."""
        self._on_request = on_request
        self._on_reconnect = on_reconnect
        self._seen: set[str] = set()
        self._transport = transport
        self._nursery = nursery
        self._connections: dict[str, RpcConnection] = {}
        self._locks: dict[str, trio.Lock] = {}

    async def get(self, address: str) -> RpcConnection:
        lock = self._locks.setdefault(address, trio.Lock())
        async with lock:
            connection = self._connections.get(address)
            if connection is None or connection.closed:
                try:
                    stream = await self._transport.connect(address)
                except TransportError as exc:
                    raise RequestNotSent(str(exc)) from exc
                connection = self._connections[address] = RpcConnection(stream, self._on_request)
                self._nursery.start_soon(connection.run)
                if address in self._seen and self._on_reconnect is not None:
                    await self._on_reconnect(address, connection)
                self._seen.add(address)
            return connection

    async def request(self, address: str, body: Any, timeout: float = math.inf) -> Any:
        connection: RpcConnection | None = self._connections.get(address)
        if connection is None or connection.closed:  # else no lock and no scope: the fast path
            connection = None
            with trio.move_on_after(timeout):
                connection = await self.get(address)
            if connection is None:
                raise RequestNotSent(f"could not connect to {address} within {timeout:.1f}s")
        return await connection.request(body, timeout)

    def drop(self, address: str) -> None:
        connection = self._connections.pop(address, None)
        if connection is not None:
            self._nursery.start_soon(connection.stream.aclose)

    async def aclose(self) -> None:
        for connection in self._connections.values():
            await connection.stream.aclose()
        self._connections.clear()
