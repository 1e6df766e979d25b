"""Three PySyncObj nodes on loopback (benchmarks/pysyncobj_node.py), writes only.

Used by `bench_cluster.py --compare pysyncobj` (see compare.py). PySyncObj (from PyPI) has no
client protocol: as its users run it, the writers run inside one node, here the leader, with
batching off (appendEntriesUseBatch=False) and its journal in memory (no fsync). It offers no
linearizable or sequential reads through a client, so only the put rows are measured. The
client's CPU is the leader's: the cpu column has no client figure.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bench_cluster as bc
import trio

from copycat_trio.testing.processes import free_ports

NODE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pysyncobj_node.py")
OPS = ("put",)
READY_TIMEOUT = 30.0


def available() -> bool:
    return importlib.util.find_spec("pysyncobj") is not None


def version() -> str:
    try:
        from importlib.metadata import version as package_version

        return package_version("pysyncobj")
    except Exception:
        return "?"


class Node:
    """One node process, spoken to in JSON lines over its stdin and stdout."""

    def __init__(self, address: str, process: trio.Process) -> None:
        self.address = address
        self.process = process
        self.buffer = b""

    async def ask(self, msg: dict[str, Any], timeout: float) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        with trio.fail_after(timeout):
            await self.process.stdin.send_all(json.dumps(msg).encode() + b"\n")
            while b"\n" not in self.buffer:
                data = await self.process.stdout.receive_some(65536)
                if not data:
                    raise bc.BenchFailed(f"pysyncobj node {self.address} closed its output")
                self.buffer += data
        line, self.buffer = self.buffer.split(b"\n", 1)
        answer = json.loads(line)
        assert isinstance(answer, dict)
        return answer


class PySyncObjCluster:
    def __init__(self, workdir: Path, size: int = 3) -> None:
        self.workdir = workdir
        self.addresses = [f"127.0.0.1:{port}" for port in free_ports(size)]
        self.nodes: list[Node] = []

    async def start(self) -> None:
        for address in self.addresses:
            partners = [a for a in self.addresses if a != address]
            with open(self.workdir / f"{address.replace(':', '_')}.log", "ab") as log:
                process = await trio.lowlevel.open_process(
                    [sys.executable, NODE, address, *partners],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=log,
                    cwd=self.workdir,
                )
            self.nodes.append(Node(address, process))

    def log_tails(self, limit: int = 1500) -> str:
        parts = []
        for path in sorted(self.workdir.glob("*.log")):
            parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-limit:]}")
        return "\n".join(parts)

    async def wait_for_leader(self) -> Node:
        deadline = trio.current_time() + READY_TIMEOUT
        while trio.current_time() < deadline:
            exited = [n.address for n in self.nodes if n.process.returncode is not None]
            if exited:
                raise bc.BenchFailed(f"pysyncobj {exited} exited; logs follow\n{self.log_tails()}")
            rows = [await node.ask({"cmd": "status"}, timeout=5.0) for node in self.nodes]
            leaders = {row["leader"] for row in rows}
            if len(leaders) == 1 and all(row["ready"] for row in rows):
                (leader,) = leaders
                for node in self.nodes:
                    if node.address == leader:
                        return node
            await trio.sleep(0.1)
        raise bc.BenchFailed(f"pysyncobj elected no leader in {READY_TIMEOUT:.0f}s")

    async def aclose(self, grace: float = 5.0) -> None:
        """Close every node's input (it stops), then SIGTERM, then SIGKILL; reap them all."""
        with trio.CancelScope(shield=True):
            for node in self.nodes:
                if node.process.stdin is not None:
                    with contextlib.suppress(trio.BrokenResourceError):
                        await node.process.stdin.aclose()
            with trio.move_on_after(grace / 2):
                for node in self.nodes:
                    await node.process.wait()
            for node in self.nodes:
                if node.process.returncode is None:
                    node.process.terminate()
            with trio.move_on_after(grace / 2):
                for node in self.nodes:
                    await node.process.wait()
            for node in self.nodes:
                if node.process.returncode is None:
                    node.process.kill()
                    await node.process.wait()

    def kill_leftovers(self) -> None:
        for node in self.nodes:
            if node.process.returncode is None:
                node.process.kill()
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(node.process.pid, 0)


STARTED: list[PySyncObjCluster] = []


def kill_leftovers() -> None:
    for cluster in STARTED:
        cluster.kill_leftovers()


async def pysyncobj_run(args: Any, say: Callable[[str], None]) -> list[bc.PhaseResult]:
    """Start three nodes, run the put phases in the leader, stop them. Raises BenchFailed."""
    results: list[bc.PhaseResult] = []
    with tempfile.TemporaryDirectory(prefix="pysyncobj-bench-") as workdir:
        cluster = PySyncObjCluster(Path(workdir))
        STARTED.append(cluster)
        try:
            await cluster.start()
            leader = await cluster.wait_for_leader()
            say(
                f"pysyncobj: {', '.join(cluster.addresses)}; leader: {leader.address}; "
                "writers in the leader's process; batching off; journal in memory (no fsync)"
            )
            pids = {
                "leader" if node is leader else f"follower{n}": node.process.pid
                for n, node in enumerate(cluster.nodes, start=1)
            }
            for op, tasks in bc.phase_plan(args):
                if op not in OPS:
                    continue
                answer = await leader.ask(
                    {
                        "cmd": "run",
                        "tasks": tasks,
                        "warmup": args.warmup,
                        "seconds": args.seconds,
                        "max_ops": args.max_ops,
                        "op_timeout": args.op_timeout,
                        "value_bytes": args.value_bytes,
                        "pids": pids,
                    },
                    timeout=args.warmup + args.seconds + args.op_timeout + 30,
                )
                if "error" in answer:
                    raise bc.BenchFailed(f"pysyncobj: {answer['error']}")
                result = bc.PhaseResult(
                    op,
                    tasks,
                    ops=answer["ops"],
                    seconds=answer["seconds"],
                    ops_per_s=answer["ops"] / answer["seconds"] if answer["seconds"] else 0.0,
                    p50_ms=answer.get("p50_ms"),
                    p99_ms=answer.get("p99_ms"),
                    max_ms=answer.get("max_ms"),
                    errors=answer["errors"],
                    unknown=answer["unknown"],
                    error_samples=answer["samples"],
                    cpu=answer["cpu"],
                )
                results.append(result)
                say(bc.phase_line(result))
        except trio.TooSlowError as exc:
            raise bc.BenchFailed(
                f"pysyncobj: a node did not answer in time; logs follow\n{cluster.log_tails()}"
            ) from exc
        finally:
            await cluster.aclose()
    return results
