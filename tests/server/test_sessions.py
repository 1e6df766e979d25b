"""Sessions on whole servers (in-memory network, MockClock): exactly-once, order, reads, events,
expiry, and the recipes that stand on them."""

from __future__ import annotations

import attrs
import pytest
import trio

from copycat_trio.client import ClientState, RecoveryStrategy
from copycat_trio.client.client import _Submission
from copycat_trio.protocol.codec import register
from copycat_trio.protocol.errors import (
    NoLeaderError,
    OutcomeUnknownError,
    QueryError,
    UnknownSessionError,
)
from copycat_trio.protocol.operations import Command, Consistency, Query
from copycat_trio.recipes.counter import Counter, Increment, Value
from copycat_trio.recipes.election import Election, ElectionStateMachine
from copycat_trio.recipes.lock import Holder, Lock, LockStateMachine
from copycat_trio.state_machine import Commit, ServerSession, StateMachine
from copycat_trio.testing import open_memory_cluster


@register(40110)
@attrs.frozen
class Record(Command):
    value: str


@register(40111)
@attrs.frozen
class Records(Query):
    pass


@register(40112)
@attrs.frozen
class Shout(Command):
    """Publish `count` events to the submitting session."""

    count: int


class Journal(StateMachine):
    """Records values; counts every application so a double apply shows."""

    def __init__(self) -> None:
        self.records: list[str] = []
        self.expired: list[int] = []
        self.shouts = 0

    def record(self, commit: Commit[Record]) -> int:
        self.records.append(commit.operation.value)
        return len(self.records)

    def read(self, commit: Commit[Records]) -> list[str]:
        return list(self.records)

    def shout(self, commit: Commit[Shout]) -> int:
        assert commit.session is not None
        for _ in range(commit.operation.count):
            self.shouts += 1
            commit.session.publish("shout", self.shouts)
        return self.shouts

    def on_expire(self, session: ServerSession) -> None:
        self.expired.append(session.id)


async def test_pipelined_commands_apply_in_submission_order(autojump_clock) -> None:
    async with open_memory_cluster(3, Journal) as cluster:
        await cluster.wait_for_leader()
        async with cluster.client() as client:
            submitted: list[str] = []
            results: dict[str, int] = {}

            async def one(value: str) -> None:
                submitted.append(value)  # the sequence number is taken before the first await
                results[value] = await client.submit(Record(value))

            async with trio.open_nursery() as nursery:
                for i in range(1000):
                    nursery.start_soon(one, f"v{i}")
            assert await client.submit(Records()) == submitted
            assert sorted(results.values()) == list(range(1, 1001))
            assert [results[v] for v in submitted] == list(range(1, 1001))


async def test_commands_in_flight_across_leader_crash_apply_exactly_once(autojump_clock) -> None:
    async with open_memory_cluster(3, Journal) as cluster:
        leader = await cluster.wait_for_leader()
        async with cluster.client() as client:
            done: list[str] = []

            async def one(value: str) -> None:
                await client.submit(Record(value))
                done.append(value)

            async with trio.open_nursery() as nursery:
                for i in range(300):
                    nursery.start_soon(one, f"v{i}")
                # Crash the leader with about half the commands answered and the rest in flight.
                while len(done) < 150:
                    await trio.sleep(0.001)
                cluster.crash(leader)
            assert len(done) == 300
            await cluster.wait_for_leader()
            final = await client.submit(Records())
        assert sorted(final) == sorted(done)  # every acknowledged write, once
        assert len(final) == len(set(final)) == 300
        await trio.sleep(1)
        for server in cluster.servers.values():
            assert server.state_machine.records == final


async def test_linearizable_read_from_any_member_sees_acknowledged_write(autojump_clock) -> None:
    async with open_memory_cluster(3, Journal) as cluster:
        await cluster.wait_for_leader()
        async with cluster.client() as writer:
            await writer.submit(Record("x"))
        for member in cluster.all_ids():
            async with cluster.client([member]) as reader:
                assert await reader.submit(Records()) == ["x"]


async def test_sequential_read_on_follower_sees_own_writes(autojump_clock) -> None:
    async with open_memory_cluster(3, Journal) as cluster:
        leader = await cluster.wait_for_leader()
        follower = next(i for i in cluster.all_ids() if i != leader)
        async with cluster.client([follower]) as client:
            for i in range(20):
                await client.submit(Record(f"r{i}"))
                got = await client.submit(Records(), consistency=Consistency.SEQUENTIAL)
                assert got[-1] == f"r{i}"


async def test_minority_leader_cannot_answer_linearizable_or_expired_lease_reads(
    autojump_clock,
) -> None:
    async with open_memory_cluster(5, Journal, election_timeout=1.0) as cluster:
        old = await cluster.wait_for_leader()
        async with cluster.client([old], timeout=3, request_timeout=1) as client:
            await client.submit(Record("before"))
            # Within the lease, the leader serves lease reads by itself.
            assert await client.submit(Records(), consistency=Consistency.LINEARIZABLE_LEASE)
            cluster.isolate(old)
            await trio.sleep(1.0)  # past the lease (0.75 x election timeout)
            with pytest.raises((NoLeaderError, QueryError)):
                await client.submit(Records(), consistency=Consistency.LINEARIZABLE_LEASE)
            with pytest.raises((NoLeaderError, QueryError)):
                await client.submit(Records())
            cluster.network.heal()


async def test_events_arrive_in_order_exactly_once_across_failover(autojump_clock) -> None:
    async with open_memory_cluster(3, Journal) as cluster:
        leader = await cluster.wait_for_leader()
        async with cluster.client() as client:
            received: list[int] = []
            async with client.events("shout") as events:

                async def collect() -> None:
                    async for event in events:
                        received.append(event.payload)
                        if len(received) == 60:
                            return

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(collect)
                    for i in range(6):
                        await client.submit(Shout(5))
                        if i == 2:
                            cluster.crash(leader)
                            await cluster.wait_for_leader()
                    for _ in range(6):
                        await client.submit(Shout(5))
        assert received == list(range(1, 61))


async def test_silent_client_session_expires_by_log_time(autojump_clock) -> None:
    async with open_memory_cluster(3, Journal) as cluster:
        await cluster.wait_for_leader()
        async with trio.open_nursery() as nursery:
            ready = trio.Event()
            ids: list[int] = []

            async def doomed() -> None:
                async with cluster.client(host="doomed", session_timeout=2.0) as client:
                    ids.append(client.session_id)
                    await client.submit(Record("hello"))
                    ready.set()
                    await trio.sleep_forever()

            nursery.start_soon(doomed)
            await ready.wait()
            cluster.cut_off_host("doomed")
            await trio.sleep(10)
            nursery.cancel_scope.cancel()
        for server in cluster.servers.values():
            assert server.state_machine.expired == ids


class ExpiryClock(Journal):
    """A Journal that notes the log time of each expiry and says when `wanted` have come."""

    def __init__(self, wanted: int) -> None:
        super().__init__()
        self.expired_at: dict[int, int] = {}
        self.wanted = wanted
        self.all_expired = trio.Event()

    def on_expire(self, session: ServerSession) -> None:
        super().on_expire(session)
        self.expired_at[session.id] = self.context.time
        if len(self.expired_at) == self.wanted:
            self.all_expired.set()


async def test_a_silent_session_expires_at_its_deadline_not_a_polling_interval_later(
    autojump_clock,
) -> None:
    # The leader proposes an expiry when the earliest session deadline comes, by log time: it
    # used to look every min(session timeout / 4, election timeout), 1 s here, so a session
    # expired up to that much after its timeout. Four sessions fall silent at four phases of
    # that interval; each must expire within a few milliseconds of log time of its deadline.
    count = 4
    async with open_memory_cluster(3, lambda: ExpiryClock(count)) as cluster:
        leader = await cluster.wait_for_leader()
        executor = cluster.servers[leader]._executor
        assert executor is not None
        sessions = []
        async with trio.open_nursery() as nursery:
            for i in range(count):
                ready = trio.Event()

                async def doomed(host: str, ready: trio.Event) -> None:
                    async with cluster.client(host=host, session_timeout=2.0) as client:
                        await client.submit(Record(host))
                        sessions.append(executor.session(client.session_id))
                        ready.set()
                        await trio.sleep_forever()

                nursery.start_soon(doomed, f"doomed-{i}", ready)
                await ready.wait()
                cluster.cut_off_host(f"doomed-{i}")  # its process "dies"
                await trio.sleep(0.29)  # the next one falls silent at another phase
            state_machine = cluster.servers[leader].state_machine
            with trio.fail_after(30):
                await state_machine.all_expired.wait()
            nursery.cancel_scope.cancel()
        assert await cluster.wait_for_leader() == leader
        lags = {}
        for session in sessions:
            assert session is not None
            # The last keep-alive's log time is final: the session is gone from the table.
            deadline = session.last_active + session.timeout
            lags[session.id] = state_machine.expired_at[session.id] - deadline
        assert all(0 < lag <= 20 for lag in lags.values()), lags


async def test_stepping_the_leaders_wall_clock_expires_no_session(autojump_clock) -> None:
    # Log time follows the leader's monotonic clock and only slews toward its wall clock, so an
    # operator (or NTP) stepping the leader's clock a minute ahead expires nobody, not even a
    # session that only sends keep-alives.
    async with open_memory_cluster(3, Journal) as cluster:
        leader = await cluster.wait_for_leader()
        async with (
            cluster.client(session_timeout=2.0) as busy,
            cluster.client(session_timeout=6.0) as idle,  # keep-alives every 2 s
        ):
            sessions = (busy.session_id, idle.session_id)
            await busy.submit(Record("before"))
            cluster.clock_offsets[leader] = 60.0
            for i in range(20):
                await busy.submit(Record(f"after-{i}"))
                await trio.sleep(0.5)
            assert (busy.session_id, idle.session_id) == sessions
            assert idle.state.value is ClientState.CONNECTED
            assert await idle.submit(Records()) == ["before"] + [f"after-{i}" for i in range(20)]
        assert await cluster.wait_for_leader() == leader
        for server in cluster.servers.values():
            assert server.state_machine.expired == []


@pytest.mark.parametrize("cut", ["cannot_send", "hears_nothing", "both"])
async def test_session_outlives_a_member_that_cannot_reach_the_others(
    autojump_clock, cut: str
) -> None:
    # Found by the nemesis (real processes, one-way partition): the client's member could hear
    # everyone but reach no one, so each keep-alive it forwarded hung for the client's whole
    # request timeout (4 s, against a 5 s session), and the session expired although four
    # healthy members stood by. Keep-alives now give each member half a keep-alive interval,
    # and a member that did not answer is tried last.
    async with open_memory_cluster(5, Counter, election_timeout=0.5) as cluster:
        old = await cluster.wait_for_leader()
        others = [i for i in cluster.all_ids() if i != old]
        async with cluster.client(
            [old, *others], session_timeout=5.0, request_timeout=4.0
        ) as client:
            await client.submit(Increment(1))
            session = client.session_id
            for other in others:
                a, b = cluster.address(old), cluster.address(other)
                if cut == "both":
                    cluster.network.cut(a, b)
                else:
                    cluster.network.cut_one_way(*((a, b) if cut == "cannot_send" else (b, a)))
            await trio.sleep(15)
            assert client.session_id == session
            assert client.state.value is not ClientState.CLOSED
            assert await client.submit(Increment(1)) == 2


async def test_client_closes_when_its_session_expired(autojump_clock) -> None:
    async with open_memory_cluster(3, Journal) as cluster:
        await cluster.wait_for_leader()
        async with cluster.client(host="sleepy", session_timeout=2.0) as client:
            cluster.cut_off_host("sleepy")
            await trio.sleep(10)
            cluster.network.heal()
            await client.state.wait_value(lambda s: s is ClientState.CLOSED)
            with pytest.raises(UnknownSessionError):
                await client.submit(Record("late"))


async def test_recover_strategy_opens_a_new_session(autojump_clock) -> None:
    async with open_memory_cluster(3, Journal) as cluster:
        await cluster.wait_for_leader()
        async with cluster.client(
            host="sleepy", session_timeout=2.0, recovery=RecoveryStrategy.RECOVER
        ) as client:
            first = client.session_id
            cluster.cut_off_host("sleepy")
            await trio.sleep(10)
            cluster.network.heal()
            await trio.sleep(5)
            assert client.session_id != first
            assert client.state.value is ClientState.CONNECTED
            await client.submit(Record("after recovery"))


class RegisterCounting(Journal):
    """A Journal that counts the sessions registered."""

    def __init__(self) -> None:
        super().__init__()
        self.registered = 0

    def on_register(self, session: ServerSession) -> None:
        self.registered += 1


@pytest.mark.parametrize("request_timeout", [0.5, 3.0])
async def test_recovery_registers_one_session_however_many_requests_hear_of_the_expiry(
    autojump_clock, request_timeout: float
) -> None:
    """Eight commands in flight when the session expires each hear UNKNOWN_SESSION: at once,
    while the client registers its new session (request_timeout 0.5 s), or after it, once
    their attempts sent during the cut time out (3 s; the keep-alive's attempts are short and
    find the expiry first). The client must replace the lost session once, not abandon each
    new, live session in turn for another."""
    async with open_memory_cluster(3, RegisterCounting) as cluster:
        leader = await cluster.wait_for_leader()
        async with cluster.client(
            host="sleepy",
            session_timeout=1.0,
            request_timeout=request_timeout,
            recovery=RecoveryStrategy.RECOVER,
        ) as client:
            first = client.session_id
            cluster.cut_off_host("sleepy")

            async def record(value: str) -> None:
                with pytest.raises(OutcomeUnknownError):  # the session expired under it
                    await client.submit(Record(value))

            async with trio.open_nursery() as nursery:
                for i in range(8):
                    nursery.start_soon(record, f"in flight {i}")
                await trio.sleep(5)
                cluster.network.heal()
            await client.submit(Record("after recovery"))
            assert client.session_id != first
        state_machine = cluster.servers[leader].state_machine
        assert state_machine.registered == 2, "sessions registered besides the first one"


async def test_a_late_answer_of_a_replaced_session_leaves_the_new_sessions_order_alone(
    autojump_clock,
) -> None:
    """Under RECOVER, an answer to a command of the lost session can arrive after the new
    session is registered. Completing it must neither wait for the new session's commands to
    reach its sequence number nor raise the new session's completed mark to it (which would
    let a keep-alive acknowledge results the client never received)."""
    async with open_memory_cluster(3, Journal) as cluster:
        await cluster.wait_for_leader()
        async with cluster.client(recovery=RecoveryStrategy.RECOVER) as client:
            await client.submit(Record("old"))
            old_generation = client._session_generation
            late = _Submission(7, Record("late"))
            await client.open_session()  # what RECOVER does once the old session expired
            with trio.fail_after(5):
                await client._complete(late, 0, "answer", None, old_generation)
            assert late.done.is_set() and late.result == "answer"
            assert client._completed.value == 0, "the new session's completed mark moved"
            assert await client.submit(Record("new")) == 2


async def test_lock_is_released_when_holder_session_expires(autojump_clock) -> None:
    async with open_memory_cluster(3, LockStateMachine) as cluster:
        await cluster.wait_for_leader()
        acquired = trio.Event()
        async with trio.open_nursery() as nursery:

            async def holder() -> None:
                async with cluster.client(host="holder", session_timeout=2.0) as client:
                    await Lock(client, "job").acquire()
                    acquired.set()
                    await trio.sleep_forever()

            nursery.start_soon(holder)
            await acquired.wait()
            async with cluster.client(host="waiter") as client:
                waiter_lock = Lock(client, "job")
                cluster.cut_off_host("holder")  # the holder's process "dies"
                started = trio.current_time()
                with trio.fail_after(30):
                    await waiter_lock.acquire()
                waited = trio.current_time() - started
                # Not before the holder's session timed out: 2 s after its last keep-alive,
                # which came at most a third of that before the cut.
                assert waited >= 2.0 * 2 / 3
                assert await client.submit(Holder("job")) == client.session_id
                assert await waiter_lock.release()
            nursery.cancel_scope.cancel()


async def test_lock_handed_over_on_release(autojump_clock) -> None:
    async with open_memory_cluster(3, LockStateMachine) as cluster:
        await cluster.wait_for_leader()
        async with cluster.client(host="a") as a, cluster.client(host="b") as b:
            await Lock(a, "x").acquire()
            order: list[str] = []
            async with trio.open_nursery() as nursery:

                async def wait_b() -> None:
                    await Lock(b, "x").acquire()
                    order.append("b")

                nursery.start_soon(wait_b)
                await trio.sleep(1)
                order.append("a releases")
                await Lock(a, "x").release()
            assert order == ["a releases", "b"]


async def test_counter(autojump_clock) -> None:
    async with open_memory_cluster(3, Counter) as cluster:
        await cluster.wait_for_leader()
        async with cluster.client() as client:
            assert await client.submit(Increment(5)) == 5
            assert await client.submit(Increment(-2)) == 3
            assert await client.submit(Value()) == 3


async def test_election_among_clients(autojump_clock) -> None:
    async with open_memory_cluster(3, ElectionStateMachine) as cluster:
        await cluster.wait_for_leader()
        async with cluster.client(host="a") as a, cluster.client(host="b") as b:
            assert await Election(a, "s").run() == 1
            async with trio.open_nursery() as nursery:
                epochs: list[int] = []

                async def run_b() -> None:
                    epochs.append(await Election(b, "s").run())

                nursery.start_soon(run_b)
                await trio.sleep(1)
                assert epochs == []
                await Election(a, "s").resign()
            assert epochs == [2]


async def test_retried_commands_whose_answers_were_lost_apply_once(autojump_clock) -> None:
    async with open_memory_cluster(3, Journal) as cluster:
        leader = await cluster.wait_for_leader()
        async with cluster.client([leader], host="c", request_timeout=1.0) as client:
            # Requests arrive and apply, but every answer is lost: the client resubmits.
            cluster.network.cut_one_way(cluster.address(leader), "c")
            results: dict[str, int] = {}

            async def one(value: str) -> None:
                results[value] = await client.submit(Record(value))

            async with trio.open_nursery() as nursery:
                for i in range(50):
                    nursery.start_soon(one, f"v{i}")
                await trio.sleep(3.5)  # several resubmissions, all answered into the void
                assert len(cluster.servers[leader].state_machine.records) == 50
                cluster.network.heal()
            records = await client.submit(Records())
        assert sorted(records) == sorted(results) and len(records) == 50
        assert sorted(results.values()) == list(range(1, 51))
