"""TLS on the TCP transport: mutual authentication, and bad TLS input closing only its own
connection with one log line (certificates from trustme)."""

from __future__ import annotations

import datetime
import logging
import ssl
from pathlib import Path
from typing import Any

import pytest
import trio
import trustme

from copycat_trio.protocol import StatusRequest
from copycat_trio.transport.base import MessageStream
from copycat_trio.transport.framed import RefusedError, TlsError
from copycat_trio.transport.tcp import TcpTransport
from copycat_trio.transport.tls import TlsContexts, TlsSettings, client_context


async def echo(stream: MessageStream) -> None:
    while True:
        message: Any = await stream.receive()
        await stream.send(message)


def write_pair(tmp: Path, name: str, cert: trustme.LeafCert) -> tuple[str, str]:
    cert_path, key_path = tmp / f"{name}.pem", tmp / f"{name}.key"
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    return str(cert_path), str(key_path)


class Pki:
    """A CA, a member certificate for 127.0.0.1 and a client certificate, as files."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.ca = trustme.CA()
        self.ca_path = str(tmp / "ca.pem")
        self.ca.cert_pem.write_to_path(self.ca_path)
        self.member = write_pair(tmp, "member", self.ca.issue_cert("127.0.0.1"))
        self.client = write_pair(tmp, "client", self.ca.issue_cert("alice@example"))

    def settings(self, **kwargs: Any) -> TlsSettings:
        cert, key = self.member
        return TlsSettings(cert=cert, key=key, ca=self.ca_path, **kwargs)

    def client_transport(self, pair: tuple[str, str] | None = None) -> TcpTransport:
        cert, key = pair if pair is not None else self.client
        return TcpTransport(tls=TlsContexts.for_client(client_context(self.ca_path, cert, key)))


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path)


def tls_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "closing connection from" in r.getMessage()]


async def assert_serves(client: TcpTransport, address: str) -> None:
    stream = await client.connect(address)
    with trio.fail_after(5):
        await stream.send(StatusRequest())
        assert await stream.receive() == StatusRequest()
    await stream.aclose()


async def test_mutual_tls_carries_messages_and_names_the_peer(pki: Pki) -> None:
    server = TcpTransport(tls=TlsContexts.for_member(pki.settings()))
    seen: list[Any] = []

    async def record(stream: MessageStream) -> None:
        seen.append(getattr(stream, "peer_certificate", None))
        await echo(stream)

    async with trio.open_nursery() as nursery:
        address = await nursery.start(server.serve, "127.0.0.1:0", record)
        await assert_serves(pki.client_transport(), address)
        # Members connect to each other with the peer context: mutual, hostname checked.
        await assert_serves(server, address)
        nursery.cancel_scope.cancel()
    subjects = [dict(x[0] for x in cert["subject"]) for cert in seen if cert]
    assert len(subjects) == 2


@pytest.mark.parametrize("case", ["no certificate", "another CA", "expired"])
async def test_a_refused_client_certificate_fails_fast_and_the_listener_keeps_serving(
    pki: Pki, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    server = TcpTransport(tls=TlsContexts.for_member(pki.settings()))
    if case == "no certificate":
        bad = TcpTransport(tls=TlsContexts.for_client(client_context(pki.ca_path)))
    elif case == "another CA":
        bad = pki.client_transport(write_pair(pki.tmp, "other", trustme.CA().issue_cert("x")))
    else:
        past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=2)
        expired = pki.ca.issue_cert(
            "old", not_before=past, not_after=past + datetime.timedelta(days=1)
        )
        bad = pki.client_transport(write_pair(pki.tmp, "expired", expired))
    async with trio.open_nursery() as nursery:
        address = await nursery.start(server.serve, "127.0.0.1:0", echo)
        with trio.fail_after(5), pytest.raises(TlsError, match="TLS with"):
            # TLS 1.3: the server's refusal may only arrive on the first read.
            stream = await bad.connect(address)
            await stream.send(StatusRequest())
            await stream.receive()
        await assert_serves(pki.client_transport(), address)
        nursery.cancel_scope.cancel()
    lines = tls_warnings(caplog)
    assert len(lines) == 1, lines
    assert "TLS handshake failed" in lines[0] and "127.0.0.1:" in lines[0]


async def test_plaintext_to_a_tls_port_is_told_tls_is_required(
    pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    server = TcpTransport(tls=TlsContexts.for_member(pki.settings()))
    async with trio.open_nursery() as nursery:
        address = await nursery.start(server.serve, "127.0.0.1:0", echo)
        for _ in range(3):  # a member without TLS retries several times a second
            stream = await TcpTransport().connect(address)
            with trio.fail_after(5), pytest.raises(RefusedError, match="requires TLS"):
                await stream.send(StatusRequest())
                await stream.receive()
        await assert_serves(pki.client_transport(), address)
        nursery.cancel_scope.cancel()
    lines = tls_warnings(caplog)
    assert len(lines) == 1 and "not TLS" in lines[0], lines  # the repeats: at debug level


@pytest.mark.parametrize("send", [b"", b"\x16\x03\x01\x00\x05garbage-after-a-record-header" * 3])
async def test_a_stalled_or_garbled_handshake_closes_that_connection_only(
    pki: Pki, send: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    server = TcpTransport(tls=TlsContexts.for_member(pki.settings()), handshake_timeout=0.5)
    async with trio.open_nursery() as nursery:
        address = await nursery.start(server.serve, "127.0.0.1:0", echo)
        raw = await trio.open_tcp_stream("127.0.0.1", int(address.rsplit(":", 1)[1]))
        if send:
            await raw.send_all(send)
        with trio.fail_after(5):
            try:
                while await raw.receive_some(4096):
                    pass
            except trio.BrokenResourceError:
                pass
        assert server.open_connections == 0
        await assert_serves(pki.client_transport(), address)
        nursery.cancel_scope.cancel()
    lines = tls_warnings(caplog)
    assert len(lines) == 1, lines
    assert ("not done within" in lines[0]) == (not send)


async def test_a_member_certificate_must_name_the_address_host(pki: Pki) -> None:
    server = TcpTransport(tls=TlsContexts.for_member(pki.settings()))
    wrong_cert, wrong_key = write_pair(pki.tmp, "wrong", pki.ca.issue_cert("db.example"))
    other = TlsSettings(cert=wrong_cert, key=wrong_key, ca=pki.ca_path)
    async with trio.open_nursery() as nursery:
        bad = await nursery.start(
            TcpTransport(tls=TlsContexts.for_member(other)).serve, "127.0.0.1:0", echo
        )
        with pytest.raises(TlsError, match="certificate rejected"):
            await server.connect(bad)
        named = TcpTransport(
            tls=TlsContexts.for_member(
                TlsSettings(
                    cert=pki.member[0], key=pki.member[1], ca=pki.ca_path, server_name="db.example"
                )
            )
        )
        await assert_serves(named, bad)  # a configured name is checked instead
        nursery.cancel_scope.cancel()


async def test_reload_uses_the_new_certificate_for_new_connections(pki: Pki) -> None:
    contexts = TlsContexts.for_member(pki.settings())
    server = TcpTransport(tls=contexts)
    client = pki.client_transport()
    async with trio.open_nursery() as nursery:
        address = await nursery.start(server.serve, "127.0.0.1:0", echo)
        old = await client.connect(address)
        before = getattr(old, "peer_certificate", {})["serialNumber"]
        pki.ca.issue_cert("127.0.0.1").cert_chain_pems[0].write_to_path(pki.member[0])
        write_pair(pki.tmp, "member", pki.ca.issue_cert("127.0.0.1"))
        contexts.reload()
        new = await client.connect(address)
        after = getattr(new, "peer_certificate", {})["serialNumber"]
        assert after != before
        with trio.fail_after(5):  # the open connection keeps working
            await old.send(StatusRequest())
            assert await old.receive() == StatusRequest()
        nursery.cancel_scope.cancel()


def test_tls_settings_refuse_an_unknown_client_auth_and_missing_files(pki: Pki) -> None:
    from copycat_trio.protocol.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="client auth"):
        pki.settings(client_auth="maybe")
    with pytest.raises(ConfigurationError, match="no such file"):
        TlsContexts.for_member(TlsSettings(cert="/nonexistent.pem", key="k", ca=pki.ca_path))
    assert ssl.TLSVersion.TLSv1_2 <= TlsContexts.for_member(pki.settings()).client.minimum_version
