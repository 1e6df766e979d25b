"""A member's connection to a peer behind a partition breaks after an election timeout of
unacknowledged data, so that a new one goes through as soon as the partition heals; without
TCP_USER_TIMEOUT it would wait out TCP's doubling retransmission intervals (seconds after the
heal, minutes before it breaks), and a vote sent over it arrives too late for the election."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import trio

from copycat_trio.recipes.kv import KeyValueStore
from copycat_trio.server.server import CopycatServer
from copycat_trio.testing import netns
from copycat_trio.transport.tcp import TcpTransport

HELPER = Path(__file__).with_name("stuck_link.py")
LISTENER = (
    "import socket, sys\n"
    "s = socket.create_server((sys.argv[1], 7400))\n"
    "print('listening', flush=True)\n"
    "c, _ = s.accept()\n"
    "while c.recv(65536): pass\n"
)


async def _line(receive: trio.abc.ReceiveStream, buffer: bytearray) -> str:
    while b"\n" not in buffer:
        chunk = await receive.receive_some()
        if not chunk:
            raise AssertionError(f"process ended; output so far: {bytes(buffer)!r}")
        buffer.extend(chunk)
    line, _, rest = bytes(buffer).partition(b"\n")
    buffer[:] = rest
    return line.decode()


async def test_a_connection_with_data_stuck_behind_a_partition_breaks() -> None:
    reason = netns.unavailable_reason()
    if reason is not None:
        pytest.skip(f"partitions need network namespaces: {reason}")
    async with netns.open_network_lab(2) as lab, trio.open_nursery() as nursery:
        listener = await nursery.start(
            lambda task_status: trio.run_process(
                [*lab.exec_prefix(2), sys.executable, "-c", LISTENER, lab.address(2)],
                stdout=-1,
                check=False,
                task_status=task_status,
            )
        )
        out = bytearray()
        assert await _line(listener.stdout, out) == "listening"
        helper = await nursery.start(
            lambda task_status: trio.run_process(
                [*lab.exec_prefix(1), sys.executable, str(HELPER), f"{lab.address(2)}:7400", "0.5"],
                stdin=-1,
                stdout=-1,
                check=False,
                task_status=task_status,
            )
        )
        with trio.fail_after(10):
            assert await _line(helper.stdout, out) == "connected"
        await lab.partition([1], [2])
        await helper.stdin.send_all(b"cut\n")
        with trio.move_on_after(15) as waited:
            line = await _line(helper.stdout, out)
        assert not waited.cancelled_caught, "the stuck connection did not break within 15 s"
        assert line.startswith("broken "), line
        print(line)
        listener.kill()
        helper.kill()


def test_a_server_breaks_its_connections_after_an_election_timeout_unacknowledged() -> None:
    server = CopycatServer(1, "127.0.0.1:0", state_machine=KeyValueStore, election_timeout=1.5)
    assert isinstance(server.transport, TcpTransport)
    assert server.transport.unacknowledged_timeout == 1.5
    assert server.transport.connect_timeout < 1.0  # gives up before TCP resends its SYN
