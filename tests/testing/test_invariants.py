"""The invariant checker's session order: each member applies a session's commands at
consecutive sequence numbers, from 1 or from where an installed snapshot left the session."""

from __future__ import annotations

import types
from typing import Any

import trio

from copycat_trio.recipes.kv import Get, KeyValueStore, Put
from copycat_trio.state_machine import Commit, ServerSession, Snapshottable, StateMachine
from copycat_trio.testing import open_memory_cluster
from copycat_trio.testing.invariants import Applied, InvariantChecker, observe


def applied(member: int, index: int, sequence: int, run: int = 1, **kw: Any) -> Applied:
    return Applied(member, index, 7, sequence, f"op{sequence}", None, run, **kw)


def order_violations(*records: Applied) -> list[str]:
    checker = InvariantChecker()
    for record in records:
        checker.on_apply(record)
    return [v for v in checker.violations if v.startswith("session order")]


def test_consecutive_sequences_on_each_member_pass() -> None:
    assert not order_violations(
        applied(1, 10, 1), applied(2, 10, 1), applied(1, 11, 2), applied(1, 14, 3)
    )


def test_a_gap_is_a_violation() -> None:
    (violation,) = order_violations(applied(1, 10, 1), applied(1, 11, 3))
    assert "member 1 applied command 3 of session 7" in violation
    assert "right after command 1" in violation


def test_a_session_first_seen_past_one_since_a_start_is_a_violation() -> None:
    (violation,) = order_violations(applied(1, 10, 1), applied(2, 12, 2))
    assert "as the session's first since it started" in violation


def test_a_restart_applies_the_session_again_from_one() -> None:
    assert not order_violations(
        applied(1, 10, 1), applied(1, 11, 2), applied(1, 10, 1, run=2), applied(1, 11, 2, run=2)
    )


def test_after_a_snapshot_the_session_goes_on_where_it_was() -> None:
    assert not order_violations(
        applied(1, 10, 1), applied(1, 11, 2), applied(2, 12, 3, run=5, from_snapshot=True)
    )
    (violation,) = order_violations(applied(1, 10, 1), applied(2, 12, 3, run=5, from_snapshot=True))
    assert "after a snapshot, but command 2 applied nowhere" in violation


class Tally(StateMachine, Snapshottable):
    def __init__(self) -> None:
        self.total = 0

    def apply(self, commit: Commit[Any]) -> Any:
        self.total += commit.operation.value
        return self.total

    def snapshot(self, writer: Any) -> None:
        writer.write_object(self.total)

    def install(self, reader: Any) -> None:
        self.total = reader.read_object()


class _Reader:
    def read_object(self) -> Any:
        return 41


def test_observe_starts_a_new_run_at_each_install() -> None:
    seen: list[Applied] = []
    tally = Tally()
    tally.context = types.SimpleNamespace(sequence=1)  # type: ignore[assignment]
    machine = observe(tally, 3, seen.append)
    session = ServerSession(7, "client", lambda *_: None)
    machine.apply(Commit(Put("k", 1), 10, 0, session))
    machine.install(_Reader())  # type: ignore[attr-defined]
    assert tally.total == 41
    machine.context.sequence = 2  # type: ignore[attr-defined]
    machine.apply(Commit(Put("k", 3), 12, 0, session))
    first, second = seen
    assert (first.member, first.sequence, first.from_snapshot) == (3, 1, False)
    assert (second.sequence, second.from_snapshot) == (2, True)
    assert second.run != first.run


async def test_a_cluster_under_pipelined_commands_keeps_session_order(autojump_clock) -> None:
    checker = InvariantChecker()
    async with open_memory_cluster(3, KeyValueStore) as cluster:
        # Members started from now on are watched: two that join and catch up from the log.
        cluster.observe_state_machine = lambda member, made: observe(made, member, checker.on_apply)
        leader = await cluster.wait_for_leader()
        async with cluster.client() as client:
            await client.submit(Put("before", 0))
            for member in (4, 5):
                await cluster.join(member, via=[leader])
            async with trio.open_nursery() as nursery:
                for i in range(50):
                    nursery.start_soon(client.submit, Put(f"k{i % 5}", i))
            assert await client.submit(Get("k0")) is not None
            with trio.fail_after(10):
                while checker.applies < 2 * 51:  # both joiners, every command
                    await trio.sleep(0.01)
    assert checker.ok, checker.violations
    assert {a.member for a in checker.applied.values()} <= {4, 5}
