"""A first client: submit commands and queries to any member; followers forward to the leader.

Retries happen only where they cannot apply a command twice: when the request never left, or a
member answered NO_LEADER. A command whose answer was lost raises OutcomeUnknownError (it may
have been applied). Exactly-once retries need sessions (see docs/).
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import trio

from .._nursery import open_background_nursery
from ..protocol.errors import (
    CopycatError,
    ErrorInfo,
    ErrorType,
    NoLeaderError,
    OutcomeUnknownError,
    error_from_info,
)
from ..protocol.messages import (
    CommandRequest,
    CommandResponse,
    ErrorResponse,
    QueryRequest,
    QueryResponse,
    StatusRequest,
    StatusResponse,
)
from ..protocol.operations import Command, Consistency, Query
from ..transport.base import Transport, split_address
from ..transport.rpc import ConnectionPool, RequestNotSent, ResponseLost
from ..transport.tcp import TcpTransport

log = logging.getLogger(__name__)


class CopycatClient:
    """Submits operations; use `open_client` to get one."""

    def __init__(
        self,
        addresses: Sequence[str],
        pool: ConnectionPool,
        *,
        timeout: float,
        retry_interval: float,
    ) -> None:
        self.addresses = list(addresses)
        self._pool = pool
        self.timeout = timeout
        self.retry_interval = retry_interval
        self._preferred = 0
        self.last_index = 0
        """The highest log index any answer has shown this client."""

    async def submit(
        self,
        operation: Command | Query,
        *,
        consistency: Consistency = Consistency.LINEARIZABLE,
        timeout: float | None = None,
    ) -> Any:
        """Apply a command, or run a query at the chosen consistency.

        LINEARIZABLE queries are confirmed by the leader with a quorum round. SEQUENTIAL queries
        are answered by whichever member is asked, once it has applied every index this client
        has already seen: possibly stale, never older than what this client saw.
        """
        if isinstance(operation, Query):
            request: Any = QueryRequest(
                operation=operation, consistency=consistency, index=self.last_index
            )
        elif isinstance(operation, Command):
            request = CommandRequest(operation=operation)
        else:
            raise TypeError(f"{type(operation).__name__} is neither a Command nor a Query")
        return await self._send(request, is_command=isinstance(operation, Command), timeout=timeout)

    async def _send(self, request: Any, *, is_command: bool, timeout: float | None) -> Any:
        budget = self.timeout if timeout is None else timeout
        deadline = trio.current_time() + budget
        last_error: CopycatError = NoLeaderError("no member answered")
        attempt = 0
        while True:
            remaining = deadline - trio.current_time()
            if remaining <= 0:
                raise last_error
            address = self.addresses[(self._preferred + attempt) % len(self.addresses)]
            try:
                response = await self._pool.request(address, request, remaining)
            except RequestNotSent as exc:
                last_error = NoLeaderError(f"{address} unreachable: {exc}")
                attempt += 1
                await self._pause(attempt, deadline)
                continue
            except ResponseLost as exc:
                if is_command:
                    raise OutcomeUnknownError(
                        f"no answer from {address} after sending the command ({exc}); "
                        "it may or may not have been applied"
                    ) from exc
                last_error = NoLeaderError(str(exc))
                attempt += 1
                continue
            error: ErrorInfo | None = getattr(response, "error", None)
            if isinstance(response, (CommandResponse, QueryResponse)) and error is None:
                self._preferred = self.addresses.index(address)
                self.last_index = max(self.last_index, response.index)
                return response.result
            if error is None or not isinstance(
                response, (CommandResponse, QueryResponse, ErrorResponse)
            ):
                raise CopycatError(f"unexpected answer {type(response).__name__} from {address}")
            if error.type is ErrorType.NO_LEADER:
                last_error = error_from_info(error)
                attempt += 1
                await self._pause(attempt, deadline)
                continue
            if error.type is ErrorType.INTERNAL and is_command:
                raise OutcomeUnknownError(error.message)
            raise error_from_info(error)

    async def _pause(self, attempt: int, deadline: float) -> None:
        """Back off a little more each full round of members, never past the deadline."""
        rounds = attempt // max(1, len(self.addresses))
        delay = min(self.retry_interval * (2 ** min(rounds, 5)), 2.0)
        await trio.sleep_until(min(trio.current_time() + delay, deadline))

    async def status(self, address: str, *, timeout: float = 5.0) -> StatusResponse:
        """One member's view of the cluster."""
        response = await self._pool.request(address, StatusRequest(), timeout)
        if not isinstance(response, StatusResponse):
            error = getattr(response, "error", None)
            raise error_from_info(error) if error else CopycatError("bad status answer")
        return response


@asynccontextmanager
async def open_client(
    addresses: Sequence[str],
    *,
    timeout: float = 30.0,
    retry_interval: float = 0.05,
    transport: Transport | None = None,
) -> AsyncIterator[CopycatClient]:
    """Connect to a cluster at any of `addresses`; everything closes when the block ends."""
    if not addresses:
        raise ValueError("open_client needs at least one member address")
    for address in addresses:
        split_address(address)
    if timeout <= 0 or math.isnan(timeout):
        raise ValueError("timeout must be positive")
    async with open_background_nursery() as nursery:
        pool = ConnectionPool(transport or TcpTransport(), nursery)
        yield CopycatClient(addresses, pool, timeout=timeout, retry_interval=retry_interval)
