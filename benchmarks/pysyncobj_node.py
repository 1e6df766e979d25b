"""One PySyncObj node holding a replicated dict, driven over stdin/stdout by peers_pysyncobj.py.

    python benchmarks/pysyncobj_node.py SELF_ADDRESS PARTNER_ADDRESS...

As PySyncObj's users run it: the writers run inside the node's own process (it has no client
protocol), appendEntriesUseBatch=False (each command is sent at once, not on the next 0.1 s
tick), and the journal in memory (no journalFile: nothing is written, so nothing is fsynced).

Commands, one JSON object a line on stdin, each answered by one JSON line on stdout:
  {"cmd": "status"}  -> {"self", "leader", "ready"}
  {"cmd": "run", "tasks", "warmup", "seconds", "max_ops", "op_timeout", "value_bytes", "pids"}
      on the leader: `tasks` commands kept outstanding with the callback API (a finished one
      issues the next), the same warm-up, window and nearest-rank percentiles as
      bench_cluster.py, and the CPU of each process in `pids` (role -> pid) over the window
  {"cmd": "quit"} or end of input -> the node stops
"""

from __future__ import annotations

import json
import math
import os
import sys
import threading
import time
from typing import Any

from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, replicated

TICKS = os.sysconf("SC_CLK_TCK")


class ReplicatedDict(SyncObj):
    def __init__(self, self_address: str, partners: list[str]) -> None:
        conf = SyncObjConf(appendEntriesUseBatch=False, dynamicMembershipChange=False)
        super().__init__(self_address, partners, conf)
        self.data: dict[str, str] = {}

    @replicated
    def set(self, key: str, value: str) -> None:
        self.data[key] = value


def cpu_seconds(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICKS
    except (OSError, IndexError, ValueError):
        return None


def busy_seconds() -> float | None:
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    return (sum(fields[:8]) - fields[3] - fields[4]) / TICKS


def waiting_seconds(pid: int) -> float | None:
    """Run-queue wait of all the process's live threads (the tick thread does the work)."""
    try:
        total = 0
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    total += int(f.read().split()[1])
            except FileNotFoundError:
                continue
        return total / 1e9
    except (OSError, IndexError, ValueError):
        return None


def percentile(values: list[float], q: float) -> float:
    rank = max(1, min(len(values), math.ceil(q * len(values))))
    return values[rank - 1]


class Run:
    """`tasks` commands outstanding; each callback records its latency and issues the next."""

    def __init__(self, node: ReplicatedDict, msg: dict[str, Any]) -> None:
        self.node = node
        self.max_ops = int(msg["max_ops"])
        self.value = "v" * int(msg["value_bytes"])
        self.lock = threading.Lock()
        self.latencies: list[float] = []
        self.recording = False
        self.window_start = 0.0
        self.stopping = False
        self.outstanding = 0
        self.drained = threading.Event()
        self.full = threading.Event()
        self.errors = 0
        self.samples: list[str] = []

    def issue(self, task: int, i: int) -> None:
        key = f"w{task:04d}{i % 10**11:011d}"
        started = time.perf_counter()

        def done(result: Any, error: int) -> None:
            finished = time.perf_counter()
            with self.lock:
                self.outstanding -= 1
                if error != FAIL_REASON.SUCCESS:
                    self.errors += 1
                    if len(self.samples) < 5:
                        self.samples.append(f"set failed: FAIL_REASON {error}")
                elif self.recording and started >= self.window_start:
                    self.latencies.append(finished - started)
                    if len(self.latencies) >= self.max_ops:
                        self.full.set()
                if self.stopping or error != FAIL_REASON.SUCCESS:
                    if self.outstanding == 0:
                        self.drained.set()
                    return  # a failed task stops: its errors fail the run
                self.outstanding += 1
            self.issue(task, i + 1)

        self.node.set(key, self.value, callback=done)


def run(node: ReplicatedDict, msg: dict[str, Any]) -> dict[str, Any]:
    leader = node._getLeader()
    if leader is None or str(leader) != str(node.selfNode):
        return {"error": f"not the leader (leader: {leader})"}
    state = Run(node, msg)
    tasks = int(msg["tasks"])
    with state.lock:
        state.outstanding = tasks
    for task in range(tasks):
        state.issue(task, 0)
    time.sleep(float(msg["warmup"]))
    pids: dict[str, int] = msg["pids"]
    before = {role: cpu_seconds(pid) for role, pid in pids.items()}
    busy_before = busy_seconds()
    wait_before = waiting_seconds(os.getpid())
    with state.lock:
        state.window_start = time.perf_counter()
        state.recording = True
    state.full.wait(float(msg["seconds"]))
    with state.lock:
        state.recording = False
        window = time.perf_counter() - state.window_start
        latencies = sorted(state.latencies)
    after = {role: cpu_seconds(pid) for role, pid in pids.items()}
    busy_after = busy_seconds()
    wait_after = waiting_seconds(os.getpid())
    with state.lock:
        state.stopping = True
        if state.outstanding == 0:
            state.drained.set()
    drained = state.drained.wait(float(msg["op_timeout"]))

    def pct(b: float | None, a: float | None) -> float | None:
        return None if a is None or b is None or window <= 0 else 100 * (a - b) / window

    cpu = {role: pct(before[role], after[role]) for role in pids}
    cpu["machine"] = pct(busy_before, busy_after)
    cpu["leader_waiting"] = pct(wait_before, wait_after)
    answer: dict[str, Any] = {
        "ops": len(latencies),
        "seconds": window,
        "errors": state.errors,
        "unknown": 0 if drained else state.outstanding,
        "samples": state.samples,
        "cpu": cpu,
    }
    if latencies:
        answer.update(
            p50_ms=percentile(latencies, 0.5) * 1000,
            p99_ms=percentile(latencies, 0.99) * 1000,
            max_ms=latencies[-1] * 1000,
        )
    return answer


def main() -> None:
    node = ReplicatedDict(sys.argv[1], sys.argv[2:])
    try:
        for line in sys.stdin:
            msg = json.loads(line)
            if msg["cmd"] == "quit":
                break
            if msg["cmd"] == "status":
                leader = node._getLeader()
                answer = {
                    "self": str(node.selfNode),
                    "leader": None if leader is None else str(leader),
                    "ready": node.isReady(),
                }
            elif msg["cmd"] == "run":
                answer = run(node, msg)
            else:
                answer = {"error": f"unknown command {msg['cmd']!r}"}
            sys.stdout.write(json.dumps(answer) + "\n")
            sys.stdout.flush()
    finally:
        node.destroy_synchronous()


if __name__ == "__main__":
    main()
