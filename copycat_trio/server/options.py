"""A server's settings, checked up front so a bad combination fails with a sentence."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import attrs

from ..core.raft import validate_timing
from ..protocol.errors import ConfigurationError
from ..protocol.messages import Member
from ..state_machine import StateMachine
from ..transport.base import split_address
from ..transport.tls import TlsSettings


@attrs.frozen(kw_only=True)
class ServerOptions:
    """What CopycatServer was configured with (seed 000's builder)."""

    member_id: int
    address: str
    client_address: str | None = None
    state_machine: Callable[[], StateMachine]
    election_timeout: float = 1.0
    heartbeat_interval: float = 0.15
    session_timeout: float = 5.0
    request_timeout: float = 10.0
    """How long a follower waits on the leader for a forwarded request."""
    metrics_address: str | None = None
    """HOST:PORT for /metrics, /health and /ready over HTTP; None serves none."""
    tls: TlsSettings | None = None
    """Certificates for mutual TLS on every connection (docs/security.md); None: plaintext."""
    cluster_id: str | None = None
    """The cluster this member must belong to; None: the one its data directory names."""

    def __attrs_post_init__(self) -> None:
        if isinstance(self.member_id, bool) or not isinstance(self.member_id, int):
            raise ConfigurationError("member id must be an integer")
        if self.member_id < 1:
            raise ConfigurationError(f"member id must be 1 or more, not {self.member_id}")
        for name in ("address", "client_address", "metrics_address"):
            value = getattr(self, name)
            if value is not None:
                try:
                    split_address(value)
                except ValueError as exc:
                    raise ConfigurationError(f"{name}: {exc}") from None
        if self.client_address is not None and self.client_address == self.address:
            raise ConfigurationError("client address must differ from the server address")
        if self.metrics_address is not None and self.metrics_address in (
            self.address,
            self.client_address,
        ):
            raise ConfigurationError("metrics address must differ from the server and client ones")
        if not callable(self.state_machine):
            raise ConfigurationError("state machine must be a class or factory to call")
        try:
            validate_timing(self.election_timeout, self.heartbeat_interval)
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from None
        if self.session_timeout <= self.election_timeout:
            raise ConfigurationError(
                f"session timeout ({self.session_timeout}s) must exceed the election timeout "
                f"({self.election_timeout}s), or sessions expire during every failover"
            )
        if self.request_timeout <= 0:
            raise ConfigurationError("request timeout must be positive")


def validate_members(members: Sequence[Member], own_id: int | None = None) -> tuple[Member, ...]:
    """A bootstrap member list: unique ids and addresses, valid addresses, self included."""
    ids: set[int] = set()
    addresses: set[str] = set()
    for member in members:
        if member.id in ids:
            raise ConfigurationError(f"member id {member.id} appears twice")
        if member.address in addresses:
            raise ConfigurationError(f"address {member.address} appears twice")
        try:
            split_address(member.address)
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from None
        ids.add(member.id)
        addresses.add(member.address)
    if own_id is not None and own_id not in ids:
        raise ConfigurationError(f"member {own_id} is not in the member list {sorted(ids)}")
    return tuple(members)
