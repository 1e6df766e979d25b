"""Three real server processes on loopback: election, ordering, a SIGKILLed and a SIGSTOPped leader.

Real time and real OS processes throughout (election timeout 0.5 s, heartbeats every 0.1 s); every
test is bounded with trio.fail_after, and the `cluster` fixture stops every process afterwards.
Restarting a killed member is not tested: with memory storage it would forget its vote.
"""

from __future__ import annotations

import math
from collections import Counter
from contextlib import AsyncExitStack
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from trio_util import AsyncValue

from copycat_trio import (
    CommandError,
    Consistency,
    CopycatError,
    ErrorType,
    NoLeaderError,
    OutcomeUnknownError,
    open_client,
)
from copycat_trio.protocol import (
    CommandRequest,
    CommandResponse,
    RegisterRequest,
    RegisterResponse,
)
from tests.e2e.appendlog import Append, Items
from tests.e2e.procs import ProcessCluster, RawConnection

pytestmark = pytest.mark.e2e


async def replicas(cluster: ProcessCluster, ids: list[int], seen_index: int) -> dict[int, Any]:
    """Each member's own list, read at that member alone (SEQUENTIAL), once it has applied
    `seen_index`: the highest log index the test has seen acknowledged.

    A fresh client has seen nothing (last_index 0) and could be answered from a stale replica, so
    the reader is handed the index the test's writers saw: the same causal token a client passes
    on when it tells another client what it wrote. The member must then answer from a state at
    least that recent, and the answer comes from its own replica, not the leader's.
    """
    lists = {}
    for member_id in ids:
        async with open_client([cluster.address(member_id)], timeout=10) as reader:
            reader.last_index = seen_index
            lists[member_id] = await reader.submit(Items(), consistency=Consistency.SEQUENTIAL)
            assert reader.last_index >= seen_index
    return lists


async def test_one_leader_is_elected_and_writes_through_every_member_apply_in_order(
    cluster: ProcessCluster,
) -> None:
    """Exactly one leader, which a healthy cluster keeps; then writes through every member (the
    followers forward) apply at the positions acknowledged, in the same order on every member."""
    with trio.fail_after(20):
        agreement = await cluster.wait_for_leader()
        rows = agreement.rows
        assert sorted(row["id"] for row in rows) == [1, 2, 3]
        roles = sorted(row["role"] for row in rows)
        assert roles == ["follower", "follower", "leader"], rows
        assert {row["leader"] for row in rows} == {agreement.leader}
        assert {row["term"] for row in rows} == {agreement.term}, rows
        # A healthy cluster keeps its leader: two more election timeouts change nothing.
        deadline = trio.current_time() + 2 * cluster.election_timeout
        while trio.current_time() < deadline:
            again = await cluster.wait_for_leader(timeout=5)
            assert (again.leader, again.term) == (agreement.leader, agreement.term), again.rows
            await trio.sleep(0.1)
        cluster.assert_running()

    count = 60
    with trio.fail_after(30):
        acknowledged: list[str] = []
        async with AsyncExitStack() as stack:
            # One client per member, each knowing only that member: followers must forward.
            writers = [
                await stack.enter_async_context(open_client([address], timeout=10))
                for address in cluster.addresses()
            ]
            for i in range(count):
                value = f"v{i}"
                position = await writers[i % len(writers)].submit(Append(value))
                assert position == i, f"{value} landed at {position}"
                acknowledged.append(value)
            seen_index = max(writer.last_index for writer in writers)
        lists = await replicas(cluster, cluster.ids(), seen_index)
        for member_id, items in lists.items():
            assert items == acknowledged, f"member {member_id} applied a different order"
        cluster.assert_running()


@attrs.define
class WriteLoad:
    """What a writer saw: acknowledged appends (value, position), and the ones that failed."""

    acknowledged: list[tuple[str, int]] = attrs.Factory(list)
    unknown: list[str] = attrs.Factory(list)
    failed: list[tuple[str, CopycatError]] = attrs.Factory(list)
    acks: AsyncValue = attrs.Factory(lambda: AsyncValue(0))
    stop_after_acks: float = math.inf

    @property
    def submitted(self) -> set[str]:
        return {v for v, _ in self.acknowledged} | set(self.unknown) | {v for v, _ in self.failed}


async def append_continuously(
    addresses: list[str], load: WriteLoad, *, max_ops: int = 2000, max_seconds: float = 20.0
) -> None:
    """Append unique values one at a time until told to stop, or for at most max_ops/max_seconds.
    The test submits each value once and records the outcome the client reported; the client
    itself resubmits under the same session sequence number, which the servers deduplicate."""
    deadline = trio.current_time() + max_seconds
    async with open_client(addresses, timeout=5) as client:
        for i in range(max_ops):
            if load.acks.value >= load.stop_after_acks or trio.current_time() >= deadline:
                return
            value = f"w{i}"
            try:
                position = await client.submit(Append(value))
            except OutcomeUnknownError:
                load.unknown.append(value)
            except (CommandError, NoLeaderError) as exc:
                load.failed.append((value, exc))
            else:
                load.acknowledged.append((value, position))
                load.acks.value += 1


async def test_sigkill_of_the_leader_during_a_write_load(cluster: ProcessCluster) -> None:
    with trio.fail_after(60):
        old = (await cluster.wait_for_leader()).leader
        survivors = [i for i in cluster.ids() if i != old]
        load = WriteLoad()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(append_continuously, cluster.addresses(), load)
            await load.acks.wait_value(lambda n: n >= 100)
            acked_at_kill = load.acks.value
            killed_at = trio.current_time()
            await cluster.kill(old)
            agreement = await cluster.wait_for_leader(survivors, timeout=15)
            failover = trio.current_time() - killed_at
            await load.acks.wait_value(lambda n: n > acked_at_kill)
            writes_resumed = trio.current_time() - killed_at
            load.stop_after_acks = load.acks.value + 100
        assert agreement.leader in survivors
        print(
            f"\nfailover: member {old} SIGKILLed after {acked_at_kill} acknowledged appends; "
            f"members {survivors} agreed on leader {agreement.leader} (term {agreement.term}) "
            f"after {failover:.2f}s; first acknowledged append after the kill at "
            f"{writes_resumed:.2f}s; {len(load.acknowledged)} acknowledged, "
            f"{len(load.unknown)} unknown, {len(load.failed)} failed"
        )
        assert load.acks.value >= acked_at_kill + 100, "the survivors stopped taking writes"

        async with open_client(cluster.addresses(survivors), timeout=10) as reader:
            items = await reader.submit(Items(), consistency=Consistency.LINEARIZABLE)
            seen_index = reader.last_index
        counts = Counter(items)
        for value, position in load.acknowledged:
            assert counts[value] == 1, f"acknowledged {value} appears {counts[value]} times"
            assert items[position] == value, f"{value} acknowledged at {position}, not there"
        acked_values = {value for value, _ in load.acknowledged}
        assert [v for v in items if v in acked_values] == [v for v, _ in load.acknowledged]
        for value in load.unknown:
            assert counts[value] <= 1, f"{value} (outcome unknown) applied {counts[value]} times"
        for value, error in load.failed:
            assert counts[value] == 0, f"{value} failed with {error!r} yet was applied"
        assert set(items) <= load.submitted, "values nobody submitted were applied"
        lists = await replicas(cluster, survivors, seen_index)
        for member_id, replica in lists.items():
            # Only a write whose outcome was unknown may still have landed after the read.
            assert replica[: len(items)] == items, f"survivor {member_id} differs from the leader"
            assert set(replica[len(items) :]) <= set(load.unknown), replica[len(items) :]
        cluster.assert_running(survivors)


def classify_client_outcome(outcome: dict[str, Any], items: list[str], value: str) -> str:
    """Check what a client was told about `value` against the list; say which path it took."""
    error = outcome.get("error")
    if error is None:
        assert items.count(value) == 1, f"{value} reported successful but absent: {items}"
        assert items.index(value) == outcome["result"]
        return f"succeeded at position {outcome['result']}"
    if isinstance(error, OutcomeUnknownError):
        assert items.count(value) <= 1
        return f"ended with {type(error).__name__}: {error}"
    assert value not in items, f"{value} reported failed ({error!r}) but applied"
    return f"failed with {type(error).__name__}: {error}"


def classify_raw_answer(answer: Any, items: list[str], value: str) -> str:
    """Check one server answer to a command, unretried, against the list; name its path."""
    assert isinstance(answer, CommandResponse), answer
    if answer.error is None:
        assert items.count(value) == 1, f"{value} answered OK but absent: {items}"
        assert items.index(value) == answer.result
        return f"answered OK, position {answer.result}"
    # A forward to the leader that lost its answer (INTERNAL), or that ended because the
    # forwarding member stopped following that leader (NO_LEADER, "the request may have
    # reached it": docs/architecture.md): either may have applied, once.
    if answer.error.type in (ErrorType.INTERNAL, ErrorType.NO_LEADER):
        assert items.count(value) <= 1
    else:  # COMMAND (replaced), UNKNOWN_SESSION: not applied
        assert value not in items, f"{value} answered {answer.error} but applied"
    return f"answered {answer.error.type.name}: {answer.error.message}"


async def test_deposed_leaders_write_is_never_reported_successful(
    cluster: ProcessCluster,
) -> None:
    """Two writes wait in the socket of a SIGSTOPped leader while the others elect a new one:
    one from a client that knows only that member (it resubmits under its session until it is
    answered), and one raw CommandRequest whose single answer is read as the server sent it.
    Neither may be reported successful unless it is in the new cluster's list (exactly once),
    and a write answered with a non-applied error must be absent."""
    with trio.fail_after(45):
        before = await cluster.wait_for_leader()
        old = before.leader
        others = [i for i in cluster.ids() if i != old]
        outcome: dict[str, Any] = {}
        raw_answer: list[Any] = []
        async with AsyncExitStack() as stack:
            stale_client = await stack.enter_async_context(
                open_client([cluster.address(old)], timeout=20)
            )
            raw = await stack.enter_async_context(await RawConnection.open(cluster.address(old)))
            await stale_client.submit(Append("before"))  # the connection to the leader is open
            registered = await raw.request(RegisterRequest(client="raw", timeout=60_000))
            assert isinstance(registered, RegisterResponse) and registered.error is None

            async def client_submit() -> None:
                try:
                    outcome["result"] = await stale_client.submit(Append("ghost"))
                except CopycatError as exc:
                    outcome["error"] = exc

            async def raw_submit() -> None:
                request = CommandRequest(
                    session=registered.session, sequence=1, operation=Append("raw ghost")
                )
                raw_answer.append(await raw.request(request))

            cluster.pause(old)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(client_submit)
                nursery.start_soon(raw_submit)
                # Both blocked on their answers: the requests sit in the stopped leader's socket.
                await trio.testing.wait_all_tasks_blocked()
                new = await cluster.wait_for_leader(others, timeout=15)
                assert new.leader in others and new.term > before.term
                async with open_client(cluster.addresses(others), timeout=10) as client:
                    await client.submit(Append("after"))
                cluster.resume(old)
        async with open_client(cluster.addresses(others), timeout=10) as reader:
            items = await reader.submit(Items(), consistency=Consistency.LINEARIZABLE)
            seen_index = reader.last_index

        client_path = classify_client_outcome(outcome, items, "ghost")
        raw_path = classify_raw_answer(raw_answer[0], items, "raw ghost")
        print(
            f"\ndeposed leader {old} (new leader {new.leader}, term {new.term}): "
            f"client write {client_path}; raw command {raw_path}"
        )
        assert items.count("before") == items.count("after") == 1
        assert items.index("before") < items.index("after")

        # The old leader rejoins as a follower without unseating the new one, and its replica
        # (with any uncommitted entry of its old term truncated) matches the cluster's.
        rejoined = await cluster.wait_for_leader(timeout=15)
        assert (rejoined.leader, rejoined.term) == (new.leader, new.term), rejoined.rows
        lists = await replicas(cluster, cluster.ids(), seen_index)
        for member_id, replica in lists.items():
            assert replica == items, f"member {member_id} differs: {replica} != {items}"
        cluster.assert_running()
