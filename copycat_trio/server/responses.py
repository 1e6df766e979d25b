"""The answers of one connection, written in batches by one task.

Request handlers queue their answer and end; the writer sends whatever queued up while its last
write ran in one write, so answers completed together (a batch the executor applied) cost one
system call rather than one each. Memory stays bounded: each queued answer holds its request's
permit of the connection's limiter until it is written (or the connection is gone).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio

from ..transport.base import MessageStream, TransportError, send_messages


class ResponseWriter:
    """Queues answers for one connection and writes them in order, many per write."""

    def __init__(self, stream: MessageStream, release: Callable[[], None]) -> None:
        """`release` gives back one request's permit; it is called once per answer queued."""
        self._stream = stream
        self._release = release
        self._queue: list[Any] = []
        self._wakeup = trio.Event()
        self._closed = False

    def put(self, message: Any) -> None:
        """Queue an answer; written soon, in the order queued. Dropped if the connection is
        gone (nobody is left to tell)."""
        if self._closed:
            self._release()
            return
        self._queue.append(message)
        self._wakeup.set()

    async def run(self) -> None:
        """Write until the connection breaks or the task is cancelled."""
        try:
            while True:
                await self._wakeup.wait()
                self._wakeup = trio.Event()
                batch, self._queue = self._queue, []
                try:
                    await send_messages(self._stream, batch)
                except TransportError:
                    return  # the asker is gone; the reader sees the broken connection too
                finally:
                    for _ in batch:
                        self._release()
        finally:
            self._closed = True
            for _ in self._queue:
                self._release()
            self._queue.clear()
