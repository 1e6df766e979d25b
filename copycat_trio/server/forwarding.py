"""A follower's relay of a request to its leader, and the one signature its users share.

Client and configuration requests that only the leader can answer are sent on by the member
a client reached; the answer comes back typed as the request's own response, an error in
that response's shape if the leader could not be asked or answered something else.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol, TypeVar

import trio

from ..protocol.errors import ErrorInfo, ErrorType
from ..protocol.messages import ErrorResponse, Response
from ..transport.rpc import ConnectionPool, RequestNotSent, ResponseLost
from .loop import RaftLoop

log = logging.getLogger(__name__)

R = TypeVar("R", bound=Response)


class Forward(Protocol):
    """Send `request` to the leader; its answer as an `answer_type`, or `make_error(...)`."""

    async def __call__(
        self, request: object, answer_type: type[R], make_error: Callable[[ErrorInfo], R]
    ) -> R: ...


class LeaderForwarder:
    """Relays requests to the leader this member currently follows (a `Forward`)."""

    def __init__(
        self,
        member_id: int,
        loop: RaftLoop,
        pool: ConnectionPool,
        nursery: trio.Nursery,
        request_timeout: float,
    ) -> None:
        self.member_id = member_id
        self.loop = loop
        self.pool = pool
        self.nursery = nursery
        """The server's: a send is never cut off half-way (see `ask`)."""
        self.request_timeout = request_timeout

    async def __call__(
        self, request: object, answer_type: type[R], make_error: Callable[[ErrorInfo], R]
    ) -> R:
        """Send a request on to the leader and relay its answer.

        Ends as soon as this member's leader changes (or becomes unknown): the old leader
        will not answer in time, and holding the request for a whole request timeout kept the
        client waiting here. The answer is then NO_LEADER, which a client retries elsewhere:
        a command may have reached the old leader, and its sequence number makes the retry
        safe (the other requests forwarded are idempotent, or a duplicate is harmless).
        """
        loop, pool = self.loop, self.pool
        leader = loop.core.leader
        member = loop.core.member(leader) if leader is not None else None
        if member is None:
            return make_error(ErrorInfo(ErrorType.NO_LEADER, "no leader is known"))
        answer: list[R] = []
        answered = trio.Event()

        async def ask(address: str) -> None:
            # In the server's nursery, not cancelled with the wait: a send cut off half-way
            # would leave a broken frame on the connection to the leader.
            try:
                answer.append(
                    _typed(
                        await pool.request(address, request, self.request_timeout),
                        answer_type,
                        make_error,
                    )
                )
            except RequestNotSent as exc:
                answer.append(
                    make_error(ErrorInfo(ErrorType.NO_LEADER, f"leader unreachable: {exc}"))
                )
            except ResponseLost as exc:
                answer.append(
                    make_error(
                        ErrorInfo(
                            ErrorType.INTERNAL, f"outcome unknown: forwarded to leader, {exc}"
                        )
                    )
                )
            except Exception as exc:  # in a task of the server's nursery: must not escape
                log.exception("forwarding %s failed", type(request).__name__)
                answer.append(make_error(ErrorInfo(ErrorType.INTERNAL, repr(exc))))
            finally:
                answered.set()

        self.nursery.start_soon(ask, member.address)
        async with trio.open_nursery() as race:

            async def leader_changes() -> None:
                await loop.leader.wait_value(lambda current: current != leader)
                race.cancel_scope.cancel()

            race.start_soon(leader_changes)
            await answered.wait()
            race.cancel_scope.cancel()
        if answer:
            return answer[0]
        return make_error(
            ErrorInfo(
                ErrorType.NO_LEADER,
                f"member {self.member_id} no longer follows {leader} (leader now: "
                f"{loop.leader.value}); the request may have reached it: resubmit",
            )
        )


def _typed(answer: object, answer_type: type[R], make_error: Callable[[ErrorInfo], R]) -> R:
    """The leader's answer as the response the request expects. An ErrorResponse (the leader
    could not handle the request) keeps its error in that shape; anything else is INTERNAL."""
    if isinstance(answer, answer_type):
        return answer
    if isinstance(answer, ErrorResponse) and answer.error is not None:
        return make_error(answer.error)
    return make_error(ErrorInfo(ErrorType.INTERNAL, f"the leader answered {type(answer).__name__}"))
