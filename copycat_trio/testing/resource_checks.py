"""Checks of the resource workload's histories: locks with fencing, queues, watches. Pure.

The ground truth is the log: the commands every member applied, with their results
(`invariants.Applied`, one per index), and what the state machine did besides answering them
(`resource_machine.Published` events and session closes, each with its log index). Against it
go what the clients saw. Each check returns its problems as sentences (empty: it holds).

Lock (`check_lock`). A grant is (token, session, request): a LockAcquire whose result is its
own index, or a lock event that handed the lock to a waiter at that index. It holds the lock in
log terms from its token until the first of: a LockRelease or LockCancel of that request applied
in that session, or that session's close. Checked:
- each grant's token is the index that granted it, and no two grants share one (tokens strictly
  increase in the grants' log order);
- mutual exclusion, judged in log order: no grant is made while another's hold is open. Both
  holders' sessions are then live (a closed session's hold has ended), so this is what a lock can
  promise. It is not a promise in real time: a holder whose session expired (partitioned, paused)
  may still believe it holds; that is what the fencing token is for (below);
- what clients were told: each token a client got is a grant to one of its sessions, and a grant
  a client learned before another client invoked its acquire has the smaller token (the later
  acquire applied after that grant was committed, so its grant's index is larger).
Fencing (`check_fencing`): the protected map entry holds "token:writer:n"; a writer holding token
t reads it and compare-and-sets it only if its token is no higher than t (a storage service's
check, made atomic by the CAS). In log order, the accepted writes' tokens never decrease; and a
write applied in the session its token was granted to lies inside that grant's hold (the session
applies its commands in order: its writes before its release, none after its close).

Queue (`check_queue`). A hand-out is a QueuePoll answered [item] or a queue event handing an item
to a waiting poll; a QueueCancel of that poll, applied later, gives it back. Every item is live
in at most one place at a time (handed out and not given back, or waiting in the queue); at the
end each item the log offered is in exactly one place (so an acknowledged offer is delivered
exactly once; an offer of unknown outcome at most once). Clients: an acknowledged offer is in
the log, a failed one is not, no item is received twice, each received item was handed to one
of the receiver's sessions.

Watch (`check_watch`). The map's change history (kept by the state machine, agreed by every
member) must match the applied commands one to one, replay to the final contents, and contain
every acknowledged put. What the watcher yielded, across resumptions from its last revision,
must be exactly the changes applied after its registration, in revision order: none skipped,
none repeated, none reordered.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any

import attrs

from ..recipes.resources.kinds.lock import LockAcquire, LockCancel, LockRelease
from ..recipes.resources.kinds.map import MapCompareAndSet, MapDelete, MapPut
from ..recipes.resources.kinds.queue import QueueCancel, QueueOffer, QueuePoll
from .history import Outcome
from .invariants import Applied
from .resource_machine import Published

__all__ = [
    "Grant",
    "LearnedGrant",
    "Receipt",
    "check_fencing",
    "check_lock",
    "check_queue",
    "check_watch",
    "fenced_value",
    "hold_ends",
    "lock_grants",
    "parse_fenced",
]


# --- locks -------------------------------------------------------------------------------------


@attrs.frozen
class Grant:
    """The lock granted to (session, request) at log index `index`, with fencing `token`."""

    index: int
    token: int
    session: int
    request: int


@attrs.frozen
class LearnedGrant:
    """A token a client was told it holds: when it invoked the acquire and when it learned."""

    client: str
    sessions: tuple[int, ...]
    """The client's sessions up to then (a RECOVER client renews them)."""
    token: int
    invoked: float
    learned: float


def lock_grants(
    name: str, applied: Iterable[Applied], published: Iterable[Published]
) -> list[Grant]:
    """Every grant of lock `name` in the log, by index."""
    grants = [
        Grant(a.index, a.result, a.session, a.operation.request)
        for a in applied
        if isinstance(a.operation, LockAcquire)
        and a.operation.name == name
        and isinstance(a.result, int)
        and not isinstance(a.result, bool)
    ]
    grants.extend(
        Grant(p.index, p.data, p.session, p.request)
        for p in published
        if p.kind == "lock" and p.name == name and isinstance(p.data, int)
    )
    return sorted(grants, key=lambda g: (g.index, g.token, g.session))


def hold_ends(
    name: str, grants: Sequence[Grant], applied: Iterable[Applied], closes: Mapping[int, int]
) -> dict[Grant, float]:
    """Each grant -> the log index its hold ended at (infinity: held to the end)."""
    withdrawals: dict[tuple[int, int], list[int]] = {}
    for a in applied:
        op = a.operation
        if isinstance(op, LockRelease | LockCancel) and op.name == name:
            withdrawals.setdefault((a.session, op.request), []).append(a.index)
    ends: dict[Grant, float] = {}
    for grant in grants:
        candidates = [
            i for i in withdrawals.get((grant.session, grant.request), []) if i > grant.index
        ]
        close = closes.get(grant.session)
        if close is not None and close >= grant.index:
            candidates.append(close)
        ends[grant] = min(candidates) if candidates else math.inf
    return ends


def _end(at: float) -> str:
    return "the end of the run" if math.isinf(at) else f"index {int(at)}"


def check_lock(
    name: str,
    grants: Sequence[Grant],
    ends: Mapping[Grant, float],
    learned: Iterable[LearnedGrant],
) -> list[str]:
    """Tokens, mutual exclusion in log order, and what clients were told (module docstring)."""
    problems: list[str] = []
    for grant in grants:
        if grant.token != grant.index:
            problems.append(
                f"lock {name}: session {grant.session} was granted token {grant.token} at index "
                f"{grant.index} (a token is the index of the command that grants it)"
            )
    tokens = Counter(g.token for g in grants)
    for token, count in sorted(tokens.items()):
        if count > 1:
            holders = sorted(g.session for g in grants if g.token == token)
            problems.append(
                f"lock {name}: token {token} was granted {count} times (sessions {holders}): "
                "fencing tokens must strictly increase"
            )
    ordered = sorted(grants, key=lambda g: (g.index, g.session))
    holding: Grant | None = None
    """Of the grants so far, the one whose hold ends last."""
    for after in ordered:
        before = holding
        if holding is None or ends[after] > ends[holding]:
            holding = after
        if before is not None and after.index < ends[before]:
            problems.append(
                f"lock {name}: mutual exclusion: granted to session {after.session} (token "
                f"{after.token}) at index {after.index} while session {before.session} held it "
                f"(token {before.token}, until {_end(ends[before])}, by release, cancel or its "
                "session's close): two live sessions held it at once"
            )
    by_token = {g.token: g for g in grants}
    told = sorted(learned, key=lambda g: g.invoked)
    for told_grant in told:
        logged = by_token.get(told_grant.token)
        if logged is None or logged.session not in told_grant.sessions:
            where = "no grant" if logged is None else f"a grant to session {logged.session}"
            problems.append(
                f"lock {name}: {told_grant.client} (sessions {list(told_grant.sessions)}) was "
                f"told it holds token {told_grant.token}, but the log has {where} there"
            )
    for later in told:
        for earlier in told:
            if earlier.learned < later.invoked and earlier.token >= later.token:
                problems.append(
                    f"lock {name}: {earlier.client} learned token {earlier.token} at "
                    f"{earlier.learned:.4f}, before {later.client} invoked the acquire (at "
                    f"{later.invoked:.4f}) that got token {later.token}: a later grant must "
                    "have a larger token"
                )
    return problems


def fenced_value(token: int, writer: str, n: int) -> str:
    """The protected entry's value as a writer under `token` writes it."""
    return f"{token}:{writer}:{n}"


def parse_fenced(value: Any) -> int:
    """The token a protected entry's value was written under (0: absent)."""
    if value is None:
        return 0
    return int(str(value).split(":", 1)[0])


def check_fencing(
    map_name: str,
    key: str,
    applied: Iterable[Applied],
    grants: Sequence[Grant],
    ends: Mapping[Grant, float],
) -> list[str]:
    """Accepted writes of the protected entry: tokens never decrease in log order, and a
    writer's write in its grant's session lies inside that grant's hold."""
    problems: list[str] = []
    by_token = {g.token: g for g in grants}
    highest: tuple[int, int] | None = None
    for a in sorted(applied, key=lambda a: a.index):
        op = a.operation
        if not (isinstance(op, MapCompareAndSet) and op.name == map_name and op.key == key):
            continue
        if a.result is not True:
            continue
        token = parse_fenced(op.new)
        if highest is not None and token < highest[0]:
            problems.append(
                f"fencing: {map_name}/{key} accepted a write under token {token} at index "
                f"{a.index}, after one under token {highest[0]} (index {highest[1]})"
            )
        if highest is None or token > highest[0]:
            highest = (token, a.index)
        grant = by_token.get(token)
        if grant is not None and grant.session == a.session:
            if not grant.index < a.index < ends[grant]:
                problems.append(
                    f"fencing: session {a.session} wrote {op.new!r} at index {a.index}, outside "
                    f"its hold of token {token} (index {grant.index} to {_end(ends[grant])})"
                )
        elif grant is None:
            problems.append(
                f"fencing: {map_name}/{key} accepted {op.new!r} at index {a.index} under token "
                f"{token}, which no grant had"
            )
    return problems


# --- queues ------------------------------------------------------------------------------------


@attrs.frozen
class Receipt:
    """An item a client's poll returned."""

    client: str
    sessions: tuple[int, ...]
    item: Any
    at: float


@attrs.frozen
class _HandOut:
    index: int
    session: int
    request: int


def check_queue(
    name: str,
    applied: Iterable[Applied],
    published: Iterable[Published],
    offers: Mapping[Any, Outcome],
    receipts: Iterable[Receipt],
    remaining: Sequence[Hashable],
) -> list[str]:
    """Each item in one place at a time, and in exactly one at the end (`remaining`: the items
    still queued); clients' offers and receipts against the log. Items must be hashable."""
    applied = sorted(applied, key=lambda a: a.index)
    problems: list[str] = []
    logged: Counter[Hashable] = Counter()
    handouts: dict[Hashable, list[_HandOut]] = {}
    cancels: dict[tuple[int, int], int] = {}
    for a in applied:
        op = a.operation
        if isinstance(op, QueueOffer) and op.name == name:
            logged[op.item] += 1
        elif isinstance(op, QueuePoll) and op.name == name and isinstance(a.result, list):
            handouts.setdefault(a.result[0], []).append(_HandOut(a.index, a.session, op.request))
        elif isinstance(op, QueueCancel) and op.name == name:
            cancels.setdefault((a.session, op.request), a.index)
    for p in published:
        if p.kind == "queue" and p.name == name and isinstance(p.data, list):
            handouts.setdefault(p.data[0], []).append(_HandOut(p.index, p.session, p.request))
    for item, count in sorted(logged.items(), key=repr):
        if count > 1:
            problems.append(f"queue {name}: item {item!r} was offered {count} times in the log")
    live: dict[Hashable, _HandOut | None] = {}
    for item, outs in handouts.items():
        outs.sort(key=lambda h: h.index)
        if item not in logged:
            problems.append(f"queue {name}: item {item!r} was handed out but never offered")
        for h in outs:
            withdrawn = cancels.get((h.session, h.request))
            if withdrawn is not None and withdrawn < h.index:
                problems.append(
                    f"queue {name}: item {item!r} handed at index {h.index} to poll {h.request} "
                    f"of session {h.session}, which was withdrawn at index {withdrawn}"
                )
        for before, after in itertools.pairwise(outs):
            back = cancels.get((before.session, before.request))
            if back is None or not before.index < back <= after.index:
                problems.append(
                    f"queue {name}: item {item!r} handed to session {after.session} at index "
                    f"{after.index} while still delivered to session {before.session} (handed "
                    f"at index {before.index}, "
                    + ("never given back)" if back is None else f"given back at index {back})")
                )
        last = outs[-1]
        given_back = cancels.get((last.session, last.request), -1) > last.index
        live[item] = None if given_back else last
    queued = Counter(remaining)
    for item in sorted(logged, key=repr):
        places = queued[item] + (1 if live.get(item) is not None else 0)
        if places != 1:
            where = "nowhere (lost)" if places == 0 else f"{places} places at once"
            problems.append(
                f"queue {name}: at the end, item {item!r} (offered in the log) is {where}: "
                "delivered to a poller or still queued, exactly once"
            )
    for item, outcome in sorted(offers.items(), key=repr):
        if outcome is Outcome.OK and item not in logged:
            problems.append(f"queue {name}: the acknowledged offer of {item!r} is not in the log")
        if outcome is Outcome.FAILED and item in logged:
            problems.append(f"queue {name}: the offer of {item!r} failed, yet the log has it")
    got: dict[Hashable, Receipt] = {}
    for receipt in receipts:
        first = got.setdefault(receipt.item, receipt)
        if first is not receipt:
            problems.append(
                f"queue {name}: item {receipt.item!r} received by {first.client} at "
                f"{first.at:.4f} and by {receipt.client} at {receipt.at:.4f}"
            )
            continue
        if receipt.item not in logged:
            problems.append(
                f"queue {name}: {receipt.client} received {receipt.item!r}, never offered"
            )
        holder = live.get(receipt.item)
        if holder is None or holder.session not in receipt.sessions:
            problems.append(
                f"queue {name}: {receipt.client} (sessions {list(receipt.sessions)}) received "
                f"{receipt.item!r}, which the log last delivered to "
                + ("nobody" if holder is None else f"session {holder.session}")
            )
    return problems


# --- watches -----------------------------------------------------------------------------------

Change = tuple[int, int, str, str, Any]
"""(revision, index, type, key, value) of one map change."""


def _expected_changes(name: str, applied: Iterable[Applied]) -> dict[int, tuple[str, str, Any]]:
    """Index -> the change the command applied there made to map `name` (if any)."""
    out: dict[int, tuple[str, str, Any]] = {}
    for a in applied:
        op = a.operation
        if isinstance(op, MapPut) and op.name == name:
            out[a.index] = ("put", op.key, op.value)
        elif isinstance(op, MapDelete) and op.name == name and a.result is True:
            out[a.index] = ("delete", op.key, None)
        elif isinstance(op, MapCompareAndSet) and op.name == name and a.result is True:
            out[a.index] = (
                ("put", op.key, op.new) if op.new is not None else ("delete", op.key, None)
            )
    return out


def check_watch(
    name: str,
    applied: Iterable[Applied],
    changes: Sequence[Change],
    entries: Mapping[str, Any],
    acknowledged: Iterable[tuple[str, Any]],
    watched: Sequence[Change],
    registered: int | None,
) -> list[str]:
    """The map's whole change history (`changes`, none dropped) against the log, the final
    `entries` and the acknowledged puts; then what the watcher yielded (`watched`, in order)
    against the changes after index `registered` (None: it never registered)."""
    problems: list[str] = []
    for before, after in itertools.pairwise(changes):
        if not (after[0] > before[0] and after[1] >= before[1]):
            problems.append(
                f"watch {name}: the change history goes from {before} to {after}: revisions "
                "must increase, in log order"
            )
    expected = _expected_changes(name, applied)
    actual: dict[int, list[tuple[str, str, Any]]] = {}
    for revision, index, kind, key, value in changes:
        actual.setdefault(index, []).append((kind, key, value))
        want = expected.get(index)
        if want is None or want != (kind, key, value):
            problems.append(
                f"watch {name}: change {revision} at index {index} is {(kind, key, value)}, but "
                f"the command applied there made {want}"
            )
    for index, want in sorted(expected.items()):
        if want not in actual.get(index, []):
            problems.append(
                f"watch {name}: the command applied at index {index} made {want}, which is not "
                "in the change history"
            )
    replayed: dict[str, Any] = {}
    for _, _, kind, key, value in changes:
        if kind == "put":
            replayed[key] = value
        else:
            replayed.pop(key, None)
    if replayed != dict(entries):
        problems.append(
            f"watch {name}: replaying the change history gives {replayed}, the map holds "
            f"{dict(entries)}"
        )
    puts = {(key, value) for _, _, kind, key, value in changes if kind == "put"}
    for key, value in acknowledged:
        if (key, value) not in puts:
            problems.append(f"watch {name}: acknowledged put {key}={value!r} is not a change")
    if registered is None:
        return problems
    due = [c for c in changes if c[1] > registered]
    seen = [tuple(c) for c in watched]
    if seen != [tuple(c) for c in due]:
        problems.append(f"watch {name}: {_difference(seen, [tuple(c) for c in due])}")
    return problems


def _difference(seen: Sequence[tuple[Any, ...]], due: Sequence[tuple[Any, ...]]) -> str:
    """How what a watcher yielded differs from what it should have, in a sentence."""
    repeats = [c for c, n in Counter(seen).items() if n > 1]
    if repeats:
        return f"change {repeats[0]} yielded {Counter(seen)[repeats[0]]} times"
    extra = [c for c in seen if c not in set(due)]
    if extra:
        return f"yielded {extra[0]}, which is not a change after the watch's registration"
    for position, (got, want) in enumerate(zip(seen, due, strict=False)):
        if got != want:
            return (
                f"yielded {got} as change {position + 1} after its registration, where "
                f"{want} comes (skipped or out of order)"
            )
    return (
        f"yielded {len(seen)} of the {len(due)} changes after its registration, the last "
        f"{due[len(seen)] if len(seen) < len(due) else None} onwards missing after healing"
    )
