"""Timers are replicated state: the simulation's state machine schedules them, and a member
whose timers diverge (issue 10's bug 5: timers left out of snapshots, or an install that neither
clears nor rebuilds them) fails the seed through the timer checks."""

from __future__ import annotations

from typing import Any

import pytest

from copycat_trio.server.executor import Executor
from copycat_trio.testing.invariants import Applied, InvariantChecker
from copycat_trio.testing.sim_machine import Emit, Firing
from copycat_trio.testing.simulation import run_simulation

SEED = 14
"""A seed of the snapshots profile (seed % 8 == 6) whose members install snapshots."""


def test_members_that_fired_different_timers_before_an_index_are_reported() -> None:
    checker = InvariantChecker()
    checker.on_apply(Applied(1, 9, 5, 1, Emit("e0", "a"), None, timers="aaaa"))
    checker.on_apply(Applied(2, 9, 5, 1, Emit("e0", "a"), None, timers="bbbb"))
    (problem,) = checker.violations
    assert problem.startswith("timer safety: members 1 and 2 fired different timer callbacks")


def test_a_firing_that_differs_between_members_is_reported() -> None:
    checker = InvariantChecker()
    checker.on_fire(1, Firing(8, 100, 0, "t0a", ["ring", 1, []], 1))
    checker.on_fire(2, Firing(8, 100, 0, "t0a", ["ring", 1, []], 1))
    assert checker.ok
    checker.on_fire(3, Firing(8, 100, 2, "t0b", ["ring", 1, []], 1))
    (problem,) = checker.violations
    assert "timer firing #1" in problem and "on member 3" in problem


def _snapshots_drop_timers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Executor, "_timer_records", lambda self: [])


def _install_keeps_old_timers(monkeypatch: pytest.MonkeyPatch) -> None:
    adopt = Executor._adopt

    def keep(self: Executor, *args: Any) -> None:
        timers, sequence = self._timers, self._timer_sequence
        adopt(self, *args)
        self._timers, self._timer_sequence = timers, sequence

    monkeypatch.setattr(Executor, "_adopt", keep)


def test_the_seed_passes_with_timers_in_snapshots() -> None:
    result = run_simulation(SEED, profile="snapshots")
    assert result.ok, result.report()


@pytest.mark.parametrize("bug", [_snapshots_drop_timers, _install_keeps_old_timers])
def test_bug_5_fails_the_seed_through_the_timer_checks(
    bug: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    bug(monkeypatch)
    result = run_simulation(SEED, profile="snapshots")
    assert not result.ok
    assert any(v.startswith("timer safety:") for v in result.violations), result.failures()
