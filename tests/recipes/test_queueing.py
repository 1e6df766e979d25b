"""The lock's and the election's shared queue rules, without a cluster."""

from __future__ import annotations

from collections import deque
from typing import Any, cast

import pytest

from copycat_trio.recipes.election import Election
from copycat_trio.recipes.lock import Lock
from copycat_trio.recipes.queueing import next_live_session
from copycat_trio.state_machine import ServerSession


class _Open:
    def __init__(self, session_id: int) -> None:
        self.id = session_id


def test_closed_sessions_are_passed_over_and_dropped() -> None:
    sessions = cast(dict[int, ServerSession], {3: _Open(3), 5: _Open(5)})
    for queue in (deque([1, 2, 3, 4, 5]), [1, 2, 3, 4, 5]):
        first = next_live_session(queue, sessions)
        assert first is not None and first.id == 3
        assert list(queue) == [4, 5]
        second = next_live_session(queue, sessions)
        assert second is not None and second.id == 5
        assert next_live_session(queue, sessions) is None and not queue


@pytest.mark.parametrize("recipe", [Lock, Election])
def test_a_recipe_refuses_what_is_not_a_client_at_once(recipe: Any) -> None:
    with pytest.raises(TypeError, match="needs a CopycatClient, not str"):
        recipe("not a client", "jobs")
