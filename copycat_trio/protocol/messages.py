"""Every message on the wire, as frozen attrs classes.

Names follow Copycat's request handlers (seed 000): client requests (register, connect, keep-alive,
unregister, command, query, publish), server requests (configure, install, join, reconfigure,
leave) and the Raft messages (append, poll, vote). Raft messages travel one way inside an
`Envelope`; request/response pairs travel inside `RpcRequest`/`RpcResponse` with a request id so
that many can be in flight on one connection. Field types are checked by the codec on decode.
"""

from __future__ import annotations

import enum
from typing import Any

import attrs

from .errors import ErrorInfo, ErrorType, Status


class MemberType(enum.IntEnum):
    """Copycat's member types: who votes, who replicates, who only holds the configuration."""

    INACTIVE = 0
    RESERVE = 1
    PASSIVE = 2
    ACTIVE = 3


@attrs.frozen
class Member:
    """A server in the configuration, named by its stable operator-assigned id."""

    id: int
    address: str
    """HOST:PORT where it listens for servers (and for clients unless client_address is set)."""
    type: MemberType = MemberType.ACTIVE
    client_address: str | None = None
    priority: int = 0
    """Election preference: among up-to-date members, higher priority campaigns first, and a
    leader hands over to a caught-up member of higher priority."""

    @property
    def effective_client_address(self) -> str:
        return self.client_address or self.address


# --- log entries -----------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class NoOpEntry:
    """Appended by every new leader; committing it commits all earlier entries (Raft 5.4.2)."""

    term: int
    index: int
    timestamp: int = 0
    """The leader's wall clock in milliseconds: log time, the same on every server."""


@attrs.frozen(kw_only=True)
class CommandEntry:
    """A user command to apply to the state machine."""

    term: int
    index: int
    timestamp: int = 0
    operation: Any = None
    session: int = 0
    sequence: int = 0


@attrs.frozen(kw_only=True)
class ConfigurationEntry:
    """The cluster's members; in force from the moment it is appended."""

    term: int
    index: int
    timestamp: int = 0
    members: tuple[Member, ...] = ()


@attrs.frozen(kw_only=True)
class RegisterEntry:
    """Opens a session; the session's id is this entry's index."""

    term: int
    index: int
    timestamp: int = 0
    client: str = ""
    timeout: int = 0
    """Granted session timeout in milliseconds of log time."""
    identity: str = ""
    """Who opened the session (see server/authz.py); "" without authentication. Trailing:
    entries logged before it existed load with ""."""


@attrs.frozen(kw_only=True)
class KeepAliveEntry:
    """A session is alive; frees results and events the client has received."""

    term: int
    index: int
    timestamp: int = 0
    session: int = 0
    command_sequence: int = 0
    event_index: int = 0


@attrs.frozen(kw_only=True)
class UnregisterEntry:
    """Closes a session: on the client's request, or because the leader found it expired."""

    term: int
    index: int
    timestamp: int = 0
    session: int = 0
    expired: bool = False


Entry = (
    NoOpEntry | CommandEntry | ConfigurationEntry | RegisterEntry | KeepAliveEntry | UnregisterEntry
)
ENTRY_TYPES: tuple[type, ...] = (
    NoOpEntry,
    CommandEntry,
    ConfigurationEntry,
    RegisterEntry,
    KeepAliveEntry,
    UnregisterEntry,
)


# --- Raft messages (one way, inside an Envelope) ------------------------------------------


@attrs.frozen(kw_only=True)
class AppendRequest:
    """Entries (possibly none: a heartbeat) after prev_log_index, and the leader's commit index."""

    term: int
    leader: int
    prev_log_index: int
    prev_log_term: int
    entries: tuple[Entry, ...] = ()
    commit_index: int = 0
    read_round: int = 0
    """The leader's heartbeat round, echoed back: confirms leadership for read-index queries."""


@attrs.frozen(kw_only=True)
class AppendResponse:
    """The follower's answer. On success, log_index is the index now known to match the leader;
    on failure, the index the follower suggests to probe from (its last index + 1 at most)."""

    term: int
    succeeded: bool
    log_index: int
    read_round: int = 0
    rejected_index: int = 0
    """On failure, the prev_log_index of the request that was rejected (to spot stale replies)."""


@attrs.frozen(kw_only=True)
class PollRequest:
    """Pre-vote: would you vote for me at `term` (my term + 1)? Changes no one's term."""

    term: int
    candidate: int
    log_index: int
    log_term: int


@attrs.frozen(kw_only=True)
class PollResponse:
    term: int
    accepted: bool


@attrs.frozen(kw_only=True)
class VoteRequest:
    term: int
    candidate: int
    log_index: int
    log_term: int
    transfer: bool = False
    """Sent on the old leader's request (leadership transfer): voters set aside stickiness."""


@attrs.frozen(kw_only=True)
class VoteResponse:
    term: int
    voted: bool


@attrs.frozen(kw_only=True)
class TimeoutNowRequest:
    """From the leader to a caught-up member: start an election at once (leadership transfer)."""

    term: int
    leader: int


RaftMessage = (
    AppendRequest
    | AppendResponse
    | PollRequest
    | PollResponse
    | VoteRequest
    | VoteResponse
    | TimeoutNowRequest
)
RAFT_MESSAGE_TYPES: tuple[type, ...] = (
    AppendRequest,
    AppendResponse,
    PollRequest,
    PollResponse,
    VoteRequest,
    VoteResponse,
    TimeoutNowRequest,
)


@attrs.frozen
class Envelope:
    """A one-way Raft message from one member to another."""

    source: int
    target: int
    message: RaftMessage


# --- request/response framing --------------------------------------------------------------


@attrs.frozen
class RpcRequest:
    """A request with an id that its response echoes."""

    id: int
    body: Any


@attrs.frozen
class RpcResponse:
    id: int
    body: Any


@attrs.frozen
class Response:
    """What every answer to a client or server request starts with: whether it succeeded and,
    if not, why. The two fields come first on the wire in every subclass."""

    status: Status
    error: ErrorInfo | None = None

    @property
    def ok(self) -> bool:
        """Whether the request succeeded."""
        return self.status is Status.OK

    @property
    def error_type(self) -> ErrorType | None:
        """The error's type, or None for a success."""
        return None if self.error is None else self.error.type


def error_of(answer: object) -> ErrorInfo | None:
    """The error an answer carries: None for a success or for anything that is not a
    Response (a peer's malformed answer is checked for by its caller)."""
    return answer.error if isinstance(answer, Response) else None


# --- client requests -------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class RegisterRequest:
    client: str
    timeout: int = 0
    """Requested session timeout in milliseconds; 0 for the server's default."""
    identity: str = ""
    """Set by the member the client reached, from the connection's certificate or token
    (whatever a client puts here is replaced); trusted only from another member."""


@attrs.frozen(kw_only=True)
class RegisterResponse(Response):
    session: int = 0
    timeout: int = 0
    leader: int | None = None
    members: tuple[Member, ...] = ()


@attrs.frozen(kw_only=True)
class ConnectRequest:
    client: str
    session: int


@attrs.frozen(kw_only=True)
class ConnectResponse(Response):
    leader: int | None = None
    members: tuple[Member, ...] = ()


@attrs.frozen(kw_only=True)
class KeepAliveRequest:
    session: int
    command_sequence: int = 0
    event_index: int = 0


@attrs.frozen(kw_only=True)
class KeepAliveResponse(Response):
    leader: int | None = None
    members: tuple[Member, ...] = ()


@attrs.frozen(kw_only=True)
class UnregisterRequest:
    session: int


@attrs.frozen(kw_only=True)
class UnregisterResponse(Response):
    """The answer to UnregisterRequest: a status only."""


@attrs.frozen(kw_only=True)
class CommandRequest:
    session: int = 0
    sequence: int = 0
    operation: Any = None


@attrs.frozen(kw_only=True)
class CommandResponse(Response):
    index: int = 0
    event_index: int = 0
    result: Any = None


@attrs.frozen(kw_only=True)
class QueryRequest:
    session: int = 0
    sequence: int = 0
    index: int = 0
    operation: Any = None
    consistency: int = 1


@attrs.frozen(kw_only=True)
class QueryResponse(Response):
    index: int = 0
    event_index: int = 0
    result: Any = None


@attrs.frozen
class Event:
    """An event a state machine published to a session."""

    name: str
    payload: Any = None


@attrs.frozen(kw_only=True)
class PublishRequest:
    session: int
    event_index: int
    previous_index: int
    events: tuple[Event, ...] = ()


@attrs.frozen(kw_only=True)
class PublishResponse(Response):
    index: int = 0


# --- server requests -------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class ConfigureRequest:
    term: int
    leader: int
    index: int
    timestamp: int
    members: tuple[Member, ...] = ()


@attrs.frozen(kw_only=True)
class ConfigureResponse(Response):
    """The answer to ConfigureRequest: a status only."""


@attrs.frozen(kw_only=True)
class InstallRequest:
    term: int
    leader: int
    index: int
    offset: int
    data: bytes = b""
    complete: bool = False
    snapshot_term: int = 0
    """The term of the last entry the snapshot covers (index is its index)."""


@attrs.frozen(kw_only=True)
class InstallResponse(Response):
    offset: int = 0
    """The next byte offset the follower expects (to resume after a failure)."""


@attrs.frozen(kw_only=True)
class JoinRequest:
    member: Member


@attrs.frozen(kw_only=True)
class JoinResponse(Response):
    index: int = 0
    term: int = 0
    timestamp: int = 0
    members: tuple[Member, ...] = ()
    cluster_id: str = ""
    """The cluster's id, which the joining member adopts and stores."""


@attrs.frozen(kw_only=True)
class ReconfigureRequest:
    member: Member
    index: int = 0
    term: int = 0


@attrs.frozen(kw_only=True)
class ReconfigureResponse(Response):
    index: int = 0
    term: int = 0
    timestamp: int = 0
    members: tuple[Member, ...] = ()


@attrs.frozen(kw_only=True)
class LeaveRequest:
    member: Member


@attrs.frozen(kw_only=True)
class LeaveResponse(Response):
    index: int = 0
    term: int = 0
    timestamp: int = 0
    members: tuple[Member, ...] = ()


# --- operations and introspection ------------------------------------------------------------


@attrs.frozen(kw_only=True)
class StatusRequest:
    """Ask a member for its view of the cluster (used by `copycat-trio status`). With
    `confirm`, a leader first confirms that a quorum still follows it (one heartbeat round,
    bounded by an election timeout) and says whether it could in `confirmed`."""

    confirm: bool = False


@attrs.frozen(kw_only=True)
class StatusResponse(Response):
    id: int = 0
    role: str = ""
    term: int = 0
    leader: int | None = None
    commit_index: int = 0
    applied_index: int = 0
    last_log_index: int = 0
    members: tuple[Member, ...] = ()
    unavailable: tuple[int, ...] = ()
    """Members the leader has not heard from lately (reported by the leader only)."""
    confirmed: bool = False
    """A leader asked to `confirm`: a quorum answered its heartbeat round just now."""
    snapshot_index: int = 0
    sessions: int = 0
    log_bytes: int = 0
    """Bytes of log and snapshots on disk (0 with memory storage)."""
    heard: tuple[PeerContact, ...] = ()
    """Seconds since this member last heard from each other member."""
    healthy: bool = False
    health: str = ""
    """Why the member is unhealthy, as its /health says ("" when healthy)."""
    cluster_id: str = ""
    """The member's cluster id ("" if it does not know it yet)."""


@attrs.frozen
class PeerContact:
    """How long ago a member last heard from another (StatusResponse.heard)."""

    member: int
    seconds: float


@attrs.frozen(kw_only=True)
class TransferRequest:
    """Ask the leader to hand leadership to `member` (once it has caught up)."""

    member: int


@attrs.frozen(kw_only=True)
class TransferResponse(Response):
    leader: int | None = None


@attrs.frozen
class ErrorResponse(Response):
    """Sent in place of any response when the request itself could not be handled."""


@attrs.frozen(kw_only=True)
class BackupRequest:
    """Ask the leader for a backup (`copycat-trio snapshot save`). With `index` 0 it first
    takes a snapshot at its applied index; then each request reads `offset` onward of the
    snapshot at `index`."""

    index: int = 0
    offset: int = 0


@attrs.frozen(kw_only=True)
class BackupResponse(Response):
    index: int = 0
    term: int = 0
    size: int = 0
    """Bytes of snapshot data in all."""
    crc: int = 0
    """CRC-32 of all the data, as the snapshot store recorded it."""
    offset: int = 0
    data: bytes = b""


@attrs.frozen
class UnknownOperation:
    """Stands in for an operation whose wire tag this member has not registered. A command is
    logged with it in place, like any other, so its session's sequence numbers stay in order;
    applying it answers UNKNOWN_OPERATION and changes nothing. A query is answered so at once."""

    tag: int


@attrs.frozen
class Hello:
    """The first frame each side of a TCP connection sends: its protocol version, so that a
    member one minor version newer is accepted and one of another major version is refused."""

    major: int
    minor: int
    cluster: str = ""
    """The sender's cluster id ("" while it has none: joining, or data from before 1.1); a
    member refuses peers of another cluster."""
    refusal: str = ""
    """Set by a listener that refuses the connection (say, a TLS port reached in plaintext):
    why, so the other side can say so instead of waiting."""
    token: str = attrs.field(default="", repr=False)
    """A client's bearer token (sent over TLS only), naming its identity (server/authz.py);
    left out of repr, so that no log line or traceback shows it."""


PROTOCOL_VERSION = Hello(1, 2)
"""What this build speaks. Bump the minor when a message class gains a trailing field with a
default (the codec drops or defaults it); bump the major for any other change to the wire."""


# The one table of wire tags (RFC 8949 first-come range). Never renumber: append only.
BUILTIN_TAGS: dict[type, int] = {
    Envelope: 32768,
    RpcRequest: 32769,
    RpcResponse: 32770,
    ErrorInfo: 32771,
    Member: 32772,
    Event: 32773,
    NoOpEntry: 32780,
    CommandEntry: 32781,
    ConfigurationEntry: 32782,
    RegisterEntry: 32783,
    KeepAliveEntry: 32784,
    UnregisterEntry: 32785,
    AppendRequest: 32790,
    AppendResponse: 32791,
    PollRequest: 32792,
    PollResponse: 32793,
    VoteRequest: 32794,
    VoteResponse: 32795,
    RegisterRequest: 32800,
    RegisterResponse: 32801,
    ConnectRequest: 32802,
    ConnectResponse: 32803,
    KeepAliveRequest: 32804,
    KeepAliveResponse: 32805,
    UnregisterRequest: 32806,
    UnregisterResponse: 32807,
    CommandRequest: 32808,
    CommandResponse: 32809,
    QueryRequest: 32810,
    QueryResponse: 32811,
    PublishRequest: 32812,
    PublishResponse: 32813,
    ConfigureRequest: 32820,
    ConfigureResponse: 32821,
    InstallRequest: 32822,
    InstallResponse: 32823,
    JoinRequest: 32824,
    JoinResponse: 32825,
    ReconfigureRequest: 32826,
    ReconfigureResponse: 32827,
    LeaveRequest: 32828,
    LeaveResponse: 32829,
    StatusRequest: 32840,
    StatusResponse: 32841,
    ErrorResponse: 32842,
    TimeoutNowRequest: 32796,
    TransferRequest: 32843,
    TransferResponse: 32844,
    Hello: 32774,
    UnknownOperation: 32845,
    PeerContact: 32846,
    BackupRequest: 32847,
    BackupResponse: 32848,
}

USER_TAG_MIN = 40000
"""User operation types take tags from here up; below is reserved for the library."""
