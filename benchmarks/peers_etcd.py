"""A 3-member etcd on loopback, driven through its JSON gateway by a Trio HTTP/1.1 client.

Used by `bench_cluster.py --compare etcd` (see compare.py). etcd is the Debian package
etcd-server (`/usr/bin/etcd`, 3.4 here): three `etcd` processes on free 127.0.0.1 ports, each
with its data directory in a temporary directory under $TMPDIR, etcd's defaults otherwise (it
fsyncs its WAL before it acknowledges, heartbeat 100 ms, election 1 s).

The client is this process: one h11 connection (keep-alive) per task, all to the leader,
POSTing the same load shape as the copycat_trio phases:

  put      /v3/kv/put   {"key": 16-byte key, "value": --value-bytes value}
  get-lin  /v3/kv/range {"key": k}                        linearizable (etcd's default: ReadIndex)
  get-seq  /v3/kv/range {"key": k, "serializable": true}  answered by the member asked

Keys and values travel base64-encoded, as the gateway's JSON mapping of bytes requires.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bench_cluster as bc
import h11
import trio

from copycat_trio.testing.processes import free_ports

ETCD = "etcd"
OPS = ("put", "get-lin", "get-seq")
"""The rows etcd has: a put, a linearizable range and a serializable range."""
READY_TIMEOUT = 30.0
HTTP_TIMEOUT = 5.0
RECEIVE_BYTES = 65536


def etcd_binary() -> str | None:
    return shutil.which(ETCD)


def etcd_version(binary: str) -> str:
    try:
        out = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return "?"
    return out.splitlines()[0].removeprefix("etcd Version: ") if out else "?"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


class HttpError(Exception):
    """A non-200 answer, a closed connection or a malformed response."""


class HttpConnection:
    """One keep-alive HTTP/1.1 connection (h11) to one server, one request at a time."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.stream: trio.SocketStream | None = None
        self.h11: h11.Connection | None = None

    async def _connect(self) -> None:
        self.stream = await trio.open_tcp_stream(self.host, self.port)
        self.h11 = h11.Connection(our_role=h11.CLIENT)

    async def aclose(self) -> None:
        if self.stream is not None:
            stream, self.stream, self.h11 = self.stream, None, None
            with trio.CancelScope(shield=True):
                await stream.aclose()

    async def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST a JSON body and return the JSON answer; on any failure the connection is
        dropped (the next call reconnects) and HttpError or OSError is raised."""
        try:
            return await self._post(path, json.dumps(body).encode())
        except BaseException:
            await self.aclose()
            raise

    async def _post(self, path: str, data: bytes) -> dict[str, Any]:
        if self.stream is None:
            await self._connect()
        assert self.stream is not None and self.h11 is not None
        conn = self.h11
        headers = [
            ("Host", f"{self.host}:{self.port}"),
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(data))),
        ]
        out = conn.send(h11.Request(method="POST", target=path, headers=headers))
        out += conn.send(h11.Data(data=data))
        out += conn.send(h11.EndOfMessage())
        await self.stream.send_all(out)
        status = 0
        chunks: list[bytes] = []
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                received = await self.stream.receive_some(RECEIVE_BYTES)
                conn.receive_data(received)  # b"" tells h11 the peer closed
                continue
            if isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                raise HttpError("connection closed by the server")
        body = b"".join(chunks)
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
        else:
            await self.aclose()
        if status != 200:
            raise HttpError(f"HTTP {status}: {body[:200]!r}")
        try:
            answer = json.loads(body)
        except ValueError:
            raise HttpError(f"not JSON: {body[:200]!r}") from None
        if not isinstance(answer, dict):
            raise HttpError(f"not a JSON object: {body[:200]!r}")
        return answer


class EtcdCluster:
    """Three etcd members on free loopback ports, data under `workdir`, always stopped by
    `aclose` (SIGTERM, SIGKILL after a grace period, reaped)."""

    def __init__(self, binary: str, workdir: Path, size: int = 3) -> None:
        self.binary = binary
        self.workdir = workdir
        ports = free_ports(2 * size)
        self.names = [f"m{i}" for i in range(1, size + 1)]
        self.client_ports = dict(zip(self.names, ports[:size], strict=True))
        self.peer_ports = dict(zip(self.names, ports[size:], strict=True))
        self.processes: dict[str, trio.Process] = {}
        self.leader: str | None = None
        self.token = f"bench-{os.getpid()}-{time.monotonic_ns()}"

    def command(self, name: str) -> list[str]:
        client = f"http://127.0.0.1:{self.client_ports[name]}"
        peer = f"http://127.0.0.1:{self.peer_ports[name]}"
        cluster = ",".join(f"{n}=http://127.0.0.1:{self.peer_ports[n]}" for n in self.names)
        return [
            self.binary,
            "--name",
            name,
            "--data-dir",
            str(self.workdir / f"{name}.etcd"),
            "--listen-client-urls",
            client,
            "--advertise-client-urls",
            client,
            "--listen-peer-urls",
            peer,
            "--initial-advertise-peer-urls",
            peer,
            "--initial-cluster",
            cluster,
            "--initial-cluster-state",
            "new",
            "--initial-cluster-token",
            self.token,
            "--logger",
            "zap",
            "--log-level",
            "warn",
        ]

    async def start(self) -> None:
        for name in self.names:
            with open(self.workdir / f"{name}.log", "ab") as log:
                self.processes[name] = await trio.lowlevel.open_process(
                    self.command(name),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.workdir,
                )

    def pids(self) -> dict[str, int]:
        return {name: p.pid for name, p in self.processes.items()}

    def exited(self) -> list[str]:
        return [name for name, p in self.processes.items() if p.returncode is not None]

    async def aclose(self, grace: float = 5.0) -> None:
        """SIGTERM the followers, then the leader, each SIGKILLed if still there after
        `grace`; all reaped. (A leader stopped first hands its leadership to a follower
        first, which with the followers being stopped too took 7 s; without followers it
        stops at once.)"""
        with trio.CancelScope(shield=True):
            names = sorted(self.processes, key=lambda n: n == self.leader)
            followers = [self.processes[n] for n in names if n != self.leader]
            leader = [self.processes[n] for n in names if n == self.leader]
            for group in (followers, leader):
                running = [p for p in group if p.returncode is None]
                for p in running:
                    p.send_signal(signal.SIGTERM)
                with trio.move_on_after(grace):
                    for p in running:
                        await p.wait()
                for p in running:
                    if p.returncode is None:
                        p.kill()
                        await p.wait()

    def kill_leftovers(self) -> None:
        """Synchronous last resort, outside Trio."""
        for p in self.processes.values():
            if p.returncode is None:
                p.kill()
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(p.pid, 0)

    def log_tails(self, limit: int = 1500) -> str:
        parts = []
        for name in self.names:
            path = self.workdir / f"{name}.log"
            text = path.read_text(errors="replace") if path.exists() else ""
            parts.append(f"--- etcd {name}\n{text[-limit:]}")
        return "\n".join(parts)

    async def wait_for_leader(self) -> str:
        """The name of the member every member names as leader (all three must answer)."""
        deadline = trio.current_time() + READY_TIMEOUT
        last = ""
        while trio.current_time() < deadline:
            if self.exited():
                raise bc.BenchFailed(
                    f"etcd {self.exited()} exited; logs follow\n{self.log_tails()}"
                )
            ids: dict[str, str] = {}
            leaders: set[str] = set()
            for name in self.names:
                connection = HttpConnection("127.0.0.1", self.client_ports[name])
                try:
                    with trio.fail_after(1.0):
                        status = await connection.post("/v3/maintenance/status", {})
                    ids[name] = str(status["header"]["member_id"])
                    leaders.add(str(status.get("leader", "0")))
                except (OSError, HttpError, KeyError, trio.TooSlowError) as exc:
                    last = f"{name}: {type(exc).__name__}: {exc}"
                finally:
                    await connection.aclose()
            if len(ids) == len(self.names) and len(leaders) == 1:
                (leader,) = leaders
                for name, member_id in ids.items():
                    if member_id == leader:
                        self.leader = name
                        return name
            await trio.sleep(0.1)
        raise bc.BenchFailed(
            f"etcd elected no leader in {READY_TIMEOUT:.0f}s ({last}); logs follow\n"
            + self.log_tails()
        )


class EtcdPhase(bc.Phase):
    """N tasks, each with its own connection to the leader, posting back to back."""

    def __init__(self, op: str, tasks: int, args: Any, port: int) -> None:
        super().__init__(op, tasks, args.max_ops, args.value_bytes, args.read_keys)
        self.port = port
        self.value_b64 = b64(self.value)

    def request(self, task: int, i: int) -> tuple[str, dict[str, Any], Callable[[Any], str | None]]:
        """The path and body of a task's i-th operation, and a check of its answer."""
        if self.result.op == "put":
            return (
                "/v3/kv/put",
                {"key": b64(bc.write_key(task, i)), "value": self.value_b64},
                lambda answer: None,
            )
        n = bc.read_index(task, i, self.read_keys)
        body: dict[str, Any] = {"key": b64(bc.read_key(n))}
        if self.result.op == "get-seq":
            body["serializable"] = True
        expected = b64(bc.read_value(n, self.value_bytes))

        def check(answer: Any) -> str | None:
            kvs = answer.get("kvs") or [{}]
            if kvs[0].get("value") != expected:
                return f"range {bc.read_key(n)!r} answered {answer!r:.200}"
            return None

        return "/v3/kv/range", body, check

    async def etcd_worker(self, task: int, op_timeout: float) -> None:
        connection = HttpConnection("127.0.0.1", self.port)
        try:
            i = 0
            while not self.stopping:
                path, body, check = self.request(task, i)
                i += 1
                started = time.perf_counter()
                try:
                    with trio.fail_after(op_timeout):
                        answer = await connection.post(path, body)
                except trio.TooSlowError:
                    self.note_error(f"no answer within {op_timeout}s", unknown=True)
                    await trio.sleep(bc.ERROR_PAUSE)
                    continue
                except (OSError, HttpError, h11.ProtocolError) as exc:
                    self.note_error(f"{type(exc).__name__}: {exc}")
                    await trio.sleep(bc.ERROR_PAUSE)
                    continue
                finished = time.perf_counter()
                problem = check(answer)
                if problem is not None:
                    self.note_error(problem)
                    await trio.sleep(bc.ERROR_PAUSE)
                    continue
                if self.recording and started >= self.window_start:
                    self.latencies.append(finished - started)
                    if len(self.latencies) >= self.max_ops:
                        self.full.set()
        finally:
            await connection.aclose()


async def run_etcd_phase(
    cluster: EtcdCluster, leader: str, op: str, tasks: int, args: Any
) -> bc.PhaseResult:
    """One phase against the leader, with the window, percentiles and CPU accounting of
    bench_cluster.run_phase (the client's CPU is this process's)."""
    phase = EtcdPhase(op, tasks, args, cluster.client_ports[leader])
    roles = {name: "leader" if name == leader else f"follower{name[1:]}" for name in cluster.names}
    pids = cluster.pids()
    async with trio.open_nursery() as nursery:
        for task in range(tasks):
            nursery.start_soon(phase.etcd_worker, task, args.op_timeout)
        await trio.sleep(args.warmup)
        window, cpu = await bc.measure_window(phase, pids, roles, leader, args.seconds)
        phase.stopping = True
        nursery.cancel_scope.deadline = trio.current_time() + args.op_timeout + bc.DRAIN_GRACE
    return bc.finish_result(phase, window, cpu)


async def seed(port: int, value_bytes: int, read_keys: int) -> None:
    """Put the keys the read phases read, over 32 connections."""

    async def writer(start: int) -> None:
        connection = HttpConnection("127.0.0.1", port)
        try:
            for n in range(start, read_keys, 32):
                with trio.fail_after(HTTP_TIMEOUT):
                    await connection.post(
                        "/v3/kv/put",
                        {"key": b64(bc.read_key(n)), "value": b64(bc.read_value(n, value_bytes))},
                    )
        finally:
            await connection.aclose()

    async with trio.open_nursery() as nursery:
        for start in range(32):
            nursery.start_soon(writer, start)


STARTED: list[EtcdCluster] = []
"""Every cluster started in this process, for the synchronous last resort."""


def kill_leftovers() -> None:
    for cluster in STARTED:
        cluster.kill_leftovers()


async def etcd_run(args: Any, say: Callable[[str], None], binary: str) -> list[bc.PhaseResult]:
    """Start three members, run the phases etcd has, stop them. Raises BenchFailed."""
    results: list[bc.PhaseResult] = []
    with tempfile.TemporaryDirectory(prefix="etcd-bench-") as workdir:
        cluster = EtcdCluster(binary, Path(workdir))
        STARTED.append(cluster)
        try:
            await cluster.start()
            leader = await cluster.wait_for_leader()
            say(
                "etcd: "
                + ", ".join(f"{n}=127.0.0.1:{cluster.client_ports[n]}" for n in cluster.names)
                + f"; leader: {leader}; client goes to the leader; data in {workdir}"
            )
            port = cluster.client_ports[leader]
            try:
                if args.reads:
                    await seed(port, args.value_bytes, args.read_keys)
                for op, tasks in bc.phase_plan(args):
                    if op not in OPS:
                        continue
                    result = await run_etcd_phase(cluster, leader, op, tasks, args)
                    results.append(result)
                    say(bc.phase_line(result))
            except (OSError, HttpError, trio.TooSlowError) as exc:
                raise bc.BenchFailed(
                    f"etcd: {type(exc).__name__}: {exc}; logs follow\n{cluster.log_tails()}"
                ) from exc
            if cluster.exited():
                raise bc.BenchFailed(f"etcd {cluster.exited()} exited during the run")
        finally:
            await cluster.aclose()
    return results
