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

import trio

from .client import open_client
from .client.admin import fetch_status
from .protocol.errors import CopycatError
from .protocol.messages import Member, StatusResponse
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
    members = parse_members(args.members)
    own = next((m for m in members if m.id == args.id), None)
    if own is None:
        raise UsageError(f"--id {args.id} is not in --members")
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
        storage=storage,
        election_timeout=args.election_timeout,
        heartbeat_interval=args.heartbeat_interval,
        snapshot_every=args.snapshot_every,
    )
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:

            async def stop_on_signal() -> None:
                async for signum in signals:
                    logging.getLogger("copycat_trio").info("signal %s: stopping", signum)
                    nursery.cancel_scope.cancel()

            nursery.start_soon(stop_on_signal)
            if args.join:
                others = [m.address for m in members if m.id != args.id]
                await nursery.start(server.join, others)
            else:
                await nursery.start(server.bootstrap, members)
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
    serve.add_argument("--members", required=True, help="ID=HOST:PORT,... every initial member")
    serve.add_argument("--join", action="store_true", help="join an existing cluster")
    serve.add_argument(
        "--data-dir",
        help="directory for the log, term, vote and snapshots (default: ./copycat-data/member-ID)",
    )
    serve.add_argument(
        "--storage",
        choices=("disk", "memory"),
        default="disk",
        help="disk (default: durable, fsynced) or memory (lost when the process ends)",
    )
    serve.add_argument(
        "--snapshot-every",
        type=int,
        default=10_000,
        metavar="ENTRIES",
        help="snapshot the state machine and compact the log every this many entries",
    )
    serve.add_argument(
        "--state-machine",
        default="copycat_trio.recipes.kv:KeyValueStore",
        help="module:Class of the state machine (default: the key-value store)",
    )
    serve.add_argument("--election-timeout", type=float, default=1.0, metavar="SECONDS")
    serve.add_argument("--heartbeat-interval", type=float, default=0.15, metavar="SECONDS")

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
    elif args.command == "demo":
        from .demo import run_demo

        raise SystemExit(trio.run(run_demo, args.writes))


if __name__ == "__main__":
    main()
