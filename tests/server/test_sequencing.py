"""A session's commands apply exactly once and in order, with no gap, across refusals on the
leader (a leadership transfer that times out), lost leadership, and forwarding followers whose
leader goes away (in-memory network, MockClock)."""

from __future__ import annotations

from collections.abc import Callable

import attrs
import trio

from copycat_trio.protocol.codec import register
from copycat_trio.protocol.errors import ApplicationError, CommandError, ErrorType, Status
from copycat_trio.protocol.messages import (
    CommandEntry,
    CommandRequest,
    KeepAliveEntry,
    NoOpEntry,
    RegisterEntry,
    RegisterRequest,
)
from copycat_trio.protocol.operations import Command, Query
from copycat_trio.server.executor import Executor
from copycat_trio.server.server import CopycatServer
from copycat_trio.state_machine import Commit, StateMachine
from copycat_trio.testing import MemoryCluster, open_memory_cluster
from copycat_trio.transport.rpc import ConnectionPool


@register(40130)
@attrs.frozen
class Note(Command):
    value: str


@register(40131)
@attrs.frozen
class Notes(Query):
    pass


class Notebook(StateMachine):
    """Keeps every applied note in order: a skipped, repeated or reordered command shows."""

    def __init__(self) -> None:
        self.notes: list[str] = []

    def note(self, commit: Commit[Note]) -> int:
        self.notes.append(commit.operation.value)
        return len(self.notes)

    def read(self, commit: Commit[Notes]) -> list[str]:
        return list(self.notes)


async def wait_until(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.01)


def loop_of(server: CopycatServer):  # type: ignore[no-untyped-def]
    loop = server._loop
    assert loop is not None
    return loop


async def start_transfer_that_times_out(cluster: MemoryCluster, leader: int) -> int:
    """Begin a transfer from `leader` to a follower it cannot reach: the core refuses
    proposals (NO_LEADER) until the transfer is abandoned an election timeout later."""
    target = next(i for i in cluster.all_ids() if i != leader)
    cluster.partition([leader], [target])
    loop = loop_of(cluster.servers[leader])
    await loop.call(lambda core, now: core.transfer_leadership(target, now))
    assert loop.core.transferring_to == target
    return target


async def test_a_command_refused_during_a_transfer_is_not_skipped(autojump_clock) -> None:
    # Issue 10, bug 1: commands 1 and 2 were both refused (NO_LEADER) during a transfer, but
    # the leader had already marked 2 as sequenced; once the transfer timed out, a retry of 2
    # was appended and applied before 1, and the retry of 1 got COMMAND for ever.
    async with open_memory_cluster(3, Notebook) as cluster:
        leader = await cluster.wait_for_leader()
        address = cluster.address(leader)
        async with trio.open_nursery() as nursery:
            pool = ConnectionPool(cluster.network.transport("raw"), nursery)

            async def command(sequence: int) -> object:
                operation = Note(f"c{sequence}")
                request = CommandRequest(session=session, sequence=sequence, operation=operation)
                return await pool.request(address, request, 60)

            registered = await pool.request(
                address, RegisterRequest(client="raw", timeout=600_000), 5
            )
            session = registered.session
            await start_transfer_that_times_out(cluster, leader)
            for sequence in (1, 2):  # neither is appended (2 may wait for 1 meanwhile)
                refused = await command(sequence)
                assert refused.error is not None
                assert refused.error.type in (ErrorType.NO_LEADER, ErrorType.COMMAND)
            core = loop_of(cluster.servers[leader]).core
            await wait_until(lambda: core.transferring_to is None)
            assert cluster.servers[leader].is_leader
            early = await command(2)  # the retry of 2 comes first: it must not apply yet
            assert early.error is not None and early.error.type is ErrorType.COMMAND, early
            first = await command(1)
            assert first.status is Status.OK, first
            second = await command(2)
            assert second.status is Status.OK, second
            assert (first.result, second.result) == (1, 2)
            assert cluster.servers[leader].state_machine.notes == ["c1", "c2"]
            nursery.cancel_scope.cancel()


async def test_the_executor_never_applies_a_command_past_a_gap() -> None:
    notebook = Notebook()
    executor = Executor(notebook)
    executor.apply(RegisterEntry(term=1, index=1, client="c", timeout=60_000))

    def command(index: int, sequence: int) -> CommandEntry:
        return CommandEntry(
            term=1, index=index, session=1, sequence=sequence, operation=Note(f"c{sequence}")
        )

    early = executor.expect(2, 1)
    executor.apply(command(2, sequence=2))  # 1 has not been applied: 2 must wait for it
    assert isinstance(early.error, CommandError)
    assert notebook.notes == []
    assert executor.session(1).command_sequence == 0  # type: ignore[union-attr]
    first, second = executor.expect(3, 1), executor.expect(4, 1)
    executor.apply(command(3, sequence=1))
    executor.apply(command(4, sequence=2))  # the resubmission, now in order
    assert (first.result, second.result) == (1, 2)
    assert notebook.notes == ["c1", "c2"]
    # A stale copy of 1 after the client acknowledged its result: applied once, and not a
    # "not applied" COMMAND error that a client would resubmit for ever.
    executor.apply(KeepAliveEntry(term=1, index=5, session=1, command_sequence=2))
    stale = executor.expect(6, 1)
    executor.apply(command(6, sequence=1))
    assert isinstance(stale.error, ApplicationError)
    assert notebook.notes == ["c1", "c2"]


async def test_pipelined_commands_across_a_transfer_that_times_out(autojump_clock) -> None:
    async with open_memory_cluster(3, Notebook) as cluster:
        leader = await cluster.wait_for_leader()
        async with cluster.client([leader], timeout=120) as client:
            submitted: list[str] = []
            results: dict[str, int] = {}

            async def one(value: str) -> None:
                submitted.append(value)  # the sequence number is taken before the first await
                results[value] = await client.submit(Note(value))

            with trio.fail_after(20):
                async with trio.open_nursery() as nursery:
                    for i in range(50):
                        nursery.start_soon(one, f"a{i}")
                    await wait_until(lambda: len(results) >= 10)
                    await start_transfer_that_times_out(cluster, leader)
                    for i in range(50):  # more arrive while proposals are refused
                        nursery.start_soon(one, f"b{i}")
            assert len(results) == 100  # every submit returned
            assert await client.submit(Notes()) == submitted  # once each, in order
            assert [results[v] for v in submitted] == list(range(1, 101))


async def test_a_waiter_whose_entry_was_truncated_is_answered_when_its_index_is_reused(
    autojump_clock,
) -> None:
    # Issue 10, suspected bug 7: Executor.expect() replaced a waiter still unresolved at the
    # same index, so whoever waited on it waited for ever.
    async with open_memory_cluster(3, Notebook) as cluster:
        old = await cluster.wait_for_leader()
        loop = loop_of(cluster.servers[old])
        cluster.isolate(old)
        lost = [await loop.propose(NoOpEntry) for _ in range(3)]  # never committed
        others = [i for i in cluster.all_ids() if i != old]
        new = await cluster.wait_for_leader(others)
        cluster.network.heal()
        # The new leader's shorter log truncates the old leader's: its last entry goes.
        await wait_until(lambda: loop.core.log.last_index < lost[-1].index)
        await cluster.servers[new].transfer_leadership(old)
        assert await cluster.wait_for_leader() == old
        again = await loop.propose(NoOpEntry)
        assert again.index == lost[-1].index  # the same index, in a later term
        with trio.fail_after(10):
            for pending in lost:
                await pending.event.wait()
            await again.event.wait()
        assert all(isinstance(p.error, CommandError) for p in lost)
        assert again.error is None


async def test_a_follower_stops_forwarding_to_a_leader_it_no_longer_follows(
    autojump_clock,
) -> None:
    # Issue 10: a follower forwarding to a leader that was gone held the request for its whole
    # request timeout, and the client waited on it, although the follower had long learned of
    # a new leader. It answers NO_LEADER as soon as its leader changes (the command keeps its
    # sequence number, so the client's resubmission is safe).
    async with open_memory_cluster(3, Notebook) as cluster:
        old = await cluster.wait_for_leader()
        follower = next(i for i in cluster.all_ids() if i != old)
        async with cluster.client([follower]) as client:
            await client.submit(Note("before"))  # the follower forwards over a live connection
            cluster.isolate(old)
            started = trio.current_time()
            await client.submit(Note("after"))
            took = trio.current_time() - started
            new = await cluster.wait_for_leader([i for i in cluster.all_ids() if i != old])
            assert cluster.servers[new].state_machine.notes == ["before", "after"]
        # The follower's leader changes within two election timeouts (its own randomised
        # timeout, then a poll and a vote); the answer follows at once, not 5 s later.
        assert took < 2.5 * cluster.election_timeout, took
