# PYTHON_ARGCOMPLETE_OK (tab completion: the optional extra `completion`, see _enable_completion)
"""The `copycat-trio` command: run a node, talk to the key-value store, show status, run a demo.

User mistakes print one line and exit non-zero; tracebacks are for bugs.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import logging
import math
import os
import secrets
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import attrs
import trio

from . import __version__
from .backup import BackupHeader, restore_backup, write_backup
from .client import CopycatClient, open_client
from .client.admin import admin_request, fetch_status, leader_first
from .client.diagnosis import ClusterView
from .client.status import STATUS_KEYS, format_table, status_rows
from .config import ClusterFile, load_cluster_file
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
from .server.authz import (
    AuthPolicy,
    Role,
    TokenTable,
    hash_token,
    parse_role,
    parse_role_assignment,
)
from .server.options import ServerOptions
from .server.server import CopycatServer
from .state_machine import StateMachine
from .storage import Storage, StorageLevel
from .transport.base import split_address
from .transport.tls import TlsContexts, TlsSettings, client_context, default_client_tls

T = TypeVar("T")

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
    tls = _serve_tls(args, cluster_file.tls_for(args.id) if cluster_file else None)
    auth = _serve_auth(args, cluster_file, tls)
    # Check the settings before anything touches the disk.
    try:
        if tls is not None:
            TlsContexts.for_member(tls)  # the files load
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
        tls=tls,
        auth=auth,
    )

    def context() -> tuple[int, int, str]:
        status = server.status()
        return (status.id, status.term, status.role)

    LOG_CONTEXT.source = context
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async with trio.open_nursery() as nursery:

            async def stop_on_signal() -> None:
                async for signum in signals:
                    if signum == signal.SIGHUP:  # new certificates for new connections
                        try:
                            server.reload_tls()
                        except ConfigurationError as exc:
                            logging.getLogger("copycat_trio").warning("SIGHUP: %s", exc)
                        continue
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


def _tls_option(args: argparse.Namespace, name: str) -> str | None:
    """--tls-NAME, else $COPYCAT_TLS_NAME."""
    value = getattr(args, f"tls_{name}", None)
    return value or os.environ.get(f"COPYCAT_TLS_{name.upper()}") or None


def _serve_tls(args: argparse.Namespace, from_file: TlsSettings | None) -> TlsSettings | None:
    """A member's TLS settings: the flags (or environment) over the cluster file's [tls]."""
    given = {name: _tls_option(args, name) for name in ("cert", "key", "ca")}
    client_auth = getattr(args, "client_auth", None) or os.environ.get("COPYCAT_CLIENT_AUTH")
    if not any(given.values()) and from_file is None:
        if client_auth:
            raise UsageError("--client-auth goes with TLS (--tls-cert, --tls-key, --tls-ca)")
        return None
    base = {"cert": "", "key": "", "ca": ""} if from_file is None else attrs.asdict(from_file)
    merged = {**base, **{k: v for k, v in given.items() if v}}
    missing = [f"--tls-{k}" for k in ("cert", "key", "ca") if not merged[k]]
    if missing:
        raise UsageError(f"TLS needs {', '.join(missing)} too (or COPYCAT_TLS_*)")
    if client_auth:
        merged["client_auth"] = client_auth
    try:
        return TlsSettings(**merged)
    except ConfigurationError as exc:
        raise UsageError(str(exc)) from None


def _serve_auth(
    args: argparse.Namespace, cluster_file: ClusterFile | None, tls: TlsSettings | None
) -> AuthPolicy | None:
    """A member's roles and tokens: --role over [auth.roles], --tokens over [auth] tokens.
    They need TLS: without it no client proves who it is, and a token would travel in the
    clear (a client never sends one so)."""
    tokens_file = args.tokens or (cluster_file.tokens_file if cluster_file else None)
    roles = dict(cluster_file.roles if cluster_file else ())
    try:
        roles.update(parse_role_assignment(text) for text in args.role)
        anonymous = (
            parse_role(args.anonymous_role)
            if args.anonymous_role
            else (cluster_file.anonymous_role if cluster_file else None)
        )
        if tls is None:
            if args.tokens or args.role or args.anonymous_role:
                raise UsageError(
                    "--tokens, --role and --anonymous-role need TLS (--tls-cert, --tls-key, "
                    "--tls-ca): without it no client has an identity, and a token could be "
                    "read on the way"
                )
            return None
        tokens = TokenTable()
        if tokens_file is not None:
            try:
                text = Path(tokens_file).read_text()
            except OSError as exc:
                raise UsageError(f"cannot read tokens file {tokens_file}: {exc.strerror}") from None
            tokens = TokenTable.parse(text, tokens_file)
        return AuthPolicy(
            roles=roles,
            tokens=tokens,
            anonymous_role=anonymous or Role.WRITE,
            server_name=tls.server_name,
        )
    except ConfigurationError as exc:
        raise UsageError(str(exc)) from None


def _hash_token(args: argparse.Namespace) -> None:
    """`auth hash-token NAME`: the tokens-file line for a token read from stdin, or for a new
    random one (--new, printed on stderr)."""
    if args.new:
        token = secrets.token_urlsafe(32)
        print(
            f"token for {args.name} (give it to the client; it is not kept): {token}",
            file=sys.stderr,
        )
    else:
        token = sys.stdin.readline().strip()
        if not token:
            raise UsageError("auth hash-token reads the token from stdin; got nothing")
    print(f'{args.name} = "{hash_token(token)}"')


def _set_client_tls(args: argparse.Namespace) -> None:
    """The client commands' TLS, from --tls-* or COPYCAT_TLS_* (a CA alone: no certificate),
    and the token, from --token or COPYCAT_TOKEN (refused without TLS: it would travel in
    the clear)."""
    cert, key, ca = (_tls_option(args, name) for name in ("cert", "key", "ca"))
    token = getattr(args, "token", None) or os.environ.get("COPYCAT_TOKEN") or ""
    if not (cert or key or ca):
        if token:
            raise UsageError(
                "a token is sent over TLS only (it could be read on the way): give --tls-ca "
                "(or COPYCAT_TLS_CA) too"
            )
        return
    if ca is None:
        raise UsageError("TLS needs --tls-ca (or COPYCAT_TLS_CA): the CA members' certificates")
    try:
        context = client_context(ca, cert, key)
        default_client_tls.set(TlsContexts.for_client(context, token=token))
    except ConfigurationError as exc:
        raise UsageError(str(exc)) from None


def _add_tls_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    default = argparse.SUPPRESS if suppress else None
    for name, what in (
        ("cert", "certificate (PEM)"),
        ("key", "private key of the certificate (PEM)"),
        ("ca", "CA certificate every member's and client's certificate is checked against"),
    ):
        parser.add_argument(
            f"--tls-{name}",
            default=default,
            metavar="FILE",
            help=f"TLS: this side's {what} (default: $COPYCAT_TLS_{name.upper()})"
            if name != "ca"
            else f"TLS: the {what} (default: $COPYCAT_TLS_CA)",
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

    if getattr(args, "map", None) is not None or args.action == "watch":
        code = await _kv_map(args)  # the Map handle: needs the resources manager
        if code:
            raise SystemExit(code)
        return
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

    async def one(client: CopycatClient) -> Any:
        if isinstance(operation, Query):
            return await client.submit(operation, consistency=consistency)
        return await client.submit(operation)

    return await _with_session(addresses, timeout, one)


class CliFailure(Exception):
    """A runtime failure, printed as one line, exit status 1."""


# --- resources: kv --map, kv watch, counter, lock, elect, group ----------------------------


async def _with_session(
    addresses: Sequence[str],
    timeout: float,
    work: Callable[[CopycatClient], Awaitable[T]],
    *,
    wait: bool = False,
) -> T:
    """Run `work` in a session of its own, as `_submit` runs one operation: within `timeout`
    (with `wait`, only reaching the cluster is bounded, and each operation by the timeout,
    since the work waits for a lock, an election or changes), and a failure says why the
    cluster could not serve it."""
    with trio.move_on_after(timeout) as scope:
        probe = min(2.0, timeout / 3)
        answers = await fetch_status(addresses, timeout=probe, until_leader=True)
        view = ClusterView.of(addresses, answers)
        if not view.statuses:
            raise CliFailure(view.problem() or "no member could be reached")
        try:
            async with open_client(
                leader_first(addresses, answers),
                timeout=timeout if wait else max(0.1, scope.deadline - trio.current_time()),
                request_timeout=max(0.5, min(5.0, timeout / 3)),
            ) as client:
                if wait:
                    scope.deadline = math.inf
                return await work(client)
        except (NoLeaderError, OutcomeUnknownError) as exc:
            after = ClusterView.of(addresses, await fetch_status(addresses, timeout=probe))
            why = after.problem()
            raise CliFailure(
                f"{type(exc).__name__}: {exc}" + (f" ({why})" if why else "")
            ) from None
    after = ClusterView.of(addresses, await fetch_status(addresses, timeout=1.0))
    why = after.problem()
    raise CliFailure(f"no answer within {timeout:g}s" + (f": {why}" if why else ""))


class _Stop:
    """Where SIGINT or SIGTERM cancels a waiting command: before its session is open, the
    whole command; once it is, only the work inside the session (`inside`), so the session
    still closes through its running client and releases what it held."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.target = trio.CancelScope()

    @contextmanager
    def inside(self) -> Iterator[None]:
        with trio.CancelScope() as scope:
            self.target = scope
            if self.signum is not None:
                scope.cancel()
            yield
        self.target = trio.CancelScope()  # a later signal waits for the session to close


async def _until_signal(run: Callable[[_Stop], Awaitable[int]]) -> int:
    """`run`'s exit status, or 128 + the signal if SIGINT or SIGTERM comes first (then it
    ends quietly, without a traceback or a message)."""
    stop = _Stop()
    code = EXIT_FAILURE
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def main() -> None:
                nonlocal code
                with stop.target:
                    code = await run(stop)
                nursery.cancel_scope.cancel()

            nursery.start_soon(main)
            async for signum in signals:
                stop.signum = signum
                stop.target.cancel()
                break
    return code if stop.signum is None else 128 + stop.signum


def _shown(value: Any) -> str:
    """A value as the CLI prints it: strings as they are, anything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value, default=repr)


async def _kv_map(args: argparse.Namespace) -> int:
    """`kv` on a named map through the Map handle (and `kv watch`, on any map)."""
    from .recipes.resources import DEFAULT, Map

    addresses = parse_cluster(args.cluster)
    name = getattr(args, "map", None) or DEFAULT

    async def watch(client: CopycatClient, stop: _Stop) -> int:
        with stop.inside():
            async with Map(client, name).watch(prefix=args.prefix, since=args.since) as changes:
                async for change in changes:
                    if args.json:
                        print(json.dumps(attrs.asdict(change), default=repr), flush=True)
                        continue
                    shown = f" {_shown(change.value)}" if change.type == "put" else ""
                    print(f"{change.revision} {change.type} {change.key}{shown}", flush=True)
        return 0

    if args.action == "watch":
        return await _until_signal(
            lambda stop: _with_session(
                addresses, args.timeout, functools.partial(watch, stop=stop), wait=True
            )
        )

    async def once(client: CopycatClient) -> Any:
        consistency = CONSISTENCIES[getattr(args, "consistency", "linearizable")]
        handle = Map(client, name, consistency=consistency)
        if args.action == "put":
            return await handle.put(args.key, sys.stdin.read() if args.value == "-" else args.value)
        if args.action == "get":
            return await handle.get(args.key)
        if args.action == "delete":
            return await handle.delete(args.key)
        if args.action == "keys":
            return await handle.keys(prefix=args.prefix, limit=args.limit)
        return await handle.compare_and_set(args.key, args.old, args.new)

    result = await _with_session(addresses, args.timeout, once)
    if args.action == "keys":
        for key in result:
            print(key)
    elif args.action in ("get", "delete") and not result:
        print(f"{args.key}: not found in map {name!r}", file=sys.stderr)
        return EXIT_FAILURE
    elif args.action == "get":
        print(_shown(result))
    elif args.action == "delete":
        print("deleted")
    elif args.action == "cas":
        print("true" if result else "false")
        return 0 if result else EXIT_FAILURE
    else:
        print("ok")
    return 0


async def _counter(args: argparse.Namespace) -> int:
    """`counter NAME incr [DELTA]` prints the new value; `counter NAME get` the value."""
    from .recipes.resources import Counter

    async def work(client: CopycatClient) -> int:
        counter = Counter(client, args.name)
        if args.action == "incr":
            return await counter.add_and_get(args.delta)
        return await counter.value()

    print(await _with_session(parse_cluster(args.cluster), args.timeout, work))
    return 0


class _OptionsThenCommand(argparse.Action):
    """`lock NAME [OPTIONS] -- COMMAND...`: argparse hands everything after NAME to the
    command, so the options before `--` are parsed here, into the same namespace."""

    def __init__(self, *args: Any, options: argparse.ArgumentParser, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.options = options

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        argv = list(values)
        if argv and argv[0].startswith("-") and argv[0] != "--":
            if "--" not in argv:
                parser.error("put the command after --: lock NAME [OPTIONS] -- COMMAND [ARGS...]")
            split = argv.index("--")
            self.options.parse_args(argv[:split], namespace)
            argv = argv[split:]
        setattr(namespace, self.dest, argv[1:] if argv[:1] == ["--"] else argv)


async def _lock(args: argparse.Namespace) -> int:
    """`lock NAME -- COMMAND...`: run the command holding the lock (its fencing token in
    COPYCAT_LOCK_TOKEN), release it after, exit with the command's status (like `etcdctl
    lock`). A signal while waiting withdraws; one while the command runs stops it first."""
    from .recipes.resources import Lock, LockNotHeldError

    if not args.argv:
        raise UsageError("lock needs a command to run: lock NAME -- COMMAND [ARGS...]")

    async def work(client: CopycatClient, stop: _Stop) -> int:
        code = EXIT_FAILURE  # if interrupted: then _until_signal gives the signal's status
        with stop.inside():
            code = await hold(client)
        return code

    async def hold(client: CopycatClient) -> int:
        lock = Lock(client, args.name)
        wait = getattr(args, "wait", None)
        if wait is None:
            token = await lock.acquire()
        else:
            granted = await lock.try_acquire(wait)
            if granted is None:
                raise CliFailure(f"lock {args.name!r} was not granted within {wait:g}s")
            token = granted
        env = {**os.environ, "COPYCAT_LOCK_NAME": args.name, "COPYCAT_LOCK_TOKEN": str(token)}
        code = EXIT_FAILURE
        try:
            done = await trio.run_process(args.argv, stdin=None, check=False, env=env)
            code = done.returncode if done.returncode >= 0 else 128 - done.returncode
        except OSError as exc:
            print(f"copycat-trio: cannot run {args.argv[0]}: {exc.strerror}", file=sys.stderr)
            code = 127
        finally:
            with trio.CancelScope(shield=True):
                try:
                    await lock.release()
                except LockNotHeldError as exc:  # lost with its session: say the work may clash
                    print(f"copycat-trio: {exc}", file=sys.stderr)
                    code = code or EXIT_FAILURE
        return code

    return await _until_signal(
        lambda stop: _with_session(
            parse_cluster(args.cluster), args.timeout, functools.partial(work, stop=stop), wait=True
        )
    )


async def _elect(args: argparse.Namespace) -> int:
    """`elect NAME [PROPOSAL]`: campaign with PROPOSAL (none: only watch) and print a line
    each time the leader changes, until interrupted (like `etcdctl elect`)."""
    from .recipes.resources import Election

    async def work(client: CopycatClient, stop: _Stop) -> int:
        election = Election(client, args.name)
        with stop.inside():
            async with trio.open_nursery() as nursery, election.observe() as leaders:
                if args.proposal is not None:
                    nursery.start_soon(election.campaign, args.proposal)
                shown = ""
                async for leader in leaders:
                    line = (
                        "(no leader)"
                        if leader is None
                        else f"{_shown(leader.proposal)} (term {leader.term}, "
                        f"session {leader.session})"
                    )
                    if line != shown:
                        print(line, flush=True)
                        shown = line
        return 0

    return await _until_signal(
        lambda stop: _with_session(
            parse_cluster(args.cluster), args.timeout, functools.partial(work, stop=stop), wait=True
        )
    )


async def _group(args: argparse.Namespace) -> int:
    """`group NAME members`: one member per line, in the order they joined."""
    from .recipes.resources import Group

    async def work(client: CopycatClient) -> Any:
        return await Group(client, args.name).members()

    members = await _with_session(parse_cluster(args.cluster), args.timeout, work)
    if args.json:
        rows = [
            {"member": m.member, "metadata": m.metadata, "session": m.session}
            for m in members.values()
        ]
        print(json.dumps(rows, indent=2, default=repr))
    else:
        for member in members.values():
            meta = "" if member.metadata is None else f" {_shown(member.metadata)}"
            print(f"{member.member}{meta}")
    return 0


# --- status ------------------------------------------------------------------------------


async def _status(args: argparse.Namespace) -> None:
    addresses = parse_cluster(args.cluster)
    deadline = trio.current_time() + args.timeout
    while True:
        # A frozen member costs this once (all are asked at once), not the whole --timeout.
        probe = max(0.1, min(2.0, deadline - trio.current_time()))
        answers = await fetch_status(addresses, timeout=probe, confirm=True)
        problem = ClusterView.of(addresses, answers, confirm_asked=True).problem()
        if problem is None or not args.wait or trio.current_time() + 0.2 >= deadline:
            break
        await trio.sleep(0.2)
    rows = status_rows(addresses, answers)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(format_table(rows, STATUS_KEYS))
        clusters = sorted({row["cluster_id"] for row in rows if row.get("cluster_id")})
        if clusters:
            print(f"cluster {', '.join(clusters)}")
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
    _add_tls_options(serve, suppress=False)
    serve.add_argument(
        "--client-auth",
        choices=("required", "none"),
        default=None,
        help="with TLS: clients need a certificate signed by the CA (required, the default) "
        "or not (none; members always do)",
    )
    serve.add_argument(
        "--tokens",
        metavar="FILE",
        help='with TLS: bearer tokens of clients without certificates, NAME = "sha256:..." '
        "lines (see `auth hash-token`; default: [auth] tokens in --config)",
    )
    serve.add_argument(
        "--role",
        action="append",
        default=[],
        metavar="IDENTITY=ROLE",
        help="with TLS: a client identity's role, admin, write or read (repeatable; with "
        "[auth.roles] in --config; an identity not listed: write)",
    )
    serve.add_argument(
        "--anonymous-role",
        choices=("write", "read"),
        default=None,
        help="with --client-auth none: the role of a client with neither certificate nor "
        "token (default: write)",
    )

    kv_common = _client_options(10.0)
    map_option = argparse.ArgumentParser(add_help=False)
    map_option.add_argument(
        "--map",
        default=argparse.SUPPRESS,
        metavar="NAME",
        help="a named map of the resources manager (default: the map named default, "
        "which the plain key-value operations use)",
    )
    kv = commands.add_parser(
        "kv", help="use the built-in key-value store", parents=[kv_common, map_option, verbosity]
    )
    actions = kv.add_subparsers(dest="action", required=True)
    leaf = [kv_common, map_option, verbosity]
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

    watch = actions.add_parser(
        "watch",
        help="print each change of the map as one line (REVISION TYPE KEY [VALUE]) until "
        "interrupted",
        parents=leaf,
    )
    watch.add_argument("--prefix", default="", help="only keys that start with this")
    watch.add_argument(
        "--since",
        type=int,
        default=None,
        metavar="REVISION",
        help="first the changes after this revision the map still holds (default: from now)",
    )
    watch.add_argument("--json", action="store_true", help="one JSON object per change")

    counter_common = _client_options(10.0)
    counter = commands.add_parser(
        "counter", help="a named counter", parents=[counter_common, verbosity]
    )
    counter.add_argument("name")
    counter_actions = counter.add_subparsers(dest="action", required=True)
    incr = counter_actions.add_parser(
        "incr",
        help="add DELTA (default 1); prints the new value",
        parents=[counter_common, verbosity],
    )
    incr.add_argument("delta", type=int, nargs="?", default=1)
    counter_actions.add_parser("get", help="print the value", parents=[counter_common, verbosity])

    lock_common = _client_options(10.0)
    lock_options = argparse.ArgumentParser(add_help=False)
    lock_options.add_argument(
        "--wait",
        type=float,
        default=argparse.SUPPRESS,
        metavar="SECONDS",
        help="give up (exit 1) if not granted within this long (default: wait)",
    )
    lock = commands.add_parser(
        "lock",
        help="run a command holding a named lock (its fencing token in COPYCAT_LOCK_TOKEN); "
        "exit with its status",
        parents=[lock_common, lock_options, verbosity],
    )
    lock.add_argument("name")
    lock.add_argument(
        "argv",
        nargs=argparse.REMAINDER,
        action=_OptionsThenCommand,
        options=argparse.ArgumentParser(
            prog="copycat-trio lock NAME", add_help=False, parents=[lock_common, lock_options]
        ),
        metavar="-- COMMAND [ARGS...]",
    )

    elect = commands.add_parser(
        "elect",
        help="campaign in a named election and print the leader each time it changes, until "
        "interrupted",
        parents=[_client_options(10.0), verbosity],
    )
    elect.add_argument("name")
    elect.add_argument("proposal", nargs="?", help="what to lead with (none: only watch)")

    group_common = _client_options(10.0)
    group = commands.add_parser("group", help="a named group", parents=[group_common, verbosity])
    group.add_argument("name")
    group_actions = group.add_subparsers(dest="action", required=True)
    group_members = group_actions.add_parser(
        "members",
        help="one member per line, in the order they joined",
        parents=[group_common, verbosity],
    )
    group_members.add_argument("--json", action="store_true", help="a JSON list of objects")

    status = commands.add_parser(
        "status",
        help="each member's role, term, indexes; exit 1 without a leader and a quorum",
        parents=[_client_options(5.0), verbosity],
    )
    status.add_argument("--json", action="store_true", help="a JSON list of objects")
    status.add_argument(
        "--wait",
        action="store_true",
        help="ask again until there is a leader and a quorum, for up to --timeout (in scripts: "
        "wait for members just started)",
    )
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

    auth = commands.add_parser(
        "auth", help="tokens for clients (docs/security.md)", parents=[verbosity]
    )
    auth_actions = auth.add_subparsers(dest="action", required=True)
    hash_token = auth_actions.add_parser(
        "hash-token",
        help="print the line of a tokens file for a token (read from stdin, so it stays out "
        "of the shell's history)",
    )
    hash_token.add_argument("name", help="the identity the token stands for")
    hash_token.add_argument(
        "--new",
        action="store_true",
        help="make a new random token instead (printed once on stderr: give it to the client)",
    )

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
    _add_tls_options(common, suppress=True)
    common.add_argument(
        "--token",
        default=argparse.SUPPRESS,
        help="a bearer token naming this client, sent over TLS only (default: $COPYCAT_TOKEN)",
    )
    common.set_defaults(default_timeout=timeout)
    return common


def _complete_client_options(args: argparse.Namespace) -> None:
    """Fill --cluster from the environment and --timeout from the command's default."""
    if args.command not in ("kv", "status", "members", "health") and not (
        args.command in ("counter", "lock", "elect", "group")
        or (args.command == "snapshot" and args.action == "save")
    ):
        return
    cluster = getattr(args, "cluster", None) or os.environ.get("COPYCAT_CLUSTER")
    if not cluster:
        raise UsageError(f"{args.command} needs --cluster HOST:PORT,... (or COPYCAT_CLUSTER)")
    args.cluster = cluster
    _set_client_tls(args)
    if not hasattr(args, "timeout"):
        args.timeout = args.default_timeout
    if args.timeout <= 0:
        raise UsageError(f"--timeout must be positive, not {args.timeout:g}")


def fail(message: str, code: int = EXIT_FAILURE) -> NoReturn:
    print(f"copycat-trio: {message}", file=sys.stderr)
    raise SystemExit(code)


def _enable_completion(parser: argparse.ArgumentParser) -> None:
    """Tab completion where the optional extra `completion` (argcomplete) is installed: run by
    the shell's completion hook, this prints the candidates and exits; otherwise it does
    nothing."""
    try:
        import argcomplete
    except ImportError:
        return
    argcomplete.autocomplete(parser)


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    _enable_completion(parser)
    args = parser.parse_args(argv)
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


SERVE_SWITCH_INTERVAL = 0.0005
"""The interpreter's thread switch interval in a `serve` process. The storage thread that
writes and fsyncs needs the GIL after each system call, and a busy event loop hands it over only
once the interval is up: Python's 5 ms default added about 1.5 ms to a put at one writer
(docs/benchmarks.md). An application that embeds a server may set the same."""


def _run_command(args: argparse.Namespace) -> None:
    if args.command == "serve":
        sys.setswitchinterval(SERVE_SWITCH_INTERVAL)
        trio.run(_serve, args)
    elif args.command == "kv":
        trio.run(_kv, args)
    elif args.command in ("counter", "lock", "elect", "group"):
        run = {"counter": _counter, "lock": _lock, "elect": _elect, "group": _group}
        raise SystemExit(trio.run(run[args.command], args))
    elif args.command == "status":
        trio.run(_status, args)
    elif args.command == "health":
        trio.run(_health, args)
    elif args.command == "members":
        trio.run(_members, args)
    elif args.command == "snapshot":
        trio.run(_snapshot, args)
    elif args.command == "auth":
        _hash_token(args)
    elif args.command == "demo":
        from .demo import run_demo

        raise SystemExit(trio.run(run_demo, args.writes))


if __name__ == "__main__":
    main()
