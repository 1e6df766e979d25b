"""Property tests: every message survives encode/decode, and no input makes decode misbehave.

Strategies are built from the classes' own type hints, so a new message or field is covered
without touching this file.
"""

from __future__ import annotations

import enum
import types
import typing
from typing import Any

import attrs
import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from copycat_trio.protocol import (
    BUILTIN_TAGS,
    ErrorInfo,
    Event,
    Member,
    ProtocolError,
    TypeRegistry,
    registry,
)
from copycat_trio.protocol.operations import Command

# --- a strategy builder driven by annotations -------------------------------------------------

ints = st.integers(min_value=-(2**70), max_value=2**70)  # past 64 bits: bignums travel too
floats = st.floats(allow_nan=False)
scalars = st.one_of(
    st.none(), st.booleans(), ints, floats, st.text(max_size=20), st.binary(max_size=20)
)
# Registered objects may sit inside plain values (an Any field), as in an RPC body.
leaf_objects = st.one_of(
    st.builds(Member, id=ints, address=st.text(max_size=10)),
    st.deferred(lambda: instances_of(ErrorInfo)),
    st.builds(Event, name=st.text(max_size=5), payload=scalars),
)
plain_values = st.recursive(
    st.one_of(scalars, leaf_objects),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.text(max_size=8), st.binary(max_size=4)), inner, max_size=4),
    ),
    max_leaves=12,
)


def strategy_for(hint: Any) -> st.SearchStrategy[Any]:
    """Values of the annotation `hint`, as a well-behaved sender would produce them."""
    if hint is Any:
        return plain_values
    simple = {int: ints, bool: st.booleans(), str: st.text(max_size=20), float: floats}
    if hint in simple:
        return simple[hint]
    if hint is bytes:
        return st.binary(max_size=64)
    if hint is type(None):
        return st.none()
    origin = typing.get_origin(hint)
    if origin is typing.Union or origin is types.UnionType:
        return st.one_of([strategy_for(arm) for arm in typing.get_args(hint)])
    if origin is tuple:
        item, _ = typing.get_args(hint)
        return st.lists(strategy_for(item), max_size=4).map(tuple)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return st.sampled_from(hint)
    if isinstance(hint, type) and attrs.has(hint):
        return st.deferred(lambda: instances_of(hint))
    raise AssertionError(f"no strategy for {hint!r}")


def instances_of(cls: type) -> st.SearchStrategy[Any]:
    hints = typing.get_type_hints(cls)
    fields = attrs.fields(cls)
    return st.builds(cls, **{f.alias: strategy_for(hints[f.name]) for f in fields})


# --- round trips -----------------------------------------------------------------------------


@pytest.mark.parametrize("cls", list(BUILTIN_TAGS), ids=lambda cls: cls.__name__)
@given(data=st.data())
@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
def test_every_builtin_message_round_trips(cls: type, data: st.DataObject) -> None:
    message = data.draw(instances_of(cls))
    assert registry.decode(registry.encode(message)) == message


@attrs.frozen
class Put(Command):
    key: str
    value: Any


@attrs.frozen
class Reading:
    """Exercises annotations the built-in messages do not use."""

    celsius: float
    tags: tuple[str, ...] = ()
    previous: Reading | None = None


local = TypeRegistry(builtins=True)
local.register(Put, 40001)
local.register(Reading, 40002)


@given(put=instances_of(Put))
def test_user_operation_round_trips_inside_a_command_entry(put: Put) -> None:
    entry = local.decode(local.encode(put))
    assert entry == put
    assert type(entry) is Put


@given(reading=st.builds(Reading, floats, st.lists(st.text()).map(tuple), st.none()))
def test_user_class_with_float_tuple_and_self_reference_round_trips(reading: Reading) -> None:
    outer = Reading(1.5, ("a",), reading)
    assert local.decode(local.encode(outer)) == outer


@given(value=plain_values)
def test_plain_values_round_trip(value: Any) -> None:
    assert registry.decode(registry.encode(value)) == value


# --- hostile input ---------------------------------------------------------------------------


def assert_plain(value: Any, known: typing.Mapping[type, int]) -> None:
    """Only plain values and registered instances may come out of decode."""
    if isinstance(value, list):
        for item in value:
            assert_plain(item, known)
    elif isinstance(value, dict):
        for key, item in value.items():
            assert type(key) in (str, bytes)
            assert_plain(item, known)
    else:
        assert type(value) in known or type(value) in (type(None), bool, int, float, str, bytes)
        if attrs.has(type(value)):
            for field in attrs.fields(type(value)):
                field_value = getattr(value, field.name)
                items = field_value if isinstance(field_value, tuple) else (field_value,)
                for item in items:
                    if not isinstance(item, enum.Enum):
                        assert_plain(item, known)


def decode_or_refuse(reg: TypeRegistry, data: bytes) -> None:
    try:
        value = reg.decode(data)
    except ProtocolError:
        return
    assert_plain(value, reg.tags)


@given(data=st.binary(max_size=200))
@settings(max_examples=1000)
def test_random_bytes_only_ever_raise_protocol_error(data: bytes) -> None:
    decode_or_refuse(local, data)


some_tags = st.one_of(
    st.sampled_from([*BUILTIN_TAGS.values(), 40001, 40002]),
    st.sampled_from([0, 1, 2, 3, 4, 5, 25, 28, 29, 30, 35, 36, 37, 52, 54, 100, 256, 258]),
    st.sampled_from([260, 261, 1004, 43000, 55799]),
    st.integers(min_value=0, max_value=2**64 - 1),
)
raw_cbor = st.recursive(
    st.one_of(scalars, st.builds(cbor2.CBORSimpleValue, st.integers(0, 19))),
    lambda inner: st.one_of(
        st.lists(inner, max_size=6),
        st.dictionaries(st.text(max_size=4), inner, max_size=3),
        st.builds(cbor2.CBORTag, some_tags, st.lists(inner, max_size=8)),
        st.builds(cbor2.CBORTag, some_tags, inner),
    ),
    max_leaves=25,
)


@given(value=raw_cbor)
@settings(max_examples=1000)
def test_well_formed_cbor_with_any_tags_only_ever_raises_protocol_error(value: Any) -> None:
    decode_or_refuse(local, cbor2.dumps(value))


@given(message=instances_of(Put) | instances_of(Reading), data=st.data())
@settings(max_examples=300)
def test_damaged_encodings_only_ever_raise_protocol_error(message: Any, data: Any) -> None:
    encoded = bytearray(local.encode(message))
    cut = data.draw(st.integers(0, len(encoded) - 1))
    decode_or_refuse(local, bytes(encoded[:cut]))
    position = data.draw(st.integers(0, len(encoded) - 1))
    encoded[position] = data.draw(st.integers(0, 255))
    decode_or_refuse(local, bytes(encoded))


@given(data=st.data())
@settings(max_examples=500)
def test_right_arity_wrong_values_only_ever_raise_protocol_error(data: st.DataObject) -> None:
    cls, tag = data.draw(st.sampled_from(sorted(local.tags.items(), key=lambda kv: kv[1])))
    arity = len(attrs.fields(cls))
    values = data.draw(st.lists(raw_cbor, min_size=arity, max_size=arity))
    decode_or_refuse(local, cbor2.dumps(cbor2.CBORTag(tag, values)))
