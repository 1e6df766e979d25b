"""Real `python -m copycat_trio serve` processes, for end-to-end tests and fault runs.

`ProcessCluster` starts N members, each logging to its own file, and can SIGKILL, SIGSTOP and
SIGCONT them and start them again (with disk storage they recover their log). By default they
listen on free 127.0.0.1 ports; given `addresses` and a `command_prefix` (say, `ip netns exec
NS`), they run wherever the prefix puts them. `aclose` always stops every process it started
(SIGCONT, then SIGTERM, then SIGKILL after a grace period) and reaps it.

This is the one place that builds the `serve` command line: the `copycat-trio demo` command and
the soak and cluster benchmarks start their servers through `ProcessCluster` as well.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import attrs
import trio

from ..client.status import collect_status

__all__ = ["Agreement", "ProcessCluster", "ServerProcess", "free_ports"]


def free_ports(count: int) -> list[int]:
    """Ports the kernel just handed out on 127.0.0.1 (closed again for the servers to take)."""
    sockets = []
    for _ in range(count):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        sockets.append(s)
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@attrs.define(eq=False)
class ServerProcess:
    """One member: its id, address, log file and (once started) its OS process."""

    member_id: int
    address: str
    log_path: Path
    process: trio.Process | None = None
    paused: bool = False
    metrics_address: str | None = None
    """Where it serves /metrics, /health and /ready (ProcessCluster(metrics=True))."""

    @property
    def running(self) -> bool:
        """Started and not exited (a SIGSTOPped process counts as running)."""
        return self.process is not None and self.process.returncode is None

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.returncode

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


@attrs.frozen
class Agreement:
    """Every asked member names the same leader, and that leader says it leads."""

    leader: int
    term: int
    rows: list[dict[str, Any]]


class ProcessCluster:
    """N `copycat-trio serve` child processes forming one cluster from the start."""

    def __init__(
        self,
        workdir: Path,
        size: int = 3,
        *,
        state_machine: str | None = None,
        election_timeout: float | None = 0.5,
        heartbeat_interval: float | None = 0.1,
        storage: str = "disk",
        snapshot_every: int | None = None,
        addresses: Sequence[str] | None = None,
        command_prefix: Callable[[int], Sequence[str]] | None = None,
        pythonpath: Sequence[str | Path] = (),
        metrics: bool = False,
        serve_options: Callable[[int], Sequence[str]] | None = None,
    ) -> None:
        """`state_machine` is `module:Class` (default: the key-value store), importable in
        the children with `pythonpath` prepended to PYTHONPATH. `addresses` (one per member,
        default free 127.0.0.1 ports) are where members listen; `command_prefix(member_id)` is
        put before each member's command line. `election_timeout` and `heartbeat_interval` are
        in seconds; None passes no option, leaving `serve`'s own default. `metrics`: each member
        serves metrics and health on a free 127.0.0.1 port of its own (`metrics_address`).
        `serve_options(member_id)`: more `serve` options for a member (say, --tls-cert ...)."""
        if addresses is not None and len(addresses) != size:
            raise ValueError(f"{size} members need {size} addresses, not {len(addresses)}")
        self.workdir = workdir
        self.storage = storage
        self.snapshot_every = snapshot_every
        self.state_machine = state_machine
        self.election_timeout = election_timeout
        self.heartbeat_interval = heartbeat_interval
        self.command_prefix = command_prefix
        self.pythonpath = [str(p) for p in pythonpath]
        self.serve_options = serve_options
        if addresses is None:
            addresses = [f"127.0.0.1:{port}" for port in free_ports(size)]
        self.servers: dict[int, ServerProcess] = {
            i: ServerProcess(i, address, workdir / f"server{i}.log")
            for i, address in enumerate(addresses, start=1)
        }
        self.members = ",".join(f"{i}={s.address}" for i, s in self.servers.items())
        if metrics:
            taken = set(addresses)
            spare = [f"127.0.0.1:{p}" for p in free_ports(2 * size)]
            for server, address in zip(
                self.servers.values(), [a for a in spare if a not in taken], strict=False
            ):
                server.metrics_address = address

    # --- addresses -------------------------------------------------------------------------

    def address(self, member_id: int) -> str:
        return self.servers[member_id].address

    def addresses(self, ids: Iterable[int] | None = None) -> list[str]:
        return [self.servers[i].address for i in (self.servers if ids is None else ids)]

    def ids(self) -> list[int]:
        return list(self.servers)

    def running_ids(self) -> list[int]:
        return [i for i, s in self.servers.items() if s.running]

    # --- lifecycle -------------------------------------------------------------------------

    def _command(self, member_id: int) -> list[str]:
        """A member's whole command line: the prefix, then `python -m copycat_trio serve ...`.
        A subclass may override it to run the server another way (say, under a profiler)."""
        prefix = list(self.command_prefix(member_id)) if self.command_prefix else []
        return [*prefix, sys.executable, "-m", "copycat_trio", *self.serve_arguments(member_id)]

    def serve_arguments(self, member_id: int) -> list[str]:
        """`serve` and its options for one member: what follows `python -m copycat_trio`."""
        machine = ["--state-machine", self.state_machine] if self.state_machine else []
        timing = []
        if self.election_timeout is not None:
            timing += ["--election-timeout", str(self.election_timeout)]
        if self.heartbeat_interval is not None:
            timing += ["--heartbeat-interval", str(self.heartbeat_interval)]
        return [
            "serve",
            "--id",
            str(member_id),
            "--members",
            self.members,
            *machine,
            *timing,
            *self._storage_options(member_id),
            *self._metrics_options(member_id),
            *(self.serve_options(member_id) if self.serve_options else ()),
        ]

    def _metrics_options(self, member_id: int) -> list[str]:
        address = self.servers[member_id].metrics_address
        return [] if address is None else ["--metrics-address", address]

    def _storage_options(self, member_id: int) -> list[str]:
        if self.storage == "memory":
            return ["--storage", "memory"]
        options = ["--data-dir", str(self.data_dir(member_id))]
        if self.snapshot_every is not None:
            options += ["--snapshot-every", str(self.snapshot_every)]
        return options

    def data_dir(self, member_id: int) -> Path:
        return self.workdir / f"data{member_id}"

    async def start(self, ids: Iterable[int] | None = None) -> None:
        """Start members' processes (no wait for an election: see wait_for_leader). A member
        whose process ended may start again only with disk storage."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (*self.pythonpath, env.get("PYTHONPATH", "")) if p
        )
        env["PYTHONUNBUFFERED"] = "1"
        for member_id in self.servers if ids is None else ids:
            server = self.servers[member_id]
            if server.process is not None and (server.running or self.storage == "memory"):
                raise RuntimeError(
                    f"member {member_id} was started already (restarts with memory "
                    "storage would forget the member's vote)"
                )
            with open(server.log_path, "ab") as log_file:
                server.process = await trio.lowlevel.open_process(
                    self._command(member_id),
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    env=env,
                    cwd=self.workdir,  # the state machine is importable only through PYTHONPATH
                )

    def _signal(self, member_id: int, signum: int) -> None:
        process = self.servers[member_id].process
        if process is None or process.returncode is not None:
            raise AssertionError(f"member {member_id} is not running")
        process.send_signal(signum)

    def hangup(self, member_id: int) -> None:
        """SIGHUP: `serve` reloads its TLS certificates."""
        self._signal(member_id, signal.SIGHUP)

    async def kill(self, member_id: int) -> None:
        """SIGKILL a member and wait until it is gone."""
        self._signal(member_id, signal.SIGKILL)
        process = self.servers[member_id].process
        assert process is not None
        await process.wait()

    def pause(self, member_id: int) -> None:
        """SIGSTOP: the process keeps its sockets but does nothing until `resume`."""
        self._signal(member_id, signal.SIGSTOP)
        self.servers[member_id].paused = True

    def resume(self, member_id: int) -> None:
        self._signal(member_id, signal.SIGCONT)
        self.servers[member_id].paused = False

    async def aclose(self, grace: float = 5.0) -> None:
        """Stop and reap every process started here: SIGTERM, then SIGKILL after `grace`."""
        with trio.CancelScope(shield=True):
            started = [s for s in self.servers.values() if s.process is not None]
            for server in started:
                if server.running:
                    assert server.process is not None
                    if server.paused:
                        server.process.send_signal(signal.SIGCONT)
                        server.paused = False
                    server.process.terminate()
            with trio.move_on_after(grace):
                for server in started:
                    assert server.process is not None
                    await server.process.wait()
            for server in started:
                assert server.process is not None
                if server.process.returncode is None:
                    server.process.kill()
                    await server.process.wait()

    def kill_leftovers(self) -> None:
        """Synchronous last resort (outside Trio): SIGKILL and reap whatever still runs."""
        for server in self.servers.values():
            process = server.process
            if process is not None and process.returncode is None:
                process.kill()
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(process.pid, 0)

    # --- observation -----------------------------------------------------------------------

    def assert_running(self, ids: Iterable[int] | None = None) -> None:
        """Every given member's process is alive (it has not crashed or exited)."""
        for member_id in self.servers if ids is None else ids:
            server = self.servers[member_id]
            if not server.running:
                raise AssertionError(
                    f"member {member_id} is not running (exit status {server.returncode}); "
                    f"its log ends:\n{server.log_tail(30)}"
                )

    async def status(self, ids: Sequence[int] | None = None) -> list[dict[str, Any]]:
        return await collect_status(self.addresses(ids), timeout=0.5)

    async def wait_for_leader(
        self, ids: Sequence[int] | None = None, *, timeout: float = 15.0
    ) -> Agreement:
        """Poll status until every given member (default: all running) names the same leader,
        that leader is one of them, and exactly one of them reports the role leader."""
        ids = list(self.running_ids() if ids is None else ids)
        rows: list[dict[str, Any]] = []
        with trio.move_on_after(timeout):
            while True:
                self.assert_running(ids)
                rows = await self.status(ids)
                agreement = _agreement(rows)
                if agreement is not None:
                    return agreement
                await trio.sleep(0.05)
        raise AssertionError(f"members {ids} did not agree on a leader in {timeout}s: {rows}")

    def logs_report(self, lines: int = 60) -> str:
        parts = []
        for member_id, server in self.servers.items():
            state = "never started" if server.process is None else f"exit {server.returncode}"
            parts.append(
                f"--- member {member_id} at {server.address} ({state}), {server.log_path}:\n"
                f"{server.log_tail(lines)}"
            )
        return "\n".join(parts)


def _agreement(rows: list[dict[str, Any]]) -> Agreement | None:
    leaders = {row["leader"] for row in rows}
    leading = [row for row in rows if row["role"] == "leader"]
    if len(leaders) != 1 or None in leaders or len(leading) != 1:
        return None
    (leader,) = leaders
    if leading[0]["id"] != leader:
        return None
    return Agreement(leader=leader, term=leading[0]["term"], rows=rows)
