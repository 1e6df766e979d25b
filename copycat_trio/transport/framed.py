"""A MessageStream over any trio byte stream: length-prefixed CBOR frames."""

from __future__ import annotations

from typing import Any

import trio

from ..protocol.codec import TypeRegistry, registry
from ..protocol.errors import ProtocolError
from ..protocol.framing import DEFAULT_MAX_FRAME_SIZE, FrameDecoder, encode_frame
from .base import TransportError

RECEIVE_CHUNK = 65536
PARTIAL_FRAME_TIMEOUT = 30.0
"""Seconds a peer may leave a frame half-sent before the connection is closed (slowloris)."""


class FramedStream:
    """Encodes messages into frames on send and decodes whole frames on receive."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        peer: str,
        *,
        codec: TypeRegistry = registry,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
    ) -> None:
        self._stream = stream
        self._peer = peer
        self._codec = codec
        self._max_frame_size = max_frame_size
        self._decoder = FrameDecoder(max_frame_size)
        self._send_lock = trio.Lock()
        self.frames_received = 0
        """Whole frames received so far (a listener evicts silent connections first)."""

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
        """Send bytes that are already a frame (lets a caller encode once for many peers)."""
        async with self._send_lock:
            try:
                await self._stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                raise TransportError(f"connection to {self._peer} broke: {exc}") from exc

    async def receive(self) -> Any:
        while True:
            frame = self._decoder.next_frame()
            if frame is not None:
                self.frames_received += 1
                return self._codec.decode(frame)
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
                raise TransportError(f"connection to {self._peer} broke: {exc}") from exc
            if not data:
                raise TransportError(f"connection to {self._peer} closed")
            self._decoder.feed(data)

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True), trio.move_on_after(1):
            await self._stream.aclose()
