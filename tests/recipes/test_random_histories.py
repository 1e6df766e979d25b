"""Random histories of sessions polling, giving up, offering and dying (and of locking), applied
to the state machine by hand and checked against the rules: each item goes to exactly one poller
that saw it; a waiter that gave up never keeps a lock; fencing tokens only grow; grants are
FIFO. Clients read their events late, so a wait is often given up after its grant was sent."""

from __future__ import annotations

import random
from typing import Any

import pytest

from copycat_trio.recipes.resources.kinds.lock import (
    LockAcquire,
    LockCancel,
    LockHolder,
    LockRelease,
)
from copycat_trio.recipes.resources.kinds.queue import QueueCancel, QueueOffer, QueuePoll

from .harness import Harness


def drop_events_of(h: Harness, sid: int, kind: str, request: int) -> list[Any]:
    """Take the unread events of one wait out of the session's inbox (its client gave up)."""
    dropped = [e for e in h.events[sid] if e[1][0] == kind and e[1][2] == request]
    h.events[sid] = [e for e in h.events[sid] if e not in dropped]
    return dropped


@pytest.mark.parametrize("seed", range(80))
def test_queue_items_reach_exactly_one_poller_whatever_gives_up_or_dies(seed: int) -> None:
    queue_history(seed)


def test_queue_histories_do_give_up_on_waits_whose_item_was_already_sent() -> None:
    assert sum(queue_history(seed) for seed in range(80)) >= 20  # the race those are for


def queue_history(seed: int) -> int:
    """Run one history, check it; how many waits were given up after their item was sent."""
    rng = random.Random(seed)
    h = Harness()
    sessions = [h.open() for _ in range(3)]
    waiting: dict[int, set[int]] = {s: set() for s in sessions}
    acks: dict[int, list[int]] = {s: [] for s in sessions}
    seen: list[str] = []
    lost: list[str] = []  # handed to a session that died before its client read it
    offered: list[str] = []
    request = 0
    given_up_after_handing = 0

    for step in range(200):
        sid = rng.choice(sessions)
        roll = rng.random()
        if roll < 0.35:
            offered.append(f"item{step}")
            h.command(sid, QueueOffer("q", offered[-1]))
        elif roll < 0.65:
            request += 1
            done, acks[sid] = tuple(acks[sid]), []
            wait = rng.random() < 0.8
            got = h.command(sid, QueuePoll("q", request, wait, done))
            if got is not None and rng.random() < 0.1:
                # The caller was cancelled before the answer came: it withdraws the poll.
                assert h.command(sid, QueueCancel("q", request)) is False
                given_up_after_handing += 1
            elif got is not None:
                seen.append(got[0])
                acks[sid].append(request)
            elif wait:
                waiting[sid].add(request)
        elif roll < 0.9 and waiting[sid]:
            gone = rng.choice(sorted(waiting[sid]))
            waiting[sid].discard(gone)
            handed = not h.command(sid, QueueCancel("q", gone))
            unread = drop_events_of(h, sid, "queue", gone)
            assert handed == bool(unread)  # the cancel gave the unread item back
            given_up_after_handing += handed
        elif roll > 0.97:
            lost.extend(p[3][0] for p in h.resource_events(sid))
            h.close(sid)
            sessions.remove(sid)
            sessions.append(h.open())
            waiting[sessions[-1]], acks[sessions[-1]] = set(), []
        for other in sessions:
            if rng.random() < 0.3:  # clients read their events late
                for _, _, req, data in h.resource_events(other):
                    assert req in waiting[other]
                    waiting[other].discard(req)
                    seen.append(data[0])
                    acks[other].append(req)
    queue: Any = h.machine.resources.get(("queue", "q"))
    # What the servers remember as handed out is only what no client acknowledged yet.
    unacknowledged = {(sid, r) for sid in sessions for r in acks[sid]} | {
        (sid, e[1][2]) for sid in sessions for e in h.events[sid] if e[1][0] == "queue"
    }
    assert set(queue.handed if queue is not None else ()) <= unacknowledged
    for sid in sessions:
        lost.extend(p[3][0] for p in h.resource_events(sid))
    queued = list(queue.items) if queue is not None else []
    assert sorted(seen + lost + queued) == sorted(offered)
    assert len(set(seen)) == len(seen)
    return given_up_after_handing


@pytest.mark.parametrize("seed", range(80))
def test_lock_grants_are_fifo_exclusive_and_fenced_whatever_gives_up_or_dies(seed: int) -> None:
    rng = random.Random(seed)
    h = Harness()
    sessions = [h.open() for _ in range(4)]
    queue: list[tuple[int, int]] = []  # a model of the servers' lock: its queue and holder
    holder: tuple[int, int] | None = None
    tokens: list[int] = []
    request = 0

    def hand_over() -> None:
        nonlocal holder
        holder = queue.pop(0) if queue else None
        if holder is not None:
            tokens.append(h.index)

    for _ in range(250):
        sid = rng.choice(sessions)
        roll = rng.random()
        if roll < 0.4:
            request += 1
            token = h.command(sid, LockAcquire("l", request))
            if holder is None:
                assert token == h.index
                holder = (sid, request)
                tokens.append(token)
            else:
                assert token is None
                queue.append((sid, request))
        elif roll < 0.6 and holder is not None and holder[0] == sid:
            assert h.command(sid, LockRelease("l", holder[1])) is True
            hand_over()
        elif roll < 0.85:
            mine = [w for w in queue if w[0] == sid] + (
                [holder] if holder and holder[0] == sid else []
            )
            if mine:
                gone = rng.choice(mine)
                h.command(sid, LockCancel("l", gone[1]))
                drop_events_of(h, sid, "lock", gone[1])
                if gone == holder:  # granted, unseen: the cancel releases it
                    hand_over()
                else:
                    queue.remove(gone)
        else:
            h.close(sid)
            sessions.remove(sid)
            queue = [w for w in queue if w[0] != sid]
            if holder is not None and holder[0] == sid:
                hand_over()
            sessions.append(h.open())
        held = h.query(LockHolder("l"))
        assert held == (None if holder is None else [holder[0], tokens[-1]])
        for other in sessions:
            for _, _, req, _token in h.resource_events(other):
                assert (other, req) == holder or req not in [w[1] for w in queue]
    assert tokens == sorted(set(tokens))
