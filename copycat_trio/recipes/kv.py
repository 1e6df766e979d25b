"""A replicated key-value store: the smallest useful state machine, and the one the tests use.

None means "absent" throughout: Get and Delete return None for a missing key, CompareAndSet's
`expected=None` means "the key must be absent" and `new=None` removes the key, so None itself
cannot be stored (Put rejects it). Values must be CBOR-encodable; they are compared with ==
after decoding (so a tuple arrives as a list).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import attrs

from ..protocol.operations import Command, Query
from ..state_machine import Commit, SnapshotSink, SnapshotSource, Snapshottable, StateMachine

__all__ = ["CompareAndSet", "Delete", "Get", "KeyValueStore", "Keys", "Put", "Size"]


def _not_none(_instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is None:
        raise ValueError(f"{attribute.name} cannot be None (None means absent); use Delete")


@attrs.frozen
class Put(Command):
    """Set key to value; returns the previous value, or None if the key was absent."""

    key: str = attrs.field(validator=attrs.validators.instance_of(str))
    value: Any = attrs.field(validator=_not_none)


@attrs.frozen
class Get(Query):
    """Read a key; returns its value, or None if absent."""

    key: str = attrs.field(validator=attrs.validators.instance_of(str))


@attrs.frozen
class Delete(Command):
    """Remove a key; returns the value it had, or None if it was absent."""

    key: str = attrs.field(validator=attrs.validators.instance_of(str))


@attrs.frozen
class CompareAndSet(Command):
    """Set key to `new` only if its value equals `expected`; returns whether it did.

    `expected=None` means "only if the key is absent"; `new=None` removes the key.
    """

    key: str = attrs.field(validator=attrs.validators.instance_of(str))
    expected: Any
    new: Any


@attrs.frozen
class Keys(Query):
    """All keys, sorted."""


@attrs.frozen
class Size(Query):
    """How many keys are present."""


SNAPSHOT_BATCH = 1000


class KeyValueStore(StateMachine, Snapshottable):
    """A dict replicated by Raft: every server applies the same commands in the same order."""

    def __init__(self) -> None:
        self._data: dict[str, Any] = {}

    def snapshot(self, writer: SnapshotSink) -> None:
        """Stream the items in batches: the count, then lists of [key, value] pairs."""
        items = list(self._data.items())
        writer.write_object(len(items))
        for start in range(0, len(items), SNAPSHOT_BATCH):
            writer.write_object([[k, v] for k, v in items[start : start + SNAPSHOT_BATCH]])

    def install(self, reader: SnapshotSource) -> None:
        count = reader.read_object()
        data: dict[str, Any] = {}
        while len(data) < count:
            for key, value in reader.read_object():
                data[key] = value
        self._data = data

    @property
    def data(self) -> Mapping[str, Any]:
        """A read-only view of the current contents, for inspection and tests."""
        return MappingProxyType(self._data)

    def put(self, commit: Commit[Put]) -> Any:
        op = commit.operation
        if op.value is None:  # only if a decoder skipped Put's validator: keep None meaning absent
            return self._data.pop(op.key, None)
        previous = self._data.get(op.key)
        self._data[op.key] = op.value
        return previous

    def get(self, commit: Commit[Get]) -> Any:
        return self._data.get(commit.operation.key)

    def delete(self, commit: Commit[Delete]) -> Any:
        return self._data.pop(commit.operation.key, None)

    def compare_and_set(self, commit: Commit[CompareAndSet]) -> bool:
        op = commit.operation
        if self._data.get(op.key) != op.expected:
            return False
        if op.new is None:
            self._data.pop(op.key, None)
        else:
            self._data[op.key] = op.new
        return True

    def keys(self, commit: Commit[Keys]) -> list[str]:
        return sorted(self._data)

    def size(self, commit: Commit[Size]) -> int:
        return len(self._data)


WIRE_TAGS: Mapping[type[Any], int] = MappingProxyType(
    {Put: 33000, Get: 33001, Delete: 33002, CompareAndSet: 33003, Keys: 33004, Size: 33005}
)
"""The CBOR tags these operations travel under."""


def _register_wire_types() -> None:
    """Register the operations with the codec so that they can travel between processes."""
    from copycat_trio.protocol.codec import registry

    for cls, tag in WIRE_TAGS.items():
        registry.register(cls, tag, builtin=True)


_register_wire_types()
