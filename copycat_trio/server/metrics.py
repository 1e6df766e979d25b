"""A server's Prometheus metrics and its health verdict (served by http.py, see
docs/operations.md).

Each server has its own CollectorRegistry, never prometheus-client's global one: several servers
run in one process in tests and embedding applications. Gauges that mirror state (term, indexes,
role, sessions, pending proposals) and the counters the server keeps anyway (proposals, leader
changes, bytes sent, requests) are read when Prometheus scrapes, by a custom collector, so they
cost the hot path nothing but the plain integer increments the server already makes. Only the
histograms take observations as things happen (fsync and snapshot durations, entries per log
save, the leader's round trips to its peers), each into plain bucket counts (a bisect and two
additions: a prometheus-client Histogram takes locks and costs several times that) that the
collector turns into histogram families when scraped.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Collection, Iterator, Mapping
from typing import Any

import attrs
import trio
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from ..storage.base import FailureReporting, FsyncObservable, InDirectory
from .http import Response, serve_http
from .observations import (
    BATCH_BUCKETS,
    FSYNC_BUCKETS,
    SNAPSHOT_BUCKETS,
    Buckets,
    RoundTrips,
    count_request,
    request_type,
)
from .status import MonitoredMember

log = logging.getLogger(__name__)


def histogram(name: str, doc: str, buckets: Buckets) -> HistogramMetricFamily:
    return HistogramMetricFamily(name, doc, buckets=buckets.cumulative(), sum_value=buckets.sum)


class ServerMetrics:
    """The metrics of one CopycatServer, in a registry of their own."""

    def __init__(self, server: MonitoredMember) -> None:
        self.server = server
        self.registry = CollectorRegistry(auto_describe=False)
        self.fsync = Buckets(FSYNC_BUCKETS)
        self.batch_entries = Buckets(BATCH_BUCKETS)
        self.snapshot_save = Buckets(SNAPSHOT_BUCKETS)
        self.round_trips = RoundTrips()
        self.registry.register(_StateCollector(server, self))

    async def start(self, nursery: trio.Nursery, address: str) -> str:
        """Hook the observations into the server's parts (its loop, peer links, executor and
        storage must exist) and serve HTTP on `address`; returns the bound address."""
        server = self.server
        assert server.running is not None
        loop, executor = server.running
        loop.metrics = loop.peers.metrics = self
        executor.on_snapshot_saved = self.snapshot_save.observe
        if isinstance(server.storage, FsyncObservable):
            server.storage.observe_fsyncs(self.fsync.observe)
        bound: str = await nursery.start(serve_http, address, self.answer)
        log.info("member %s serves /metrics, /health and /ready at http://%s", server.id, bound)
        return bound

    def render(self) -> bytes:
        """The metrics in the Prometheus text format."""
        return generate_latest(self.registry)

    def answer(self, path: str) -> Response:
        """The HTTP answer for a path (see http.serve_http)."""
        if path == "/metrics":
            return Response(200, self.render(), CONTENT_TYPE_LATEST)
        if path == "/health":
            health = server_health(self.server)
            return Response(200 if health.healthy else 503, health.body(), JSON)
        if path == "/ready":
            ready = self.server.ready
            body: dict[str, Any] = {"ready": ready, "member": self.server.id}
            if not ready:
                body["reason"] = "starting: not yet joined or no leader known yet"
            return Response(200 if ready else 503, _json(body), JSON)
        return Response(404, b"not found: try /metrics, /health or /ready\n")


JSON = "application/json"


def _json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True).encode() + b"\n"


class _StateCollector(Collector):
    """Reads the server's state and counters when scraped."""

    def __init__(self, server: MonitoredMember, metrics: ServerMetrics) -> None:
        self._server = server
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        server = self._server
        if server.running is None:
            return
        loop, executor = server.running
        status = server.status()

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, value=value)

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            return CounterMetricFamily(name, doc, value=value)

        yield gauge(
            "copycat_server_has_leader", "1 if a leader is known, else 0", status.leader is not None
        )
        yield gauge("copycat_server_is_leader", "1 if this member leads, else 0", server.is_leader)
        yield counter(
            "copycat_server_leader_changes_seen",
            "Times this member saw a new leader (a different one, or one after none)",
            loop.leader_changes,
        )
        yield gauge("copycat_server_term", "The member's current term", status.term)
        yield gauge(
            "copycat_server_commit_index",
            "The highest log index known committed",
            status.commit_index,
        )
        yield gauge(
            "copycat_server_applied_index",
            "The highest log index applied to the state machine",
            status.applied_index,
        )
        yield counter(
            "copycat_server_proposals_committed",
            "Entries this member proposed as leader that committed and were applied",
            executor.proposals_committed,
        )
        yield counter(
            "copycat_server_proposals_failed",
            "Entries this member refused to append (not the leader, out of sequence) or "
            "appended and lost to another leader's entry or a snapshot",
            executor.proposals_failed,
        )
        yield gauge(
            "copycat_server_proposals_pending",
            "Entries this member appended as leader and not yet applied",
            len(executor.pending),
        )
        yield gauge("copycat_sessions_open", "Client sessions open", len(executor.sessions))
        sent = CounterMetricFamily(
            "copycat_network_peer_sent_bytes",
            "Bytes of Raft messages written to each peer",
            labels=["peer"],
        )
        for peer, statistics in sorted(loop.peers.statistics.items()):
            sent.add_metric([str(peer)], statistics.sent_bytes)
            self._metrics.round_trips.child(peer)  # a histogram for every peer, observed or not
        yield sent
        metrics = self._metrics
        yield histogram(
            "copycat_disk_fsync_duration_seconds",
            "Seconds each fsync of a log segment took",
            metrics.fsync,
        )
        yield histogram(
            "copycat_disk_backend_commit_batch_entries",
            "Entries written to the log by one save (one group commit, one fsync)",
            metrics.batch_entries,
        )
        yield histogram(
            "copycat_snapshot_save_duration_seconds",
            "Seconds taken to write a snapshot of the state machine, sessions and timers",
            metrics.snapshot_save,
        )
        round_trip = HistogramMetricFamily(
            "copycat_network_peer_round_trip_time_seconds",
            "Seconds from the leader's first AppendRequest of a heartbeat round to a peer to "
            "that peer's answer",
            labels=["peer"],
        )
        for peer, buckets in sorted(metrics.round_trips.peers.items()):
            round_trip.add_metric([str(peer)], buckets.cumulative(), buckets.sum)
        yield round_trip
        requests = CounterMetricFamily(
            "copycat_client_requests",
            "Requests this member answered, by type and by outcome (ok, or the error type)",
            labels=["type", "status"],
        )
        for (cls, error), count in sorted(
            server.request_counts.items(), key=lambda item: (item[0][0].__name__, item[0][1] or 0)
        ):
            outcome = "ok" if error is None else error.name.lower()
            requests.add_metric([request_type(cls), outcome], count)
        yield requests


# --- health ----------------------------------------------------------------------------


@attrs.frozen
class Health:
    """A member's answer to /health."""

    healthy: bool
    reason: str
    details: Mapping[str, Any] = attrs.field(factory=dict)

    def body(self) -> bytes:
        return _json({"health": self.healthy, "reason": self.reason, **self.details})


def judge_health(
    *,
    member_id: int,
    role: str,
    term: int,
    leader: int | None,
    voters: Collection[int],
    silent_for: Mapping[int, float],
    election_timeout: float,
    storage_problem: str | None,
) -> Health:
    """Healthy when the storage is usable and a leader is known and heard from within an
    election timeout; the leader itself must have heard from a quorum of voters (itself
    included) within an election timeout. `silent_for`: seconds since each other member was
    last heard from."""
    details = {"member": member_id, "role": role, "term": term, "leader": leader}
    if storage_problem is not None:
        return Health(False, f"storage: {storage_problem}", details)
    if leader is None:
        return Health(
            False, f"no leader known (member {member_id} is {role} in term {term})", details
        )
    if leader == member_id:
        heard = [
            v
            for v in voters
            if v == member_id or silent_for.get(v, float("inf")) <= election_timeout
        ]
        needed = len(voters) // 2 + 1
        if len(heard) < needed:
            quiet = ", ".join(
                f"{v} for {silent_for[v]:.1f}s" if v in silent_for else f"{v} never"
                for v in sorted(voters)
                if v not in heard
            )
            return Health(
                False,
                f"leader without a quorum: heard from {len(heard)} of {len(voters)} voters "
                f"within {election_timeout}s, {needed} needed (silent: {quiet})",
                details,
            )
        return Health(True, "", details)
    silent = silent_for.get(leader)
    if silent is None or silent > election_timeout:
        since = "never" if silent is None else f"for {silent:.1f}s"
        return Health(
            False,
            f"no contact with leader {leader} {since} (election timeout {election_timeout}s)",
            details,
        )
    return Health(True, "", details)


def storage_problem(storage: object) -> str | None:
    """Why the server's storage cannot take writes, if it cannot: a save or fsync failed (the
    storage then refuses all further work), or its directory is not writable."""
    if isinstance(storage, FailureReporting) and storage.failure is not None:
        return f"a write failed earlier ({storage.failure}); restart the server"
    if isinstance(storage, InDirectory) and not os.access(storage.directory, os.W_OK):
        return f"directory {storage.directory} is not writable"
    return None


def server_health(server: MonitoredMember) -> Health:
    """The health of a running server (unhealthy if it is not running, or was removed from the
    configuration)."""
    if server.running is None:
        return Health(False, "not running", {"member": server.id})
    loop, _executor = server.running
    core = loop.core
    removal = server.removal
    if removal is not None:
        index, members = removal
        return Health(
            False,
            f"removed from the cluster by the configuration at index {index} (members now: "
            f"{', '.join(str(m.id) for m in members)})",
            {"member": server.id, "role": "removed", "term": core.term, "leader": core.leader},
        )
    return judge_health(
        member_id=server.id,
        role=core.role.value,
        term=core.term,
        leader=core.leader,
        voters=core.voters,
        silent_for=loop.silent_for(loop.clock()),
        election_timeout=server.options.election_timeout,
        storage_problem=storage_problem(server.storage),
    )


__all__ = [
    "Buckets",
    "Health",
    "RoundTrips",
    "ServerMetrics",
    "count_request",
    "judge_health",
    "request_type",
    "server_health",
    "storage_problem",
]
