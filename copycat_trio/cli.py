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
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import attrs
import trio

from .client import open_client
from .client.admin import admin_request, fetch_status
from .config import load_cluster_file
from .protocol.errors import CopycatError, NoLeaderError
from .protocol.messages import (
    JoinRequest,
    LeaveRequest,
    Member,
    MemberType,
    ReconfigureRequest,
    StatusResponse,
    TransferRequest,
)
from .server.options import ServerOptions
from .server.server import CopycatServer
from .state_machine import StateMachine
from .storage import Storage, StorageLevel
from .transport.base import split_address

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
    return members


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
        for name in ("election_timeout", "heartbeat_interval", "snapshot_every"):
            if getattr(args, name) is None:
                setattr(args, name, getattr(cluster_file, name))
        if args.data_dir is None and args.storage is None:
            args.storage = cluster_file.storage_level
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
    # Check the settings before anything touches the disk.
    ServerOptions(
        member_id=args.id,
        address=address,
        state_machine=state_machine,
        election_timeout=args.election_timeout,
        heartbeat_interval=args.heartbeat_interval,
    )
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
    )
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
            if args.join:
                others = [m.address for m in members if m.id != args.id]
                await nursery.start(server.join, others)
            else:
                voters = [m for m in members if m.type is MemberType.ACTIVE or m.id == args.id]
                await nursery.start(server.bootstrap, members if cluster_file else voters)
            status = server.status()
            print(
                f"member {args.id} serving at {server.address}; leader is {status.leader}; "
                f"data in {where}",
                flush=True,
            )


# --- kv ----------------------------------------------------------------------------------


async def _kv(args: argparse.Namespace) -> None:
    from .recipes.kv import CompareAndSet, Delete, Get, Put

    addresses = parse_cluster(args.cluster)
    operation: Any
    if args.action == "put":
        operation = Put(args.key, args.value)
    elif args.action == "get":
        operation = Get(args.key)
    elif args.action == "delete":
        operation = Delete(args.key)
    else:
        operation = CompareAndSet(args.key, args.old, args.new)
    async with open_client(addresses, timeout=args.timeout) as client:
        result = await client.submit(operation)
    if args.action == "cas":
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


# --- status ------------------------------------------------------------------------------

STATUS_KEYS = ("id", "address", "role", "term", "leader", "commit_index", "applied_index")


async def collect_status(addresses: Sequence[str], timeout: float = 2.0) -> list[dict[str, Any]]:
    """Ask every address for its status; unreachable ones are reported as such."""
    rows: list[dict[str, Any]] = []
    for address, s in zip(addresses, await fetch_status(addresses, timeout=timeout), strict=True):
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
    rows = await collect_status(parse_cluster(args.cluster), timeout=args.timeout)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(format_table(rows, STATUS_KEYS))
    if all(row["role"] == "unreachable" for row in rows):
        raise SystemExit(EXIT_FAILURE)


def format_table(rows: list[dict[str, Any]], keys: Sequence[str]) -> str:
    cells = [[str(k) for k in keys]] + [
        ["-" if row.get(k) is None else str(row.get(k)) for k in keys] for row in rows
    ]
    widths = [max(len(r[i]) for r in cells) for i in range(len(keys))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells)


# --- members -----------------------------------------------------------------------------

PROMOTE = {MemberType.RESERVE: MemberType.PASSIVE, MemberType.PASSIVE: MemberType.ACTIVE}
DEMOTE = {MemberType.ACTIVE: MemberType.PASSIVE, MemberType.PASSIVE: MemberType.RESERVE}


async def _current_members(addresses: Sequence[str], timeout: float) -> StatusResponse:
    """The leader's view (its member list is the freshest, and it knows who is unavailable)."""
    answers = await fetch_status(addresses, timeout=timeout)
    statuses = [s for s in answers if isinstance(s, StatusResponse)]
    if not statuses:
        raise NoLeaderError("no member answered")
    leaders = [s for s in statuses if s.role == "leader"]
    if leaders:
        return leaders[0]
    leader_ids = {s.leader for s in statuses if s.leader is not None}
    for s in statuses:
        for m in s.members:
            if m.id in leader_ids:
                (answer,) = await fetch_status([m.effective_client_address], timeout=timeout)
                if isinstance(answer, StatusResponse):
                    return answer
    return statuses[0]


async def _members(args: argparse.Namespace) -> None:
    addresses = parse_cluster(args.cluster)
    status = await _current_members(addresses, args.timeout)
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
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            print(format_table(rows, ("id", "address", "type", "status")))
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
    await admin_request(addresses, body, timeout=args.timeout)
    if args.action == "add" and args.type == "active":
        print(f"added member {args.id}: PASSIVE until it has caught up, then promote it")
    else:
        print("ok")


# --- entry point -------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="copycat-trio", description="Raft replicated state machines on Trio."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run one member of a cluster")
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
        default="copycat_trio.recipes.kv:KeyValueStore",
        help="module:Class of the state machine (default: the key-value store)",
    )
    serve.add_argument("--election-timeout", type=float, default=None, metavar="SECONDS")
    serve.add_argument("--heartbeat-interval", type=float, default=None, metavar="SECONDS")

    kv = commands.add_parser("kv", help="use the built-in key-value store")
    kv.add_argument("--cluster", required=True, help="HOST:PORT,... of any members")
    kv.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS")
    actions = kv.add_subparsers(dest="action", required=True)
    put = actions.add_parser("put")
    put.add_argument("key")
    put.add_argument("value")
    actions.add_parser("get").add_argument("key")
    actions.add_parser("delete").add_argument("key")
    cas = actions.add_parser("cas", help="set KEY to NEW if it is OLD; prints true or false")
    cas.add_argument("key")
    cas.add_argument("old")
    cas.add_argument("new")

    status = commands.add_parser("status", help="show each member's role, term and indexes")
    status.add_argument("--cluster", required=True, help="HOST:PORT,... of the members")
    status.add_argument("--json", action="store_true", help="a JSON list of objects")
    status.add_argument("--timeout", type=float, default=2.0, metavar="SECONDS")

    members = commands.add_parser("members", help="list and change the cluster's members")
    members.add_argument("--cluster", required=True, help="HOST:PORT,... of any members")
    members.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS")
    member_actions = members.add_subparsers(dest="action", required=True)
    listing = member_actions.add_parser("list", help="id, address, type, status of each member")
    listing.add_argument("--json", action="store_true", help="a JSON list of objects")
    add = member_actions.add_parser("add", help="add a member (ACTIVE joins as PASSIVE first)")
    add.add_argument("id", type=int)
    add.add_argument("address")
    add.add_argument("--type", choices=("active", "passive", "reserve"), default="active")
    member_actions.add_parser("remove", help="remove a member").add_argument("id", type=int)
    member_actions.add_parser("promote", help="reserve -> passive -> active").add_argument(
        "id", type=int
    )
    member_actions.add_parser("demote", help="active -> passive -> reserve").add_argument(
        "id", type=int
    )
    member_actions.add_parser("transfer-leader", help="hand leadership over").add_argument(
        "id", type=int
    )

    demo = commands.add_parser("demo", help="a local three-node cluster with a failover")
    demo.add_argument("--writes", type=int, default=50, help="writes before and after failover")
    return parser


def fail(message: str, code: int = EXIT_FAILURE) -> NoReturn:
    print(f"copycat-trio: {message}", file=sys.stderr)
    raise SystemExit(code)


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG
        if args.verbose
        else logging.INFO
        if args.command == "serve"
        else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        _run_command(args)
    except BaseExceptionGroup as group:
        # Trio nurseries wrap errors; a user-facing failure is the innermost one.
        leaves = list(_leaves(group))
        expected = (UsageError, CopycatError, OSError, KeyboardInterrupt)
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
    elif args.command == "members":
        trio.run(_members, args)
    elif args.command == "demo":
        from .demo import run_demo

        raise SystemExit(trio.run(run_demo, args.writes))


if __name__ == "__main__":
    main()
