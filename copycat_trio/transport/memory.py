"""An in-memory network for tests: named hosts, connections that can be cut or blackholed.

Messages go through the real codec and framer, so what works here works on the wire. A cut
between two hosts refuses new connections and silently drops messages already in flight, as a
network partition does to TCP.

For simulation the network also misbehaves on purpose, every choice drawn from its seeded `rng`:
`faults` (a LinkFaults) drops, duplicates and delays messages (a delayed message is overtaken by
later ones: reordering), and `hold(host)` freezes a host's traffic both ways until `release`
delivers it, as a paused process would see it. Delays and held messages need `nursery` set.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from typing import Any

import attrs
import trio

from ..protocol.codec import registry
from ..protocol.errors import ProtocolError
from ..protocol.framing import DEFAULT_MAX_FRAME_SIZE, FrameDecoder, encode_frame
from ..protocol.salvage import salvage_request
from .base import ConnectionHandler, MessageStream, TransportError

log = logging.getLogger(__name__)

CHANNEL_CAPACITY = 1024


@attrs.frozen
class LinkFaults:
    """What happens to each message on every link, independently, by the network's rng."""

    drop: float = 0.0
    """Probability that a message is lost."""
    duplicate: float = 0.0
    """Probability that a message is delivered twice (the copy a little later)."""
    delay: float = 0.0
    """Probability that a message is held back; later messages overtake it."""
    max_delay: float = 0.0
    """Longest hold-back, in seconds (uniform in (0, max_delay])."""

    def __attrs_post_init__(self) -> None:
        for name in ("drop", "duplicate", "delay"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be a probability, not {getattr(self, name)}")
        if self.max_delay < 0:
            raise ValueError("max_delay must not be negative")


@attrs.define
class NetworkStatistics:
    delivered: int = 0
    dropped: int = 0
    """Lost to `faults`, a cut, a one-way cut or a full or closed connection."""
    duplicated: int = 0
    delayed: int = 0
    held: int = 0
    busiest_window: int = 0
    """Most frames sent within 10 ms (counted only while `storm_threshold` is set)."""


class MemoryNetwork:
    """Hosts by address; `transport(address)` gives the Transport one server or client uses."""

    def __init__(self, *, seed: int = 0) -> None:
        self._listeners: dict[str, tuple[ConnectionHandler, trio.Nursery]] = {}
        self._cut: set[frozenset[str]] = set()
        self._one_way: set[tuple[str, str]] = set()
        self.drop_rate = 0.0
        self.rng = random.Random(seed)
        self.faults = LinkFaults()
        self.nursery: trio.Nursery | None = None
        """Where delayed deliveries run; without it, delays and duplicates are not applied."""
        self._held_hosts: set[str] = set()
        self._held: list[tuple[str, str, trio.MemorySendChannel[bytes], bytes]] = []
        self.stats = NetworkStatistics()
        self.storm_threshold = 0
        """If set, `on_storm` is called once when more frames than this are sent within 10 ms
        of (virtual) time: a message storm, which on a zero-latency network also keeps
        virtual time from advancing (a livelock)."""
        self.on_storm: Callable[[float, int], None] | None = None
        self._window = (-1, 0)
        self.certificates: dict[str, dict[str, Any]] = {}
        """Host address -> the certificate (as ssl's getpeercert() gives it) the other end of
        its connections sees, as if it spoke TLS: tests of identities and roles."""

    def transport(self, own_address: str) -> MemoryTransport:
        return MemoryTransport(self, own_address)

    def can_reach(self, source: str, target: str) -> bool:
        return frozenset((source, target)) not in self._cut

    def cut(self, a: str, b: str) -> None:
        """Partition two hosts from each other (both directions)."""
        self._cut.add(frozenset((a, b)))

    def isolate(self, address: str, others: list[str]) -> None:
        for other in others:
            if other != address:
                self.cut(address, other)

    def cut_one_way(self, source: str, target: str) -> None:
        """Drop what `source` sends to `target`; the other direction still works."""
        self._one_way.add((source, target))

    def heal(self) -> None:
        self._cut.clear()
        self._one_way.clear()

    def should_deliver(self, source: str, target: str) -> bool:
        if not self.can_reach(source, target) or (source, target) in self._one_way:
            return False
        return not (self.drop_rate and self.rng.random() < self.drop_rate)

    # --- pauses ----------------------------------------------------------------------------

    def hold(self, address: str) -> None:
        """Freeze traffic from and to `address`: it queues, in order, until `release`."""
        self._held_hosts.add(address)

    def release(self, address: str) -> None:
        """Deliver what was held for `address` (unless the other end is still held)."""
        self._held_hosts.discard(address)
        waiting, self._held = self._held, []
        for source, target, channel, data in waiting:
            self._arrive(source, target, channel, data)

    def is_held(self, address: str) -> bool:
        return address in self._held_hosts

    # --- delivery --------------------------------------------------------------------------

    async def _transmit(
        self, source: str, target: str, channel: trio.MemorySendChannel[bytes], data: bytes
    ) -> None:
        """Send one frame from source to target, through whatever faults are configured."""
        if self.storm_threshold:
            self._count_window()
        if not self.should_deliver(source, target):
            self.stats.dropped += 1
            await trio.lowlevel.checkpoint()
            return
        faults = self.faults
        copies = [0.0]
        if self.nursery is not None and (faults.drop or faults.duplicate or faults.delay):
            rng = self.rng
            if faults.drop and rng.random() < faults.drop:
                self.stats.dropped += 1
                await trio.lowlevel.checkpoint()
                return
            if faults.delay and rng.random() < faults.delay:
                copies[0] = rng.uniform(0, faults.max_delay) or faults.max_delay
            if faults.duplicate and rng.random() < faults.duplicate:
                copies.append(copies[0] + rng.uniform(0, faults.max_delay or 0.01))
                self.stats.duplicated += 1
        if copies[0] == 0.0 and not (self._held_hosts and self._is_held(source, target)):
            await channel.send(data)  # the ordinary path: TCP-like back-pressure
            self.stats.delivered += 1
            copies.pop(0)
        else:
            await trio.lowlevel.checkpoint()
        for delay in copies:
            self._later(delay, source, target, channel, data)

    def _count_window(self) -> None:
        now = trio.current_time()
        window, count = self._window
        count = count + 1 if window == int(now * 100) else 1
        self._window = (int(now * 100), count)
        self.stats.busiest_window = max(self.stats.busiest_window, count)
        if count == self.storm_threshold + 1 and self.on_storm is not None:
            self.on_storm(now, count)

    def _is_held(self, source: str, target: str) -> bool:
        return source in self._held_hosts or target in self._held_hosts

    def _later(
        self,
        delay: float,
        source: str,
        target: str,
        channel: trio.MemorySendChannel[bytes],
        data: bytes,
    ) -> None:
        if delay <= 0:
            self._arrive(source, target, channel, data)
            return
        assert self.nursery is not None
        self.stats.delayed += 1

        async def deliver() -> None:
            await trio.sleep(delay)
            self._arrive(source, target, channel, data)

        self.nursery.start_soon(deliver)

    def _arrive(
        self, source: str, target: str, channel: trio.MemorySendChannel[bytes], data: bytes
    ) -> None:
        """A late frame reaches its connection now, unless a cut or a hold stops it."""
        if self._is_held(source, target):
            self.stats.held += 1
            self._held.append((source, target, channel, data))
            return
        if not self.can_reach(source, target) or (source, target) in self._one_way:
            self.stats.dropped += 1
            return
        try:
            channel.send_nowait(data)
            self.stats.delivered += 1
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            self.stats.dropped += 1


class MemoryStream:
    """One end of an in-memory connection."""

    def __init__(
        self,
        network: MemoryNetwork,
        local: str,
        remote: str,
        send_channel: trio.MemorySendChannel[bytes],
        receive_channel: trio.MemoryReceiveChannel[bytes],
    ) -> None:
        self._network = network
        self._local = local
        self._remote = remote
        self._send = send_channel
        self._receive = receive_channel
        self._decoder = FrameDecoder(DEFAULT_MAX_FRAME_SIZE)
        self.peer_certificate: dict[str, Any] | None = None
        """The certificate the network gives the peer (MemoryNetwork.certificates), if any."""

    @property
    def peer(self) -> str:
        return self._remote

    async def send(self, message: Any) -> None:
        await self.send_raw(encode_frame(registry.encode(message)))

    async def send_raw(self, data: bytes) -> None:
        try:
            await self._network._transmit(self._local, self._remote, self._send, data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise TransportError(f"connection to {self._remote} closed") from exc

    async def receive(self) -> Any:
        while True:
            frame = self._decoder.next_frame()
            if frame is not None:
                try:
                    return registry.decode(frame)
                except ProtocolError as exc:
                    return salvage_request(registry, frame, exc)
            try:
                data = await self._receive.receive()
            except (trio.EndOfChannel, trio.ClosedResourceError) as exc:
                raise TransportError(f"connection to {self._remote} closed") from exc
            self._decoder.feed(data)

    async def aclose(self) -> None:
        # Close both ends before the checkpoint: a cancelled closer must not leave one open
        # (the peer would go on sending into a buffer nobody reads).
        self._send.close()
        self._receive.close()
        await trio.lowlevel.checkpoint()


class MemoryTransport:
    """The Transport of one host on a MemoryNetwork."""

    def __init__(self, network: MemoryNetwork, own_address: str) -> None:
        self.network = network
        self.address = own_address

    async def serve(
        self,
        address: str,
        handler: ConnectionHandler,
        *,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        async with trio.open_nursery() as nursery:
            self.network._listeners[address] = (handler, nursery)
            try:
                task_status.started(address)
                await trio.sleep_forever()
            finally:
                entry = self.network._listeners.get(address)
                if entry is not None and entry[1] is nursery:
                    del self.network._listeners[address]

    async def connect(self, address: str) -> MessageStream:
        await trio.lowlevel.checkpoint()
        entry = self.network._listeners.get(address)
        if entry is None or not self.network.can_reach(self.address, address):
            raise TransportError(f"cannot connect to {address}")
        handler, nursery = entry
        a_send, b_receive = trio.open_memory_channel[bytes](CHANNEL_CAPACITY)
        b_send, a_receive = trio.open_memory_channel[bytes](CHANNEL_CAPACITY)
        client = MemoryStream(self.network, self.address, address, a_send, a_receive)
        server = MemoryStream(self.network, address, self.address, b_send, b_receive)
        server.peer_certificate = self.network.certificates.get(self.address)
        client.peer_certificate = self.network.certificates.get(address)

        async def run_handler() -> None:
            try:
                await handler(server)
            except Exception:
                log.exception("connection from %s failed", self.address)
            finally:
                await server.aclose()

        nursery.start_soon(run_handler)
        return client
