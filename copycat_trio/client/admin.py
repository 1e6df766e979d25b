"""Operator requests that need no session: a member's status."""

from __future__ import annotations

from collections.abc import Sequence

import trio

from .._nursery import open_background_nursery
from ..protocol.errors import CopycatError, error_from_info
from ..protocol.messages import StatusRequest, StatusResponse
from ..transport.base import Transport
from ..transport.rpc import ConnectionPool, RequestNotSent, ResponseLost
from ..transport.tcp import TcpTransport


async def fetch_status(
    addresses: Sequence[str], *, timeout: float = 2.0, transport: Transport | None = None
) -> list[StatusResponse | CopycatError]:
    """Each member's view of itself and the cluster, or the error that kept it from answering."""
    results: list[StatusResponse | CopycatError] = []
    async with open_background_nursery() as nursery:
        pool = ConnectionPool(transport or TcpTransport(connect_timeout=timeout), nursery)
        for address in addresses:
            try:
                response = await pool.request(address, StatusRequest(), timeout)
            except (RequestNotSent, ResponseLost) as exc:
                results.append(CopycatError(str(exc)))
                continue
            if isinstance(response, StatusResponse):
                results.append(response)
            else:
                error = getattr(response, "error", None)
                results.append(error_from_info(error) if error else CopycatError("bad answer"))
        await trio.lowlevel.checkpoint()
    return results


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
            pool = ConnectionPool(transport or TcpTransport(connect_timeout=2.0), nursery)
            while True:
                for address in addresses:
                    try:
                        response = await pool.request(address, body, timeout)
                    except (RequestNotSent, ResponseLost) as exc:
                        last = NoLeaderError(f"{address}: {exc}")
                        continue
                    error = getattr(response, "error", None)
                    if error is not None and error.type is ErrorType.NO_LEADER:
                        last = error_from_info(error)
                        continue
                    if error is not None:
                        raise error_from_info(error)
                    return response
                await trio.sleep(0.2)
    raise last
