"""What the handles share: a per-client router of resource events to the request waiting for
them, clean-up commands that run even when the caller was cancelled, and the base of streams
(watches, observers) that register with a command and deregister with another."""

from __future__ import annotations

import logging
import math
import weakref
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import trio

from ....client.strategies import ClientState
from ....protocol.errors import CopycatError
from ....protocol.messages import Event
from ....protocol.operations import Command, Consistency, Query
from ..base import EVENT
from ..errors import SessionEndedError

if TYPE_CHECKING:
    from ....client.client import CopycatClient

__all__ = ["Handle", "Router", "Stream", "receive", "router_of", "submit_anyway"]

log = logging.getLogger(__name__)

T = TypeVar("T")
Key = tuple[str, str, int]


class Router:
    """Routes each [kind, name, request, data] event to the mailbox of `request`; events for
    a request nobody waits for any more are dropped (their effects are undone by the
    waiter's withdrawal command)."""

    def __init__(self, client: CopycatClient) -> None:
        self._boxes: dict[Key, trio.MemorySendChannel[Any]] = {}
        self._next = 0
        self.done: dict[str, list[int]] = {}
        """Per queue name: polls whose items arrived, not yet acknowledged to the servers."""
        client.on_event(EVENT, self._deliver)

    def new_request(self) -> int:
        """A request id unique in this client (ids start at 1; 0 is the older recipes')."""
        self._next += 1
        return self._next

    def open(self, key: Key) -> trio.MemoryReceiveChannel[Any]:
        # Unbounded: a slow consumer must not hold up the session's other events.
        send, receive = trio.open_memory_channel[Any](math.inf)
        self._boxes[key] = send
        return receive

    def close(self, key: Key) -> None:
        self._boxes.pop(key, None)

    @contextmanager
    def mailbox(self, key: Key) -> Iterator[trio.MemoryReceiveChannel[Any]]:
        receive = self.open(key)
        try:
            yield receive
        finally:
            self.close(key)

    def _deliver(self, event: Event) -> None:
        payload = event.payload
        if not isinstance(payload, list) or len(payload) != 4:
            log.warning("ignoring a malformed resource event: %r", payload)
            return
        kind, name, request, data = payload
        box = self._boxes.get((kind, name, request))
        if box is not None:
            box.send_nowait(data)


_routers: weakref.WeakKeyDictionary[Any, Router] = weakref.WeakKeyDictionary()


def router_of(client: CopycatClient) -> Router:
    """The client's router, made on first use."""
    router = _routers.get(client)
    if router is None:
        router = _routers[client] = Router(client)
    return router


async def submit_anyway(client: CopycatClient, op: Command, why: str) -> Any:
    """Submit a clean-up command even if the caller is being cancelled; a failure is logged
    (the session's end cleans up on the servers anyway), never raised over the caller's."""
    with trio.CancelScope(shield=True):
        try:
            return await client.submit(op)
        except CopycatError as exc:
            log.warning("could not %s (%s); it is cleaned up when the session ends", why, exc)
            return None


async def receive(client: CopycatClient, box: trio.MemoryReceiveChannel[Any], what: str) -> Any:
    """The next event data in `box`; raises SessionEndedError if the session that is waiting
    ends first (its waits are gone on the servers, so no event would ever come)."""
    session = client.session_id
    got: list[Any] = []

    def ended(state: ClientState) -> bool:
        return state is ClientState.CLOSED or client.session_id != session

    async with trio.open_nursery() as nursery:

        async def take() -> None:
            got.append(await box.receive())
            nursery.cancel_scope.cancel()

        async def watch() -> None:
            await client.state.wait_value(ended)
            nursery.cancel_scope.cancel()

        nursery.start_soon(take)
        nursery.start_soon(watch)
    if got:
        return got[0]
    raise SessionEndedError(
        f"session {session} ended while {what}: the servers released what it held or waited for"
    )


class Handle:
    """A named resource of one kind, used through `client`."""

    kind = ""

    def __init__(
        self,
        client: CopycatClient,
        name: str,
        *,
        consistency: Consistency = Consistency.LINEARIZABLE,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {type(self).__name__}'s name must be a non-empty string")
        self.client = client
        self.name = name
        self.consistency = consistency
        """The consistency of this handle's reads."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"

    async def _command(self, op: Command) -> Any:
        return await self.client.submit(op)

    async def _query(self, op: Query) -> Any:
        return await self.client.submit(op, consistency=self.consistency)


class Stream(Generic[T]):
    """Items from a registration's first answer, then from its events, until closed.

    Use `async with handle.watch() as stream: async for item in stream: ...` to deregister
    as soon as the block ends; a bare `async for` deregisters when the session ends.
    """

    def __repr__(self) -> str:
        return f"the stream of {self._handle!r}"

    def __init__(self, handle: Handle) -> None:
        self._handle = handle
        self._router = router_of(handle.client)
        self._request = 0
        self._box: trio.MemoryReceiveChannel[Any] | None = None
        self._pending: deque[T] = deque()
        self._closed = False

    async def _register(self, request: int) -> list[T]:
        """Submit the registration; the items it answers with come first."""
        raise NotImplementedError

    def _deregister(self, request: int) -> Command:
        raise NotImplementedError

    def _convert(self, data: Any) -> T | None:
        """An event's data as an item (None: skip it)."""
        raise NotImplementedError

    async def start(self) -> None:
        """Register (once): from here on no change is missed."""
        if self._box is not None or self._closed:
            return
        self._request = self._router.new_request()
        key = (self._handle.kind, self._handle.name, self._request)
        self._box = self._router.open(key)
        try:
            self._pending.extend(await self._register(self._request))
        except BaseException:
            await self.aclose()
            raise

    async def aclose(self) -> None:
        """Deregister; the stream ends."""
        if self._closed:
            return
        self._closed = True
        if self._box is not None:
            self._router.close((self._handle.kind, self._handle.name, self._request))
            op = self._deregister(self._request)
            await submit_anyway(self._handle.client, op, f"stop {self._handle!r}'s stream")

    async def __aenter__(self) -> Stream[T]:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __aiter__(self) -> Stream[T]:
        return self

    async def __anext__(self) -> T:
        await self.start()
        while True:
            if self._pending:
                return self._pending.popleft()
            if self._closed or self._box is None:
                raise StopAsyncIteration
            item = self._convert(await receive(self._handle.client, self._box, f"{self} ran"))
            if item is not None:
                return item
