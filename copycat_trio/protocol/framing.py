"""Length-prefixed frames, sans-I/O (h11 style): bytes in, whole frames out, no sockets here.

A frame is a 4-byte big-endian unsigned length followed by that many bytes. The decoder refuses a
frame as soon as its header announces more than the limit, before buffering its payload.
"""

from __future__ import annotations

from collections.abc import Iterator

from .errors import ConfigurationError, ProtocolError

DEFAULT_MAX_FRAME_SIZE = 16 * 1024 * 1024
"""The largest payload accepted by default (16 MiB); each side may choose its own."""

HEADER_SIZE = 4
_MAX_ENCODABLE = 2**32 - 1
_COMPACT_AT = 64 * 1024


def _check_limit(max_frame_size: int) -> int:
    if type(max_frame_size) is not int or not 0 < max_frame_size <= _MAX_ENCODABLE:
        msg = f"max_frame_size must be an integer in [1, {_MAX_ENCODABLE}], got {max_frame_size!r}"
        raise ConfigurationError(msg)
    return max_frame_size


def encode_frame(payload: bytes, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> bytes:
    """The frame for `payload`: its length, then the payload itself."""
    _check_limit(max_frame_size)
    size = len(payload)
    if size > max_frame_size:
        raise ProtocolError(f"frame of {size} bytes exceeds the limit of {max_frame_size} bytes")
    return size.to_bytes(HEADER_SIZE, "big") + payload


class FrameDecoder:
    """Collects bytes as they arrive and hands back whole frames, in order.

    Errors are sticky: once a frame is refused the stream cannot be resynchronised, so every
    later call raises the same ProtocolError and the connection should be closed.
    """

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        self.max_frame_size = _check_limit(max_frame_size)
        self._buffer = bytearray()
        self._start = 0  # where the next frame's header is: bytes before it are consumed
        self._scan = 0  # where the first header not yet checked against the limit is
        self._error: ProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as frames."""
        return len(self._buffer) - self._start

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Add bytes from the network; refuses any oversized frame header in them at once."""
        if self._error is not None:
            raise self._error
        self._buffer += data
        buffer, scan, limit = self._buffer, self._scan, self.max_frame_size
        while len(buffer) - scan >= HEADER_SIZE:
            size = int.from_bytes(buffer[scan : scan + HEADER_SIZE], "big")
            if size > limit:
                self._error = ProtocolError(
                    f"peer announced a frame of {size} bytes; limit {limit}"
                )
                raise self._error
            scan += HEADER_SIZE + size
        self._scan = scan

    def next_frame(self) -> bytes | None:
        """The next whole frame's payload, or None until more bytes arrive."""
        if self._error is not None:
            raise self._error
        buffer, start = self._buffer, self._start
        if len(buffer) - start < HEADER_SIZE:
            return None
        begin = start + HEADER_SIZE
        end = begin + int.from_bytes(buffer[start:begin], "big")  # checked by feed
        if end > len(buffer):
            return None
        with memoryview(buffer) as view:
            frame = bytes(view[begin:end])  # one copy; the view must go before any resize
        if end == len(buffer):
            buffer.clear()
            self._scan -= end
            end = 0
        elif end >= _COMPACT_AT and end * 2 >= len(buffer):
            del buffer[:end]  # amortised: only what is left moves, and only when it is smaller
            self._scan -= end
            end = 0
        self._start = end
        return frame

    def frames(self) -> Iterator[bytes]:
        """Every whole frame buffered so far."""
        while (frame := self.next_frame()) is not None:
            yield frame
