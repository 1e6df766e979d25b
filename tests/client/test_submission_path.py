"""A command's first attempt runs in the caller's own task (no task per submission); whatever
cuts it short, the command still goes out and applies once, and the session goes on."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from copycat_trio.protocol.errors import OutcomeUnknownError
from copycat_trio.protocol.messages import CommandRequest
from copycat_trio.recipes.kv import Get, KeyValueStore, Put
from copycat_trio.testing import open_memory_cluster


@pytest.mark.parametrize("cut", ["caller cancelled", "budget over"])
async def test_a_command_cut_short_before_it_was_sent_is_still_applied(
    autojump_clock, cut: str
) -> None:
    async with open_memory_cluster(3, KeyValueStore) as cluster:
        leader = await cluster.wait_for_leader()
        async with cluster.client([leader]) as client:
            pool = client._pool
            original = pool.request
            callers: list[trio.CancelScope] = []
            held: list[int] = []

            async def request(address: str, body: Any, timeout: float = float("inf")) -> Any:
                if isinstance(body, CommandRequest) and body.sequence == 1 and not held:
                    held.append(1)  # the first attempt at command 1 never leaves
                    if cut == "caller cancelled":
                        callers[0].cancel()
                    await trio.sleep(10)
                    raise AssertionError("the first attempt should have been cut short")
                return await original(address, body, timeout)

            pool.request = request  # type: ignore[method-assign]
            outcome = "cancelled"
            with trio.CancelScope() as caller:
                callers.append(caller)
                try:
                    await client.submit(Put("k", 1), timeout=0.5)
                    outcome = "answered"
                except OutcomeUnknownError:
                    outcome = "unknown"
            assert held == [1]
            if cut == "caller cancelled":
                assert caller.cancelled_caught and outcome == "cancelled"
            else:
                assert outcome == "unknown"
            # Command 2 applies only after command 1 (sequence order): it was resubmitted.
            with trio.fail_after(10):
                await client.submit(Put("k2", 2))
                assert await client.submit(Get("k")) == 1
