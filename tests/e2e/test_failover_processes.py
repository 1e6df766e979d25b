"""Failover trials on real processes: after the leader is killed or cut off, every client that
talks through its own member writes again, and no client call fails for the failover (a short
run; `nox -s failover` runs 20 trials and checks the time goal)."""

from __future__ import annotations

from pathlib import Path

from copycat_trio.testing.failover import FailoverConfig, run_failover


async def test_every_client_writes_again_after_each_leader_loss(tmp_path: Path) -> None:
    # Isolation needs network namespaces; where they cannot be made only kills are played.
    config = FailoverConfig(trials=2, election_timeout=0.5, heartbeat_interval=0.1)
    report = await run_failover(config, tmp_path)
    print(report.format())
    assert not report.problems, report.format()
    assert len(report.recoveries) == 2
    assert all(r.every is not None and r.clients == 3 for r in report.recoveries), report.format()
    assert not report.errors, report.format()
