"""A MessageStream over any trio byte stream: length-prefixed CBOR frames, opened by a Hello.

Each side's first frame is a Hello with its protocol version, sent in the same write as its first
message (no round trip), and each side checks the other's: another minor version is accepted,
another major version is refused with IncompatibleVersionError, anything else first is refused.
"""

from __future__ import annotations

import contextlib
import ssl
from typing import Any

import attrs
import trio

from ..protocol.codec import TypeRegistry, registry
from ..protocol.errors import IncompatibleVersionError, ProtocolError
from ..protocol.framing import DEFAULT_MAX_FRAME_SIZE, FrameDecoder, encode_frame
from ..protocol.messages import PROTOCOL_VERSION, Hello
from ..protocol.salvage import salvage_request
from .base import TransportError
from .tls import describe_tls_error

RECEIVE_CHUNK = 65536
PARTIAL_FRAME_TIMEOUT = 30.0
"""Seconds a peer may leave a frame half-sent before the connection is closed (slowloris)."""
REFUSAL_SEND_TIMEOUT = 1.0
"""Seconds spent telling a peer of another major version ours before refusing it."""


class RefusedError(TransportError):
    """The other side refused this connection and said why (a TLS port reached in plaintext,
    a member of another cluster). Trying again will not help until the configuration changes."""


class TlsError(RefusedError):
    """TLS failed: a handshake, or a certificate the other side refused."""


def _broke(peer: str, exc: BaseException) -> TransportError:
    """The error for a broken connection: a TlsError if TLS broke it (a refused certificate
    is only learnt on the first read, in TLS 1.3)."""
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, ssl.SSLError):
        return TlsError(f"TLS with {peer} failed: {describe_tls_error(cause)}")
    return TransportError(f"connection to {peer} broke: {exc}")


def check_hello(message: Any, own: Hello, peer: str) -> Hello:
    """The peer's version from its first message, if this side can talk to it; else why not."""
    if not isinstance(message, Hello):
        what = type(message).__name__
        raise ProtocolError(
            f"expected a Hello (the protocol version) as the first frame, got {what}"
        )
    if message.major != own.major:
        raise IncompatibleVersionError(
            f"{peer} speaks protocol {message.major}.{message.minor}, this side speaks"
            f" {own.major}.{own.minor}: another major version is refused"
        )
    return message


class MaybeSentError(TransportError):
    """A write that held other frames besides the caller's broke part-way: some whole frames
    of it may have reached the other side, the caller's among them."""


class _Queued:
    """Frames that arrived while a write was running: the writer sends them in one write."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.done = trio.Event()
        self.error: TransportError | None = None


class FramedStream:
    """Encodes messages into frames on send and decodes whole frames on receive. Frames sent
    while a write is running are joined into the next write (fewer system calls under load)."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        peer: str,
        *,
        codec: TypeRegistry = registry,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        version: Hello = PROTOCOL_VERSION,
    ) -> None:
        """`version`: the Hello this side sends (another one only to test other builds)."""
        self._stream = stream
        self._peer = peer
        self._codec = codec
        self._max_frame_size = max_frame_size
        self._decoder = FrameDecoder(max_frame_size)
        self._writing = False
        self._queued: _Queued | None = None
        self._version = version
        self._hello: bytes | None = encode_frame(codec.encode(version), max_frame_size)
        """Our Hello until it is sent, in front of the first bytes this side sends."""
        self.peer_version: Hello | None = None
        """The peer's Hello, once its first frame has arrived."""
        self.frames_received = 0
        """Whole frames received so far (a listener evicts silent connections first)."""
        self.bytes_sent = 0
        """Bytes written so far (peer links count them for metrics)."""
        self.authenticated = True
        """False for a TLS connection whose peer presented no certificate (a client, where
        client auth is "none"); plaintext connections are trusted as before."""
        self.peer_certificate: dict[str, Any] | None = None
        """The certificate the TLS peer presented, as ssl's getpeercert() gives it."""

    @property
    def peer(self) -> str:
        return self._peer

    async def send(self, message: Any) -> None:
        data = encode_frame(self._codec.encode(message), self._max_frame_size)
        await self.send_raw(data)

    async def send_many(self, messages: list[Any]) -> None:
        """Send several messages in one write (fewer system calls under load)."""
        data = b"".join(encode_frame(self._codec.encode(m), self._max_frame_size) for m in messages)
        await self.send_raw(data)

    async def send_raw(self, data: bytes) -> None:
        """Send bytes that are already whole frames (lets a caller encode once for many
        peers). While another task's write runs, the bytes wait for the next write, which
        carries everything queued meanwhile; it returns once they are written."""
        if self._writing:
            queued = self._queued
            if queued is None:
                queued = self._queued = _Queued()
            queued.chunks.append(data)
            await queued.done.wait()  # if cancelled here, the frames still go out whole
            if queued.error is not None:
                raise queued.error
            return
        self._writing = True
        try:
            await self._write(data)
            while self._queued is not None:
                queued, self._queued = self._queued, None
                try:
                    await self._write(b"".join(queued.chunks))
                except BaseException as exc:
                    error = MaybeSentError(f"connection to {self._peer} broke: {exc!r}")
                    queued.error = error
                    raise
                finally:
                    queued.done.set()
        finally:
            self._writing = False
            queued, self._queued = self._queued, None
            if queued is not None:  # this write failed or was cancelled: nothing more goes
                queued.error = TransportError(f"connection to {self._peer} broke before sending")
                queued.done.set()

    async def _write(self, data: bytes) -> None:
        if self._hello is not None:
            data, self._hello = self._hello + data, None
        try:
            await self._stream.send_all(data)
            self.bytes_sent += len(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise _broke(self._peer, exc) from exc

    async def receive(self) -> Any:
        while True:
            frame = self._decoder.next_frame()
            if frame is not None:
                self.frames_received += 1
                try:
                    message = self._codec.decode(frame)
                except ProtocolError as exc:
                    message = salvage_request(self._codec, frame, exc)
                if self.peer_version is not None:
                    return message
                try:
                    self.peer_version = check_hello(message, self._version, self._peer)
                except IncompatibleVersionError:
                    await self._send_hello_before_refusing()
                    raise
                if self.peer_version.refusal:
                    raise RefusedError(
                        f"{self._peer} refused the connection: {self.peer_version.refusal}"
                    )
                continue
            try:
                if self._decoder.buffered:
                    with trio.fail_after(PARTIAL_FRAME_TIMEOUT):
                        data = await self._stream.receive_some(RECEIVE_CHUNK)
                else:
                    data = await self._stream.receive_some(RECEIVE_CHUNK)
            except trio.TooSlowError:
                raise ProtocolError(
                    f"{self._peer} left a frame unfinished for {PARTIAL_FRAME_TIMEOUT:.0f}s"
                ) from None
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                raise _broke(self._peer, exc) from exc
            if not data:
                raise TransportError(f"connection to {self._peer} closed")
            self._decoder.feed(data)

    async def _send_hello_before_refusing(self) -> None:
        """Best effort: the peer then learns our version, not only that we closed."""
        if self._hello is None:
            return
        with trio.move_on_after(REFUSAL_SEND_TIMEOUT):
            with contextlib.suppress(TransportError):
                await self.send_raw(b"")

    async def refuse(self, reason: str) -> None:
        """Best effort before closing: our Hello, carrying why this side refuses the
        connection, so the other side can say so (RefusedError) rather than retry blindly."""
        if self._hello is None:
            return
        self._hello = None
        refusal = attrs.evolve(self._version, refusal=reason)
        data = encode_frame(self._codec.encode(refusal), self._max_frame_size)
        with trio.move_on_after(REFUSAL_SEND_TIMEOUT), contextlib.suppress(TransportError):
            await self.send_raw(data)

    async def aclose(self) -> None:
        # TLS sends a close_notify, which fails if the peer went first.
        broken = (trio.BrokenResourceError, trio.ClosedResourceError)
        with trio.CancelScope(shield=True), trio.move_on_after(1), contextlib.suppress(*broken):
            await self._stream.aclose()
