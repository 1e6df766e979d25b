"""TCP transport: one FramedStream per socket, TCP_NODELAY, a frame size limit, a cap on
accepted connections, and TLS when given contexts (see tls.py)."""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import socket

import attrs
import trio

from ..protocol.codec import registry
from ..protocol.framing import DEFAULT_MAX_FRAME_SIZE, encode_frame
from ..protocol.messages import PROTOCOL_VERSION, Hello
from .base import ConnectionHandler, MessageStream, TransportError, split_address
from .framed import FramedStream, TlsError
from .tls import HANDSHAKE_TIMEOUT, TlsContexts, describe_tls_error

log = logging.getLogger(__name__)

TLS_FAILURE_LOG_INTERVAL = 60.0
"""Seconds during which the same TLS failure from the same host is logged once as a warning."""


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
        tls: TlsContexts | None = None,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        unacknowledged_timeout: float | None = None,
    ) -> None:
        """`max_connections`: accepted connections served at once (default: see
        default_max_connections); more are closed as soon as they are accepted. `version`:
        the protocol version every connection announces first (see FramedStream). `tls`:
        contexts to wrap every connection in (None: plaintext); a handshake longer than
        `handshake_timeout` closes the connection. `unacknowledged_timeout`: a connection this
        side opened breaks once data it wrote stays unacknowledged that long (TCP_USER_TIMEOUT,
        Linux), rather than waiting out TCP's growing retransmission intervals after a
        partition heals; None: the system's default (many minutes)."""
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
        self.tls = tls
        self.handshake_timeout = handshake_timeout
        self.unacknowledged_timeout = unacknowledged_timeout
        self._tls_failures: dict[tuple[str, str], tuple[float, int]] = {}
        """(peer host, reason) -> (when last logged as a warning, repeats since)."""
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
            tls = self.tls.server if self.tls is not None else None
            if tls is None:
                framed = self._framed(stream, peer)
            else:
                buffered = _Buffered(stream)
                ssl_stream = trio.SSLStream(buffered, tls, server_side=True)
                framed = self._framed(ssl_stream, peer)
            key = next(ids)
            handshook = tls is None
            try:
                with trio.CancelScope() as scope:
                    # A handshake in progress holds a place under the cap (and is evicted
                    # first, having sent no frame).
                    connections[key] = (framed, scope)
                    if tls is not None:
                        handshook = await self._accept_tls(
                            buffered, ssl_stream, framed, peer, bound_address
                        )
                        if not handshook:
                            return
                    await handler(framed)
            except Exception:
                # One connection's failure must never take the listener down.
                log.exception("connection from %s failed", peer)
            finally:
                connections.pop(key, None)
                if handshook:
                    await framed.aclose()
                else:  # SSLStream.aclose would first try the handshake again
                    await trio.aclose_forcefully(buffered)

        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(trio.serve_listeners, on_stream, listeners)
                task_status.started(bound_address)
        finally:
            self._listening.remove(connections)

    async def _accept_tls(
        self,
        buffered: _Buffered,
        ssl_stream: trio.SSLStream[_Buffered],
        framed: FramedStream,
        peer: str,
        bound_address: str,
    ) -> bool:
        """The server side of a handshake, bounded in time; False (with one log line naming
        the peer and why) if it failed. Plaintext gets a plaintext Hello saying TLS is needed,
        so that a client without TLS says so rather than waiting."""
        broken = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)
        try:
            with trio.fail_after(self.handshake_timeout):
                first = await buffered.peek()
                if first and first[0] != _TLS_HANDSHAKE_RECORD:
                    self._note_tls_failure(bound_address, peer, "not TLS (plaintext?)")
                    refusal = attrs.evolve(
                        self.version,
                        refusal=f"{bound_address} requires TLS (this connection is plaintext)",
                    )
                    with trio.move_on_after(1), contextlib.suppress(*broken):
                        await buffered.transport.send_all(
                            encode_frame(registry.encode(refusal), self.max_frame_size)
                        )
                    return False
                await ssl_stream.do_handshake()
        except trio.TooSlowError:
            why = f"TLS handshake not done within {self.handshake_timeout:g}s"
            self._note_tls_failure(bound_address, peer, why)
            return False
        except broken as exc:
            why = f"TLS handshake failed: {describe_tls_error(exc)}"
            self._note_tls_failure(bound_address, peer, why)
            return False
        framed.peer_certificate = ssl_stream.getpeercert()
        framed.authenticated = framed.peer_certificate is not None
        return True

    def _note_tls_failure(self, bound_address: str, peer: str, why: str) -> None:
        """One warning per failed connection, naming the peer and why; the same failure from
        the same host again within a minute (a misconfigured member retries several times a
        second) is logged at debug level, and counted in the next warning."""
        key = (peer.rpartition(":")[0], why)
        now = trio.current_time()
        last, repeats = self._tls_failures.get(key, (-math.inf, 0))
        if now - last < TLS_FAILURE_LOG_INTERVAL:
            self._tls_failures[key] = (last, repeats + 1)
            log.debug("%s: closing connection from %s: %s", bound_address, peer, why)
            return
        if len(self._tls_failures) > 1024:  # bounded under a flood from many hosts
            self._tls_failures.clear()
        self._tls_failures[key] = (now, 0)
        more = f" ({repeats} more like it in the last minute)" if repeats else ""
        log.warning("%s: closing connection from %s: %s%s", bound_address, peer, why, more)

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
        if self.unacknowledged_timeout is not None and hasattr(socket, "TCP_USER_TIMEOUT"):
            milliseconds = max(1, int(self.unacknowledged_timeout * 1000))
            stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, milliseconds)
        if self.tls is None:
            return self._framed(stream, address)
        ssl_stream = trio.SSLStream(
            stream, self.tls.client, server_hostname=self.tls.hostname_for(host)
        )
        try:
            with trio.fail_after(self.handshake_timeout):
                await ssl_stream.do_handshake()
        except trio.TooSlowError as exc:
            await trio.aclose_forcefully(stream)
            msg = f"TLS with {address} failed: no handshake within {self.handshake_timeout:g}s"
            raise TlsError(msg) from exc
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            await trio.aclose_forcefully(stream)
            why = describe_tls_error(exc)
            raise TlsError(f"TLS with {address} failed: {why}") from exc
        version = self.version
        if self.tls.token:  # inside TLS only: a token in plaintext could be read on the way
            version = attrs.evolve(version, token=self.tls.token)
        framed = FramedStream(
            ssl_stream, address, max_frame_size=self.max_frame_size, version=version
        )
        framed.peer_certificate = ssl_stream.getpeercert()
        return framed

    def _framed(self, stream: trio.abc.Stream, peer: str) -> FramedStream:
        return FramedStream(stream, peer, max_frame_size=self.max_frame_size, version=self.version)


_TLS_HANDSHAKE_RECORD = 0x16
"""The first byte of every TLS connection (a handshake record); a frame never starts so."""


class _Buffered(trio.abc.Stream):
    """A socket stream that can peek at the first bytes before TLS reads them."""

    def __init__(self, transport: trio.SocketStream) -> None:
        self.transport = transport
        self._pending = b""

    async def peek(self) -> bytes:
        """The first bytes the peer sent (b"" if it closed), left to be read again."""
        if not self._pending:
            self._pending = await self.transport.receive_some(4096)
        return self._pending

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._pending:
            data, self._pending = self._pending, b""
            return data
        return await self.transport.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.transport.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self.transport.send_eof()

    async def aclose(self) -> None:
        await self.transport.aclose()


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
