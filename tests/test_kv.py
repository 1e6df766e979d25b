"""The key-value recipe: its operations' semantics, determinism, and its wire tags."""

import sys
import types
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from copycat_trio.protocol.operations import Command, Query
from copycat_trio.recipes import kv
from copycat_trio.recipes.kv import CompareAndSet, Delete, Get, Keys, KeyValueStore, Put, Size
from copycat_trio.state_machine import Commit


class Store:
    """A KeyValueStore plus a log index, so that tests read like a client session."""

    def __init__(self) -> None:
        self.sm = KeyValueStore()
        self.index = 0

    def __call__(self, operation: object) -> Any:
        if isinstance(operation, Command):
            self.index += 1
        return self.sm.apply(Commit(operation, index=self.index, time=1000 * self.index))


@pytest.fixture
def store() -> Store:
    return Store()


def test_operation_kinds() -> None:
    for command in (Put, Delete, CompareAndSet):
        assert issubclass(command, Command)
    for query in (Get, Keys, Size):
        assert issubclass(query, Query)


def test_put_returns_previous_value(store: Store) -> None:
    assert store(Put("a", 1)) is None
    assert store(Put("a", 2)) == 1
    assert store(Get("a")) == 2


def test_get_missing_is_none(store: Store) -> None:
    assert store(Get("nope")) is None


def test_delete_returns_previous_value(store: Store) -> None:
    store(Put("a", {"x": [1, 2]}))
    assert store(Delete("a")) == {"x": [1, 2]}
    assert store(Delete("a")) is None
    assert store(Get("a")) is None
    assert store(Size()) == 0


def test_keys_are_sorted_and_size_counts(store: Store) -> None:
    for key in ("b", "c", "a"):
        store(Put(key, key.upper()))
    assert store(Keys()) == ["a", "b", "c"]
    assert store(Size()) == 3
    store(Delete("b"))
    assert store(Keys()) == ["a", "c"]
    assert store(Size()) == 2


def test_cas_applies_when_expected_matches(store: Store) -> None:
    store(Put("a", 1))
    assert store(CompareAndSet("a", 1, 2)) is True
    assert store(Get("a")) == 2


def test_cas_fails_when_expected_differs(store: Store) -> None:
    store(Put("a", 1))
    assert store(CompareAndSet("a", 5, 2)) is False
    assert store(Get("a")) == 1
    assert store(CompareAndSet("missing", 1, 2)) is False
    assert store(Get("missing")) is None


def test_cas_expected_none_means_absent(store: Store) -> None:
    assert store(CompareAndSet("a", None, "first")) is True
    assert store(Get("a")) == "first"
    assert store(CompareAndSet("a", None, "second")) is False
    assert store(Get("a")) == "first"


def test_cas_new_none_removes(store: Store) -> None:
    store(Put("a", 1))
    assert store(CompareAndSet("a", 2, None)) is False
    assert store(Keys()) == ["a"]
    assert store(CompareAndSet("a", 1, None)) is True
    assert store(Keys()) == []


def test_none_cannot_be_stored() -> None:
    with pytest.raises(ValueError, match="None"):
        Put("a", None)


def test_keys_must_be_strings() -> None:
    with pytest.raises(TypeError):
        Get(1)  # type: ignore[arg-type]


def test_put_of_none_that_skipped_validation_deletes(store: Store) -> None:
    store(Put("a", 1))
    smuggled = Put("a", 2)
    object.__setattr__(smuggled, "value", None)  # as a decoder that bypasses __init__ might
    assert store(smuggled) == 1
    assert store(Keys()) == []


def test_data_is_a_read_only_view(store: Store) -> None:
    store(Put("a", 1))
    assert dict(store.sm.data) == {"a": 1}
    with pytest.raises(TypeError):
        store.sm.data["b"] = 2  # type: ignore[index]


# --- determinism ------------------------------------------------------------------------------

keys = st.sampled_from(["a", "b", "c", "d"])
values = st.one_of(st.integers(-3, 3), st.text(max_size=3), st.lists(st.integers(0, 2), max_size=2))
operations = st.one_of(
    st.builds(Put, keys, values),
    st.builds(Get, keys),
    st.builds(Delete, keys),
    st.builds(CompareAndSet, keys, st.one_of(st.none(), values), st.one_of(st.none(), values)),
    st.builds(Keys),
    st.builds(Size),
)


@given(st.lists(operations, max_size=40))
def test_same_commits_give_same_state(ops: list[object]) -> None:
    first, second = Store(), Store()
    assert [first(op) for op in ops] == [second(op) for op in ops]
    assert dict(first.sm.data) == dict(second.sm.data)


@given(st.lists(operations, max_size=40))
def test_matches_a_plain_dict(ops: list[object]) -> None:
    store, model = Store(), dict[str, Any]()
    for op in ops:
        result = store(op)
        match op:
            case Put(key, value):
                assert result == model.get(key)
                model[key] = value
            case Get(key):
                assert result == model.get(key)
            case Delete(key):
                assert result == model.pop(key, None)
            case CompareAndSet(key, expected, new):
                assert result == (model.get(key) == expected)
                if result:
                    if new is None:
                        model.pop(key, None)
                    else:
                        model[key] = new
            case Keys():
                assert result == sorted(model)
            case Size():
                assert result == len(model)
    assert dict(store.sm.data) == model


# --- wire registration --------------------------------------------------------------------


def test_wire_tags() -> None:
    assert dict(kv.WIRE_TAGS) == {
        Put: 33000,
        Get: 33001,
        Delete: 33002,
        CompareAndSet: 33003,
        Keys: 33004,
        Size: 33005,
    }


def test_register_wire_types_uses_the_codec_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[type, int, bool]] = []

    class FakeRegistry:
        def register(self, cls: type, tag: int, *, builtin: bool = False) -> None:
            calls.append((cls, tag, builtin))

    fake = types.ModuleType("copycat_trio.protocol.codec")
    fake.registry = FakeRegistry()  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "copycat_trio.protocol.codec", fake)
    kv._register_wire_types()
    assert calls == [(cls, tag, True) for cls, tag in kv.WIRE_TAGS.items()]
