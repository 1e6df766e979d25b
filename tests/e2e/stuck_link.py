"""Helper for test_stuck_link: run inside a network namespace, connect to ADDRESS with the
server's TCP options, write a frame every 50 ms and print `broken <seconds>` (seconds since a line
on stdin said the link is cut) once the connection breaks.

    python stuck_link.py HOST:PORT UNACKNOWLEDGED_TIMEOUT   (0: the system default)
"""

from __future__ import annotations

import contextlib
import sys

import trio

from copycat_trio.protocol.errors import ProtocolError
from copycat_trio.protocol.messages import PollRequest
from copycat_trio.transport.base import TransportError
from copycat_trio.transport.tcp import TcpTransport


async def main(address: str, timeout: float) -> None:
    transport = TcpTransport(unacknowledged_timeout=timeout or None)
    stream = await transport.connect(address)
    message = PollRequest(term=1, candidate=1, log_index=0, log_term=0)
    await stream.send(message)
    print("connected", flush=True)
    await trio.to_thread.run_sync(sys.stdin.readline)  # the test has cut the link
    began = trio.current_time()
    broken = trio.Event()

    async def read() -> None:
        # The listener never writes: this ends only with the connection.
        with contextlib.suppress(TransportError, ProtocolError):
            await stream.receive()
        broken.set()

    async def write() -> None:
        with contextlib.suppress(TransportError):
            while True:
                await stream.send(message)
                await trio.sleep(0.05)
        broken.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read)
        nursery.start_soon(write)
        await broken.wait()
        print(f"broken {trio.current_time() - began:.2f}", flush=True)
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(main, sys.argv[1], float(sys.argv[2]))
