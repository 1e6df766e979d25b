"""Client failover on whole servers (in-memory network, MockClock): a member that cannot serve
is a reason to try the next one, never a verdict on the request."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import trio

from copycat_trio.client import ClientState, CopycatClient
from copycat_trio.protocol.errors import ErrorType, OutcomeUnknownError
from copycat_trio.protocol.messages import CommandRequest, MemberType, QueryRequest
from copycat_trio.protocol.operations import Consistency
from copycat_trio.recipes.kv import Get, KeyValueStore, Put
from copycat_trio.server.server import CopycatServer
from copycat_trio.testing import open_memory_cluster


def types(server: CopycatServer) -> dict[int, MemberType]:
    return {m.id: m.type for m in server.status().members}


async def wait_until(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.01)


class Answers:
    """Every answer the client's pool received: (address, request type, error type or None)."""

    def __init__(self, client: CopycatClient) -> None:
        self.seen: list[tuple[str, type, ErrorType | None]] = []
        pool = client._pool
        original = pool.request

        async def request(address: str, body: Any, timeout: float = float("inf")) -> Any:
            response = await original(address, body, timeout)
            error = getattr(response, "error", None)
            self.seen.append((address, type(body), error.type if error else None))
            return response

        pool.request = request  # type: ignore[method-assign]

    def count(self, address: str, request: type, error: ErrorType | None) -> int:
        return self.seen.count((address, request, error))


async def test_applied_command_whose_answer_is_lost_is_not_failed_by_a_reserve_member(
    autojump_clock,
) -> None:
    async with open_memory_cluster(3, KeyValueStore) as cluster:
        leader = await cluster.wait_for_leader()
        reserve = await cluster.join(4, via=[leader], member_type=MemberType.RESERVE)
        await wait_until(lambda: types(reserve).get(4) is MemberType.RESERVE)
        async with cluster.client([leader, 4], request_timeout=1.0) as client:
            answers = Answers(client)
            # The leader applies the command, but its answers never reach the client.
            cluster.network.cut_one_way(cluster.address(leader), "client")
            result: list[Any] = []

            async def put() -> None:
                result.append(await client.submit(Put("k", 1)))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(put)
                await wait_until(
                    lambda: (
                        answers.count(
                            cluster.address(4), CommandRequest, ErrorType.ILLEGAL_MEMBER_STATE
                        )
                        > 0
                    )
                )
                cluster.network.heal()
            assert result == [None]  # the previous value: it applied once
            assert await client.submit(Get("k")) == 1
            assert client.state.value is not ClientState.CLOSED


async def test_sequential_query_at_a_member_behind_the_registration_keeps_the_session(
    autojump_clock,
) -> None:
    async with open_memory_cluster(3, KeyValueStore) as cluster:
        leader = await cluster.wait_for_leader()
        lagging = next(i for i in (1, 2, 3) if i != leader)
        cluster.isolate(lagging)  # it never hears of the session's registration
        async with cluster.client([leader, lagging], request_timeout=1.0) as client:
            answers = Answers(client)
            cluster.network.cut("client", cluster.address(leader))
            result: list[Any] = []

            async def read() -> None:
                result.append(await client.submit(Get("k"), consistency=Consistency.SEQUENTIAL))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(read)
                # The lagging member is asked, and must not call the session unknown.
                await wait_until(
                    lambda: any(a == cluster.address(lagging) for a, *_ in answers.seen)
                )
                cluster.network.heal()
            assert result == [None]
            assert client.state.value is not ClientState.CLOSED
            assert client.last_index >= client.session_id


async def test_registration_whose_forwarding_breaks_tries_the_next_member(autojump_clock) -> None:
    async with open_memory_cluster(3, KeyValueStore, request_timeout=2.0) as cluster:
        leader = await cluster.wait_for_leader()
        follower = next(i for i in (1, 2, 3) if i != leader)
        # What the follower forwards never reaches the leader: it answers "outcome unknown".
        cluster.network.cut_one_way(cluster.address(follower), cluster.address(leader))
        with trio.fail_after(30):
            async with cluster.client([follower, leader], request_timeout=5.0) as client:
                assert await client.submit(Get("k")) is None
                assert client.state.value is ClientState.CONNECTED


async def test_query_whose_forwarding_breaks_tries_the_next_member(autojump_clock) -> None:
    async with open_memory_cluster(3, KeyValueStore, request_timeout=2.0) as cluster:
        leader = await cluster.wait_for_leader()
        follower = next(i for i in (1, 2, 3) if i != leader)
        async with cluster.client([follower, leader], request_timeout=5.0) as client:
            await client.submit(Put("k", 1))
            answers = Answers(client)
            cluster.network.cut_one_way(cluster.address(follower), cluster.address(leader))
            with trio.fail_after(30):
                assert await client.submit(Get("k")) == 1
            assert (cluster.address(follower), QueryRequest, ErrorType.INTERNAL) in answers.seen


async def test_a_later_command_does_not_wait_out_the_back_off_of_a_pending_one(
    autojump_clock,
) -> None:
    async with open_memory_cluster(3, KeyValueStore) as cluster:
        old = await cluster.wait_for_leader()
        rest = [i for i in (1, 2, 3) if i != old]
        outage_started, outage_over = trio.Event(), trio.Event()
        waited: list[float] = []

        async def writer(key: str, stagger: float, task_status: Any) -> None:
            async with cluster.client(rest, session_timeout=30.0) as client:
                task_status.started()
                await outage_started.wait()
                await trio.sleep(stagger)
                # No leader: the caller gives up, the client resubmits in the background, its
                # back-off between rounds of members that all answer NO_LEADER reaching 2 s.
                with pytest.raises(OutcomeUnknownError):
                    await client.submit(Put(key, 1), timeout=0.5)
                await outage_over.wait()
                started = trio.current_time()
                await client.submit(Put(key, 2))
                waited.append(trio.current_time() - started)
                assert await client.submit(Get(key)) == 2

        async with trio.open_nursery() as nursery:
            # Three writers whose back-offs are out of phase: whenever the leader comes back,
            # one of them is more than a second from its next round.
            for n in range(3):
                await nursery.start(writer, f"k{n}", 0.7 * n)
            cluster.crash(old)
            cluster.isolate(rest[0])
            outage_started.set()
            await trio.sleep(10)  # the outage
            cluster.network.heal()
            await cluster.wait_for_leader(rest)
            outage_over.set()
        assert len(waited) == 3
        assert max(waited) < 0.1, f"later commands waited {waited} behind the pending ones"


async def test_commands_submitted_to_a_leaderless_cluster_cause_no_request_storm(
    autojump_clock,
) -> None:
    async with open_memory_cluster(3, KeyValueStore) as cluster:
        old = await cluster.wait_for_leader()
        rest = [i for i in (1, 2, 3) if i != old]
        async with cluster.client(rest, session_timeout=30.0) as client:
            answers = Answers(client)
            cluster.crash(old)
            cluster.isolate(rest[0])  # no leader can be elected

            async def put(i: int) -> None:
                with pytest.raises(OutcomeUnknownError):
                    await client.submit(Put("k", i), timeout=0.5)

            # A command every 10 ms for 1 s: each wants the pending ones before it resubmitted,
            # but with no leader that is no reason for all of them to give up their back-off.
            async with trio.open_nursery() as nursery:
                for i in range(100):
                    nursery.start_soon(put, i)
                    await trio.sleep(0.01)
            sent = len(answers.seen)
            cluster.network.heal()
        # The commands' own back-offs send about 950 requests here (two members a round); the
        # oldest pending one's extra rounds, one per 50 ms, a few dozen.
        assert sent < 1200, f"{sent} requests"


async def test_a_member_behind_a_sessions_registration_does_not_call_it_unknown(
    autojump_clock,
) -> None:
    async with open_memory_cluster(3, KeyValueStore, request_timeout=1.0) as cluster:
        leader = await cluster.wait_for_leader()
        lagging = next(i for i in (1, 2, 3) if i != leader)
        cluster.isolate(lagging)  # it never hears of the session's registration
        async with cluster.client([leader]) as client:
            # A query that names no index to wait for (as clients before issue 10 sent them).
            query = QueryRequest(
                session=client.session_id,
                index=0,
                operation=Get("k"),
                consistency=Consistency.SEQUENTIAL,
            )
            answer = await client._pool.request(cluster.address(lagging), query, 5.0)
            assert answer.error is not None and answer.error.type is ErrorType.QUERY


async def test_known_reserve_members_are_tried_last(autojump_clock) -> None:
    async with open_memory_cluster(3, KeyValueStore) as cluster:
        leader = await cluster.wait_for_leader()
        follower = next(i for i in (1, 2, 3) if i != leader)
        reserve = await cluster.join(4, via=[leader], member_type=MemberType.RESERVE)
        await wait_until(lambda: types(reserve).get(4) is MemberType.RESERVE)
        addresses = [leader, 4, follower]
        async with cluster.client(addresses, request_timeout=1.0) as client:
            await client.submit(Put("k", 1))
            await wait_until(lambda: any(m.id == 4 for m in client.members))
            answers = Answers(client)
            cluster.network.cut("client", cluster.address(leader))
            assert await client.submit(Put("k", 2)) == 1
            assert next(a for a, *_ in answers.seen if a != cluster.address(leader)) == (
                cluster.address(follower)
            )
            assert cluster.address(4) not in [a for a, *_ in answers.seen]


async def test_a_command_held_by_a_deposed_leader_goes_elsewhere_once_a_new_one_is_named(
    autojump_clock,
) -> None:
    async with open_memory_cluster(3, KeyValueStore) as cluster:
        leader = await cluster.wait_for_leader()
        others = [i for i in (1, 2, 3) if i != leader]
        options = {"request_timeout": 5.0, "session_timeout": 3.0}  # a keep-alive a second
        async with cluster.client([leader, *others], **options) as client:
            await client.submit(Put("k", 0))
            # Cut off from its peers, the leader still hears the client and holds the command
            # (it can never commit it) until it is healed.
            cluster.isolate(leader)
            started = trio.current_time()
            assert await client.submit(Put("k", 1)) == 0
            waited = trio.current_time() - started
            assert client.leader in others
        # The next keep-alive (every second here) answered by the new leader names it; the
        # command is resubmitted then, not after a whole request timeout at the deposed one.
        assert waited < 3.0, f"waited {waited:.2f}s"


@pytest.mark.parametrize("seed", range(8))
async def test_a_command_is_resubmitted_soon_after_an_election_ends(autojump_clock, seed) -> None:
    # With an election timeout of 2 s the election after a leader's crash takes over 1.5 s:
    # by then the back-off between rounds of members answering NO_LEADER has grown past 1.5 s.
    # (Where in that back-off the election ends varies; several seeds make it likely that one
    # ends early in a long wait.)
    async with open_memory_cluster(3, KeyValueStore, seed=seed, election_timeout=2.0) as cluster:
        leader = await cluster.wait_for_leader()
        others = [i for i in (1, 2, 3) if i != leader]
        async with cluster.client([leader, *others]) as client:
            await client.submit(Put("k", 0))
            await trio.sleep(0.3)  # keep-alives have a phase of their own by now
            cluster.crash(leader)
            crashed = trio.current_time()
            elected: list[float] = []

            async def watch() -> None:
                while not any(cluster.servers[i].is_leader for i in others):
                    await trio.sleep(0.001)
                elected.append(trio.current_time())

            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch)
                await client.submit(Put("k", 1))
            answered = trio.current_time()
        assert elected and elected[0] - crashed > 1.5
        assert answered - elected[0] < 0.3, f"answered {answered - elected[0]:.2f}s after"
