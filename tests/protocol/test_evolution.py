"""Messages that gained a field: an older and a newer member still understand each other.

Two registries stand for two builds of the same program: each registers its own version of a
message type under the same tag, as the old and the new release of one class would be.
"""

from __future__ import annotations

from typing import Any

import attrs
import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from copycat_trio.protocol import ProtocolError, TypeRegistry, VoteResponse, registry

TAG = 40900
WRAPPER_TAG = 40901


@attrs.frozen
class GreetingV1:
    """The message as the older minor version knows it."""

    name: str
    count: int


@attrs.frozen
class GreetingV2:
    """The same message one minor version later: two optional fields appended at the end."""

    name: str
    count: int
    language: str = "en"
    tags: tuple[str, ...] = attrs.field(factory=tuple)


@attrs.frozen
class WrapperV1:
    greetings: tuple[GreetingV1, ...]
    note: str


@attrs.frozen
class WrapperV2:
    greetings: tuple[GreetingV2, ...]
    note: str


@attrs.frozen(kw_only=True)
class RequiredLast:
    """A later field without a default: a sender that leaves it out is refused."""

    first: int = 0
    second: str


OLD = TypeRegistry()
OLD.register(GreetingV1, TAG)
OLD.register(WrapperV1, WRAPPER_TAG)
NEW = TypeRegistry()
NEW.register(GreetingV2, TAG)
NEW.register(WrapperV2, WRAPPER_TAG)
STRICT = TypeRegistry()
STRICT.register(RequiredLast, TAG)


def test_an_older_sender_leaves_the_new_fields_to_their_defaults() -> None:
    assert NEW.decode(OLD.encode(GreetingV1("ada", 3))) == GreetingV2("ada", 3, "en", ())


def test_a_newer_sender_has_its_added_fields_ignored() -> None:
    data = NEW.encode(GreetingV2("ada", 3, "fr", ("x", "y")))
    assert OLD.decode(data) == GreetingV1("ada", 3)


def test_evolved_messages_nested_inside_others_decode_both_ways() -> None:
    old = WrapperV1((GreetingV1("a", 1), GreetingV1("b", 2)), "n")
    new = WrapperV2((GreetingV2("a", 1, "de"), GreetingV2("b", 2, tags=("t",))), "n")
    assert NEW.decode(OLD.encode(old)) == WrapperV2((GreetingV2("a", 1), GreetingV2("b", 2)), "n")
    assert OLD.decode(NEW.encode(new)) == old


@given(
    name=st.text(max_size=20),
    count=st.integers(min_value=-(2**63), max_value=2**63 - 1),
    language=st.text(max_size=8),
    tags=st.lists(st.text(max_size=5), max_size=4).map(tuple),
)
def test_old_new_old_keeps_what_both_know(
    name: str, count: int, language: str, tags: tuple[str, ...]
) -> None:
    new = GreetingV2(name, count, language, tags)
    old = OLD.decode(NEW.encode(new))
    assert old == GreetingV1(name, count)
    assert NEW.decode(OLD.encode(old)) == GreetingV2(name, count)
    assert NEW.decode(NEW.encode(new)) == new


def test_a_missing_field_without_a_default_is_refused_by_name() -> None:
    with pytest.raises(ProtocolError, match=r"GreetingV2: expected 4 fields, got 1; count"):
        NEW.decode(cbor2.dumps(cbor2.CBORTag(TAG, ["ada"])))
    with pytest.raises(ProtocolError, match=r"RequiredLast: expected 2 fields, got 1; second"):
        STRICT.decode(cbor2.dumps(cbor2.CBORTag(TAG, [1])))
    assert STRICT.decode(cbor2.dumps(cbor2.CBORTag(TAG, [1, "s"]))) == RequiredLast(
        first=1, second="s"
    )


def test_present_fields_are_still_type_checked_and_extras_still_decoded() -> None:
    with pytest.raises(ProtocolError, match=r"GreetingV2.language: expected str, got int"):
        NEW.decode(cbor2.dumps(cbor2.CBORTag(TAG, ["ada", 1, 5])))
    # An ignored field is still CBOR the codec accepts: no unknown tags, no sets, no datetimes.
    extra: Any = cbor2.CBORTag(39999, [])
    with pytest.raises(ProtocolError, match="unknown CBOR tag 39999"):
        OLD.decode(cbor2.dumps(cbor2.CBORTag(TAG, ["ada", 1, extra])))


def test_library_messages_follow_the_same_rules() -> None:
    tag = registry.tags[VoteResponse]
    newer = cbor2.dumps(cbor2.CBORTag(tag, [7, True, "later"]))
    assert registry.decode(newer) == VoteResponse(term=7, voted=True)
    with pytest.raises(ProtocolError, match="VoteResponse: expected 2 fields, got 1; voted"):
        registry.decode(cbor2.dumps(cbor2.CBORTag(tag, [7])))
