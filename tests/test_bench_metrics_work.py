"""`benchmarks/metrics_work.py`: it records the metric hooks each member calls during puts (and
puts the servers' own count_request back), replays them, and reads the leader's CPU per put of
a `--metrics-cost --json` file."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import trio

from copycat_trio.server import connections as server_module
from copycat_trio.server import metrics

sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))
import metrics_work


def test_the_members_hook_calls_are_recorded_and_replayed(tmp_path: Path) -> None:
    puts, calls = trio.run(metrics_work.record_puts, 2, 20, tmp_path)
    assert puts == 20
    assert server_module.count_request is metrics.count_request
    assert set(calls) == {"leader", "follower#1", "follower#2"}
    leader = {kind for kind, _ in calls["leader"]}
    assert leader >= {"count", "sent", "answered", "batch", "fsync"}
    assert sum(1 for kind, _ in calls["leader"] if kind == "count") >= 20
    for follower in ("follower#1", "follower#2"):
        assert {kind for kind, _ in calls[follower]} >= {"batch", "fsync"}
    assert metrics_work.replay_cpu(calls["leader"], 3) > 0


def test_the_leaders_cpu_per_put_comes_from_the_metrics_off_runs(tmp_path: Path) -> None:
    def run(tasks: int, ops_per_s: float, leader: float) -> dict[str, object]:
        return {"op": "put", "tasks": tasks, "ops_per_s": ops_per_s, "cpu": {"leader": leader}}

    path = tmp_path / "ab.json"
    off = [[run(1, 100, 50.0), run(64, 400, 80.0)], [run(1, 200, 50.0)], [run(1, 100, 30.0)]]
    on = [[run(1, 1, 100.0)]]
    path.write_text(json.dumps({"runs": {"metrics-off": off, "metrics-on": on}}))
    # 50% of a core at 100/s is 5,000 µs a put; at 200/s 2,500; 30% at 100/s 3,000.
    assert metrics_work.leader_us_per_put(str(path)) == {
        1: pytest.approx(3000.0),
        64: pytest.approx(2000.0),
    }
