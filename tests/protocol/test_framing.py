"""The sans-I/O framer: any split of the byte stream gives back the same frames, and limits hold."""

from __future__ import annotations

import itertools
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from copycat_trio.protocol import (
    DEFAULT_MAX_FRAME_SIZE,
    ConfigurationError,
    FrameDecoder,
    ProtocolError,
    encode_frame,
)


def test_a_frame_is_a_big_endian_length_then_the_payload() -> None:
    assert encode_frame(b"abc") == b"\x00\x00\x00\x03abc"
    assert encode_frame(b"") == b"\x00\x00\x00\x00"
    assert DEFAULT_MAX_FRAME_SIZE == 16 * 1024 * 1024


def test_encode_frame_refuses_payloads_over_the_limit() -> None:
    assert encode_frame(b"12345", max_frame_size=5) == b"\x00\x00\x00\x0512345"
    with pytest.raises(ProtocolError, match="exceeds the limit"):
        encode_frame(b"123456", max_frame_size=5)


@pytest.mark.parametrize("limit", [0, -1, 2**32, True, 1.5, "16"])
def test_the_limit_must_be_a_positive_32_bit_int(limit: object) -> None:
    with pytest.raises(ConfigurationError, match="max_frame_size"):
        FrameDecoder(limit)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="max_frame_size"):
        encode_frame(b"", limit)  # type: ignore[arg-type]


def test_byte_by_byte() -> None:
    stream = encode_frame(b"hello") + encode_frame(b"") + encode_frame(b"world")
    decoder = FrameDecoder()
    frames = []
    for index in range(len(stream)):
        decoder.feed(stream[index : index + 1])
        frames.extend(decoder.frames())
    assert frames == [b"hello", b"", b"world"]
    assert decoder.buffered == 0
    assert decoder.next_frame() is None


def test_many_frames_in_one_chunk() -> None:
    payloads = [bytes([n]) * n for n in range(200)]
    decoder = FrameDecoder()
    decoder.feed(b"".join(encode_frame(p) for p in payloads))
    assert list(decoder.frames()) == payloads
    assert decoder.buffered == 0


def test_incomplete_header_and_payload_give_none() -> None:
    decoder = FrameDecoder()
    decoder.feed(b"\x00\x00")
    assert decoder.next_frame() is None
    decoder.feed(b"\x00\x02a")
    assert decoder.next_frame() is None
    assert decoder.buffered == 5
    decoder.feed(bytearray(b"b"))
    assert decoder.next_frame() == b"ab"


def test_zero_length_frame() -> None:
    decoder = FrameDecoder()
    decoder.feed(memoryview(b"\x00\x00\x00\x00"))
    assert decoder.next_frame() == b""
    assert decoder.next_frame() is None


def test_oversized_header_is_refused_before_its_payload_arrives() -> None:
    decoder = FrameDecoder(max_frame_size=10)
    decoder.feed(encode_frame(b"ok"))
    with pytest.raises(ProtocolError, match="11 bytes"):
        decoder.feed((11).to_bytes(4, "big"))  # header only: no payload was sent
    # The stream cannot be resynchronised: every later call refuses too.
    with pytest.raises(ProtocolError):
        decoder.next_frame()
    with pytest.raises(ProtocolError):
        decoder.feed(b"x")


def test_oversized_header_far_behind_good_frames_is_refused_on_arrival() -> None:
    decoder = FrameDecoder(max_frame_size=10)
    decoder.feed(encode_frame(b"first") + encode_frame(b"second")[:3])
    with pytest.raises(ProtocolError, match="4294967295 bytes"):
        decoder.feed(encode_frame(b"second")[3:] + b"\xff\xff\xff\xff")


def test_a_frame_exactly_at_the_limit_is_fine() -> None:
    decoder = FrameDecoder(max_frame_size=3)
    decoder.feed(encode_frame(b"abc", max_frame_size=3))
    assert decoder.next_frame() == b"abc"


def test_many_small_frames_decode_in_linear_time() -> None:
    count = 200_000
    decoder = FrameDecoder()
    decoder.feed(encode_frame(b"0123456789") * count)
    started = time.perf_counter()
    assert sum(1 for _ in decoder.frames()) == count
    assert time.perf_counter() - started < 5  # quadratic copying would take minutes
    assert decoder.buffered == 0


def test_a_large_frame_in_many_chunks() -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB
    stream = encode_frame(payload) + encode_frame(b"tail")
    decoder = FrameDecoder()
    frames = []
    for start in range(0, len(stream), 1000):
        decoder.feed(stream[start : start + 1000])
        frames.extend(decoder.frames())
    assert frames == [payload, b"tail"]


@given(
    payloads=st.lists(st.binary(max_size=300), max_size=20),
    cuts=st.lists(st.integers(min_value=0, max_value=7000), max_size=30),
)
def test_any_split_of_the_stream_gives_the_same_frames(
    payloads: list[bytes], cuts: list[int]
) -> None:
    stream = b"".join(encode_frame(p) for p in payloads)
    bounds = sorted({0, len(stream), *(c for c in cuts if c < len(stream))})
    decoder = FrameDecoder()
    frames = []
    for start, end in itertools.pairwise(bounds):
        decoder.feed(stream[start:end])
        frames.extend(decoder.frames())
    assert frames == payloads
    assert decoder.buffered == 0


async def test_a_frame_left_unfinished_closes_the_connection(autojump_clock) -> None:
    import trio
    import trio.testing

    from copycat_trio.protocol.errors import ProtocolError as _ProtocolError
    from copycat_trio.transport import framed

    client, server = trio.testing.memory_stream_pair()
    stream = framed.FramedStream(server, "slow peer")
    await client.send_all(b"\x00\x00\x00\x10abc")  # 16 bytes announced, 3 sent, then silence
    started = trio.current_time()
    with pytest.raises(_ProtocolError, match="unfinished"):
        await stream.receive()
    assert trio.current_time() - started >= framed.PARTIAL_FRAME_TIMEOUT
