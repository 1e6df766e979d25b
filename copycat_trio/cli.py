"""The `copycat-trio` command: run a node, talk to the key-value store, show status, run a demo.

User mistakes print one line and exit non-zero; tracebacks are for bugs.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import attrs
import trio

from . import __version__
from .backup import BackupHeader, restore_backup, write_backup
from .client import open_client
from .client.admin import admin_request, fetch_status, leader_first
from .client.diagnosis import ClusterView
from .config import load_cluster_file
from .logs import LEVELS, MemberContext, configure_logging
from .protocol.errors import ConfigurationError, CopycatError, NoLeaderError, OutcomeUnknownError
from .protocol.messages import (
    BackupRequest,
    BackupResponse,
    JoinRequest,
    LeaveRequest,
    Member,
    MemberType,
    ReconfigureRequest,
    StatusResponse,
    TransferRequest,
)
from .protocol.operations import Consistency, Query
from .server.options import ServerOptions
from .server.server import CopycatServer
from .state_machine import StateMachine
from .storage import Storage, StorageLevel
from .transport.base import split_address

LOG_CONTEXT = MemberContext(lambda: None)
"""The member a log line comes from (set once `serve` has made its server)."""

EXIT_USAGE = 2
EXIT_FAILURE = 1


class UsageError(Exception):
    """A mistake in the command line: printed as one line, exit status 2."""


def parse_members(text: str) -> list[Member]:
    """'1=HOST:PORT,2=HOST:PORT' -> members."""
    members = []
    for part in text.split(","):
        member_id, sep, address = part.strip().partition("=")
        if not sep or not member_id.strip().isdigit():
            raise UsageError(f"--members: {part!r} is not ID=HOST:PORT")
        try:
            split_address(address)
        except ValueError as exc:
            raise UsageError(f"--members: {exc}") from None
        members.append(Member(int(member_id), address.strip()))
    _check_unique(members, "--members")
    return members


def _check_unique(members: Sequence[Member], where: str) -> None:
    seen: dict[object, int] = {}
    for member in members:
        if member.id in seen:
            raise UsageError(f"{where}: member id {member.id} appears twice")
        if member.address in seen:
            other = seen[member.address]
            msg = f"{where}: members {other} and {member.id} share the address {member.address}"
            raise UsageError(msg)
        seen[member.id] = seen[member.address] = member.id


def parse_cluster(text: str) -> list[str]:
    addresses = [a.strip() for a in text.split(",") if a.strip()]
    if not addresses:
        raise UsageError("--cluster needs at least one HOST:PORT")
    for address in addresses:
        try:
            split_address(address)
        except ValueError as exc:
            raise UsageError(f"--cluster: {exc}") from None
    return addresses


def load_state_machine(spec: str) -> Callable[[], StateMachine]:
    """'module:Class' -> the class, checked to be a StateMachine."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise UsageError(f"--state-machine: {spec!r} is not module:Class")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"--state-machine: cannot import {module_name}: {exc}") from None
    cls = getattr(module, attr, None)
    if not (isinstance(cls, type) and issubclass(cls, StateMachine)):
        raise UsageError(f"--state-machine: {spec} is not a StateMachine subclass")
    return cls


# --- serve -------------------------------------------------------------------------------


async def _serve(args: argparse.Namespace) -> None:
    cluster_file = load_cluster_file(args.config) if args.config else None
    if cluster_file is not None:
        members = list(cluster_file.members)
        if args.members:
            given = {(m.id, m.address) for m in parse_members(args.members)}
            if given != {(m.id, m.address) for m in members}:
                listed = ",".join(f"{m.id}={m.address}" for m in members)
                raise UsageError(
                    f"--members {args.members} disagrees with the members of {args.config} "
                    f"({listed}); give one of them"
                )
        for name in ("election_timeout", "heartbeat_interval", "snapshot_every"):
            if getattr(args, name) is None:
                setattr(args, name, getattr(cluster_file, name))
        if args.data_dir is None and args.storage is None:
            args.storage = cluster_file.storage_level
            if args.storage == "disk":  # memory storage takes no directory
                args.data_dir = cluster_file.directory_for(args.id)
    elif args.members:
        members = parse_members(args.members)
    else:
        raise UsageError("serve needs --members or --config")
    args.election_timeout = args.election_timeout or 1.0
    args.heartbeat_interval = args.heartbeat_interval or 0.15
    args.snapshot_every = args.snapshot_every or 10_000
    args.storage = args.storage or "disk"
    own = next((m for m in members if m.id == args.id), None)
    if own is None:
        raise UsageError(f"--id {args.id} is not among the members")
    address = args.address or own.address
    if address != own.address:
        raise UsageError(f"--address {address} differs from member {args.id}'s {own.address}")
    state_machine = load_state_machine(args.state_machine)
    metrics_address = args.metrics_address or (
        cluster_file.metrics_address_for(args.id) if cluster_file else None
    )
    # Check the settings before anything touches the disk.
    try:
        ServerOptions(
            member_id=args.id,
            address=address,
            state_machine=state_machine,
            election_timeout=args.election_timeout,
            heartbeat_interval=args.heartbeat_interval,
            metrics_address=metrics_address,
        )
    except ConfigurationError as exc:
        raise UsageError(str(exc)) from None
    for listen in dict.fromkeys(a for a in (address, own.client_address, metrics_address) if a):
        _check_can_listen(listen)
    if args.storage == "memory":
        if args.data_dir is not None:
            raise UsageError("--data-dir goes with --storage disk")
        storage = Storage(level=StorageLevel.MEMORY)
        where = "memory (nothing survives this process)"
    else:
        data_dir = args.data_dir or os.path.join("copycat-data", f"member-{args.id}")
        storage = Storage(data_dir, StorageLevel.DISK)
        where = os.path.abspath(data_dir)
    server = CopycatServer(
        args.id,
        address,
        state_machine=state_machine,
        client_address=own.client_address,
        storage=storage,
        election_timeout=args.election_timeout,
        heartbeat_interval=args.heartbeat_interval,
        session_timeout=cluster_file.session_timeout if cluster_file else 5.0,
        snapshot_every=args.snapshot_every,
        member_type=own.type,
        priority=own.priority,
        replace_after=cluster_file.replace_after if cluster_file else None,
        metrics_address=metrics_address,
    )

    def context() -> tuple[int, int, str]:
        status = server.status()
        return (status.id, status.term, status.role)

    LOG_CONTEXT.source = context
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:

            async def stop_on_signal() -> None:
                async for signum in signals:
                    logging.getLogger("copycat_trio").info("signal %s: stopping", signum)
                    if signum == signal.SIGTERM and server.is_leader:
                        # Hand leadership over first, so the others need not wait for an
                        # election timeout.
                        await server.shutdown_gracefully()
                    nursery.cancel_scope.cancel()

            nursery.start_soon(stop_on_signal)

            async def stop_when_removed() -> None:
                await server.removed.wait()
                if args.stay_when_removed:
                    return  # it answers clients with an error naming the members
                print(f"member {args.id} was removed from the cluster; stopping", flush=True)
                nursery.cancel_scope.cancel()

            nursery.start_soon(stop_when_removed)
            if args.join:
                others = [m.address for m in members if m.id != args.id]
                await nursery.start(server.join, others)
            else:
                voters = [m for m in members if m.type is MemberType.ACTIVE or m.id == args.id]
                await nursery.start(server.bootstrap, members if cluster_file else voters)
            status = server.status()
            print(
                f"member {args.id} serving at {server.address}; leader is {status.leader}; "
                f"data in {where}"
                + (f"; metrics at http://{server.metrics_address}" if metrics_address else ""),
                flush=True,
            )


def _check_can_listen(address: str) -> None:
    """Fail before the data directory is made if the port is taken (the check is repeated,
    for real, when the server binds)."""
    host, port = split_address(address)
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise UsageError(f"cannot listen on {address}: unknown host ({exc.strerror})") from None
    family, kind, proto, _name, sockaddr = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(sockaddr)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot listen on {address}: {exc.strerror}") from None


# --- kv ----------------------------------------------------------------------------------


async def _kv(args: argparse.Namespace) -> None:
    from .recipes.kv import CompareAndSet, Delete, Get, Keys, Put

    addresses = parse_cluster(args.cluster)
    operation: Any
    consistency = Consistency.LINEARIZABLE
    if args.action == "put":
        value = sys.stdin.read() if args.value == "-" else args.value
        operation = Put(args.key, value)
    elif args.action == "get":
        operation = Get(args.key)
        consistency = CONSISTENCIES[args.consistency]
    elif args.action == "delete":
        operation = Delete(args.key)
    elif args.action == "keys":
        operation = Keys()
        consistency = CONSISTENCIES[args.consistency]
    else:
        operation = CompareAndSet(args.key, args.old, args.new)
    result = await _submit(addresses, operation, args.timeout, consistency)
    if args.action == "keys":
        keys = [k for k in result if k.startswith(args.prefix)]
        for key in keys[: args.limit] if args.limit is not None else keys:
            print(key)
    elif args.action == "delete":
        if result is None:
            print(f"{args.key}: not found", file=sys.stderr)
            raise SystemExit(EXIT_FAILURE)
        print("deleted")
    elif args.action == "cas":
        print("true" if result else "false")
        if not result:
            raise SystemExit(EXIT_FAILURE)
    elif args.action == "get":
        if result is None:
            print(f"{args.key}: not found", file=sys.stderr)
            raise SystemExit(EXIT_FAILURE)
        print(result)
    else:
        print("ok")


CONSISTENCIES = {
    "linearizable": Consistency.LINEARIZABLE,
    "lease": Consistency.LINEARIZABLE_LEASE,
    "sequential": Consistency.SEQUENTIAL,
}


async def _submit(
    addresses: Sequence[str],
    operation: Any,
    timeout: float,
    consistency: Consistency = Consistency.LINEARIZABLE,
) -> Any:
    """One operation in a session of its own, within `timeout`; a failure says why the cluster
    could not serve it (unreachable members, no quorum) rather than only that it timed out."""
    with trio.move_on_after(timeout) as scope:
        probe = min(2.0, timeout / 3)
        answers = await fetch_status(addresses, timeout=probe, until_leader=True)
        view = ClusterView.of(addresses, answers)
        if not view.statuses:
            raise CliFailure(view.problem() or "no member could be reached")
        try:
            async with open_client(
                leader_first(addresses, answers),
                timeout=max(0.1, scope.deadline - trio.current_time()),
                request_timeout=max(0.5, min(5.0, timeout / 3)),
            ) as client:
                if isinstance(operation, Query):
                    return await client.submit(operation, consistency=consistency)
                return await client.submit(operation)
        except (NoLeaderError, OutcomeUnknownError) as exc:
            after = ClusterView.of(addresses, await fetch_status(addresses, timeout=probe))
            why = after.problem()
            raise CliFailure(
                f"{type(exc).__name__}: {exc}" + (f" ({why})" if why else "")
            ) from None
    after = ClusterView.of(addresses, await fetch_status(addresses, timeout=1.0))
    why = after.problem()
    raise CliFailure(f"no answer within {timeout:g}s" + (f": {why}" if why else ""))


class CliFailure(Exception):
    """A runtime failure, printed as one line, exit status 1."""


# --- status ------------------------------------------------------------------------------

STATUS_KEYS = (
    "id",
    "address",
    "role",
    "term",
    "leader",
    "commit_index",
    "applied_index",
    "snapshot_index",
    "sessions",
    "log_bytes",
    "last_contact",
)


async def collect_status(
    addresses: Sequence[str], timeout: float = 2.0, *, confirm: bool = False
) -> list[dict[str, Any]]:
    """Ask every address for its status at once; unreachable ones are reported as such.
    `last_contact` is, as the leader saw it, seconds since it last heard from that member."""
    answers = await fetch_status(addresses, timeout=timeout, confirm=confirm)
    return _status_rows(addresses, answers)


def _status_rows(
    addresses: Sequence[str], answers: Sequence[StatusResponse | CopycatError]
) -> list[dict[str, Any]]:
    view = ClusterView.of(addresses, answers)
    heard = {c.member: c.seconds for c in view.leader.heard} if view.leader else {}
    rows: list[dict[str, Any]] = []
    for address, s in zip(addresses, answers, strict=True):
        if isinstance(s, StatusResponse):
            rows.append(
                {
                    "id": s.id,
                    "address": address,
                    "role": s.role,
                    "term": s.term,
                    "leader": s.leader,
                    "commit_index": s.commit_index,
                    "applied_index": s.applied_index,
                    "snapshot_index": s.snapshot_index,
                    "sessions": s.sessions,
                    "log_bytes": s.log_bytes,
                    "last_contact": 0.0 if s.role == "leader" else heard.get(s.id),
                }
            )
        else:
            rows.append(
                {
                    "id": None,
                    "address": address,
                    "role": "unreachable",
                    "term": None,
                    "leader": None,
                    "commit_index": None,
                    "applied_index": None,
                    "error": str(s),
                }
            )
    return rows


async def _status(args: argparse.Namespace) -> None:
    addresses = parse_cluster(args.cluster)
    # A frozen member costs this once (all are asked at once), not the whole --timeout.
    answers = await fetch_status(addresses, timeout=min(args.timeout, 2.0), confirm=True)
    rows = _status_rows(addresses, answers)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(format_table(rows, STATUS_KEYS))
    problem = ClusterView.of(addresses, answers, confirm_asked=True).problem()
    if problem is not None:
        raise CliFailure(problem)


async def _health(args: argparse.Namespace) -> None:
    """One line per member, as its /health endpoint would say; exit 1 if any is unhealthy."""
    addresses = parse_cluster(args.cluster)
    answers = await fetch_status(addresses, timeout=min(args.timeout, 2.0))
    unhealthy = 0
    for address, answer in zip(addresses, answers, strict=True):
        if not isinstance(answer, StatusResponse):
            unhealthy += 1
            print(f"{address}: unreachable ({answer})")
        elif answer.healthy:
            print(f"{address}: member {answer.id} healthy ({answer.role}, term {answer.term})")
        else:
            unhealthy += 1
            print(f"{address}: member {answer.id} UNHEALTHY: {answer.health or 'no reason given'}")
    if unhealthy:
        raise CliFailure(f"{unhealthy} of {len(addresses)} members unhealthy or unreachable")


def format_table(rows: list[dict[str, Any]], keys: Sequence[str]) -> str:
    cells = [[str(k) for k in keys]] + [
        ["-" if row.get(k) is None else str(row.get(k)) for k in keys] for row in rows
    ]
    widths = [max(len(r[i]) for r in cells) for i in range(len(keys))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells)


# --- members -----------------------------------------------------------------------------

PROMOTE = {MemberType.RESERVE: MemberType.PASSIVE, MemberType.PASSIVE: MemberType.ACTIVE}
DEMOTE = {MemberType.ACTIVE: MemberType.PASSIVE, MemberType.PASSIVE: MemberType.RESERVE}


async def _members(args: argparse.Namespace) -> None:
    addresses = parse_cluster(args.cluster)
    answers = await fetch_status(addresses, timeout=min(args.timeout, 2.0), confirm=True)
    view = ClusterView.of(addresses, answers, confirm_asked=True)
    # The leader's view is the freshest, and only it knows who is unavailable.
    status = view.leader or (view.statuses[0] if view.statuses else None)
    if status is None:
        raise CliFailure(view.problem() or "no member answered")
    by_id = {m.id: m for m in status.members}
    body: Any
    if args.action == "list":
        rows = [
            {
                "id": m.id,
                "address": m.address,
                "type": m.type.name.lower(),
                "status": "unavailable" if m.id in status.unavailable else "available",
            }
            for m in sorted(status.members, key=lambda m: m.id)
        ]
        if not view.has_quorum:  # nobody can say who is available
            for row in rows:
                row["status"] = "unknown"
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            print(format_table(rows, ("id", "address", "type", "status")))
        problem = view.problem()
        if problem is not None:
            raise CliFailure(f"{problem} (the list is member {status.id}'s view)")
        return
    if args.action == "add":
        try:
            split_address(args.address)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        body = JoinRequest(member=Member(args.id, args.address, MemberType[args.type.upper()]))
    else:
        member = by_id.get(args.id)
        if member is None:
            raise UsageError(f"member {args.id} is not in the configuration {sorted(by_id)}")
        if args.action == "remove":
            body = LeaveRequest(member=member)
        elif args.action == "transfer-leader":
            body = TransferRequest(member=args.id)
        else:
            table = PROMOTE if args.action == "promote" else DEMOTE
            if member.type not in table:
                raise UsageError(
                    f"member {args.id} is {member.type.name} and cannot be {args.action}d"
                )
            body = ReconfigureRequest(member=attrs.evolve(member, type=table[member.type]))
    await admin_request(leader_first(addresses, answers), body, timeout=args.timeout)
    if args.action == "add" and args.type == "active":
        print(
            f"added member {args.id}: it joins as PASSIVE and becomes ACTIVE by itself once its "
            "log has caught up"
        )
    else:
        print("ok")


# --- snapshot ------------------------------------------------------------------------------


async def _snapshot(args: argparse.Namespace) -> None:
    path = Path(args.file)
    if args.action == "restore":
        members = parse_members(args.members)
        if args.id not in {m.id for m in members}:
            raise UsageError(f"--id {args.id} is not among the members")
        header = await restore_backup(path, Path(args.data_dir), members)
        print(
            f"restored snapshot {header.index} (term {header.term}) into {args.data_dir} for "
            f"member {args.id}; start it with serve --id {args.id} --members {args.members} "
            f"--data-dir {args.data_dir}"
        )
        return
    addresses = parse_cluster(args.cluster)
    answers: list[StatusResponse | CopycatError] = []
    with trio.move_on_after(args.timeout):
        answers = await fetch_status(addresses, timeout=min(2.0, args.timeout), until_leader=True)
        header, data = await _fetch_backup(leader_first(addresses, answers), args.timeout)
        await trio.to_thread.run_sync(write_backup, path, header, data)
        print(
            f"saved snapshot {header.index} (term {header.term}, {header.size} bytes, crc32 "
            f"{header.crc:08x}) to {path}"
        )
        return
    why = ClusterView.of(addresses, answers).problem() if answers else None
    raise CliFailure(f"no backup within {args.timeout:g}s" + (f": {why}" if why else ""))


async def _fetch_backup(order: Sequence[str], timeout: float) -> tuple[BackupHeader, bytes]:
    """The leader's snapshot, chunk by chunk (a follower answers where the leader is)."""
    first = await admin_request(order[:1], BackupRequest(), timeout=timeout)
    assert isinstance(first, BackupResponse)
    chunks, received = [first.data], len(first.data)
    while received < first.size:
        request = BackupRequest(index=first.index, offset=received)
        more = await admin_request(order[:1], request, timeout=timeout)
        assert isinstance(more, BackupResponse)
        if not more.data:
            raise CliFailure(f"the leader sent no data at offset {received} of {first.size}")
        chunks.append(more.data)
        received += len(more.data)
    return BackupHeader(first.index, first.term, first.size, first.crc), b"".join(chunks)


# --- entry point -------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="copycat-trio", description="Raft replicated state machines on Trio."
    )
    parser.add_argument("--version", action="version", version=f"copycat-trio {__version__}")
    verbosity = argparse.ArgumentParser(add_help=False)
    verbosity.add_argument(
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="log debug messages"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run one member of a cluster", parents=[verbosity])
    serve.add_argument("--id", type=int, required=True, help="this member's stable id")
    serve.add_argument("--address", help="HOST:PORT to listen on (default: from --members)")
    serve.add_argument("--members", help="ID=HOST:PORT,... every initial member")
    serve.add_argument("--config", help="a cluster file (TOML): members, timings, storage")
    serve.add_argument("--join", action="store_true", help="join an existing cluster")
    serve.add_argument(
        "--data-dir",
        help="directory for the log, term, vote and snapshots (default: ./copycat-data/member-ID)",
    )
    serve.add_argument(
        "--storage",
        choices=("disk", "memory"),
        default=None,
        help="disk (default: durable, fsynced) or memory (lost when the process ends)",
    )
    serve.add_argument(
        "--snapshot-every",
        type=int,
        default=None,
        metavar="ENTRIES",
        help="snapshot the state machine and compact the log every this many entries",
    )
    serve.add_argument(
        "--state-machine",
        default="copycat_trio.recipes:Resources",
        help="module:Class of the state machine (default: the resources manager)",
    )
    serve.add_argument(
        "--log-level", choices=LEVELS, default=None, help="default: info (debug with -v)"
    )
    serve.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="json: one object per line with time, level, logger, message, member, term, role",
    )
    serve.add_argument(
        "--stay-when-removed",
        action="store_true",
        help="keep running once removed from the configuration (default: exit)",
    )
    serve.add_argument("--election-timeout", type=float, default=None, metavar="SECONDS")
    serve.add_argument("--heartbeat-interval", type=float, default=None, metavar="SECONDS")
    serve.add_argument(
        "--metrics-address",
        metavar="HOST:PORT",
        help="serve /metrics (Prometheus), /health and /ready over HTTP here (default: from "
        "[metrics] in --config, else none)",
    )

    kv_common = _client_options(10.0)
    kv = commands.add_parser(
        "kv", help="use the built-in key-value store", parents=[kv_common, verbosity]
    )
    actions = kv.add_subparsers(dest="action", required=True)
    leaf = [kv_common, verbosity]
    put = actions.add_parser("put", parents=leaf)
    put.add_argument("key")
    put.add_argument("value", help="the value, or - to read it from stdin")
    read_options = argparse.ArgumentParser(add_help=False)
    read_options.add_argument(
        "--consistency",
        choices=tuple(CONSISTENCIES),
        default="linearizable",
        help="linearizable (default; a quorum round), lease (the leader's lease), sequential "
        "(any member, never behind this client)",
    )
    get = actions.add_parser("get", parents=[*leaf, read_options], help="exit 1 if absent")
    get.add_argument("key")
    actions.add_parser("delete", parents=leaf, help="exit 1 if the key was absent").add_argument(
        "key"
    )
    keys = actions.add_parser("keys", parents=[*leaf, read_options], help="list keys, sorted")
    keys.add_argument("--prefix", default="", help="only keys that start with this")
    keys.add_argument("--limit", type=int, default=None, help="at most this many")
    cas = actions.add_parser(
        "cas", help="set KEY to NEW if it is OLD; prints true or false", parents=leaf
    )
    cas.add_argument("key")
    cas.add_argument("old")
    cas.add_argument("new")

    status = commands.add_parser(
        "status",
        help="each member's role, term, indexes; exit 1 without a leader and a quorum",
        parents=[_client_options(5.0), verbosity],
    )
    status.add_argument("--json", action="store_true", help="a JSON list of objects")
    commands.add_parser(
        "health",
        help="one line per member (as /health says); exit 1 if any is unhealthy",
        parents=[_client_options(5.0), verbosity],
    )

    members_common = _client_options(10.0)
    members = commands.add_parser(
        "members", help="list and change the cluster's members", parents=[members_common, verbosity]
    )
    member_actions = members.add_subparsers(dest="action", required=True)
    leaf = [members_common, verbosity]
    listing = member_actions.add_parser(
        "list", help="id, address, type, status of each member", parents=leaf
    )
    listing.add_argument("--json", action="store_true", help="a JSON list of objects")
    add = member_actions.add_parser(
        "add", help="add a member (ACTIVE joins as PASSIVE first)", parents=leaf
    )
    add.add_argument("id", type=int)
    add.add_argument("address")
    add.add_argument("--type", choices=("active", "passive", "reserve"), default="active")
    for action, text in (
        ("remove", "remove a member"),
        ("promote", "reserve -> passive -> active"),
        ("demote", "active -> passive -> reserve"),
        ("transfer-leader", "hand leadership over"),
    ):
        member_actions.add_parser(action, help=text, parents=leaf).add_argument("id", type=int)

    snapshot_common = _client_options(60.0)
    snapshot = commands.add_parser(
        "snapshot", help="back up the state, or make a new cluster from a backup"
    )
    snapshot_actions = snapshot.add_subparsers(dest="action", required=True)
    save = snapshot_actions.add_parser(
        "save",
        help="a consistent snapshot from the leader, into FILE",
        parents=[snapshot_common, verbosity],
    )
    save.add_argument("file")
    restore = snapshot_actions.add_parser(
        "restore",
        help="a new member's data directory from a backup (restore every member of the new "
        "cluster from the same file, then serve each)",
        parents=[verbosity],
    )
    restore.add_argument("file")
    restore.add_argument("--data-dir", required=True, help="a new (absent or empty) directory")
    restore.add_argument("--id", type=int, required=True, help="this member's id")
    restore.add_argument("--members", required=True, help="ID=HOST:PORT,... the new cluster")

    demo = commands.add_parser(
        "demo", help="a local three-node cluster with a failover", parents=[verbosity]
    )
    demo.add_argument("--writes", type=int, default=50, help="writes before and after failover")
    return parser


def _client_options(timeout: float) -> argparse.ArgumentParser:
    """--cluster and --timeout, for a command and each of its subcommands, so they may come
    before or after the subcommand (argparse keeps what the outer parser read: the inner
    defaults are SUPPRESS)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--cluster",
        default=argparse.SUPPRESS,
        help="HOST:PORT,... of any members (default: $COPYCAT_CLUSTER)",
    )
    common.add_argument(
        "--timeout",
        type=float,
        default=argparse.SUPPRESS,
        metavar="SECONDS",
        help=f"give up after this long (default: {timeout:g})",
    )
    common.set_defaults(default_timeout=timeout)
    return common


def _complete_client_options(args: argparse.Namespace) -> None:
    """Fill --cluster from the environment and --timeout from the command's default."""
    if args.command not in ("kv", "status", "members", "health") and not (
        args.command == "snapshot" and args.action == "save"
    ):
        return
    cluster = getattr(args, "cluster", None) or os.environ.get("COPYCAT_CLUSTER")
    if not cluster:
        raise UsageError(f"{args.command} needs --cluster HOST:PORT,... (or COPYCAT_CLUSTER)")
    args.cluster = cluster
    if not hasattr(args, "timeout"):
        args.timeout = args.default_timeout
    if args.timeout <= 0:
        raise UsageError(f"--timeout must be positive, not {args.timeout:g}")


def fail(message: str, code: int = EXIT_FAILURE) -> NoReturn:
    print(f"copycat-trio: {message}", file=sys.stderr)
    raise SystemExit(code)


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    level = getattr(args, "log_level", None) or (
        "debug" if args.verbose else "info" if args.command == "serve" else "warning"
    )
    configure_logging(level, getattr(args, "log_format", "text"), LOG_CONTEXT)
    try:
        _complete_client_options(args)
        _run_command(args)
    except BaseExceptionGroup as group:
        # Trio nurseries wrap errors; a user-facing failure is the innermost one.
        leaves = list(_leaves(group))
        expected = (UsageError, CliFailure, CopycatError, OSError, KeyboardInterrupt)
        if leaves and all(isinstance(leaf, expected) for leaf in leaves):
            _report(leaves[0])
        raise
    except BaseException as exc:
        _report(exc)
        raise


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out


def _report(exc: BaseException) -> None:
    """Turn an expected failure into one line and an exit status; leave bugs alone."""
    if isinstance(exc, UsageError):
        fail(str(exc), EXIT_USAGE)
    if isinstance(exc, CliFailure):
        fail(str(exc))
    if isinstance(exc, CopycatError):
        fail(f"{type(exc).__name__}: {exc}")
    if isinstance(exc, OSError):
        fail(str(exc))
    if isinstance(exc, KeyboardInterrupt):
        fail("interrupted", 130)


def _run_command(args: argparse.Namespace) -> None:
    if args.command == "serve":
        trio.run(_serve, args)
    elif args.command == "kv":
        trio.run(_kv, args)
    elif args.command == "status":
        trio.run(_status, args)
    elif args.command == "health":
        trio.run(_health, args)
    elif args.command == "members":
        trio.run(_members, args)
    elif args.command == "snapshot":
        trio.run(_snapshot, args)
    elif args.command == "demo":
        from .demo import run_demo

        raise SystemExit(trio.run(run_demo, args.writes))


if __name__ == "__main__":
    main()
