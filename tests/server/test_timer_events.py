"""A timer callback's events reach the client even when the entry applied before the timer fired
published to the same session (the executor publishes them under that entry's index)."""

from __future__ import annotations

import trio

from copycat_trio.protocol.messages import Event
from copycat_trio.testing import open_memory_cluster
from copycat_trio.testing.sim_machine import Arm, Emit, SimStore, Watch


async def test_an_event_a_timer_publishes_after_a_publishing_command_is_delivered(
    autojump_clock,
) -> None:
    async with (
        open_memory_cluster(3, SimStore) as cluster,
        cluster.client(session_timeout=5.0) as client,
    ):
        received: list[str] = []

        def deliver(event: Event) -> None:
            received.append(f"{event.payload['kind']}:{event.payload['key']}")

        client.on_event(None, deliver)
        await client.submit(Watch(("e", "t")))
        await client.submit(Arm("t", 200, None, True))
        await client.submit(Emit("e", "v1"))  # publishes at its index; the client acks it
        assert received == ["emit:e"]
        await trio.sleep(1.0)  # the timer fires before the next entry (a keep-alive, say)
        await client.submit(Emit("e", "v2"))
        assert received == ["emit:e", "ring:t", "emit:e"]
