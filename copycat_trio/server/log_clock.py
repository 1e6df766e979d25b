"""The time a leader stamps on its log entries: monotonic, slewed toward the wall clock.

Log time drives session expiry and the state machine's scheduled callbacks on every member, so it
must not jump when an operator or NTP steps the leader's wall clock: a forward step of a minute
would expire every session at once, a backward one would stall timers. `LogClock` therefore
advances with the monotonic clock and corrects toward the wall clock by at most `max_slew` (10%)
of the time elapsed, never going backwards: a step of S seconds is absorbed over S / max_slew
seconds, during which log time runs at most 10% fast or slow. Its first reading (and one after a
long silence, where 10% of the silence covers the step anyway) is the wall clock.

Pure: the two clocks are passed in.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["LogClock"]


class LogClock:
    """Callable: milliseconds of log time now; see the module docstring."""

    def __init__(
        self,
        wall_ms: Callable[[], int],
        monotonic: Callable[[], float],
        *,
        max_slew: float = 0.1,
        floor: Callable[[], int] = lambda: 0,
    ) -> None:
        """`monotonic` is in seconds; `floor` is a log time never to stamp below (the last
        applied entry's, so that a new leader whose wall clock is behind does not stall)."""
        if not 0 <= max_slew < 1:
            raise ValueError("max_slew must be in [0, 1)")
        self._wall_ms = wall_ms
        self._monotonic = monotonic
        self._floor = floor
        self.max_slew = max_slew
        self._last_ms: int | None = None
        self._last_monotonic = 0.0

    def __call__(self) -> int:
        now = self._monotonic()
        wall = self._wall_ms()
        if self._last_ms is None:
            stamp = wall
        else:
            elapsed = max(0.0, now - self._last_monotonic) * 1000
            steady = self._last_ms + elapsed
            limit = elapsed * self.max_slew
            stamp = round(steady + min(max(wall - steady, -limit), limit))
            stamp = max(stamp, self._last_ms)
        stamp = max(stamp, self._floor())
        self._last_ms = stamp
        self._last_monotonic = now
        return stamp

    def seconds_until(self, log_ms: int, now_ms: int) -> float:
        """The monotonic seconds that must pass, at the least, before this clock can read
        `log_ms` after reading `now_ms` (0 if it has): it runs at most 1 + max_slew as fast.
        Waiting that long and reading again reaches a log-time deadline without overshooting
        it, in a few wake-ups: each leaves at most 2 max_slew / (1 + max_slew) of what was
        left (under a fifth), and none at all when log time runs at full slew."""
        return max(0, log_ms - now_ms) / 1000 / (1 + self.max_slew)
