"""Base classes for user operations: commands change state, queries read it.

Operations are frozen attrs classes registered with the codec (`copycat_trio.register`), so they
travel as tagged CBOR and never as pickles.
"""

from __future__ import annotations

import enum


class Operation:
    """An operation on a replicated state machine."""

    __slots__ = ()


class Command(Operation):
    """An operation that may change state: logged, replicated and applied once on every server."""

    __slots__ = ()


class Query(Operation):
    """An operation that only reads state: not logged; served at a chosen consistency level."""

    __slots__ = ()


class Consistency(enum.IntEnum):
    """How fresh a query's answer must be."""

    LINEARIZABLE = 1
    """Read index confirmed by a quorum heartbeat round: sees every write acknowledged before it."""
    LINEARIZABLE_LEASE = 2
    """Served by the leader within its lease; falls back to a read index once the lease lapses."""
    SEQUENTIAL = 3
    """Served by any member once it has applied the session's writes: may lag, never goes back."""
