"""TCP transport: one FramedStream per socket, TCP_NODELAY, a frame size limit, and a cap on
accepted connections."""

from __future__ import annotations

import itertools
import logging
import socket

import trio

from ..protocol.framing import DEFAULT_MAX_FRAME_SIZE
from ..protocol.messages import PROTOCOL_VERSION, Hello
from .base import ConnectionHandler, MessageStream, TransportError, split_address
from .framed import FramedStream

log = logging.getLogger(__name__)


def default_max_connections() -> int:
    """Half the process's file descriptor limit, between 16 and 4096.

    Accepted connections beyond the cap are closed at once: a flood of connections must not use
    up the descriptors the server needs for its log segments, snapshots and connections to its
    peers (a failed open poisons the storage). Each member needs one connection per peer and one
    per client connected to it."""
    try:
        import resource

        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):
        return 512
    if soft == resource.RLIM_INFINITY:
        return 4096
    return max(16, min(4096, soft // 2))


class TcpTransport:
    """Listens and connects over TCP."""

    def __init__(
        self,
        *,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        connect_timeout: float = 2.0,
        max_connections: int | None = None,
        version: Hello = PROTOCOL_VERSION,
    ) -> None:
        """`max_connections`: accepted connections served at once (default: see
        default_max_connections); more are closed as soon as they are accepted. `version`:
        the protocol version every connection announces first (see FramedStream)."""
        if max_frame_size < 1024:
            raise ValueError("max_frame_size must be at least 1024 bytes")
        if max_connections is None:
            max_connections = default_max_connections()
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self.max_frame_size = max_frame_size
        self.connect_timeout = connect_timeout
        self.max_connections = max_connections
        self.version = version
        self.refused_connections = 0
        """Connections closed because max_connections were open (new or silent ones)."""
        self._listening: list[dict[int, tuple[FramedStream, trio.CancelScope]]] = []

    @property
    def open_connections(self) -> int:
        """Accepted connections being served now, over every address this transport serves."""
        return sum(len(connections) for connections in self._listening)

    async def serve(
        self,
        address: str,
        handler: ConnectionHandler,
        *,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        host, port = split_address(address)
        try:
            listeners = await trio.open_tcp_listeners(port, host=host)
        except OSError as exc:
            # The bare "[Errno 98] Address already in use" names no address.
            raise OSError(exc.errno, f"cannot listen on {address}: {exc.strerror}") from exc
        bound = listeners[0].socket.getsockname()
        bound_address = f"{host}:{bound[1]}"

        # Connections being served, oldest first, each with the scope that ends it.
        connections: dict[int, tuple[FramedStream, trio.CancelScope]] = {}
        ids = itertools.count()
        self._listening.append(connections)

        def make_room(peer: str) -> bool:
            """At the cap, end the oldest connection that has not sent a whole frame yet (a
            flood of idle connections then costs nobody else theirs); False if none is."""
            if len(connections) < self.max_connections:
                return True
            for key, (framed, scope) in connections.items():
                if framed.frames_received == 0:
                    del connections[key]
                    scope.cancel()
                    self._note_refused(bound_address, f"closed silent {framed.peer} for {peer}")
                    return True
            self._note_refused(bound_address, f"closed {peer}")
            return False

        async def on_stream(stream: trio.SocketStream) -> None:
            try:
                host, port = stream.socket.getpeername()[:2]
                peer = f"{host}:{port}"
            except OSError:
                peer = "?"
            if not make_room(peer):
                await trio.aclose_forcefully(stream)
                return
            framed = self._framed(stream, peer)
            key = next(ids)
            try:
                with trio.CancelScope() as scope:
                    connections[key] = (framed, scope)
                    await handler(framed)
            except Exception:
                # One connection's failure must never take the listener down.
                log.exception("connection from %s failed", peer)
            finally:
                connections.pop(key, None)
                await framed.aclose()

        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(trio.serve_listeners, on_stream, listeners)
                task_status.started(bound_address)
        finally:
            self._listening.remove(connections)

    def _note_refused(self, bound_address: str, what: str) -> None:
        self.refused_connections += 1
        count = self.refused_connections
        if count in (1, 10, 100) or count % 1000 == 0:
            log.warning(
                "%s: %d connections open, the most allowed; %s (%d so far)",
                bound_address,
                self.max_connections,
                what,
                count,
            )

    async def connect(self, address: str) -> MessageStream:
        host, port = split_address(address)
        try:
            with trio.fail_after(self.connect_timeout):
                stream = await trio.open_tcp_stream(host, port)
        except trio.TooSlowError as exc:
            msg = f"cannot connect to {address}: no answer within {self.connect_timeout:g}s"
            raise TransportError(msg) from exc
        except OSError as exc:
            raise TransportError(f"cannot connect to {address}: {_why(exc)}") from exc
        return self._framed(stream, address)

    def _framed(self, stream: trio.SocketStream, peer: str) -> FramedStream:
        return FramedStream(stream, peer, max_frame_size=self.max_frame_size, version=self.version)


def _why(exc: OSError) -> str:
    """The socket error itself: Trio's "all attempts to connect ... failed" keeps each
    attempt's error in its cause (an exception group), so an operator sees "Connection
    refused" rather than nothing."""
    cause = exc.__cause__
    reasons: list[str] = []
    if isinstance(cause, BaseExceptionGroup):
        reasons = list(
            dict.fromkeys(str(e.strerror or e) for e in cause.exceptions if isinstance(e, OSError))
        )
    elif isinstance(cause, OSError):
        reasons = [str(cause.strerror or cause)]
    if isinstance(exc, socket.gaierror) or exc.errno in (socket.EAI_NONAME, socket.EAI_AGAIN):
        return f"unknown host ({exc.strerror or exc})"
    return "; ".join(reasons) if reasons else str(exc.strerror or exc)
