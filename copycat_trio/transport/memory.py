"""An in-memory network for tests: named hosts, connections that can be cut or blackholed.

Messages go through the real codec and framer, so what works here works on the wire. A cut
between two hosts refuses new connections and silently drops messages already in flight, as a
network partition does to TCP.
"""

from __future__ import annotations

import logging
import random
from typing import Any

import trio

from ..protocol.codec import registry
from ..protocol.framing import DEFAULT_MAX_FRAME_SIZE, FrameDecoder, encode_frame
from .base import ConnectionHandler, MessageStream, TransportError

log = logging.getLogger(__name__)

CHANNEL_CAPACITY = 1024


class MemoryNetwork:
    """Hosts by address; `transport(address)` gives the Transport one server or client uses."""

    def __init__(self, *, seed: int = 0) -> None:
        self._listeners: dict[str, tuple[ConnectionHandler, trio.Nursery]] = {}
        self._cut: set[frozenset[str]] = set()
        self._one_way: set[tuple[str, str]] = set()
        self.drop_rate = 0.0
        self.rng = random.Random(seed)

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

    @property
    def peer(self) -> str:
        return self._remote

    async def send(self, message: Any) -> None:
        await self.send_raw(encode_frame(registry.encode(message)))

    async def send_raw(self, data: bytes) -> None:
        if not self._network.should_deliver(self._local, self._remote):
            await trio.lowlevel.checkpoint()
            return
        try:
            await self._send.send(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise TransportError(f"connection to {self._remote} closed") from exc

    async def receive(self) -> Any:
        while True:
            frame = self._decoder.next_frame()
            if frame is not None:
                return registry.decode(frame)
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

        async def run_handler() -> None:
            try:
                await handler(server)
            except Exception:
                log.exception("connection from %s failed", self.address)
            finally:
                await server.aclose()

        nursery.start_soon(run_handler)
        return client
