"""What a server observes on its hot path for metrics, as plain counts: bucket counts, the
leader's round trips, requests by outcome. Kept apart from metrics.py (prometheus-client, the
collector, health) so that the raft loop, the peer links and the persister depend on these
few classes only, and metrics.py may depend on them."""

from __future__ import annotations

import bisect
from typing import Protocol

import trio

from ..protocol.errors import ErrorType
from ..protocol.messages import error_of

FSYNC_BUCKETS = tuple(0.001 * 2**i for i in range(14))
"""1 ms to 8 s, as etcd's disk_wal_fsync_duration_seconds."""
BATCH_BUCKETS = tuple(float(2**i) for i in range(12))
"""1 to 2048 entries per save."""
ROUND_TRIP_BUCKETS = tuple(0.0001 * 2**i for i in range(16))
"""0.1 ms to 3.3 s, as etcd's network_peer_round_trip_time_seconds (which stops at 0.8 s)."""
SNAPSHOT_BUCKETS = tuple(0.001 * 2**i for i in range(16))
"""1 ms to 33 s."""

RequestCounts = dict[tuple[type, ErrorType | None], int]
"""Requests answered, by request class and the error type of the answer (None: no error)."""


def count_request(counts: RequestCounts, request: object, response: object) -> None:
    """Count one answered request (one dictionary increment: the hot path's whole cost)."""
    error = error_of(response)
    key = (type(request), None if error is None else error.type)
    counts[key] = counts.get(key, 0) + 1


def request_type(cls: type) -> str:
    """The `type` label of a request class: CommandRequest -> command, KeepAliveRequest ->
    keep_alive."""
    name = cls.__name__.removesuffix("Request")
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name).lstrip("_")


class Buckets:
    """A histogram's counts, kept as plain numbers. One writer at a time (the fsync's worker
    thread, or the Trio thread), read when scraped."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        """Observations per bucket, not cumulative; the last one is over every bound."""
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, float]]:
        """(le, count of observations <= le) pairs, ending with +Inf, as Prometheus has them."""
        counts = list(self.counts)  # a copy: the fsync thread may add one meanwhile
        total = 0
        pairs = []
        for bound, count in zip((*self.bounds, float("inf")), counts, strict=True):
            total += count
            pairs.append(("+Inf" if bound == float("inf") else repr(float(bound)), float(total)))
        return pairs


class RoundTrips:
    """The leader's round trip to each peer, from the heartbeat round (read_round) every
    AppendRequest carries and its AppendResponse echoes: the first request of a round to a peer
    starts the clock, the first response of that round stops it, and the round's later requests
    (one or more per put under load) are not timed again, so most calls are one dictionary look-up
    and a comparison. Messages to one peer travel in order, so that response answers that
    request. A response of a later round means the probe's messages were lost: it is dropped,
    not observed."""

    def __init__(self) -> None:
        self._probes: dict[int, tuple[int, float | None]] = {}
        """Peer -> (round, Trio time its first request of that round was handed to the link),
        or (round, None) once a response of that round came: no probe until a later round."""
        self.peers: dict[int, Buckets] = {}

    def sent(self, peer: int, read_round: int) -> None:
        probe = self._probes.get(peer)
        if probe is None or (probe[1] is None and read_round > probe[0]):
            self._probes[peer] = (read_round, trio.current_time())

    def answered(self, peer: int, read_round: int) -> None:
        probe = self._probes.get(peer)
        if probe is None or probe[1] is None or read_round < probe[0]:
            return
        self._probes[peer] = (read_round, None)
        if read_round == probe[0]:
            self.child(peer).observe(trio.current_time() - probe[1])

    def child(self, peer: int) -> Buckets:
        buckets = self.peers.get(peer)
        if buckets is None:
            buckets = self.peers[peer] = Buckets(ROUND_TRIP_BUCKETS)
        return buckets


class Observer(Protocol):
    """What the raft loop, the persister and the peer links record into while metrics are
    served (ServerMetrics is one)."""

    round_trips: RoundTrips
    batch_entries: Buckets


__all__ = [
    "BATCH_BUCKETS",
    "FSYNC_BUCKETS",
    "ROUND_TRIP_BUCKETS",
    "SNAPSHOT_BUCKETS",
    "Buckets",
    "Observer",
    "RequestCounts",
    "RoundTrips",
    "count_request",
    "request_type",
]
