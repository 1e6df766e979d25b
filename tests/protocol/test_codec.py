"""The tag table: registration rules, what encode refuses, and what decode refuses (and why)."""

from __future__ import annotations

import collections
import datetime
import decimal
import uuid
from typing import Any

import attrs
import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from copycat_trio.protocol import (
    MAX_DEPTH,
    AppendRequest,
    CommandEntry,
    ConfigurationEntry,
    ConfigurationError,
    Envelope,
    ErrorInfo,
    ErrorType,
    Member,
    MemberType,
    NoOpEntry,
    ProtocolError,
    RegisterResponse,
    RpcRequest,
    Status,
    TypeRegistry,
    VoteResponse,
    decode,
    encode,
    register,
    registry,
)
from copycat_trio.protocol.operations import Command

ENVELOPE = registry.tags[Envelope]
VOTE_RESPONSE = registry.tags[VoteResponse]
MEMBER = registry.tags[Member]
RPC_REQUEST = registry.tags[RpcRequest]
ERROR_INFO = registry.tags[ErrorInfo]


def raw(value: Any) -> bytes:
    """Bytes as a hostile or buggy peer could send them, bypassing our encoder."""
    return cbor2.dumps(value)


def refused(data: bytes, *words: str) -> str:
    with pytest.raises(ProtocolError) as info:
        decode(data)
    message = str(info.value)
    for word in words:
        assert word in message
    return message


# --- registration ----------------------------------------------------------------------------


@attrs.frozen
class Thing:
    name: str


class NotAttrs:
    name: str


def test_register_refuses_duplicates_non_attrs_and_library_tags() -> None:
    reg = TypeRegistry()
    reg.register(Thing, 40000)
    with pytest.raises(ConfigurationError, match="already registered to Thing"):
        reg.register(Member, 40000)
    with pytest.raises(ConfigurationError, match="Thing is already registered with tag 40000"):
        reg.register(Thing, 40001)
    with pytest.raises(ConfigurationError, match="not an attrs class"):
        reg.register(NotAttrs, 40002)
    with pytest.raises(ConfigurationError, match="reserved for the library"):
        reg.register(Member, 39999)
    reg.register(Member, 39999, builtin=True)
    with pytest.raises(ConfigurationError, match="standard CBOR tag"):
        reg.register(ErrorInfo, 55799)
    for bad in (True, -1, 2**64, "40003"):
        with pytest.raises(ConfigurationError, match="not an integer"):
            reg.register(ErrorInfo, bad)  # type: ignore[arg-type]


def test_register_refuses_fields_it_could_not_decode() -> None:
    @attrs.frozen
    class Hidden:
        shown: int
        hidden: int = attrs.field(init=False, default=0)

    @attrs.frozen
    class Listy:
        items: list[int]

    reg = TypeRegistry()
    with pytest.raises(ConfigurationError, match="init=False"):
        reg.register(Hidden, 40000)
    with pytest.raises(ConfigurationError, match="annotation"):
        reg.register(Listy, 40001)
    assert Listy not in reg.tags


def test_decorator_registers_on_the_default_registry_and_returns_the_class() -> None:
    @register(48_151_623)
    @attrs.frozen
    class Put(Command):
        key: str
        value: Any

    assert registry.tags[Put] == 48_151_623
    assert decode(encode(Put("k", {"a": [1, 2]}))) == Put("k", {"a": [1, 2]})


@attrs.frozen
class Node:
    """Refers to a class defined after it: compiled on first use, not at registration."""

    child: Later | None


@attrs.frozen
class Later:
    value: int


def test_forward_references_resolve_on_first_use() -> None:
    reg = TypeRegistry()
    reg.register(Node, 40000)
    reg.register(Later, 40001)
    assert reg.decode(reg.encode(Node(Later(3)))) == Node(Later(3))
    with pytest.raises(ProtocolError, match=r"Node\.child: expected Later \| None, got int"):
        reg.decode(raw(cbor2.CBORTag(40000, [5])))


# --- encoding --------------------------------------------------------------------------------


def test_wire_shape_is_a_tag_around_the_fields_in_attrs_order() -> None:
    vote = VoteResponse(term=7, voted=True)
    assert cbor2.loads(encode(vote)) == cbor2.CBORTag(VOTE_RESPONSE, (7, True))
    member = Member(1, "h:1", MemberType.PASSIVE)
    assert cbor2.loads(encode(member)) == cbor2.CBORTag(MEMBER, (1, "h:1", 2, None, 0))


@pytest.mark.parametrize(
    "value",
    [
        Thing("unregistered"),
        object(),
        {1, 2},
        frozenset(),
        1j,
        datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC),
        datetime.date(2020, 1, 1),
        decimal.Decimal("1.5"),
        uuid.uuid4(),
        cbor2.CBORTag(ENVELOPE, [1, 2, 3]),
        cbor2.CBORSimpleValue(3),
        cbor2.undefined,
        {1: "int keys decode nowhere"},
    ],
    ids=repr,
)
def test_encode_refuses_what_decode_would_refuse(value: Any) -> None:
    with pytest.raises(ProtocolError, match="cannot encode"):
        encode(RpcRequest(1, {"nested": [value]}))
    with pytest.raises(ProtocolError, match="cannot encode"):
        encode([value])


def test_encode_names_the_unregistered_type_and_the_field() -> None:
    with pytest.raises(ProtocolError, match="Thing: register it"):
        encode(RpcRequest(1, Thing("x")))
    with pytest.raises(ProtocolError, match=r"RpcRequest\.body: set"):
        encode(RpcRequest(1, [{1}]))


def test_encode_refuses_cycles_and_excessive_depth() -> None:
    cycle: list[Any] = []
    cycle.append(cycle)
    with pytest.raises(ProtocolError):
        encode(RpcRequest(1, cycle))
    deep: Any = 1
    for _ in range(MAX_DEPTH + 1):
        deep = [deep]
    with pytest.raises(ProtocolError, match="nested deeper"):
        encode(RpcRequest(1, deep))


def test_named_tuples_and_mapping_types_encode_as_arrays_and_maps() -> None:
    Point = collections.namedtuple("Point", "x y")
    body = collections.OrderedDict(p=Point(1, 2))
    assert decode(encode(RpcRequest(1, body))).body == {"p": [1, 2]}


# --- decoding: good input --------------------------------------------------------------------


def test_nested_messages_and_enums_come_back_typed() -> None:
    entries = (
        NoOpEntry(term=1, index=1),
        CommandEntry(term=1, index=2, operation={"op": "put", "args": ["k", b"v", 1.5]}),
        ConfigurationEntry(term=1, index=3, members=(Member(1, "a:1"), Member(2, "b:2"))),
    )
    message = Envelope(
        1, 2, AppendRequest(term=1, leader=1, prev_log_index=0, prev_log_term=0, entries=entries)
    )
    back = decode(encode(message))
    assert back == message
    assert type(back.message.entries) is tuple
    assert type(back.message.entries[2].members[0].type) is MemberType
    response = decode(
        encode(
            RegisterResponse(status=Status.ERROR, error=ErrorInfo(ErrorType.NO_LEADER, "no leader"))
        )
    )
    assert response.status is Status.ERROR
    assert response.error.type is ErrorType.NO_LEADER


def test_any_fields_decode_to_plain_mutable_python() -> None:
    body = {"list": [1, [2, (3, 4)]], "map": {"x": None}, b"raw": True, "big": 2**100}
    back = decode(encode(RpcRequest(1, body)))
    assert back.body == {"list": [1, [2, [3, 4]]], "map": {"x": None}, b"raw": True, "big": 2**100}
    assert type(back.body) is dict
    assert type(back.body["list"][1][1]) is list
    back.body["list"].append(5)  # mutable, as from json.loads


def test_top_level_plain_values_are_allowed() -> None:
    assert decode(encode([1, "two", {"three": 3.0}])) == [1, "two", {"three": 3.0}]
    assert decode(encode(None)) is None


def test_float_fields_accept_ints() -> None:
    @attrs.frozen
    class Temperature:
        celsius: float

    reg = TypeRegistry()
    reg.register(Temperature, 40000)
    back = reg.decode(raw(cbor2.CBORTag(40000, [21])))
    assert back == Temperature(21.0) and type(back.celsius) is float
    with pytest.raises(ProtocolError, match="expected float, got bool"):
        reg.decode(raw(cbor2.CBORTag(40000, [True])))


# --- decoding: hostile or broken input -------------------------------------------------------


def test_unknown_tag() -> None:
    refused(raw(cbor2.CBORTag(39_123, [1])), "unknown CBOR tag 39123")
    refused(raw(RpcRequestTag(cbor2.CBORTag(12345, []))), "unknown CBOR tag 12345")


def RpcRequestTag(body: Any) -> cbor2.CBORTag:
    return cbor2.CBORTag(RPC_REQUEST, [1, body])


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        (["7", True], ["VoteResponse.term", "expected int, got str"]),
        ([True, True], ["VoteResponse.term", "expected int, got bool"]),
        ([7.0, True], ["VoteResponse.term", "expected int, got float"]),
        ([7, 1], ["VoteResponse.voted", "expected bool, got int"]),
        ([7, None], ["VoteResponse.voted", "expected bool, got NoneType"]),
        ([7], ["VoteResponse", "expected 2 fields, got 1; voted has no default"]),
        ([], ["VoteResponse", "expected 2 fields, got 0; term has no default"]),
        # More fields than the class has are a newer sender's: see test_evolution.py.
    ],
)
def test_wrong_field_types_and_arity(fields: list[Any], words: list[str]) -> None:
    refused(raw(cbor2.CBORTag(VOTE_RESPONSE, fields)), *words)


def test_fields_must_be_an_array() -> None:
    refused(raw(cbor2.CBORTag(VOTE_RESPONSE, {"term": 7})), "expected an array of fields")
    refused(raw(cbor2.CBORTag(VOTE_RESPONSE, 7)), "expected an array of fields")


def test_wrong_enum_value_and_nested_wrong_types() -> None:
    refused(raw(cbor2.CBORTag(ERROR_INFO, [99, ""])), "ErrorInfo.type", "99 is not a ErrorType")
    refused(raw(cbor2.CBORTag(ERROR_INFO, [True, ""])), "ErrorInfo.type")
    refused(raw(cbor2.CBORTag(MEMBER, [1, "a", 7, None, 0])), "Member.type")
    refused(raw(cbor2.CBORTag(MEMBER, [1, "a", 3, 5, 0])), "Member.client_address")
    # A registered class, but not one the union allows.
    member = cbor2.CBORTag(MEMBER, [1, "a", 3, None, 0])
    refused(raw(cbor2.CBORTag(ENVELOPE, [1, 2, member])), "Envelope.message", "got Member")
    entries = [cbor2.CBORTag(registry.tags[NoOpEntry], [1, 1, 0]), 5]
    append = cbor2.CBORTag(registry.tags[AppendRequest], [1, 1, 0, 0, entries, 0, 0])
    refused(raw(append), "AppendRequest.entries", "item 1 is int")


def test_truncated_encodings() -> None:
    data = encode(Envelope(1, 2, VoteResponse(term=3, voted=False)))
    for cut in range(len(data)):
        refused(data[:cut])


def test_trailing_garbage() -> None:
    data = encode(VoteResponse(term=3, voted=False))
    refused(data + b"\x00", "trailing")
    refused(data + data, "trailing")


def test_deep_nesting_beyond_the_limit() -> None:
    value: Any = 1
    for _ in range(MAX_DEPTH + 1):
        value = [value]
    refused(raw(RpcRequestTag(value)), "depth")
    tags: Any = None
    for _ in range(MAX_DEPTH):
        tags = RpcRequestTag(tags)
    refused(raw(tags), "depth")


def test_value_sharing_cycles_are_refused() -> None:
    cycle = bytes.fromhex("d81c81d81d00")  # 28([29(0)]): a list that contains itself
    assert "tag 28" in refused(cycle) or "tag 29" in refused(cycle)
    refused(raw(RpcRequestTag(cbor2.CBORTag(29, 0))), "tag 29")
    assert b"\xd8\x1c" in raw(cbor2.CBORTag(28, [1]))  # the refused tag is really there
    refused(raw(RpcRequestTag(cbor2.CBORTag(28, [1]))), "tag 28")


@pytest.mark.parametrize(
    "tag, content",
    [
        (0, "2013-03-21T20:04:00Z"),  # datetime
        (1, 1363896240),  # epoch datetime
        (4, [-2, 27315]),  # decimal fraction
        (5, [-1, 3]),  # bigfloat
        (25, 0),  # string reference
        (30, [1, 3]),  # rational
        (35, "a+"),  # regex
        (36, "Content-Type: text/plain\n\nhi"),  # MIME
        (37, b"\x00" * 16),  # UUID
        (52, b"\x7f\x00\x00\x01"),  # IPv4
        (54, b"\x00" * 16),  # IPv6
        (100, 1),  # epoch date
        (256, ["a"]),  # string namespace
        (258, [1, 2]),  # set
        (260, b"\x7f\x00\x00\x01"),  # IP address
        (1004, "2020-01-01"),  # date string
        (43000, [1.0, 2.0]),  # complex
        (55799, 1),  # self-described CBOR
    ],
)
def test_semantic_tags_never_become_python_objects(tag: int, content: Any) -> None:
    refused(raw(RpcRequestTag(cbor2.CBORTag(tag, content))), f"tag {tag}")
    refused(raw(cbor2.CBORTag(tag, content)), f"tag {tag}")


def test_bignums_are_plain_ints() -> None:
    assert decode(raw(RpcRequestTag(2**80))).body == 2**80
    assert decode(raw(RpcRequestTag(-(2**80)))).body == -(2**80)


def test_simple_values_and_undefined_are_refused() -> None:
    refused(raw(RpcRequestTag(cbor2.undefined)), "not a plain value")
    refused(raw(RpcRequestTag([cbor2.CBORSimpleValue(5)])), "not a plain value")
    refused(raw({"a": cbor2.undefined}), "not a plain value")


PLAIN = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=3) | st.binary(max_size=3),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=2), inner),
    max_leaves=20,
)


def _hide(value: Any, path: list[int], bad: Any) -> Any:
    """`value` with `bad` put in at a position that `path` picks (descending while it can)."""
    if not path or not isinstance(value, list | dict) or not value:
        return [value, bad]
    if isinstance(value, list):
        i = path[0] % len(value)
        return [*value[:i], _hide(value[i], path[1:], bad), *value[i + 1 :]]
    key = sorted(value)[path[0] % len(value)]
    return {**value, key: _hide(value[key], path[1:], bad)}


@settings(max_examples=100, deadline=None)
@given(PLAIN, st.lists(st.integers(min_value=0, max_value=7), max_size=6))
def test_a_value_not_plain_is_refused_at_any_depth(value: Any, path: list[int]) -> None:
    """Plain values of any shape decode as they were; one simple value anywhere inside, in a
    list or as a map's value, at any depth, refuses the whole message."""
    assert decode(raw(RpcRequestTag(value))).body == value
    for bad in (cbor2.undefined, cbor2.CBORSimpleValue(5)):
        refused(raw(RpcRequestTag(_hide(value, path, bad))), "not a plain value")


def test_a_table_of_rows_is_checked_row_by_row() -> None:
    """A thousand rows (a snapshot chunk's shape): one bad cell in the last row refuses it."""
    rows = [[f"k{i}", i, None, None] for i in range(1000)]
    assert decode(raw(RpcRequestTag(rows))).body == rows
    rows[-1][2] = cbor2.undefined
    refused(raw(RpcRequestTag(rows)), "not a plain value")


def test_map_keys_must_be_strings_and_unique() -> None:
    refused(raw(RpcRequestTag({1: "a"})), "map key")
    refused(raw(RpcRequestTag({(1, 2): "a"})), "map key")
    refused(bytes.fromhex("a2616101616102"), "Duplicate")  # {"a": 1, "a": 2}


def test_indefinite_lengths_and_empty_input_are_refused() -> None:
    refused(b"\x9f\x01\xff", "indefinite")
    refused(b"")


def test_errors_from_a_class_constructor_become_protocol_errors() -> None:
    @attrs.frozen
    class Positive:
        n: int = attrs.field(validator=attrs.validators.gt(0))

    reg = TypeRegistry()
    reg.register(Positive, 40000)
    with pytest.raises(ProtocolError, match="Positive: rejected its fields"):
        reg.decode(raw(cbor2.CBORTag(40000, [-1])))


def test_registries_are_independent() -> None:
    reg = TypeRegistry()
    with pytest.raises(ProtocolError, match="unknown CBOR tag"):
        reg.decode(encode(VoteResponse(term=1, voted=True)))
