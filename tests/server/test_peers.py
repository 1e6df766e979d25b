"""Peer links: a restarted peer gets the first message sent to it after its restart."""

from __future__ import annotations

from typing import Any

import trio

from copycat_trio.protocol.messages import Envelope, PollRequest
from copycat_trio.server.peers import PeerLink
from copycat_trio.transport.base import MessageStream, Transport, TransportError
from copycat_trio.transport.memory import MemoryNetwork
from copycat_trio.transport.tcp import TcpTransport


def poll(term: int) -> Envelope:
    return Envelope(1, 2, PollRequest(term=term, candidate=1, log_index=0, log_term=0))


class Peer:
    """A listener that can be stopped and started again at the same address, as a restarted
    process would be; what it receives goes to `received`."""

    def __init__(self, transport: Transport, address: str) -> None:
        self.transport = transport
        self.address = address
        self.send, self.received = trio.open_memory_channel[Any](100)
        self.scope = trio.CancelScope()
        self.stopped = trio.Event()

    async def _handle(self, stream: MessageStream) -> None:
        try:
            while True:
                await self.send.send(await stream.receive())
        except TransportError:
            pass

    async def _serve(self, *, task_status: trio.TaskStatus[str]) -> None:
        with self.scope:
            try:
                await self.transport.serve(self.address, self._handle, task_status=task_status)
            finally:
                self.stopped.set()

    async def start(self, nursery: trio.Nursery) -> str:
        self.scope, self.stopped = trio.CancelScope(), trio.Event()
        self.address = await nursery.start(self._serve)
        return self.address

    async def stop(self) -> None:
        self.scope.cancel()
        await self.stopped.wait()


async def first_message_after_restart(
    server: Transport, client: Transport, address: str
) -> tuple[list[Any], PeerLink]:
    """Send one message, restart the peer, send one more: what the restarted peer received
    within a second (it has no reason to wait longer: the link is idle and the peer is up)."""
    async with trio.open_nursery() as nursery:
        peer = Peer(server, address)
        address = await peer.start(nursery)
        link = PeerLink(client, address, retry_interval=0.1)
        nursery.start_soon(link.run)
        link.offer(poll(1))
        with trio.fail_after(1):
            assert await peer.received.receive() == poll(1)
        await peer.stop()
        await peer.start(nursery)
        link.offer(poll(2))
        got = []
        with trio.move_on_after(1):
            got.append(await peer.received.receive())
        nursery.cancel_scope.cancel()
    return got, link


async def test_restarted_peer_gets_the_first_message_memory_transport(autojump_clock) -> None:
    network = MemoryNetwork()
    got, link = await first_message_after_restart(
        network.transport("server2:5000"), network.transport("server1:5000"), "server2:5000"
    )
    assert got == [poll(2)]
    assert link.stats.dropped_unreachable == 0
    assert link.stats.connects == 2


async def test_restarted_peer_gets_the_first_message_tcp() -> None:
    # Real sockets: the write after the peer closed would go into the old connection and be
    # lost (the peer answers it with a reset), unless the link saw the close first.
    got, link = await first_message_after_restart(TcpTransport(), TcpTransport(), "127.0.0.1:0")
    assert got == [poll(2)]
    assert link.stats.connects == 2
