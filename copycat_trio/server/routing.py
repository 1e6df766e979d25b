"""Which handler answers a request: one table from request type to handler, built once when
the member starts, and the refusals every client request meets first (a removed member, a
RESERVE member)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import attrs

from ..protocol.errors import CopycatError, ErrorInfo, ErrorType, IllegalMemberStateError, Status
from ..protocol.messages import (
    CommandRequest,
    ConnectRequest,
    ConnectResponse,
    ErrorResponse,
    JoinResponse,
    KeepAliveRequest,
    Member,
    QueryRequest,
    RegisterRequest,
    Response,
    StatusRequest,
    UnregisterRequest,
)
from .client_service import ClientConnection

log = logging.getLogger(__name__)

CLIENT_REQUESTS: tuple[type, ...] = (
    CommandRequest,
    QueryRequest,
    RegisterRequest,
    ConnectRequest,
    KeepAliveRequest,
    UnregisterRequest,
    StatusRequest,
)
"""What a client sends (and all that a member's separate client address accepts)."""

Handler = Callable[[Any], Awaitable[Response]]
"""Answers one request of the type it is listed under."""


class RequestRouter:
    """Dispatches a request to its handler and turns what the handler raises into an answer."""

    def __init__(
        self,
        member_id: int,
        handlers: Mapping[type, Handler],
        connect: Callable[[ConnectRequest, ClientConnection], Awaitable[ConnectResponse]],
        *,
        removal: Callable[[], tuple[int, tuple[Member, ...]] | None],
        reserve: Callable[[], bool],
        cluster_id: Callable[[], str],
    ) -> None:
        self.member_id = member_id
        self.handlers = dict(handlers)
        self.connect = connect
        """ConnectRequest's handler, which needs the connection the client is on."""
        self.removal = removal
        self.reserve = reserve
        self.cluster_id = cluster_id

    def refusal(self, body: object) -> ErrorResponse | None:
        """Why this member serves no client at all now (removed, or RESERVE); a status
        request is always answered."""
        if not isinstance(body, CLIENT_REQUESTS) or isinstance(body, StatusRequest):
            return None
        removal = self.removal()
        if removal is not None:
            index, members = removal
            return ErrorResponse(
                Status.ERROR,
                ErrorInfo(
                    ErrorType.ILLEGAL_MEMBER_STATE,
                    f"member {self.member_id} was removed from the cluster (configuration "
                    f"{index}); its members are {members_text(members)}",
                ),
            )
        if self.reserve():
            return ErrorResponse(
                Status.ERROR,
                ErrorInfo(
                    ErrorType.ILLEGAL_MEMBER_STATE,
                    f"member {self.member_id} is a RESERVE member and serves no clients",
                ),
            )
        return None

    async def dispatch(self, body: Any, connection: ClientConnection | None) -> Response:
        """The answer to one request (`connection`: the client's, None for the member's own
        requests, which cannot be connects)."""
        refused = self.refusal(body)
        if refused is not None:
            return refused
        try:
            if type(body) is ConnectRequest:
                if connection is None:
                    raise IllegalMemberStateError("connect needs a client connection")
                return await self.connect(body, connection)
            handler = self.handlers.get(type(body))
            if handler is None:
                return ErrorResponse(
                    Status.ERROR,
                    ErrorInfo(
                        ErrorType.PROTOCOL, f"unsupported request type {type(body).__name__}"
                    ),
                )
            answer = await handler(body)
            if isinstance(answer, JoinResponse) and answer.status is Status.OK:
                answer = attrs.evolve(answer, cluster_id=answer.cluster_id or self.cluster_id())
            return answer
        except CopycatError as exc:
            return ErrorResponse(Status.ERROR, exc.to_info())
        except Exception as exc:
            log.exception("request %s failed", type(body).__name__)
            return ErrorResponse(Status.ERROR, ErrorInfo(ErrorType.INTERNAL, repr(exc)))


def members_text(members: Sequence[Member]) -> str:
    """`1=host:port, 2=host:port` (or "none"), for log lines and errors."""
    return ", ".join(f"{m.id}={m.address}" for m in sorted(members, key=lambda m: m.id)) or "none"
