"""Operator requests that need no session: a member's status."""

from __future__ import annotations

from collections.abc import Sequence

import trio

from .._nursery import open_background_nursery
from ..protocol.errors import CopycatError, error_from_info
from ..protocol.messages import StatusRequest, StatusResponse, error_of
from ..transport.base import Transport
from ..transport.rpc import ConnectionPool, RequestNotSent, ResponseLost
from ..transport.tcp import TcpTransport
from ..transport.tls import default_client_tls


async def fetch_status(
    addresses: Sequence[str],
    *,
    timeout: float = 2.0,
    transport: Transport | None = None,
    confirm: bool = False,
    until_leader: bool = False,
) -> list[StatusResponse | CopycatError]:
    """Each member's view of itself and the cluster, or the error that kept it from answering,
    in the order of `addresses`. All are asked at once, so a frozen member costs `timeout`
    once, not once per member. With `confirm`, a leader first checks that a quorum follows it
    (`StatusResponse.confirmed`). With `until_leader`, the round ends as soon as a member
    that leads has answered (the others then count as not answering): enough to find whom
    to talk to, without waiting out a frozen member."""
    results: list[StatusResponse | CopycatError] = [
        CopycatError(f"no answer within {timeout:g}s") for _ in addresses
    ]
    request = StatusRequest(confirm=confirm)

    async with open_background_nursery() as nursery:
        pool = ConnectionPool(
            transport or TcpTransport(connect_timeout=timeout, tls=default_client_tls.get()),
            nursery,
        )

        async def ask(index: int, address: str) -> None:
            try:
                response = await pool.request(address, request, timeout)
            except (RequestNotSent, ResponseLost) as exc:
                results[index] = CopycatError(str(exc))
                return
            if isinstance(response, StatusResponse):
                results[index] = response
                if until_leader and response.role == "leader":
                    asking.cancel_scope.cancel()
            else:
                error = error_of(response)
                results[index] = error_from_info(error) if error else CopycatError("bad answer")

        async with trio.open_nursery() as asking:
            for index, address in enumerate(addresses):
                asking.start_soon(ask, index, address)
        await trio.lowlevel.checkpoint()
    return results


def leader_first(
    addresses: Sequence[str], statuses: Sequence[StatusResponse | CopycatError]
) -> list[str]:
    """`addresses` reordered for a client: the leader's (as the members report it) first, then
    the members that answered, then those that did not."""
    answered = [
        a for a, s in zip(addresses, statuses, strict=True) if isinstance(s, StatusResponse)
    ]
    silent = [a for a in addresses if a not in answered]
    leaders = [
        a
        for a, s in zip(addresses, statuses, strict=True)
        if isinstance(s, StatusResponse) and s.role == "leader"
    ]
    named = {s.leader for s in statuses if isinstance(s, StatusResponse) and s.leader is not None}
    for status in statuses:
        if isinstance(status, StatusResponse):
            for member in status.members:
                if member.id in named and member.effective_client_address in addresses:
                    leaders.append(member.effective_client_address)
    first = list(dict.fromkeys(leaders))
    return first + [a for a in answered + silent if a not in first]


async def admin_request(
    addresses: Sequence[str],
    body: object,
    *,
    timeout: float = 10.0,
    transport: Transport | None = None,
) -> object:
    """Send an operator request (join, leave, reconfigure, transfer) to any member; followers
    forward it to the leader. Tries each member in turn until one answers other than NO_LEADER."""
    from ..protocol.errors import ErrorType, NoLeaderError

    last: CopycatError = NoLeaderError("no member answered")
    with trio.move_on_after(timeout):
        async with open_background_nursery() as nursery:
            pool = ConnectionPool(
                transport or TcpTransport(connect_timeout=2.0, tls=default_client_tls.get()),
                nursery,
            )
            while True:
                for address in addresses:
                    try:
                        response = await pool.request(address, body, timeout)
                    except (RequestNotSent, ResponseLost) as exc:
                        last = NoLeaderError(f"{address}: {exc}")
                        continue
                    error = error_of(response)
                    if error is not None and error.type is ErrorType.NO_LEADER:
                        last = error_from_info(error)
                        continue
                    if error is not None:
                        raise error_from_info(error)
                    return response
                await trio.sleep(0.2)
    raise last
