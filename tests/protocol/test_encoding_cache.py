"""Log entries are encoded once and their bytes spliced into every frame that carries them:
the bytes must be exactly those an encoding without the cache gives."""

from __future__ import annotations

from typing import Any

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from copycat_trio.protocol import BUILTIN_TAGS, ProtocolError, TypeRegistry
from copycat_trio.protocol.codec import ENCODING_CACHE_SIZE
from copycat_trio.protocol.errors import ErrorInfo, ErrorType, Status
from copycat_trio.protocol.messages import (
    ENTRY_TYPES,
    AppendRequest,
    CommandEntry,
    CommandResponse,
    Envelope,
)

from .test_roundtrip import instances_of

cached = TypeRegistry(builtins=True)
uncached = TypeRegistry(builtins=True, cache_entries=False)


def append_of(entries: tuple[Any, ...]) -> Envelope:
    request = AppendRequest(
        term=3,
        leader=1,
        prev_log_index=0,
        prev_log_term=0,
        entries=entries,
        commit_index=2,
        read_round=9,
    )
    return Envelope(1, 2, request)


@pytest.mark.parametrize("cls", list(BUILTIN_TAGS), ids=lambda cls: cls.__name__)
@given(data=st.data())
@settings(max_examples=8, suppress_health_check=[HealthCheck.too_slow])
def test_every_message_encodes_to_the_same_bytes_cold_and_warm(
    cls: type, data: st.DataObject
) -> None:
    message = data.draw(instances_of(cls))
    expected = uncached.encode(message)
    assert cached.encode(message) == expected  # cold: entries inside are encoded and kept
    assert cached.encode(message) == expected  # warm: their kept bytes are spliced in
    assert cached.decode(expected) == message


@given(data=st.data())
@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
def test_an_append_splices_entries_encoded_before_on_their_own(data: st.DataObject) -> None:
    entries = tuple(
        data.draw(st.lists(st.one_of([instances_of(c) for c in ENTRY_TYPES]), max_size=5))
    )
    for entry in entries:  # as the log does to measure them, and the disk to store them
        assert cached.encode(entry) == uncached.encode(entry)
    assert cached.encode(append_of(entries)) == uncached.encode(append_of(entries))


def test_an_equal_looking_entry_is_encoded_afresh() -> None:
    """Kept by identity, not by index: an entry replaced at the same index (a truncated log)
    never gets the bytes of the one it replaced."""
    first = CommandEntry(term=1, index=5, operation=["put", "a"])
    second = CommandEntry(term=2, index=5, operation=["put", "b"])
    assert cached.encode(first) != cached.encode(second)
    assert cached.decode(cached.encode(append_of((second,)))).message.entries == (second,)


def test_a_refused_value_is_refused_every_time() -> None:
    entry = CommandEntry(term=1, index=1, operation={1: "int keys do not travel"})
    for _ in range(2):
        with pytest.raises(ProtocolError):
            cached.encode(entry)


def test_the_cache_keeps_only_the_newest() -> None:
    registry = TypeRegistry(builtins=True)
    entries = [CommandEntry(term=1, index=i, operation=i) for i in range(ENCODING_CACHE_SIZE + 100)]
    for entry in entries:
        registry.encode(entry)
    kept = registry._encodings._items
    assert len(kept) == ENCODING_CACHE_SIZE
    assert id(entries[-1]) in kept and id(entries[0]) not in kept


def test_the_oldest_is_dropped_first_and_only_the_oldest() -> None:
    """The order of eviction is insertion order, however many were dropped before (the cache
    is an OrderedDict: a plain dict found its first item by stepping over every hole left by
    earlier deletions, which cost more with each put once full)."""
    registry = TypeRegistry(builtins=True)
    entries = [CommandEntry(term=1, index=i, operation=i) for i in range(3 * ENCODING_CACHE_SIZE)]
    for entry in entries:
        registry.encode(entry)
        assert len(registry._encodings) <= ENCODING_CACHE_SIZE
    kept = registry._encodings._items
    assert list(kept) == [id(entry) for entry in entries[-ENCODING_CACHE_SIZE:]]


def test_nested_registered_values_encode_as_the_default_path_would() -> None:
    """An entry's operation and a response's error are written as tags by cbor2 itself (no
    callback per object): the bytes must be those of the callback path."""
    response = CommandResponse(status=Status.ERROR, error=ErrorInfo(ErrorType.COMMAND, "no"))
    plan = uncached._plans[CommandResponse]
    by_callback = cbor2.dumps(
        cbor2.CBORTag(plan.tag, list(plan.getter(response))), default=uncached._encode_default
    )
    assert uncached.encode(response) == by_callback
    assert uncached.decode(by_callback) == response
