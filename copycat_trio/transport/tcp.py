"""TCP transport: one FramedStream per socket, TCP_NODELAY, a frame size limit."""

from __future__ import annotations

import logging

import trio

from ..protocol.framing import DEFAULT_MAX_FRAME_SIZE
from .base import ConnectionHandler, MessageStream, TransportError, split_address
from .framed import FramedStream

log = logging.getLogger(__name__)


class TcpTransport:
    """Listens and connects over TCP."""

    def __init__(
        self, *, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE, connect_timeout: float = 2.0
    ) -> None:
        if max_frame_size < 1024:
            raise ValueError("max_frame_size must be at least 1024 bytes")
        self.max_frame_size = max_frame_size
        self.connect_timeout = connect_timeout

    async def serve(
        self,
        address: str,
        handler: ConnectionHandler,
        *,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        host, port = split_address(address)
        listeners = await trio.open_tcp_listeners(port, host=host)
        bound = listeners[0].socket.getsockname()
        bound_address = f"{host}:{bound[1]}"

        async def on_stream(stream: trio.SocketStream) -> None:
            try:
                host, port = stream.socket.getpeername()[:2]
                peer = f"{host}:{port}"
            except OSError:
                peer = "?"
            framed = FramedStream(stream, peer, max_frame_size=self.max_frame_size)
            try:
                await handler(framed)
            except Exception:
                # One connection's failure must never take the listener down.
                log.exception("connection from %s failed", peer)
            finally:
                await framed.aclose()

        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, on_stream, listeners)
            task_status.started(bound_address)

    async def connect(self, address: str) -> MessageStream:
        host, port = split_address(address)
        try:
            with trio.fail_after(self.connect_timeout):
                stream = await trio.open_tcp_stream(host, port)
        except (OSError, trio.TooSlowError) as exc:
            raise TransportError(f"cannot connect to {address}: {exc}") from exc
        return FramedStream(stream, address, max_frame_size=self.max_frame_size)
