"""Log time follows the monotonic clock and only slews toward a stepped wall clock."""

from __future__ import annotations

import pytest

from copycat_trio.server.log_clock import LogClock


class Clocks:
    def __init__(self) -> None:
        self.wall_ms = 1_000_000
        self.mono = 50.0
        self.floor = 0

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.wall_ms += int(seconds * 1000)

    def log_clock(self, **options: float) -> LogClock:
        return LogClock(
            lambda: self.wall_ms, lambda: self.mono, floor=lambda: self.floor, **options
        )


def test_first_reading_is_the_wall_clock_and_then_it_keeps_pace() -> None:
    clocks = Clocks()
    clock = clocks.log_clock()
    assert clock() == 1_000_000
    clocks.advance(2.5)
    assert clock() == 1_002_500


def test_a_forward_step_is_absorbed_slowly() -> None:
    clocks = Clocks()
    clock = clocks.log_clock()
    clock()
    clocks.wall_ms += 60_000  # an operator steps the clock a minute ahead
    clocks.advance(1.0)
    assert clock() == 1_001_100  # one second, plus at most 10% of it
    for _ in range(100):
        clocks.advance(1.0)
        clock()
    assert clock() == 1_000_000 + 101_000 + 10_100  # 101 s elapsed, 10.1 s of the step absorbed
    for _ in range(600):  # after S / 10% seconds the step is fully absorbed
        clocks.advance(1.0)
        clock()
    assert clock() == clocks.wall_ms


def test_a_backward_step_never_turns_log_time_back() -> None:
    clocks = Clocks()
    clock = clocks.log_clock()
    clock()
    clocks.wall_ms -= 30_000
    readings = []
    for _ in range(50):
        clocks.advance(0.1)
        readings.append(clock())
    assert readings == sorted(readings)
    assert readings[-1] == 1_000_000 + 5_000 - 500  # 5 s passed, 0.9 of it in log time


def test_never_below_the_floor() -> None:
    clocks = Clocks()
    clocks.floor = 2_000_000  # an earlier leader's clock was ahead of ours
    clock = clocks.log_clock()
    assert clock() == 2_000_000
    clocks.advance(1.0)
    assert clock() == 2_000_900  # slews toward our wall clock (0.9 s per second), from the floor


def test_readings_without_time_passing_agree() -> None:
    clocks = Clocks()
    clock = clocks.log_clock()
    clocks.wall_ms += 10_000
    assert clock() == clock() == clocks.wall_ms


def test_slew_is_checked() -> None:
    with pytest.raises(ValueError):
        Clocks().log_clock(max_slew=1.0)


@pytest.mark.parametrize("step_ms", [0, 60_000, -60_000])  # slewing fast, not at all, slow
def test_waking_after_seconds_until_reaches_a_deadline_without_passing_it(step_ms: int) -> None:
    """The leader sleeps `seconds_until` a session's deadline and reads again: it never reads
    past the deadline by more than a millisecond, however log time slews, and gets there in a
    few wake-ups."""
    clocks = Clocks()
    clock = clocks.log_clock()
    clock()
    clocks.wall_ms += step_ms
    deadline = clock() + 1_500
    wakeups, now = 0, clock()
    while now < deadline:
        clocks.advance(max(clock.seconds_until(deadline, now), 0.001))
        now = clock()
        wakeups += 1
    assert deadline <= now <= deadline + 1 and wakeups <= 6, (now - deadline, wakeups)
    assert clock.seconds_until(deadline, deadline + 5) == 0
