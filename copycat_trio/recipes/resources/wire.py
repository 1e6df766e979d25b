"""The wire tags of the resource operations (33200-33299, in the library's range). Tags are
forever: never renumber one, only add."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from ...protocol.codec import registry
from .kinds.counter import CounterAdd, CounterCompareAndSet, CounterGet
from .kinds.election import (
    ElectionCampaign,
    ElectionLeader,
    ElectionObserve,
    ElectionResign,
    ElectionUnobserve,
)
from .kinds.group import GroupJoin, GroupLeave, GroupMembers, GroupUnwatch, GroupWatch
from .kinds.lock import LockAcquire, LockCancel, LockHolder, LockRelease
from .kinds.map import (
    MapCompareAndSet,
    MapDelete,
    MapGet,
    MapKeys,
    MapPut,
    MapSize,
    MapUnwatch,
    MapWatch,
)
from .kinds.queue import QueueCancel, QueueOffer, QueuePeek, QueuePoll, QueueSize

__all__ = ["WIRE_TAGS"]

WIRE_TAGS: Mapping[type, int] = MappingProxyType(
    {
        MapPut: 33200,
        MapGet: 33201,
        MapDelete: 33202,
        MapCompareAndSet: 33203,
        MapKeys: 33204,
        MapSize: 33205,
        MapWatch: 33206,
        MapUnwatch: 33207,
        CounterAdd: 33210,
        CounterCompareAndSet: 33211,
        CounterGet: 33212,
        LockAcquire: 33220,
        LockRelease: 33221,
        LockCancel: 33222,
        LockHolder: 33223,
        ElectionCampaign: 33230,
        ElectionResign: 33231,
        ElectionObserve: 33232,
        ElectionUnobserve: 33233,
        ElectionLeader: 33234,
        GroupJoin: 33240,
        GroupLeave: 33241,
        GroupWatch: 33242,
        GroupUnwatch: 33243,
        GroupMembers: 33244,
        QueueOffer: 33250,
        QueuePoll: 33251,
        QueueCancel: 33252,
        QueuePeek: 33253,
        QueueSize: 33254,
    }
)

for _cls, _tag in WIRE_TAGS.items():
    registry.register(_cls, _tag, builtin=True)
