"""A nursery for background tasks that serve a body of user code."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio


@asynccontextmanager
async def open_background_nursery() -> AsyncIterator[trio.Nursery]:
    """Cancel the background tasks when the body ends, and let the body's own exception out
    as itself rather than wrapped in an ExceptionGroup (users catch NoLeaderError, not groups).
    """
    error: Exception | None = None
    async with trio.open_nursery() as nursery:
        try:
            yield nursery
        except Exception as exc:
            error = exc
        finally:
            nursery.cancel_scope.cancel()
    if error is not None:
        raise error
