"""Who a client is and what it may do: identities from certificates or bearer tokens, and the
roles `read`, `write` and `admin` (see docs/security.md). Pure rules, no I/O: the server asks
`identify` once per connection and `required_role` per request.

A connection whose certificate is valid for a member's host (or the configured `server_name`)
is a member's: member-to-member traffic (forwarded requests, joins, Raft) is never checked
against client roles, since a member forwards a request only after checking it itself.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import ipaddress
import re
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from ..protocol.errors import ConfigurationError
from ..protocol.messages import (
    CommandRequest,
    ConfigureRequest,
    ConnectRequest,
    InstallRequest,
    KeepAliveRequest,
    QueryRequest,
    RegisterRequest,
    StatusRequest,
    UnregisterRequest,
)

TOKEN_HASH_PREFIX = "sha256:"


class Role(enum.Enum):
    """What a client may do; each role allows what the ones before it do."""

    READ = "read"
    """Queries (and the sessions and status they need)."""
    WRITE = "write"
    """Commands too."""
    ADMIN = "admin"
    """Everything: membership changes, leadership transfer, snapshots and backups."""

    @property
    def rank(self) -> int:
        return _RANKS[self]

    def allows(self, needed: Role) -> bool:
        """Whether this role may make a request that needs `needed`."""
        return self.rank >= needed.rank


_RANKS = {Role.READ: 0, Role.WRITE: 1, Role.ADMIN: 2}

_READ_REQUESTS: tuple[type, ...] = (
    QueryRequest,
    RegisterRequest,
    KeepAliveRequest,
    UnregisterRequest,
    ConnectRequest,
    StatusRequest,
)


_MEMBER_ONLY: tuple[type, ...] = (InstallRequest, ConfigureRequest)


def is_member_only(request: Any) -> bool:
    """Requests only a leader sends its followers (a snapshot, a reserve member's
    configuration): no client role allows them."""
    return isinstance(request, _MEMBER_ONLY)


def required_role(request: Any) -> Role:
    """The least role that may make `request`: sessions, queries and status need `read`,
    commands `write`, everything else (membership, transfer, backups, member traffic)
    `admin`."""
    if isinstance(request, _READ_REQUESTS):
        return Role.READ
    if isinstance(request, CommandRequest):
        return Role.WRITE
    return Role.ADMIN


def session_of(request: Any) -> int:
    """The session a client request acts in (0: none)."""
    if isinstance(request, _SESSION_REQUESTS):
        return int(getattr(request, "session", 0))
    return 0


_SESSION_REQUESTS: tuple[type, ...] = (
    CommandRequest,
    QueryRequest,
    KeepAliveRequest,
    UnregisterRequest,
    ConnectRequest,
)


def session_refusal(principal: Principal, session_id: int, owner: str) -> str | None:
    """Why `principal` may not act in the session `owner` opened, or None: a command in
    another identity's session would apply as that identity (session ids are log indexes,
    easy to guess). Members act in any."""
    if principal.member or principal.identity == owner:
        return None
    who = f"client {owner!r}" if owner else "an anonymous client"
    return f"session {session_id} belongs to {who}, not to {principal.describe()}"


def parse_role(text: str, where: str = "a role") -> Role:
    """ "read", "write" or "admin" (any case); else a sentence naming the choices."""
    try:
        return Role(text.strip().lower())
    except ValueError:
        choices = ", ".join(r.value for r in Role)
        raise ConfigurationError(f"{where}: {text!r} is not a role ({choices})") from None


def parse_role_assignment(text: str) -> tuple[str, Role]:
    """`IDENTITY=ROLE` as `serve --role` takes it."""
    identity, sep, role = text.rpartition("=")
    identity = identity.strip()
    if not sep or not identity:
        raise ConfigurationError(f"--role {text!r}: expected IDENTITY=ROLE, such as ops=admin")
    return identity, parse_role(role, f"--role {text!r}")


def hash_token(token: str) -> str:
    """How a token is stored in a tokens file: `sha256:` and the hex digest (a token is long
    and random, so a plain hash suffices: nothing to guess from it)."""
    return TOKEN_HASH_PREFIX + hashlib.sha256(token.encode()).hexdigest()


_TOKEN_LINE = re.compile(r'^\s*([^=\s][^=]*?)\s*=\s*"?(sha256:[0-9a-f]{64})"?\s*$')


@attrs.frozen
class TokenTable:
    """Identities by the hash of their token, read from a tokens file."""

    hashes: Mapping[str, str] = attrs.field(factory=dict)
    """Identity -> stored hash ("sha256:<hex>")."""

    @classmethod
    def parse(cls, text: str, path: str = "tokens file") -> TokenTable:
        """`NAME = "sha256:<hex>"` lines (`copycat-trio auth hash-token` makes the hash);
        blank lines and `#` comments are skipped. A token in the clear is refused: the file
        must not be worth stealing."""
        hashes: dict[str, str] = {}
        for number, line in enumerate(text.splitlines(), 1):
            stripped = line.strip()
            if not stripped or stripped.startswith("#"):
                continue
            match = _TOKEN_LINE.match(stripped)
            if match is None:
                raise ConfigurationError(
                    f'{path} line {number}: expected NAME = "sha256:<64 hex digits>" (make '
                    "the hash with `copycat-trio auth hash-token`; tokens are never stored in "
                    "the clear)"
                )
            name, digest = match.groups()
            if name in hashes:
                raise ConfigurationError(f"{path} line {number}: {name!r} is given twice")
            hashes[name] = digest
        return cls(hashes)

    def identity_of(self, token: str) -> str | None:
        """The identity whose token this is, or None. Every stored hash is compared, in
        constant time, so the time taken tells nothing about which one nearly matched."""
        if not token:
            return None
        digest = hash_token(token).encode()
        found: str | None = None
        for name, stored in self.hashes.items():
            if hmac.compare_digest(digest, stored.encode()):
                found = name
        return found

    def __len__(self) -> int:
        return len(self.hashes)


@attrs.frozen(kw_only=True)
class AuthPolicy:
    """A member's roles and tokens. `roles`: identity -> role; an authenticated identity
    not listed gets `default_role`; a client with neither certificate nor token
    (`--client-auth none`) gets `anonymous_role`."""

    roles: Mapping[str, Role] = attrs.field(factory=dict)
    tokens: TokenTable = attrs.field(factory=TokenTable)
    default_role: Role = Role.WRITE
    anonymous_role: Role = Role.WRITE
    server_name: str | None = None
    """The name every member's certificate carries, if one is shared (TLS `server_name`)."""

    def __attrs_post_init__(self) -> None:
        if self.anonymous_role is Role.ADMIN:
            raise ConfigurationError(
                "the anonymous role may be read or write, not admin: a client that proved "
                "nothing must not change the membership"
            )


@attrs.frozen(kw_only=True)
class Principal:
    """Who is at the other end of one connection."""

    identity: str = ""
    """The certificate's common name or the token's name; "" for an anonymous client."""
    role: Role | None = None
    """What it may do; None when the connection is refused."""
    member: bool = False
    """A member of the cluster: trusted with everything, never checked against roles."""
    refusal: str = ""
    """Why the connection is refused (a wrong token), or ""."""

    def describe(self) -> str:
        return f"client {self.identity!r}" if self.identity else "an anonymous client"


def certificate_identity(certificate: Mapping[str, Any]) -> str:
    """A certificate's subject common name; if it has none, its first subjectAltName."""
    for rdn in certificate.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    for _kind, value in certificate.get("subjectAltName", ()):
        return str(value)
    return ""


def _normal(name: str) -> str:
    """A host or certificate name as compared: lower case, an IP address in one form."""
    try:
        return str(ipaddress.ip_address(name.strip("[]")))
    except ValueError:
        return name.lower().rstrip(".")


def _names_match(names: Iterable[str], host: str) -> bool:
    """Whether a certificate naming `names` is valid for `host`, as TLS checks a host name:
    exactly, or by a wildcard standing for the one leftmost label."""
    host = _normal(host)
    for name in map(_normal, names):
        if name == host:
            return True
        if name.startswith("*.") and "." in host and host.split(".", 1)[1] == name[2:]:
            return True
    return False


def identify(
    policy: AuthPolicy,
    certificate: Mapping[str, Any] | None,
    token: str,
    member_hosts: Iterable[str],
) -> Principal:
    """The principal of a connection from the certificate it presented (ssl's getpeercert(),
    or None) and the token its Hello carried ("" if none). `member_hosts`: the hosts of the
    members' addresses; a certificate naming one of them (or `policy.server_name`) in its
    subjectAltName is a member's, as a member dialling it would check."""
    token_identity = policy.tokens.identity_of(token) if token else None
    if token and token_identity is None:
        why = "no tokens are configured" if not len(policy.tokens) else "the token is not valid"
        return Principal(refusal=f"{why} on this member (check --token or $COPYCAT_TOKEN)")
    if certificate:
        names = [str(value) for _kind, value in certificate.get("subjectAltName", ())]
        hosts = [policy.server_name] if policy.server_name else list(member_hosts)
        identity = certificate_identity(certificate)
        if any(_names_match(names, host) for host in hosts):
            return Principal(identity=identity, role=Role.ADMIN, member=True)
        return Principal(identity=identity, role=policy.roles.get(identity, policy.default_role))
    if token_identity is not None:
        role = policy.roles.get(token_identity, policy.default_role)
        return Principal(identity=token_identity, role=role)
    return Principal(role=policy.anonymous_role)


def unauthorized_message(principal: Principal, request: Any) -> str:
    """The sentence an UNAUTHORIZED answer carries: who, what, and the role it lacks."""
    needed = required_role(request)
    if is_member_only(request):
        return (
            f"{type(request).__name__} is member traffic: only members send it, not "
            f"{principal.describe()}"
        )
    has = principal.role.value if principal.role is not None else "no"
    return (
        f"{principal.describe()} has the {has} role; {type(request).__name__} needs the "
        f"{needed.value} role (see --role and [auth.roles])"
    )
