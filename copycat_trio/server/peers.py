"""Outbound Raft traffic: one sender task per peer, each draining a bounded outbox.

When an outbox is full the newest message is dropped: Raft tolerates loss (the leader resends
on the next heartbeat) and a slow peer must never stall the raft loop. Drops are counted.
"""

from __future__ import annotations

import logging

import attrs
import trio

from ..protocol.errors import ProtocolError
from ..protocol.messages import AppendRequest, Envelope
from ..transport.base import MessageStream, Transport, TransportError, send_messages
from .observations import Observer

log = logging.getLogger(__name__)

OUTBOX_CAPACITY = 1024
SEND_BATCH = 64
"""Envelopes queued for a peer go out together, in one write, up to this many."""


@attrs.define
class PeerStatistics:
    sent: int = 0
    dropped_full: int = 0
    dropped_unreachable: int = 0
    """Envelopes lost because the peer could not be reached (or the connection broke)."""
    connects: int = 0
    sent_bytes: int = 0
    """Bytes written to the peer (frames and the version handshake), over every connection."""


class _Connection:
    """An open connection to a peer and a task that watches it for the peer's close: peers
    never write on it, so anything that ends `receive` means the connection is gone. Over TCP
    a write after the peer closed still succeeds locally and is lost, so the link must know
    before it writes."""

    def __init__(self, stream: MessageStream) -> None:
        self.stream = stream
        self.closed = trio.Event()

    async def watch(self) -> None:
        try:
            while True:
                await self.stream.receive()
        except (TransportError, ProtocolError):
            pass
        finally:
            self.closed.set()

    async def aclose(self) -> None:
        self.closed.set()
        await self.stream.aclose()


class PeerLink:
    """Sends envelopes to one peer over a connection it opens and reopens as needed."""

    def __init__(
        self,
        transport: Transport,
        address: str,
        retry_interval: float,
        stats: PeerStatistics | None = None,
    ) -> None:
        """`stats`: counters to add to (a member's survive the link being replaced)."""
        self.address = address
        self.transport = transport
        self.retry_interval = retry_interval
        self.outbox_send, self.outbox_receive = trio.open_memory_channel[Envelope](OUTBOX_CAPACITY)
        self.stats = PeerStatistics() if stats is None else stats
        self.cancel_scope = trio.CancelScope()
        self._connection: _Connection | None = None

    def offer(self, envelope: Envelope) -> None:
        try:
            self.outbox_send.send_nowait(envelope)
        except trio.WouldBlock:
            self.stats.dropped_full += 1

    async def run(self) -> None:
        with self.cancel_scope:
            try:
                async with trio.open_nursery() as watchers:
                    async for envelope in self.outbox_receive:
                        batch = [envelope]
                        while len(batch) < SEND_BATCH:
                            try:
                                batch.append(self.outbox_receive.receive_nowait())
                            except trio.WouldBlock:
                                break
                        await self._send(batch, watchers)
                    watchers.cancel_scope.cancel()
            finally:
                if self._connection is not None:
                    await self._connection.aclose()

    async def _send(self, batch: list[Envelope], watchers: trio.Nursery) -> None:
        """Send a batch, on a fresh connection if the peer closed the old one. A send that
        fails on a connection opened earlier is tried once more on a new one: the peer may
        have restarted since, and losing its first poll would cost an election round."""
        for _attempt in range(2):
            connection = self._connection
            if connection is not None and connection.closed.is_set():
                self._connection = None
                await connection.aclose()
            fresh = self._connection is None
            if self._connection is None:
                try:
                    stream = await self.transport.connect(self.address)
                except TransportError:
                    self.stats.dropped_unreachable += len(batch)
                    await self._drain_for(self.retry_interval)
                    return
                self.stats.connects += 1
                self._connection = _Connection(stream)
                watchers.start_soon(self._connection.watch)
            connection = self._connection
            written = getattr(connection.stream, "bytes_sent", 0)
            try:
                await send_messages(connection.stream, batch)  # one write for all queued
                self.stats.sent += len(batch)
                self.stats.sent_bytes += getattr(connection.stream, "bytes_sent", 0) - written
                return
            except TransportError as exc:
                log.debug("lost connection to %s: %s", self.address, exc)
                self._connection = None
                await connection.aclose()
                if fresh:
                    break
        self.stats.dropped_unreachable += len(batch)

    async def _drain_for(self, seconds: float) -> None:
        """While the peer is unreachable, discard what queues up rather than send it late."""
        with trio.move_on_after(seconds):
            await trio.sleep_forever()
        while True:
            try:
                self.outbox_receive.receive_nowait()
                self.stats.dropped_unreachable += 1
            except trio.WouldBlock:
                return


class PeerLinks:
    """The set of links, kept in line with the known addresses of the other members."""

    def __init__(
        self, transport: Transport, nursery: trio.Nursery, own_id: int, retry_interval: float
    ) -> None:
        self._transport = transport
        self._nursery = nursery
        self._own_id = own_id
        self._retry_interval = retry_interval
        self.links: dict[int, PeerLink] = {}
        self.addresses: dict[int, str] = {}
        self.statistics: dict[int, PeerStatistics] = {}
        """Each peer's counters, kept across its links (metrics read them when scraped)."""
        self.metrics: Observer | None = None
        """Set when the server serves metrics: the leader's round trips are timed."""

    def learn(self, member_id: int, address: str) -> None:
        """Record where a member listens; restarts its link if the address changed."""
        if member_id == self._own_id or self.addresses.get(member_id) == address:
            return
        self.addresses[member_id] = address
        old = self.links.pop(member_id, None)
        if old is not None:
            old.cancel_scope.cancel()

    def reconnect(self) -> None:
        """End every link; the next message to each peer opens a new connection (one whose
        Hello carries a cluster id this member has just adopted)."""
        for link in self.links.values():
            link.cancel_scope.cancel()
        self.links.clear()

    def send(self, envelope: Envelope) -> None:
        link = self.links.get(envelope.target)
        if link is None:
            address = self.addresses.get(envelope.target)
            if address is None:
                log.debug("no address for member %s; dropping %s", envelope.target, envelope)
                return
            stats = self.statistics.setdefault(envelope.target, PeerStatistics())
            link = self.links[envelope.target] = PeerLink(
                self._transport, address, self._retry_interval, stats
            )
            self._nursery.start_soon(link.run)
        if self.metrics is not None and type(envelope.message) is AppendRequest:
            self.metrics.round_trips.sent(envelope.target, envelope.message.read_round)
        link.offer(envelope)
