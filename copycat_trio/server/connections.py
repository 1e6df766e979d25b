"""A member's side of each connection: frames in, Raft envelopes to the loop, requests to
their handlers (a command or a query the leader can take at once with no task of its own),
answers out through the connection's writer; who the peer is and what it may ask."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import attrs
import trio

from ..protocol.errors import ErrorInfo, ErrorType, ProtocolError, Status, UnreadableRequestError
from ..protocol.messages import (
    BackupRequest,
    CommandRequest,
    CommandResponse,
    Envelope,
    ErrorResponse,
    JoinRequest,
    LeaveRequest,
    Member,
    QueryRequest,
    QueryResponse,
    ReconfigureRequest,
    RegisterRequest,
    RpcRequest,
    RpcResponse,
    TransferRequest,
)
from ..transport.base import MessageStream, TransportError
from .authz import (
    AuthPolicy,
    Principal,
    identify,
    is_member_only,
    required_role,
    session_of,
    session_refusal,
    unauthorized_message,
)
from .client_service import ClientConnection, ClientService
from .cluster_identity import ClusterIdentity
from .executor import Executor
from .loop import RaftLoop, Step
from .observations import RequestCounts, count_request
from .responses import ResponseWriter
from .routing import CLIENT_REQUESTS, RequestRouter

log = logging.getLogger(__name__)

MAX_REQUESTS_PER_CONNECTION = 1024
OPERATOR_REQUESTS: tuple[type, ...] = (
    JoinRequest,
    LeaveRequest,
    ReconfigureRequest,
    TransferRequest,
    BackupRequest,
)
"""What an operator's tools send (membership, leadership, backups): `admin` role requests."""


class ConnectionHandler:
    """Serves the connections of one running member (its listener calls `handle_connection`,
    its separate client listener `handle_client_connection`)."""

    def __init__(
        self,
        member_id: int,
        *,
        loop: RaftLoop,
        service: ClientService,
        executor: Executor,
        router: RequestRouter,
        identity: ClusterIdentity,
        auth: AuthPolicy | None,
        request_counts: RequestCounts,
        own_address: Callable[[], str],
        removal: Callable[[], tuple[int, tuple[Member, ...]] | None],
        reserve: Callable[[], bool],
        election_timeout: float,
    ) -> None:
        self.member_id = member_id
        self.loop = loop
        self.service = service
        self.executor = executor
        self.router = router
        self.identity = identity
        self.auth = auth
        self.request_counts = request_counts
        """The server's counters (copycat_client_requests_total), counted into here."""
        self.own_address = own_address
        self.removal = removal
        self.reserve = reserve
        self.election_timeout = election_timeout
        self.refused_clients: set[tuple[str, str]] = set()
        """(host, reason) of clients refused (a wrong token) already logged."""

    async def handle_client_connection(self, stream: MessageStream) -> None:
        """The separate client address serves client requests only (seed 000's connectClient)."""
        await self.handle_connection(stream, allowed=CLIENT_REQUESTS)

    async def handle_connection(
        self, stream: MessageStream, allowed: tuple[type, ...] | None = None
    ) -> None:
        """Read frames; Raft envelopes go to the loop, requests get a task each."""
        loop = self.loop
        if not getattr(stream, "authenticated", True):
            # TLS without a certificate (client auth "none"): a client's, never a member's;
            # its role (a token's, or the anonymous one) says which operator requests it may make.
            allowed = (
                CLIENT_REQUESTS + OPERATOR_REQUESTS if self.auth is not None else CLIENT_REQUESTS
            )
        limiter = trio.Semaphore(MAX_REQUESTS_PER_CONNECTION)
        checked = False
        principal: Principal | None = None
        async with trio.open_nursery() as nursery:
            connection = ClientConnection(stream, nursery)
            responses = ResponseWriter(stream, limiter.release)
            nursery.start_soon(responses.run)
            try:
                while True:
                    try:
                        message = await stream.receive()
                    except UnreadableRequestError as exc:
                        # Its id could be read: answer it, and go on reading this connection.
                        log.info("request from %s: %s", stream.peer, exc)
                        info = ErrorInfo(ErrorType.PROTOCOL, str(exc))
                        await stream.send(
                            RpcResponse(exc.request_id, ErrorResponse(Status.ERROR, info))
                        )
                        continue
                    if allowed is not None and not (
                        (isinstance(message, RpcRequest) and isinstance(message.body, allowed))
                        or isinstance(message, RpcResponse)
                    ):
                        body = message.body if isinstance(message, RpcRequest) else message
                        raise ProtocolError(
                            f"{type(body).__name__} is not accepted on the client address"
                        )
                    if not checked:
                        checked = True
                        foreign = self.identity.foreign(stream)
                        if foreign is not None:
                            await _refuse(stream, foreign)
                            return
                        principal = self.identify_peer(stream)
                        if principal is not None and principal.refusal:
                            self.note_refused_client(stream.peer, principal.refusal)
                            await _refuse(stream, principal.refusal)
                            return
                    if isinstance(message, RpcResponse):
                        connection.on_response(message)  # a client answering a publish
                    elif isinstance(message, Envelope):
                        if principal is not None and not principal.member:
                            # Identified again: a member that joined since is one now.
                            principal = self.identify_peer(stream) or principal
                            if not principal.member:
                                raise ProtocolError(
                                    f"Raft messages are member traffic; {principal.describe()} "
                                    "is not a member"
                                )
                        if (
                            not self.identity.cluster_id
                            and loop.core.member(message.source) is not None
                        ):
                            hello = getattr(stream, "peer_version", None)
                            await self.identity.adopt(
                                getattr(hello, "cluster", ""), f"member {message.source}"
                            )
                        if message.target == self.member_id:
                            await loop.inbox_send.send(Step(message.source, message.message))
                    elif isinstance(message, RpcRequest):
                        principal, answer = self.authorize(stream, principal, message)
                        if isinstance(answer, RpcResponse):
                            count_request(self.request_counts, message.body, answer.body)
                            await stream.send(answer)  # the connection stays open
                            continue
                        if self.answer_now(answer, responses, limiter, principal):
                            continue
                        await limiter.acquire()
                        nursery.start_soon(
                            self.answer, connection, answer, responses, limiter, principal
                        )
                    else:
                        raise ProtocolError(f"unexpected {type(message).__name__} on a connection")
            except ProtocolError as exc:
                log.warning("closing connection from %s: %s", stream.peer, exc)
            except TransportError:
                pass
            finally:
                nursery.cancel_scope.cancel()

    def answer_now(
        self,
        request: RpcRequest,
        responses: ResponseWriter,
        limiter: trio.Semaphore,
        principal: Principal | None,
    ) -> bool:
        """The hot path: a command the leader can take at once (ClientService.command_now) is
        handed to the raft loop from here, with no task of its own; its answer is queued on
        the connection's writer when applied. A query that needs no wait is answered here
        (ClientService.query_now). False: it takes the usual path (`_answer`)."""
        body = request.body
        service = self.service
        kind = type(body)
        if kind not in (CommandRequest, QueryRequest) or self.removal() is not None:
            return False
        if (
            principal is not None
            and not principal.member
            and not self.owns_session(principal, body.session)
        ):
            return False  # `session_owner_refusal` waits or refuses, on the usual path
        if kind is QueryRequest and self.reserve():
            return False  # refused on the usual path
        try:
            limiter.acquire_nowait()  # released by the writer once the answer is written
        except trio.WouldBlock:
            return False
        counts = self.request_counts

        def answer(response: CommandResponse | QueryResponse) -> None:
            count_request(counts, body, response)
            responses.put(RpcResponse(request.id, response))

        if kind is QueryRequest:
            response = service.query_now(body)
            if response is not None:
                answer(response)
                return True
            taken = service.read_now(body, answer)
        else:
            taken = service.command_now(body, answer)
        if not taken:
            limiter.release()
        return taken

    def identify_peer(self, stream: MessageStream, also: str | None = None) -> Principal | None:
        """Who the connection's peer is (None: no authentication here). `also`: the address
        of a member asking to join, whose own certificate makes it a member's."""
        if self.auth is None:
            return None
        addresses = [m.address for m in self.loop.core.members] + [self.own_address()]
        if also is not None:
            addresses.append(also)
        hosts = [address.rpartition(":")[0].strip("[]") for address in addresses]
        hello = getattr(stream, "peer_version", None)
        certificate = getattr(stream, "peer_certificate", None)
        return identify(self.auth, certificate, getattr(hello, "token", "") or "", hosts)

    def note_refused_client(self, peer: str, why: str) -> None:
        """A warning the first time a host is refused for a reason (a client retrying a
        wrong token must not flood the log), debug after."""
        key = (peer.rpartition(":")[0], why)
        if key in self.refused_clients:
            log.debug("refusing connection from %s: %s", peer, why)
            return
        if len(self.refused_clients) > 1024:
            self.refused_clients.clear()
        self.refused_clients.add(key)
        log.warning("refusing connection from %s: %s", peer, why)

    def authorize(
        self, stream: MessageStream, principal: Principal | None, request: RpcRequest
    ) -> tuple[Principal | None, RpcRequest | RpcResponse]:
        """The request to answer (a register stamped with the client's identity), or the
        UNAUTHORIZED answer; and the principal, identified again if the membership changed
        since (a member that joined meanwhile is one now)."""
        body = request.body
        if principal is not None and not principal.member:
            needed = required_role(body)

            def allowed(principal: Principal) -> bool:
                if principal.member:
                    return True
                role = principal.role
                return role is not None and role.allows(needed) and not is_member_only(body)

            if not allowed(principal):
                joining = body.member.address if isinstance(body, JoinRequest) else None
                principal = self.identify_peer(stream, joining) or principal
            if not allowed(principal):
                text = unauthorized_message(principal, body)
                log.info("refused a request from %s: %s", stream.peer, text)
                info = ErrorInfo(ErrorType.UNAUTHORIZED, text)
                return principal, RpcResponse(request.id, ErrorResponse(Status.ERROR, info))
        if isinstance(body, RegisterRequest) and (principal is None or not principal.member):
            # Only a member's stamp is trusted (it forwards what it stamped itself).
            identity = principal.identity if principal is not None else ""
            request = RpcRequest(request.id, attrs.evolve(body, identity=identity))
        return principal, request

    async def session_owner_refusal(
        self, principal: Principal | None, body: Any
    ) -> ErrorResponse | None:
        """UNAUTHORIZED if a client acts in a session another identity opened. The session's
        id is its register entry's index: a member that has not applied that far waits a
        little (its register was just answered), then sends the client elsewhere."""
        session_id = session_of(body)
        if principal is None or principal.member or not session_id:
            return None
        executor = self.executor
        with trio.move_on_after(self.election_timeout):
            await executor.applied_index.wait_value(lambda applied: applied >= session_id)
        if executor.applied_index.value < session_id:
            text = (
                f"member {self.member_id} has not applied session {session_id}'s registration yet"
            )
            return ErrorResponse(Status.ERROR, ErrorInfo(ErrorType.QUERY, text))
        session = executor.sessions.get(session_id)
        if session is None:
            return None  # expired or never registered: the request's handler says which
        refusal = session_refusal(principal, session_id, session.identity)
        if refusal is None:
            return None
        log.info("refused a request from %s: %s", principal.describe(), refusal)
        return ErrorResponse(Status.ERROR, ErrorInfo(ErrorType.UNAUTHORIZED, refusal))

    def owns_session(self, principal: Principal, session_id: int) -> bool:
        """Whether `principal` may act in the session, decided without waiting (False when
        that needs a wait or a refusal: see `session_owner_refusal`)."""
        executor = self.executor
        if executor.applied_index.value < session_id:
            return False
        session = executor.sessions.get(session_id)
        return (
            session is not None and session_refusal(principal, session_id, session.identity) is None
        )

    async def answer(
        self,
        connection: ClientConnection,
        request: RpcRequest,
        responses: ResponseWriter,
        limiter: trio.Semaphore,
        principal: Principal | None = None,
    ) -> None:
        """Handle one request and queue its answer (which then holds the request's permit
        until written)."""
        queued = False
        try:
            refused = await self.session_owner_refusal(principal, request.body)
            body = refused or await self.router.dispatch(request.body, connection)
            count_request(self.request_counts, request.body, body)
            responses.put(RpcResponse(request.id, body))
            queued = True
        finally:
            if not queued:
                limiter.release()


async def _refuse(stream: MessageStream, reason: str) -> None:
    """Tell the peer why before closing, if the stream can (see FramedStream.refuse)."""
    refuse = getattr(stream, "refuse", None)
    if refuse is not None:
        await refuse(reason)
