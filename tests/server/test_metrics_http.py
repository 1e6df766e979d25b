"""The metrics listener over real TCP on 127.0.0.1 (real clock): routes, bounds, garbage, and a
single server's /metrics, /health and /ready."""

from __future__ import annotations

import json

import pytest
import trio
import trio.testing
from prometheus_client.parser import text_string_to_metric_families

from copycat_trio.protocol.errors import ConfigurationError
from copycat_trio.recipes.kv import KeyValueStore
from copycat_trio.server import http
from copycat_trio.server.http import Response, http_get, serve_http
from copycat_trio.server.server import CopycatServer
from copycat_trio.transport.memory import MemoryNetwork


def handler(path: str) -> Response:
    if path == "/boom":
        raise RuntimeError("handler bug")
    if path == "/hello":
        return Response(200, b"hi\n")
    return Response(404, b"no\n")


async def raw_exchange(address: str, data: bytes, *, close_write: bool = True) -> bytes:
    host, port = address.rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        await stream.send_all(data)
        if close_write:
            await stream.send_eof()
        received = b""
        with trio.fail_after(10):
            while chunk := await stream.receive_some(65536):
                received += chunk
        return received


async def test_routes_methods_and_garbage(nursery: trio.Nursery) -> None:
    address = await nursery.start(serve_http, "127.0.0.1:0", handler)
    assert await http_get(address, "/hello") == (200, b"hi\n")
    assert await http_get(address, "/hello?x=1") == (200, b"hi\n")
    assert (await http_get(address, "/other"))[0] == 404
    assert (await http_get(address, "/boom"))[0] == 500
    post = await raw_exchange(
        address, b"POST /hello HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\nab"
    )
    assert post.startswith(b"HTTP/1.1 405 ")
    head = await raw_exchange(address, b"HEAD /hello HTTP/1.1\r\nhost: x\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and head.endswith(b"\r\n\r\n")
    garbage = await raw_exchange(address, b"\x00\xffnot http at all\r\n\r\n")
    assert garbage.startswith(b"HTTP/1.1 400 ")
    huge = b"GET /hello HTTP/1.1\r\nhost: x\r\nx-pad: " + b"a" * (2 * http.MAX_REQUEST_BYTES)
    assert (await raw_exchange(address, huge, close_write=False)).startswith(b"HTTP/1.1 431 ")
    assert await raw_exchange(address, b"") == b""  # connected and closed: nothing to answer
    assert await http_get(address, "/hello") == (200, b"hi\n")  # still serving


async def test_a_silent_client_is_cut_off_and_others_are_served(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http, "REQUEST_TIMEOUT", 0.3)
    address = await nursery.start(serve_http, "127.0.0.1:0", handler)
    host, port = address.rsplit(":", 1)
    silent = await trio.open_tcp_stream(host, int(port))
    async with silent:
        await silent.send_all(b"GET /hel")
        assert await http_get(address, "/hello") == (200, b"hi\n")
        with trio.fail_after(5):
            assert await silent.receive_some(100) == b""  # closed by the server's timeout


async def test_connections_beyond_the_limit_are_closed(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http, "MAX_CONNECTIONS", 2)
    address = await nursery.start(serve_http, "127.0.0.1:0", handler)
    host, port = address.rsplit(":", 1)
    idle = [await trio.open_tcp_stream(host, int(port)) for _ in range(2)]
    await trio.testing.wait_all_tasks_blocked()
    third = await trio.open_tcp_stream(host, int(port))
    with trio.fail_after(5):
        assert await third.receive_some(100) == b""
    for stream in [*idle, third]:
        await stream.aclose()
    assert await http_get(address, "/hello") == (200, b"hi\n")


async def test_a_server_answers_metrics_health_and_ready(nursery: trio.Nursery) -> None:
    network = MemoryNetwork()
    server = CopycatServer(
        1,
        "s1:1",
        state_machine=KeyValueStore,
        transport=network.transport("s1:1"),
        election_timeout=0.2,
        heartbeat_interval=0.05,
        session_timeout=1.0,
        metrics_address="127.0.0.1:0",
    )
    await nursery.start(server.bootstrap)
    assert server.metrics_address is not None and not server.metrics_address.endswith(":0")
    status, body = await http_get(server.metrics_address, "/metrics")
    assert status == 200
    names = {family.name for family in text_string_to_metric_families(body.decode())}
    assert {"copycat_server_term", "copycat_server_is_leader"} <= names
    status, body = await http_get(server.metrics_address, "/health")
    assert status == 200, body
    assert json.loads(body)["health"] is True
    assert (await http_get(server.metrics_address, "/ready"))[0] == 200


async def test_not_ready_while_joining(nursery: trio.Nursery) -> None:
    network = MemoryNetwork()
    server = CopycatServer(
        2,
        "s2:1",
        state_machine=KeyValueStore,
        transport=network.transport("s2:1"),
        election_timeout=0.2,
        heartbeat_interval=0.05,
        session_timeout=1.0,
        metrics_address="127.0.0.1:0",
    )
    nursery.start_soon(server.join, ["nobody:1"])
    await trio.testing.wait_all_tasks_blocked()
    assert server.metrics_address is not None and not server.metrics_address.endswith(":0")
    status, body = await http_get(server.metrics_address, "/ready")
    assert status == 503
    assert json.loads(body)["ready"] is False
    status, body = await http_get(server.metrics_address, "/health")
    assert status == 503
    assert "no leader known" in json.loads(body)["reason"]


def test_metrics_address_is_checked() -> None:
    with pytest.raises(ConfigurationError, match="metrics_address"):
        CopycatServer(1, "127.0.0.1:1", state_machine=KeyValueStore, metrics_address="nonsense")
    with pytest.raises(ConfigurationError, match="metrics address must differ"):
        CopycatServer(1, "127.0.0.1:1", state_machine=KeyValueStore, metrics_address="127.0.0.1:1")
