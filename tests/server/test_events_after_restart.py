"""docs/sessions.md: a client receives events before the answer to the command that published
them. Here the member that pushes the session's events restarts (forgetting the connection) and
the next command is answered by the leader."""

from __future__ import annotations

import trio

from copycat_trio.protocol.messages import Event
from copycat_trio.testing import open_memory_cluster
from copycat_trio.testing.sim_machine import Emit, SimStore, Watch


async def test_an_answer_comes_after_its_event_when_the_pushing_member_restarted(
    autojump_clock,
) -> None:
    async with open_memory_cluster(3, SimStore) as cluster:
        leader = await cluster.wait_for_leader()
        follower = next(i for i in cluster.all_ids() if i != leader)
        async with cluster.client([follower, leader], request_timeout=1.0) as client:
            received: list[str] = []

            def deliver(event: Event) -> None:
                received.append(event.payload["value"])

            client.on_event(None, deliver)
            await client.submit(Watch(("e",)))
            await client.submit(Emit("e", "v1"))
            assert received == ["v1"]
            assert client._address == cluster.address(follower)
            cluster.crash(follower)
            await cluster.restart([follower])
            await trio.sleep(0.5)
            await client.submit(Emit("e", "v2"))
            assert received == ["v1", "v2"]  # before the answer, as documented
