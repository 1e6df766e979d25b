"""The resources' rules on one state machine applied by hand (no server): locks, queues,
elections, groups, maps with TTLs and watches, the older recipes' operations, snapshots."""

from __future__ import annotations

import pytest

from copycat_trio.recipes import counter as legacy_counter
from copycat_trio.recipes import kv
from copycat_trio.recipes import lock as legacy_lock
from copycat_trio.recipes.resources.kinds.counter import (
    CounterAdd,
    CounterCompareAndSet,
    CounterGet,
)
from copycat_trio.recipes.resources.kinds.election import (
    ElectionCampaign,
    ElectionLeader,
    ElectionObserve,
    ElectionResign,
)
from copycat_trio.recipes.resources.kinds.group import (
    GroupJoin,
    GroupLeave,
    GroupMembers,
    GroupWatch,
)
from copycat_trio.recipes.resources.kinds.lock import (
    LockAcquire,
    LockCancel,
    LockHolder,
    LockRelease,
)
from copycat_trio.recipes.resources.kinds.map import (
    MapCompareAndSet,
    MapDelete,
    MapGet,
    MapKeys,
    MapPut,
    MapResource,
    MapSize,
    MapWatch,
)
from copycat_trio.recipes.resources.kinds.queue import (
    QueueCancel,
    QueueOffer,
    QueuePeek,
    QueuePoll,
    QueueSize,
)

from .harness import Harness

# --- locks ---------------------------------------------------------------------------------


def test_lock_is_granted_first_come_first_served_with_the_granting_commands_index() -> None:
    h = Harness()
    a, b, c = h.open(), h.open(), h.open()
    assert h.command(a, LockAcquire("l", 1)) == h.index
    first = h.index
    assert h.command(b, LockAcquire("l", 2)) is None
    assert h.command(c, LockAcquire("l", 3)) is None
    assert h.command(b, LockRelease("l", 2)) is False  # not the holder
    assert h.command(a, LockRelease("l", 1)) is True
    granted_b = h.index
    assert h.resource_events(b) == [["lock", "l", 2, granted_b]]
    assert h.resource_events(c) == []
    assert h.query(LockHolder("l")) == [b, granted_b]
    assert first < granted_b
    h.close(b)  # the holder's session ends: the lock passes on, at the close's index
    assert h.resource_events(c) == [["lock", "l", 3, h.index]]
    assert h.query(LockHolder("l")) == [c, h.index]


def test_a_lock_waiter_that_gives_up_is_never_left_holding_it() -> None:
    h = Harness()
    a, b, c = h.open(), h.open(), h.open()
    h.command(a, LockAcquire("l", 1))
    h.command(b, LockAcquire("l", 2))
    h.command(c, LockAcquire("l", 3))
    assert h.command(b, LockCancel("l", 2)) is True  # withdrawn while waiting
    h.command(a, LockRelease("l", 1))
    assert h.resource_events(b) == []
    assert h.query(LockHolder("l"))[0] == c
    # c gave up too, but only after the grant was on its way: the cancel releases it.
    assert h.command(c, LockCancel("l", 3)) is False
    assert h.query(LockHolder("l")) is None
    assert h.command(a, LockAcquire("l", 4, wait=False)) == h.index
    assert h.command(b, LockAcquire("l", 5, wait=False)) is None  # not queued
    h.command(a, LockRelease("l", 4))
    assert h.query(LockHolder("l")) is None


def test_older_lock_operations_share_the_named_locks() -> None:
    h = Harness()
    a, b = h.open(), h.open()
    assert h.command(a, legacy_lock.Acquire("l")) is True
    assert h.command(a, legacy_lock.Acquire("l")) is True  # reentrant, as before
    assert h.command(b, LockAcquire("l", 7)) is None
    assert h.query(legacy_lock.Holder("l")) == a
    assert h.command(a, legacy_lock.Release("l")) is True
    assert h.resource_events(b) == [["lock", "l", 7, h.index]]


# --- queues --------------------------------------------------------------------------------


def test_queue_hands_each_item_to_one_poller_in_order() -> None:
    h = Harness()
    a, b = h.open(), h.open()
    assert h.command(a, QueuePoll("q", 1)) is None  # waits
    assert h.command(b, QueuePoll("q", 2)) is None
    h.command(a, QueueOffer("q", "x"))
    h.command(a, QueueOffer("q", "y"))
    h.command(a, QueueOffer("q", "z"))
    assert h.resource_events(a) == [["queue", "q", 1, ["x"]]]
    assert h.resource_events(b) == [["queue", "q", 2, ["y"]]]
    assert h.query(QueueSize("q")) == 1
    assert h.query(QueuePeek("q")) == ["z"]
    assert h.command(b, QueuePoll("q", 3, wait=False, done=(2,))) == ["z"]
    assert h.command(b, QueuePoll("q", 4, wait=False)) is None
    assert h.query(QueuePeek("q")) is None


def test_an_item_handed_to_a_poller_that_gave_up_goes_to_the_next_one() -> None:
    h = Harness()
    a, b = h.open(), h.open()
    h.command(a, QueuePoll("q", 1))
    h.command(b, QueuePoll("q", 2))
    h.command(b, QueueOffer("q", "x"))  # handed to a, whose client then gives up unseen
    assert h.command(a, QueueCancel("q", 1)) is False
    assert h.resource_events(b) == [["queue", "q", 2, ["x"]]]
    # Taken at once by a poll its client never saw answered: the cancel puts it back first.
    h.command(b, QueueOffer("q", "y"))
    h.command(b, QueueOffer("q", "z"))
    assert h.command(a, QueuePoll("q", 3)) == ["y"]
    assert h.command(a, QueueCancel("q", 3)) is False
    assert h.command(b, QueuePoll("q", 4, done=(2,))) == ["y"]
    # An acknowledged item is not given back by a late cancel.
    assert h.command(b, QueueCancel("q", 4, done=(4,))) is False
    assert h.command(b, QueuePoll("q", 5)) == ["z"]


def test_a_closed_sessions_polls_get_no_items() -> None:
    h = Harness()
    a, b = h.open(), h.open()
    h.command(a, QueuePoll("q", 1))
    h.close(a)
    h.command(b, QueueOffer("q", "x"))
    assert h.query(QueueSize("q")) == 1
    assert h.command(b, QueuePoll("q", 2)) == ["x"]


# --- elections and groups ------------------------------------------------------------------


def test_election_terms_grow_and_observers_hear_each_change() -> None:
    h = Harness()
    a, b, o = h.open(), h.open(), h.open()
    assert h.command(o, ElectionObserve("e", 9)) is None
    term_a = h.command(a, ElectionCampaign("e", 1, "A"))
    assert term_a == h.index
    assert h.resource_events(o) == [["election", "e", 9, [a, "A", term_a]]]
    assert h.command(b, ElectionCampaign("e", 2, "B")) is None
    assert h.query(ElectionLeader("e")) == [a, "A", term_a]
    h.close(a)
    term_b = h.index
    assert term_b > term_a
    assert h.resource_events(b) == [["election", "e", 2, term_b]]
    assert h.resource_events(o) == [["election", "e", 9, [b, "B", term_b]]]
    assert h.command(b, ElectionResign("e", 2)) is True
    assert h.resource_events(o) == [["election", "e", 9, None]]
    assert h.command(b, ElectionResign("e", 2)) is False


def test_group_members_belong_to_their_sessions() -> None:
    h = Harness()
    a, b, w = h.open(), h.open(), h.open()
    assert h.command(w, GroupWatch("g", 5)) == []
    assert h.command(a, GroupJoin("g", "m1", {"x": 1})) is True
    assert h.command(b, GroupJoin("g", "m1", "other")) is False  # taken
    assert h.command(b, GroupJoin("g", "m2")) is True
    assert h.command(a, GroupLeave("g", "m2")) is False  # not a's
    assert h.query(GroupMembers("g")) == [["m1", {"x": 1}, a], ["m2", None, b]]
    h.close(a)
    assert h.query(GroupMembers("g")) == [["m2", None, b]]
    assert h.resource_events(w) == [
        ["group", "g", 5, ["joined", "m1", {"x": 1}]],
        ["group", "g", 5, ["joined", "m2", None]],
        ["group", "g", 5, ["left", "m1", None]],
    ]


# --- maps ----------------------------------------------------------------------------------


def test_map_operations() -> None:
    h = Harness()
    a = h.open()
    assert h.command(a, MapPut("m", "b", 1)) is None
    assert h.command(a, MapPut("m", "b", 2)) == 1
    assert h.command(a, MapPut("m", "a1", "x")) is None
    assert h.command(a, MapPut("m", "a2", "y")) is None
    assert h.query(MapGet("m", "b")) == 2
    assert h.query(MapKeys("m", "a")) == ["a1", "a2"]
    assert h.query(MapKeys("m", "", 2)) == ["a1", "a2"]
    assert h.query(MapSize("m")) == 3
    assert h.command(a, MapCompareAndSet("m", "c", None, 5)) is True  # only if absent
    assert h.command(a, MapCompareAndSet("m", "c", None, 6)) is False
    assert h.command(a, MapCompareAndSet("m", "c", 5, None)) is True  # deletes
    assert h.command(a, MapDelete("m", "b")) is True
    assert h.command(a, MapDelete("m", "b")) is False
    assert h.query(MapGet("other", "a1")) is None  # maps are apart
    assert h.query(MapSize("m")) == 2


def test_a_keys_ttl_runs_on_log_time() -> None:
    h = Harness()
    a = h.open()
    h.command(a, MapPut("m", "k", "v", ttl_ms=1000))
    h.command(a, MapPut("m", "keep", "v", ttl_ms=1000))
    h.command(a, MapPut("m", "keep", "w"))  # a put without a ttl keeps it for good
    h.advance(999)
    assert h.query(MapGet("m", "k")) == "v"
    restored = h.restored()  # the TTL survives a snapshot
    for member in (h, restored):
        member.advance(1)
        assert member.query(MapGet("m", "k")) is None
        assert member.query(MapKeys("m")) == ["keep"]


def test_refreshing_a_ttl_moves_one_timer_on() -> None:
    h = Harness()
    a = h.open()
    for _ in range(100):  # a lease kept alive: one pending timer, not one per put
        h.command(a, MapPut("m", "lease", "v", ttl_ms=1000), advance_ms=10)
    assert len(h.timers) == 1
    h.advance(999)
    assert h.query(MapGet("m", "lease")) == "v"  # 1000 ms after the last put, not the first
    h.command(a, MapPut("m", "short", "v", ttl_ms=5000))
    h.command(a, MapPut("m", "short", "v", ttl_ms=100))  # a shorter TTL is kept too
    h.advance(100)
    assert h.query(MapKeys("m")) == []
    h.command(a, MapPut("m", "gone", "v", ttl_ms=100))
    h.command(a, MapDelete("m", "gone"))
    h.command(a, MapPut("m", "gone", "w", ttl_ms=300))  # the first put's timer must not cut it
    h.advance(150)
    assert h.query(MapGet("m", "gone")) == "w"
    h.advance(150)
    assert h.query(MapGet("m", "gone")) is None


def test_watch_resumes_from_a_revision_and_reports_a_compacted_history() -> None:
    h = Harness(map_history=3)
    a, w = h.open(), h.open()
    h.command(a, MapPut("m", "a", 1))
    h.command(a, MapPut("other", "a", 1))  # revisions are shared by all maps
    h.command(a, MapPut("m", "b", 2))
    status, backlog = h.command(w, MapWatch("m", 1, "", since=1))
    assert status == "ok"
    assert [(c[0], c[2], c[3]) for c in backlog] == [(3, "put", "b")]
    h.command(a, MapDelete("m", "a"))
    h.command(a, MapPut("m", "b2", 3))
    assert [e[3][:4] for e in h.resource_events(w)] == [
        [4, h.index - 1, "delete", "a"],
        [5, h.index, "put", "b2"],
    ]
    h.command(a, MapPut("m", "c", 4))  # the history (3 changes) no longer holds revision 3
    assert h.command(w, MapWatch("m", 2, "", since=2)) == ["compacted", 3]
    status, backlog = h.command(w, MapWatch("m", 3, "b", since=3))
    assert [c[0] for c in backlog] == [5]


# --- the older operations, and snapshots ---------------------------------------------------


def test_key_value_and_counter_operations_work_on_the_default_resources() -> None:
    h = Harness()
    a = h.open()
    assert h.command(a, kv.Put("k", "v")) is None
    assert h.command(a, kv.Put("k", "w")) == "v"
    assert h.query(kv.Get("k")) == "w"
    assert h.query(MapGet("default", "k")) == "w"
    assert h.command(a, kv.CompareAndSet("k", "w", "x")) is True
    assert h.query(kv.Keys()) == ["k"]
    assert h.query(kv.Size()) == 1
    assert h.command(a, kv.Delete("k")) == "x"
    assert h.command(a, legacy_counter.Increment(5)) == 5
    assert h.command(a, CounterAdd("default", -2)) == 3
    assert h.query(legacy_counter.Value()) == 3
    assert h.command(a, CounterCompareAndSet("c", 0, 10)) is True
    assert h.query(CounterGet("c")) == 10


def test_a_snapshot_carries_session_bound_state() -> None:
    h = Harness()
    a, b, c = h.open(), h.open(), h.open()
    h.command(a, LockAcquire("l", 1))
    h.command(b, LockAcquire("l", 2))
    h.command(a, GroupJoin("g", "m", 1))
    h.command(c, GroupWatch("g", 3))
    h.command(b, QueuePoll("q", 4))
    h.command(a, ElectionCampaign("e", 5, "A"))
    h.command(b, ElectionCampaign("e", 6, "B"))
    h.command(c, MapWatch("m", 7))
    r = h.restored()
    assert r.snapshot_bytes() == h.snapshot_bytes()
    r.close(a)
    assert r.query(LockHolder("l")) == [b, r.index]
    assert r.query(GroupMembers("g")) == []
    assert r.query(ElectionLeader("e")) == [b, "B", r.index]
    r.command(c, QueueOffer("q", "x"))
    r.command(c, MapPut("m", "k", 1))
    assert r.resource_events(b) == [
        ["lock", "l", 2, r.index - 2],
        ["election", "e", 6, r.index - 2],
        ["queue", "q", 4, ["x"]],
    ]
    assert [e[:3] for e in r.resource_events(c)] == [["group", "g", 3], ["map", "m", 7]]


def test_a_map_loads_its_rows_in_batches_and_refuses_a_malformed_row() -> None:
    """A map of more keys than a snapshot chunk holds comes back whole (MapResource.load
    builds it in C); a row that is not [key, value, expires, timer] is refused, not cut."""
    original = MapResource("m")
    original.entries = {f"k{i}": (i, None if i % 3 else 10 * i, None) for i in range(2500)}
    chunks = original.dump()
    assert len(chunks) == 4  # the header and three chunks of rows
    loaded = MapResource("m")
    loaded.load(chunks)
    assert loaded.entries == original.entries and list(loaded.entries) == list(original.entries)
    chunks[2][7] = ["k7", 7, None]
    with pytest.raises(ValueError, match="not \\[key, value, expires, timer\\]"):
        MapResource("m").load(chunks)


def test_operations_need_a_session_and_a_name() -> None:
    h = Harness()
    with pytest.raises(ValueError, match="needs a client session"):
        h.query(LockAcquire("l", 1))
    with pytest.raises(ValueError, match="non-empty string"):
        MapPut("", "k", 1)
    with pytest.raises(ValueError, match="cannot be None"):
        QueueOffer("q", None)


def test_resources_left_as_fresh_ones_are_forgotten() -> None:
    h = Harness()
    a, b = h.open(), h.open()
    h.command(a, LockAcquire("l", 1))
    h.command(b, LockAcquire("l", 2))
    h.command(a, QueuePoll("q", 3))
    h.command(a, GroupJoin("g", "m"))
    h.command(a, CounterAdd("c", 1))
    h.command(a, legacy_lock.Acquire("old"))
    h.command(a, MapPut("m", "k", 1))
    h.command(a, MapDelete("m", "k"))
    h.command(a, CounterAdd("c", -1))
    h.command(a, legacy_lock.Release("old"))
    h.command(b, LockCancel("l", 2))
    h.command(a, LockRelease("l", 1))
    assert sorted(h.machine.resources) == [("group", "g"), ("map", "m"), ("queue", "q")]
    h.close(a)  # its poll and its member go; the map keeps its history for watches
    assert sorted(h.machine.resources) == [("map", "m")]
    assert h.query(LockHolder("l")) is None and h.query(CounterGet("c")) == 0
