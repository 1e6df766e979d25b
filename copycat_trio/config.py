"""The cluster file: one TOML file, in the spirit of ZooKeeper's zoo.cfg, shared by every member.

    [cluster]
    election_timeout = 1.0        # seconds
    heartbeat_interval = 0.15
    session_timeout = 5.0
    replace_after = 30.0          # optional: replace a voter unreachable this long
    priority_by_id = false        # ZooKeeper's preference: a higher id wins ties

    [storage]
    level = "disk"                # or "memory"
    directory = "data/member-{id}"
    snapshot_every = 10000

    [metrics]                     # optional: /metrics, /health and /ready over HTTP
    address = "0.0.0.0:9379"      # "{id}" is replaced by the member's id, as in directory

    [tls]                         # optional: mutual TLS (see docs/security.md)
    cert = "certs/member-{id}.pem"
    key = "certs/member-{id}.key"
    ca = "certs/ca.pem"
    client_auth = "required"      # or "none": clients need no certificate
    server_name = "copycat"       # optional: the name every member's certificate carries

    [auth]                        # optional, with [tls]: identities and roles
    tokens = "tokens.txt"         # bearer tokens for clients without certificates (hashed)
    anonymous = "write"           # the role of a client with neither (--client-auth none)

    [auth.roles]                  # identity (certificate common name, token name) = role
    ops = "admin"                 # admin | write | read; an identity not listed: write

    [[members]]
    id = 1
    address = "127.0.0.1:5001"
    client_address = "127.0.0.1:6001"   # optional
    type = "active"                     # active | passive | reserve
    priority = 0

An invalid file is rejected with its line and the reason.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import attrs

from .protocol.errors import ConfigurationError
from .protocol.messages import Member, MemberType
from .server.authz import Role, parse_role
from .transport.base import split_address
from .transport.tls import TlsSettings

_TYPES = {"active": MemberType.ACTIVE, "passive": MemberType.PASSIVE, "reserve": MemberType.RESERVE}
_CLUSTER_KEYS = {
    "election_timeout",
    "heartbeat_interval",
    "session_timeout",
    "replace_after",
    "priority_by_id",
}
_STORAGE_KEYS = {"level", "directory", "snapshot_every"}
_METRICS_KEYS = {"address"}
_TLS_KEYS = {"cert", "key", "ca", "client_auth", "server_name"}
_MEMBER_KEYS = {"id", "address", "client_address", "type", "priority"}
_AUTH_KEYS = {"tokens", "anonymous", "roles"}


class ClusterFileError(ConfigurationError):
    """The cluster file is invalid; the message names the file, the line and the reason."""


@attrs.frozen
class ClusterFile:
    """What a cluster file says."""

    members: tuple[Member, ...]
    election_timeout: float = 1.0
    heartbeat_interval: float = 0.15
    session_timeout: float = 5.0
    replace_after: float | None = None
    storage_level: str = "disk"
    storage_directory: str = "copycat-data/member-{id}"
    snapshot_every: int = 10_000
    metrics_address: str | None = None
    """HOST:PORT for metrics and health, "{id}" standing for the member's id; None: off."""
    tls: TlsSettings | None = None
    """The [tls] table, "{id}" in its paths standing for the member's id; None: plaintext."""
    tokens_file: str | None = None
    """[auth] tokens: the file of hashed bearer tokens; None: no tokens."""
    anonymous_role: Role | None = None
    """[auth] anonymous: the role of clients without certificate or token (None: write)."""
    roles: tuple[tuple[str, Role], ...] = ()
    """[auth.roles]: (identity, role) pairs."""

    def member(self, member_id: int) -> Member:
        for member in self.members:
            if member.id == member_id:
                return member
        ids = ", ".join(str(m.id) for m in self.members)
        raise ConfigurationError(f"member {member_id} is not in the cluster file (members: {ids})")

    def directory_for(self, member_id: int) -> str:
        return self.storage_directory.replace("{id}", str(member_id))

    def tls_for(self, member_id: int) -> TlsSettings | None:
        """The TLS settings of one member ("{id}" in the paths replaced)."""
        if self.tls is None:
            return None
        return attrs.evolve(
            self.tls,
            cert=self.tls.cert.replace("{id}", str(member_id)),
            key=self.tls.key.replace("{id}", str(member_id)),
            ca=self.tls.ca.replace("{id}", str(member_id)),
        )

    def metrics_address_for(self, member_id: int) -> str | None:
        if self.metrics_address is None:
            return None
        return self.metrics_address.replace("{id}", str(member_id))


class _Locator:
    """Finds the line of a table or key, so errors can point at it."""

    def __init__(self, path: str, text: str) -> None:
        self.path = path
        self.lines = text.splitlines()

    def _section_start(self, header: str, ordinal: int = 0) -> int | None:
        pattern = re.compile(rf"^\s*{re.escape(header)}\s*(#.*)?$")
        seen = -1
        for number, line in enumerate(self.lines, start=1):
            if pattern.match(line):
                seen += 1
                if seen == ordinal:
                    return number
        return None

    def line(self, header: str, key: str | None = None, ordinal: int = 0) -> int | None:
        start = self._section_start(header, ordinal)
        if start is None or key is None:
            return start
        key_pattern = re.compile(rf"^\s*{re.escape(key)}\s*=")
        for number in range(start + 1, len(self.lines) + 1):
            text = self.lines[number - 1]
            if text.strip().startswith("["):
                break
            if key_pattern.match(text):
                return number
        return start

    def error(
        self, reason: str, header: str, key: str | None = None, ordinal: int = 0
    ) -> ClusterFileError:
        number = self.line(header, key, ordinal)
        where = f"{self.path}, line {number}" if number else self.path
        return ClusterFileError(f"{where}: {reason}")


def _number(value: Any, name: str, where: _Locator, header: str, *, positive: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise where.error(f"{name} must be a number, not {value!r}", header, name)
    if positive and value <= 0:
        raise where.error(f"{name} must be positive, not {value}", header, name)
    return float(value)


def parse_cluster_file(text: str, path: str = "cluster.toml") -> ClusterFile:
    """Parse and check a cluster file's text."""
    where = _Locator(path, text)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ClusterFileError(f"{path}: not valid TOML: {exc}") from None
    for key in data:
        if key not in ("cluster", "storage", "members", "metrics", "tls", "auth"):
            raise (
                where.error(f"unknown table or key {key!r}", f"[{key}]")
                if isinstance(data[key], dict)
                else ClusterFileError(f"{path}: unknown key {key!r}")
            )
    cluster = data.get("cluster", {})
    storage = data.get("storage", {})
    metrics = data.get("metrics", {})
    tls = data.get("tls")
    if not all(isinstance(table, dict) for table in (cluster, storage, metrics, tls or {})):
        raise ClusterFileError(f"{path}: [cluster], [storage], [metrics] and [tls] must be tables")
    for key in cluster:
        if key not in _CLUSTER_KEYS:
            raise where.error(f"unknown setting {key!r} in [cluster]", "[cluster]", key)
    for key in storage:
        if key not in _STORAGE_KEYS:
            raise where.error(f"unknown setting {key!r} in [storage]", "[storage]", key)
    for key in metrics:
        if key not in _METRICS_KEYS:
            raise where.error(f"unknown setting {key!r} in [metrics]", "[metrics]", key)
    settings: dict[str, Any] = {}
    if tls is not None:
        settings["tls"] = _tls_settings(tls, where)
    auth = data.get("auth")
    if auth is not None:
        if not isinstance(auth, dict):
            raise ClusterFileError(f"{path}: [auth] must be a table")
        if tls is None:
            raise where.error(
                "[auth] needs [tls]: without TLS no client has an identity, and a token could "
                "be read on the way",
                "[auth]",
            )
        settings.update(_auth_settings(auth, where))
    if "address" in metrics:
        address = metrics["address"]
        try:
            split_address(address.replace("{id}", "1") if isinstance(address, str) else "")
        except ValueError:
            raise where.error(
                f"address {address!r} is not HOST:PORT", "[metrics]", "address"
            ) from None
        settings["metrics_address"] = address
    for key in ("election_timeout", "heartbeat_interval", "session_timeout", "replace_after"):
        if key in cluster:
            settings[key] = _number(cluster[key], key, where, "[cluster]")
    priority_by_id = cluster.get("priority_by_id", False)
    if not isinstance(priority_by_id, bool):
        raise where.error("priority_by_id must be true or false", "[cluster]", "priority_by_id")
    if "level" in storage:
        if storage["level"] not in ("disk", "memory"):
            raise where.error(
                f'level must be "disk" or "memory", not {storage["level"]!r}', "[storage]", "level"
            )
        settings["storage_level"] = storage["level"]
    if "directory" in storage:
        if not isinstance(storage["directory"], str) or not storage["directory"]:
            raise where.error("directory must be a non-empty string", "[storage]", "directory")
        settings["storage_directory"] = storage["directory"]
    if "snapshot_every" in storage:
        value = storage["snapshot_every"]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise where.error(
                "snapshot_every must be a whole number >= 1", "[storage]", "snapshot_every"
            )
        settings["snapshot_every"] = value
    raw_members = data.get("members")
    if not isinstance(raw_members, list) or not raw_members:
        raise ClusterFileError(f"{path}: at least one [[members]] entry is required")
    members: list[Member] = []
    seen_ids: set[int] = set()
    seen_addresses: set[str] = set()
    for ordinal, raw in enumerate(raw_members):
        header = "[[members]]"
        for key in raw:
            if key not in _MEMBER_KEYS:
                raise where.error(f"unknown member setting {key!r}", header, key, ordinal)
        member_id = raw.get("id")
        if isinstance(member_id, bool) or not isinstance(member_id, int) or member_id < 1:
            raise where.error(
                f"id must be a whole number >= 1, not {member_id!r}", header, "id", ordinal
            )
        if member_id in seen_ids:
            raise where.error(f"member id {member_id} appears twice", header, "id", ordinal)
        address = raw.get("address")
        try:
            split_address(address if isinstance(address, str) else "")
        except ValueError:
            raise where.error(
                f"address {address!r} is not HOST:PORT", header, "address", ordinal
            ) from None
        if address in seen_addresses:
            raise where.error(f"address {address} appears twice", header, "address", ordinal)
        client_address = raw.get("client_address")
        if client_address is not None:
            try:
                split_address(client_address if isinstance(client_address, str) else "")
            except ValueError:
                raise where.error(
                    f"client_address {client_address!r} is not HOST:PORT",
                    header,
                    "client_address",
                    ordinal,
                ) from None
        kind = raw.get("type", "active")
        if kind not in _TYPES:
            raise where.error(
                f"type must be active, passive or reserve, not {kind!r}", header, "type", ordinal
            )
        priority = raw.get("priority", member_id if priority_by_id else 0)
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise where.error(
                f"priority must be a whole number, not {priority!r}", header, "priority", ordinal
            )
        seen_ids.add(member_id)
        seen_addresses.add(address)
        members.append(
            Member(
                member_id, address, _TYPES[kind], client_address=client_address, priority=priority
            )
        )
    if not any(m.type is MemberType.ACTIVE for m in members):
        raise ClusterFileError(f"{path}: at least one member must be active")
    heartbeat = settings.get("heartbeat_interval", 0.15)
    election = settings.get("election_timeout", 1.0)
    if election < 2 * heartbeat:
        raise where.error(
            f"election_timeout ({election}s) must be at least twice "
            f"heartbeat_interval ({heartbeat}s)",
            "[cluster]",
            "election_timeout",
        )
    return ClusterFile(members=tuple(members), **settings)


def _tls_settings(table: dict[str, Any], where: _Locator) -> TlsSettings:
    for key in table:
        if key not in _TLS_KEYS:
            raise where.error(f"unknown setting {key!r} in [tls]", "[tls]", key)
    for key in ("cert", "key", "ca"):
        if not isinstance(table.get(key), str) or not table[key]:
            raise where.error(f"[tls] needs {key} = a file name", "[tls]", key)
    for key in ("client_auth", "server_name"):
        if key in table and not isinstance(table[key], str):
            raise where.error(f"{key} must be a string", "[tls]", key)
    try:
        return TlsSettings(
            cert=table["cert"],
            key=table["key"],
            ca=table["ca"],
            client_auth=table.get("client_auth", "required"),
            server_name=table.get("server_name"),
        )
    except ConfigurationError as exc:
        raise where.error(str(exc), "[tls]", "client_auth") from None


def _auth_settings(table: dict[str, Any], where: _Locator) -> dict[str, Any]:
    for key in table:
        if key not in _AUTH_KEYS:
            raise where.error(f"unknown setting {key!r} in [auth]", "[auth]", key)
    settings: dict[str, Any] = {}
    if "tokens" in table:
        if not isinstance(table["tokens"], str) or not table["tokens"]:
            raise where.error("tokens must be a file name", "[auth]", "tokens")
        settings["tokens_file"] = table["tokens"]
    try:
        if "anonymous" in table:
            value = table["anonymous"]
            role = parse_role(value if isinstance(value, str) else repr(value), "anonymous")
            if role is Role.ADMIN:
                raise ConfigurationError("anonymous may be read or write, not admin")
            settings["anonymous_role"] = role
    except ConfigurationError as exc:
        raise where.error(str(exc), "[auth]", "anonymous") from None
    roles = table.get("roles", {})
    if not isinstance(roles, dict):
        raise where.error("roles must be a table: [auth.roles]", "[auth]", "roles")
    pairs: list[tuple[str, Role]] = []
    for identity, value in roles.items():
        try:
            text = value if isinstance(value, str) else repr(value)
            pairs.append((identity, parse_role(text, f"role of {identity!r}")))
        except ConfigurationError as exc:
            raise where.error(str(exc), "[auth.roles]", identity) from None
    settings["roles"] = tuple(pairs)
    return settings


def load_cluster_file(path: str | Path) -> ClusterFile:
    """Read and check a cluster file."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ClusterFileError(f"cannot read cluster file {path}: {exc.strerror}") from None
    return parse_cluster_file(text, str(path))
