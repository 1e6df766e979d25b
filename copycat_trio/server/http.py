"""A small HTTP/1.1 server on Trio and h11, for /metrics, /health and /ready.

One request per connection (answered with `Connection: close`), GET and HEAD only, the request
head bounded to MAX_REQUEST_BYTES and the whole exchange to REQUEST_TIMEOUT, at most
MAX_CONNECTIONS at once (more are closed at once). Nothing a client sends can stop the server:
a malformed request gets 400 (431 for an oversized head), a failing handler 500, and every
other error closes that one connection.

`http_get` is the matching client, for tests and tools.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import attrs
import h11
import trio

from ..transport.base import split_address

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 8192
REQUEST_TIMEOUT = 5.0
MAX_CONNECTIONS = 64
RECEIVE_CHUNK = 4096
LINGER_SECONDS = 1.0
LINGER_BYTES = 65536


@attrs.frozen
class Response:
    """What a handler answers: a status, a body and its content type."""

    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"


Handler = Callable[[str], Response]
"""Called with the request's path (the query string removed); synchronous."""


async def serve_http(
    address: str,
    handler: Handler,
    *,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on HOST:PORT and answer each request with `handler(path)`; runs until cancelled.
    Reports the bound address (the real port when given port 0) through `task_status`."""
    host, port = split_address(address)
    try:
        listeners = await trio.open_tcp_listeners(port, host=host)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot listen on {address}: {exc.strerror}") from exc
    bound = f"{host}:{listeners[0].socket.getsockname()[1]}"
    limiter = trio.CapacityLimiter(MAX_CONNECTIONS)

    async def on_stream(stream: trio.SocketStream) -> None:
        try:
            limiter.acquire_nowait()
        except trio.WouldBlock:
            await stream.aclose()
            return
        try:
            await _answer(stream, handler)
            await _linger(stream)
        except Exception as exc:  # one bad connection must never end the listener
            log.debug("HTTP connection on %s: %r", bound, exc)
        finally:
            limiter.release()
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await stream.aclose()

    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, on_stream, listeners)
        task_status.started(bound)


def _raw(status: int, reason: str) -> bytes:
    body = f"{reason}\n".encode()
    return (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode() + body


async def _answer(stream: trio.SocketStream, handler: Handler) -> None:
    connection = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_BYTES)
    with trio.move_on_after(REQUEST_TIMEOUT):
        try:
            request = await _read_request(stream, connection)
        except h11.RemoteProtocolError as exc:
            status = exc.error_status_hint
            await stream.send_all(
                _raw(status, "Request Header Fields Too Large" if status == 431 else "Bad Request")
            )
            return
        if request is None:
            return
        method = request.method.decode("ascii", "replace").upper()
        path = request.target.decode("ascii", "replace").split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            response = Response(405, b"method not allowed: use GET\n")
        else:
            try:
                response = handler(path)
            except Exception:
                log.exception("HTTP handler for %s failed", path)
                response = Response(500, b"internal error\n")
        headers = [
            ("content-type", response.content_type),
            ("content-length", str(len(response.body))),
            ("connection", "close"),
        ]
        if response.status == 405:
            headers.append(("allow", "GET, HEAD"))
        data = connection.send(h11.Response(status_code=response.status, headers=headers))
        if method != "HEAD":
            data = (data or b"") + (connection.send(h11.Data(data=response.body)) or b"")
        data = (data or b"") + (connection.send(h11.EndOfMessage()) or b"")
        await stream.send_all(data)


async def _linger(stream: trio.SocketStream) -> None:
    """Close gently: end our side, then read and drop what the client still sends (a body we
    did not want, the rest of an oversized head) for a bounded time, so that closing with unread
    data does not reset the connection before the client has read our answer."""
    await stream.send_eof()
    dropped = 0
    with trio.move_on_after(LINGER_SECONDS):
        while dropped < LINGER_BYTES and (chunk := await stream.receive_some(RECEIVE_CHUNK)):
            dropped += len(chunk)


async def _read_request(
    stream: trio.SocketStream, connection: h11.Connection
) -> h11.Request | None:
    """The request's head, or None if the client closed first."""
    while True:
        event = connection.next_event()
        if event is h11.NEED_DATA:
            # b"" (the client closed) makes h11 answer ConnectionClosed, or an error mid-head.
            connection.receive_data(await stream.receive_some(RECEIVE_CHUNK))
        elif isinstance(event, h11.Request):
            return event
        elif isinstance(event, h11.ConnectionClosed):
            return None
        else:
            raise h11.RemoteProtocolError(f"unexpected {type(event).__name__}", 400)


async def http_get(address: str, path: str, *, timeout: float = 5.0) -> tuple[int, bytes]:
    """GET http://address/path: (status, body). Raises OSError, trio.TooSlowError or
    h11.ProtocolError."""
    host, port = split_address(address)
    with trio.fail_after(timeout):
        stream = await trio.open_tcp_stream(host, port)
        async with stream:
            connection = h11.Connection(h11.CLIENT)
            request = h11.Request(
                method="GET", target=path, headers=[("host", address), ("connection", "close")]
            )
            await stream.send_all(
                (connection.send(request) or b"") + (connection.send(h11.EndOfMessage()) or b"")
            )
            status = 0
            body = bytearray()
            while True:
                event = connection.next_event()
                if event is h11.NEED_DATA:
                    connection.receive_data(await stream.receive_some(RECEIVE_CHUNK))
                elif isinstance(event, h11.Response):
                    status = event.status_code
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                    return status, bytes(body)


__all__ = ["Handler", "Response", "http_get", "serve_http"]
