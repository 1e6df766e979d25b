"""A client over TLS: open_client(ssl_context=...) serves; a client the cluster refuses (no
certificate, another CA, plaintext) fails at once with RefusedError, not after its timeout."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trustme

from copycat_trio.client import open_client
from copycat_trio.protocol.errors import ConfigurationError, ErrorType
from copycat_trio.protocol.messages import (
    InstallRequest,
    JoinRequest,
    Member,
    RpcRequest,
    RpcResponse,
)
from copycat_trio.recipes.kv import Get, KeyValueStore, Put
from copycat_trio.server.authz import AuthPolicy, TokenTable, hash_token
from copycat_trio.server.server import CopycatServer
from copycat_trio.testing.processes import free_ports
from copycat_trio.transport.base import TransportError
from copycat_trio.transport.framed import RefusedError
from copycat_trio.transport.tcp import TcpTransport
from copycat_trio.transport.tls import TlsContexts, client_context

from .test_tls import Pki, write_pair


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path)


async def test_a_tls_client_is_served_and_refused_ones_fail_fast(pki: Pki) -> None:
    address = f"127.0.0.1:{free_ports(1)[0]}"
    server = CopycatServer(
        1,
        address,
        state_machine=KeyValueStore,
        election_timeout=0.3,
        heartbeat_interval=0.05,
        session_timeout=1.0,
        tls=pki.settings(),
    )
    good = client_context(pki.ca_path, *pki.client)
    other = write_pair(pki.tmp, "other", trustme.CA().issue_cert("x"))
    async with trio.open_nursery() as nursery:
        with trio.fail_after(10):
            await nursery.start(server.bootstrap)
            async with open_client([address], ssl_context=good) as client:
                await client.submit(Put("k", "v"))
                assert await client.submit(Get("k")) == "v"
        for context, why in (
            (client_context(pki.ca_path), "certificate"),
            (client_context(pki.ca_path, *other), "certificate"),
            (None, "requires TLS"),
        ):
            with trio.fail_after(5), pytest.raises(RefusedError, match=why):
                async with open_client([address], ssl_context=context, timeout=30):
                    pass
        nursery.cancel_scope.cancel()


async def test_with_client_auth_none_a_client_needs_no_certificate_but_cannot_act_as_a_member(
    pki: Pki,
) -> None:
    address = f"127.0.0.1:{free_ports(1)[0]}"
    server = CopycatServer(
        1,
        address,
        state_machine=KeyValueStore,
        election_timeout=0.3,
        heartbeat_interval=0.05,
        session_timeout=1.0,
        tls=pki.settings(client_auth="none"),
    )
    anonymous = client_context(pki.ca_path)
    async with trio.open_nursery() as nursery:
        with trio.fail_after(10):
            await nursery.start(server.bootstrap)
            async with open_client([address], ssl_context=anonymous) as client:
                await client.submit(Put("k", "v"))
                assert await client.submit(Get("k")) == "v"
            # Without a certificate a membership change is beyond the anonymous role (write):
            # refused UNAUTHORIZED, on a connection that stays open; member traffic closes it.
            stream = await TcpTransport(tls=TlsContexts.for_client(anonymous)).connect(address)
            await stream.send(RpcRequest(1, JoinRequest(member=Member(2, "127.0.0.1:1"))))
            answer = await stream.receive()
            assert isinstance(answer, RpcResponse) and answer.body.error is not None
            assert answer.body.error.type is ErrorType.UNAUTHORIZED
            assert "an anonymous client has the write role" in answer.body.error.message
            install = InstallRequest(term=1, leader=1, index=1, offset=0)
            await stream.send(RpcRequest(2, install))
            with pytest.raises(TransportError, match="closed"):
                await stream.receive()
        assert {m.id for m in server.status().members} == {1}
        nursery.cancel_scope.cancel()


async def test_open_client_with_a_token_over_tls_opens_a_session_of_its_identity(pki: Pki) -> None:
    from tests.server.test_authorization import Note, Notebook

    address = f"127.0.0.1:{free_ports(1)[0]}"
    tokens = TokenTable.parse(f'batch = "{hash_token("t0k3n")}"')
    server = CopycatServer(
        1,
        address,
        state_machine=Notebook,
        election_timeout=0.3,
        heartbeat_interval=0.05,
        session_timeout=1.0,
        tls=pki.settings(client_auth="none"),
        auth=AuthPolicy(tokens=tokens),
    )
    anonymous = client_context(pki.ca_path)
    async with trio.open_nursery() as nursery:
        with trio.fail_after(10):
            await nursery.start(server.bootstrap)
            async with open_client([address], ssl_context=anonymous, token="t0k3n") as client:
                assert await client.submit(Note("hello")) == "batch"
            async with open_client([address], ssl_context=anonymous) as client:
                assert await client.submit(Note("who")) == ""
            # A client's certificate names it even with a token: alice@example, no common name.
            mine = client_context(pki.ca_path, *pki.client)
            async with open_client([address], ssl_context=mine, token="t0k3n") as client:
                assert await client.submit(Note("both")) == "alice@example"
            with pytest.raises(RefusedError, match="the token is not valid"):
                async with open_client([address], ssl_context=anonymous, token="nope"):
                    pass
        assert server.state_machine.registered == ["batch", "", "alice@example"]
        nursery.cancel_scope.cancel()


async def test_open_client_sends_a_token_over_tls_only() -> None:
    with pytest.raises(ConfigurationError, match="over TLS only"):
        async with open_client(["127.0.0.1:1"], token="t0k3n"):
            pass
    with pytest.raises(ValueError, match="token"):
        async with open_client(["127.0.0.1:1"], token="t0k3n", transport=TcpTransport()):
            pass
