"""A named map of string keys to values, with per-key TTLs and watches.

None means "absent", as in `recipes.kv`. A key put with a TTL is deleted once log time passes
its expiry (a timer of the manager, so every member deletes it at the same point of the log).
Every change gets a revision (unique and increasing across all maps) and goes into a bounded
history, from which a watch resumes `since` a revision; watchers hear each later change as a
[map, name, request, change] event. A change is [revision, index, type, key, value, previous]
with type "put", "delete" or "expire".
"""

from __future__ import annotations

from collections import deque
from operator import itemgetter
from typing import Any, ClassVar

import attrs

from ..base import Host, Resource, ResourceCommand, ResourceQuery

__all__ = [
    "HISTORY",
    "MapCompareAndSet",
    "MapDelete",
    "MapGet",
    "MapKeys",
    "MapPut",
    "MapResource",
    "MapSize",
    "MapUnwatch",
    "MapWatch",
]

HISTORY = 1000
"""Changes kept per map for watches to resume from."""
BATCH = 1000
"""Entries per snapshot chunk."""
PUT, DELETE, EXPIRE = "put", "delete", "expire"

_KEY = itemgetter(0)
_VALUE_EXPIRY_TIMER = itemgetter(1, 2, 3)
"""The parts of a snapshot row [key, value, expires, timer] (see MapResource.dump)."""


def _not_none(_instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is None:
        raise ValueError(f"{attribute.name} cannot be None (None means absent); use delete")


def _ttl(_instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and (not isinstance(value, int) or value <= 0):
        raise ValueError(f"{attribute.name} must be a positive number of milliseconds or None")


def _key(_instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, str):
        raise ValueError(f"{attribute.name} must be a string, not {value!r}")


@attrs.frozen
class MapPut(ResourceCommand):
    """Set key to value (for ttl_ms of log time, if given); returns the previous value."""

    kind: ClassVar[str] = "map"
    key: str = attrs.field(default="", validator=_key)
    value: Any = attrs.field(default=None, validator=_not_none)
    ttl_ms: int | None = attrs.field(default=None, validator=_ttl)


@attrs.frozen
class MapDelete(ResourceCommand):
    """Remove key; returns whether it was present."""

    kind: ClassVar[str] = "map"
    key: str = attrs.field(default="", validator=_key)


@attrs.frozen
class MapCompareAndSet(ResourceCommand):
    """Set key to `new` only if its value equals `expected` (None: only if absent; new=None
    removes it); returns whether it did."""

    kind: ClassVar[str] = "map"
    key: str = attrs.field(default="", validator=_key)
    expected: Any = None
    new: Any = None
    ttl_ms: int | None = attrs.field(default=None, validator=_ttl)


@attrs.frozen
class MapWatch(ResourceCommand):
    """Hear of changes to keys starting with `prefix` after revision `since` (None: from now).
    Returns ["ok", [changes after since, up to now]] or ["compacted", oldest resumable
    revision] if the history no longer reaches back to `since`."""

    kind: ClassVar[str] = "map"
    request: int = 0
    prefix: str = ""
    since: int | None = None


@attrs.frozen
class MapUnwatch(ResourceCommand):
    """Stop the watcher `request`; returns whether it was watching."""

    kind: ClassVar[str] = "map"
    request: int = 0


@attrs.frozen
class MapGet(ResourceQuery):
    """The value of key, or None if absent."""

    kind: ClassVar[str] = "map"
    key: str = attrs.field(default="", validator=_key)


@attrs.frozen
class MapKeys(ResourceQuery):
    """The keys starting with prefix, sorted, at most limit of them (None: all)."""

    kind: ClassVar[str] = "map"
    prefix: str = ""
    limit: int | None = None


@attrs.frozen
class MapSize(ResourceQuery):
    """How many keys are present."""

    kind: ClassVar[str] = "map"


class MapResource(Resource):
    kind: ClassVar[str] = "map"

    def __init__(self, name: str, history: int = HISTORY) -> None:
        super().__init__(name)
        self.entries: dict[str, tuple[Any, int | None, int | None]] = {}
        """key -> (value, expiry log time or None, due time of its TTL timer or None)."""
        self.history: deque[list[Any]] = deque()
        self.history_limit = history
        self.dropped = 0
        """The highest revision dropped from the history (0: none)."""
        self.watchers: dict[tuple[int, int], str] = {}
        """(session, request) -> prefix."""

    # --- reads -----------------------------------------------------------------------------

    def get(self, key: str, host: Host) -> Any:
        entry = self.entries.get(key)
        if entry is None or (entry[1] is not None and entry[1] <= host.time):
            return None
        return entry[0]

    def keys(self, prefix: str, limit: int | None, host: Host) -> list[str]:
        found = sorted(k for k in self.entries if k.startswith(prefix) and self._live(k, host))
        return found if limit is None else found[: max(limit, 0)]

    def _live(self, key: str, host: Host) -> bool:
        expires = self.entries[key][1]
        return expires is None or expires > host.time

    # --- writes ----------------------------------------------------------------------------

    def put(self, key: str, value: Any, ttl_ms: int | None, host: Host) -> Any:
        previous = self.get(key, host)
        old = self.entries.get(key)
        timer = None if old is None else old[2]
        expires = None if ttl_ms is None else host.time + ttl_ms
        if expires is not None and (timer is None or timer > expires):
            # One timer per key: a pending one due no later than this expiry moves itself on.
            timer = expires
            host.schedule_expiry(expires - host.time, self.name, key, timer)
        self.entries[key] = (value, expires, timer)
        self._changed([host.next_revision(), host.index, PUT, key, value, previous], host)
        return previous

    def delete(self, key: str, host: Host, how: str = DELETE) -> Any:
        """Remove key; returns its value, or None if it was absent."""
        if key not in self.entries:
            return None
        value = self.entries.pop(key)[0]
        self._changed([host.next_revision(), host.index, how, key, None, value], host)
        return value

    def compare_and_set(
        self, key: str, expected: Any, new: Any, ttl_ms: int | None, host: Host
    ) -> bool:
        if self.get(key, host) != expected:
            return False
        if new is None:
            self.delete(key, host)
        else:
            self.put(key, new, ttl_ms, host)
        return True

    def expire(self, key: str, due: int, host: Host) -> None:
        """The key's TTL timer (due at `due`) fired: delete the key if it has expired, or move
        the timer to its later expiry. A timer the key no longer tracks does nothing."""
        entry = self.entries.get(key)
        if entry is None or entry[2] != due:
            return
        value, expires, _ = entry
        if expires is None:
            self.entries[key] = (value, None, None)
        elif expires <= host.time:
            self.delete(key, host, EXPIRE)
        else:
            self.entries[key] = (value, expires, expires)
            host.schedule_expiry(expires - host.time, self.name, key, expires)

    # --- watches ---------------------------------------------------------------------------

    def watch(self, session: int, op: MapWatch, host: Host) -> list[Any]:
        if op.since is not None and op.since < self.dropped:
            return ["compacted", self.dropped]
        since = -1 if op.since is None else op.since
        backlog = [c for c in self.history if c[0] > since and c[3].startswith(op.prefix)]
        if op.since is None:
            backlog = []
        self.watchers[(session, op.request)] = op.prefix
        return ["ok", backlog]

    def _changed(self, change: list[Any], host: Host) -> None:
        self.history.append(change)
        while len(self.history) > self.history_limit:
            self.dropped = self.history.popleft()[0]
        key = change[3]
        for (session, request), prefix in self.watchers.items():
            if key.startswith(prefix):
                host.publish(session, self.kind, self.name, request, change)

    # --- the manager's interface -----------------------------------------------------------

    def command(self, op: Any, session: int, host: Host) -> Any:
        if isinstance(op, MapPut):
            return self.put(op.key, op.value, op.ttl_ms, host)
        if isinstance(op, MapDelete):
            return self.delete(op.key, host) is not None
        if isinstance(op, MapCompareAndSet):
            return self.compare_and_set(op.key, op.expected, op.new, op.ttl_ms, host)
        if isinstance(op, MapWatch):
            return self.watch(session, op, host)
        if isinstance(op, MapUnwatch):
            return self.watchers.pop((session, op.request), None) is not None
        raise TypeError(f"not a map command: {op!r}")

    def query(self, op: Any, host: Host) -> Any:
        if isinstance(op, MapGet):
            return self.get(op.key, host)
        if isinstance(op, MapKeys):
            return self.keys(op.prefix, op.limit, host)
        if isinstance(op, MapSize):
            return sum(1 for k in self.entries if self._live(k, host))
        raise TypeError(f"not a map query: {op!r}")

    # A map is never idle: its history lets watches resume across deletes.

    def on_close(self, session: int, host: Host) -> None:
        self.watchers = {w: p for w, p in self.watchers.items() if w[0] != session}

    def dump(self) -> list[Any]:
        watchers = [[s, r, p] for (s, r), p in self.watchers.items()]
        chunks: list[Any] = [[self.history_limit, self.dropped, list(self.history), watchers]]
        items = [[k, v, exp, timer] for k, (v, exp, timer) in self.entries.items()]
        chunks.extend(items[i : i + BATCH] for i in range(0, len(items), BATCH))
        return chunks

    def load(self, chunks: list[Any]) -> None:
        self.history_limit, self.dropped, history, watchers = chunks[0]
        self.history = deque(history)
        self.watchers = {(s, r): p for s, r, p in watchers}
        entries: dict[str, tuple[Any, int | None, int | None]] = {}
        for chunk in chunks[1:]:
            # In C rather than a comprehension (a million keys: 1 s less at a restart).
            if set(map(len, chunk)) - {4}:
                raise ValueError("a map snapshot row is not [key, value, expires, timer]")
            entries.update(zip(map(_KEY, chunk), map(_VALUE_EXPIRY_TIMER, chunk), strict=True))
        self.entries = entries
