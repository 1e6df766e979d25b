"""`Map(client, name)`: a replicated map with per-key TTLs and resumable watches.

users = Map(client, "users")
await users.put("alice", {"age": 30})
await users.put("session:1", "x", ttl=30)      # deleted 30 s of log time later
async with users.watch(prefix="a", since=revision) as changes:
    async for change in changes:                # in log order, each exactly once
        revision = change.revision              # resume from here after a restart
"""

from __future__ import annotations

import math
from typing import Any, Literal

import attrs

from ....protocol.operations import Command
from ..errors import WatchCompactedError
from ..kinds.map import (
    MapCompareAndSet,
    MapDelete,
    MapGet,
    MapKeys,
    MapPut,
    MapSize,
    MapUnwatch,
    MapWatch,
)
from .common import Handle, Stream

__all__ = ["Map", "MapChange", "MapWatchStream"]


@attrs.frozen
class MapChange:
    """One change of a map: its revision (increasing, unique across the cluster's maps: pass
    it as `since` to resume after it), the log index of the command that made it, and what
    it did. `value` is the new value of a put; `previous` the value a delete or expiry
    removed (or a put replaced)."""

    revision: int
    index: int
    type: Literal["put", "delete", "expire"]
    key: str
    value: Any = None
    previous: Any = None


def _change(data: Any) -> MapChange:
    revision, index, kind, key, value, previous = data
    return MapChange(revision, index, kind, key, value, previous)


def _ttl_ms(ttl: float | None) -> int | None:
    if ttl is None:
        return None
    if not ttl > 0 or math.isinf(ttl):
        raise ValueError(f"ttl must be a positive number of seconds, not {ttl!r}")
    return max(1, math.ceil(ttl * 1000))


class Map(Handle):
    """A named map of string keys to values (any CBOR-encodable value but None)."""

    kind = "map"

    async def put(self, key: str, value: Any, *, ttl: float | None = None) -> Any:
        """Set key to value, for `ttl` seconds of log time if given (a later put without a
        ttl keeps it); returns the previous value, or None."""
        if value is None:
            raise ValueError("a map value cannot be None (None means absent); use delete")
        return await self._command(MapPut(self.name, key, value, _ttl_ms(ttl)))

    async def get(self, key: str) -> Any:
        """The value of key, or None if absent (or expired)."""
        return await self._query(MapGet(self.name, key))

    async def delete(self, key: str) -> bool:
        """Remove key; returns whether it was present."""
        return bool(await self._command(MapDelete(self.name, key)))

    async def compare_and_set(
        self, key: str, expected: Any, new: Any, *, ttl: float | None = None
    ) -> bool:
        """Set key to `new` only if its value is `expected` (None: only if absent; new=None
        deletes it); returns whether it did."""
        op = MapCompareAndSet(self.name, key, expected, new, _ttl_ms(ttl))
        return bool(await self._command(op))

    async def put_if_absent(self, key: str, value: Any, *, ttl: float | None = None) -> bool:
        """Set key only if it is absent; returns whether it did."""
        return await self.compare_and_set(key, None, value, ttl=ttl)

    async def keys(self, prefix: str = "", limit: int | None = None) -> list[str]:
        """The keys starting with prefix, sorted; at most `limit` of them."""
        return list(await self._query(MapKeys(self.name, prefix, limit)))

    async def size(self) -> int:
        """How many keys are present."""
        return int(await self._query(MapSize(self.name)))

    def watch(self, prefix: str = "", since: int | None = None) -> MapWatchStream:
        """Every change to keys starting with `prefix` after revision `since` (None: from
        now), in log order, each once. Raises WatchCompactedError (on first use) if the map's
        history no longer reaches back to `since`."""
        return MapWatchStream(self, prefix, since)


class MapWatchStream(Stream[MapChange]):
    """What `Map.watch` returns."""

    def __init__(self, handle: Map, prefix: str, since: int | None) -> None:
        super().__init__(handle)
        self.prefix = prefix
        self.since = since
        self.revision = since or 0
        """The revision of the last change this stream yielded (or `since`)."""

    async def _register(self, request: int) -> list[MapChange]:
        handle = self._handle
        op = MapWatch(handle.name, request, self.prefix, self.since)
        status, data = await handle.client.submit(op)
        if status == "compacted":
            raise WatchCompactedError(
                f"map {handle.name!r} keeps no history back to revision {self.since}: "
                f"changes up to revision {data} were dropped; read it afresh and watch "
                f"from now (or from {data})",
                since=self.since or 0,
                oldest=int(data),
            )
        return [_change(c) for c in data]

    def _deregister(self, request: int) -> Command:
        return MapUnwatch(self._handle.name, request)

    def _convert(self, data: Any) -> MapChange | None:
        return _change(data)

    async def __anext__(self) -> MapChange:
        while True:
            change = await super().__anext__()
            if change.revision > self.revision:
                self.revision = change.revision
                return change
