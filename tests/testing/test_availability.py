"""The recovery arithmetic behind the nemesis's and the failover trials' figures."""

from __future__ import annotations

from copycat_trio.testing.availability import recovery_after, summarize


def test_first_and_every_client_recovery_after_a_fault() -> None:
    writes = [("a", 0.9, 1.0), ("b", 1.4, 1.5), ("a", 3.9, 4.0), ("b", 6.4, 6.5), ("c", 2.9, 3.0)]
    # b's answer that was under way when the fault struck is no sign of recovery.
    writes.append(("b", 1.9, 2.1))
    recovery = recovery_after("kill", 2.0, writes)
    # c first wrote after the fault: it is not an existing client, but its write counts first.
    assert recovery.first == 1.0
    assert recovery.every == 4.5  # b, which wrote before the fault, waited until 6.5
    assert recovery.clients == 2


def test_a_client_that_never_writes_again_is_unrecovered() -> None:
    recovery = recovery_after("pause", 2.0, [("a", 0, 1.0), ("b", 0, 1.0), ("a", 2.5, 3.0)])
    assert recovery.first == 1.0
    assert recovery.every is None
    stats = summarize([recovery])
    assert stats[0].unrecovered == 1
    assert "never recovered" in stats[0].format()
    assert "every client" not in stats[0].format(every=False)


def test_summary_gives_median_and_worst_per_kind_in_order() -> None:
    writes = [("a", 0.0, 0.5)]
    recoveries = [
        recovery_after("kill", 1.0, [*writes, ("a", 1.0, 2.0)]),
        recovery_after("kill", 1.0, [*writes, ("a", 1.0, 4.0)]),
        recovery_after("kill", 1.0, [*writes, ("a", 1.0, 1.5)]),
        recovery_after("pause", 1.0, [*writes, ("a", 1.0, 1.25)]),
    ]
    stats = summarize(recoveries)
    assert [s.kind for s in stats] == ["kill", "pause"]
    kill = stats[0]
    assert (kill.faults, kill.first_median, kill.first_worst) == (3, 1.0, 3.0)
    assert (kill.every_median, kill.every_worst, kill.unrecovered) == (1.0, 3.0, 0)
    assert stats[1].first_worst == 0.25
