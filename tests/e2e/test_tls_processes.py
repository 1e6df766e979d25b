"""TLS and cluster identity with real `serve` processes over TCP on 127.0.0.1 (issue 13): a TLS
cluster serves a client with a certificate; a client without one, with another CA's, or in
plaintext is refused at once with a clear error; SIGHUP's certificates serve the next
connection; a member started on another member's data directory exits with the sentence; a
member without TLS is refused by the members with it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import trio
import trustme

from copycat_trio.client.admin import fetch_status
from copycat_trio.protocol.messages import StatusResponse
from copycat_trio.testing.processes import ProcessCluster
from copycat_trio.transport.tcp import TcpTransport
from copycat_trio.transport.tls import TlsContexts, client_context, default_client_tls
from tests.e2e.conftest import StartCluster
from tests.e2e.test_cli_processes import cli

pytestmark = pytest.mark.e2e

KV = "copycat_trio.recipes.kv:KeyValueStore"


class Certificates:
    """A CA; one certificate for 127.0.0.1 every member uses; a client's; another CA's."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.ca = trustme.CA()
        self.ca_path = str(tmp / "ca.pem")
        self.ca.cert_pem.write_to_path(self.ca_path)
        self.member = self.issue("member", self.ca, "127.0.0.1")
        self.client = self.issue("client", self.ca, "ops@example")
        self.other = self.issue("other", trustme.CA(), "mallory@example")

    def issue(self, name: str, ca: trustme.CA, identity: str) -> tuple[str, str]:
        cert = ca.issue_cert(identity)
        cert_path, key_path = self.tmp / f"{name}.pem", self.tmp / f"{name}.key"
        # Written whole to a new file, then renamed: a member reloading never reads half.
        for pem, path in ((cert.cert_chain_pems[0], cert_path), (cert.private_key_pem, key_path)):
            pem.write_to_path(str(path) + ".new")
            Path(str(path) + ".new").replace(path)
        return str(cert_path), str(key_path)

    def serve_options(self, member_id: int) -> list[str]:
        cert, key = self.member
        return ["--tls-cert", cert, "--tls-key", key, "--tls-ca", self.ca_path]

    def client_flags(self, pair: tuple[str, str] | None = None) -> list[str]:
        cert, key = pair or self.client
        return ["--tls-cert", cert, "--tls-key", key, "--tls-ca", self.ca_path]


async def test_a_tls_cluster_serves_tls_clients_refuses_others_and_rotates_on_sighup(
    start_cluster: StartCluster, tmp_path: Path
) -> None:
    certs = Certificates(tmp_path)
    default_client_tls.set(  # the fixture's status polls speak TLS too
        TlsContexts.for_client(client_context(certs.ca_path, *certs.client))
    )
    cluster = await start_cluster(state_machine=KV, serve_options=certs.serve_options)
    addresses = ",".join(cluster.addresses())
    code, out, err, _ = await cli(
        "kv", "put", "k", "v", "--cluster", addresses, *certs.client_flags()
    )
    assert code == 0, out + err
    env = {"COPYCAT_TLS_CERT": certs.client[0], "COPYCAT_TLS_KEY": certs.client[1]}
    env["COPYCAT_TLS_CA"] = certs.ca_path
    code, out, err, _ = await cli("status", "--cluster", addresses, env=env)
    assert code == 0 and "cluster " in out, out + err

    refused = {
        "no certificate": ["--tls-ca", certs.ca_path],
        "another CA": certs.client_flags(certs.other),
        "plaintext": [],
    }
    for case, flags in refused.items():
        code, out, err, took = await cli(
            "kv", "get", "k", "--cluster", addresses, "--timeout", "30", *flags
        )
        reason = "requires TLS" if case == "plaintext" else "certificate"
        assert code == 1 and "TLS" in err and reason in err, (case, code, out, err)
        assert took < 10, (case, took)  # refused, not retried until the timeout

    # Rotation: new files, SIGHUP, and the next connection gets the new certificate.
    probe = TcpTransport(tls=TlsContexts.for_client(client_context(certs.ca_path, *certs.client)))

    async def serial() -> str:
        stream = await probe.connect(cluster.address(1))
        try:
            certificate = getattr(stream, "peer_certificate", None) or {}
            return str(certificate["serialNumber"])
        finally:
            await stream.aclose()

    before = await serial()
    certs.issue("member", certs.ca, "127.0.0.1")
    assert await serial() == before  # not before the reload
    cluster.hangup(1)
    with trio.fail_after(5):
        while await serial() == before:
            await trio.sleep(0.05)
    code, out, err, _ = await cli("kv", "get", "k", "--cluster", cluster.address(1), env=env)
    assert (code, out.strip()) == (0, "v"), err
    cluster.assert_running()


async def test_a_member_on_another_members_data_directory_exits_with_the_sentence(
    start_cluster: StartCluster, tmp_path: Path
) -> None:
    first = await start_cluster(1, state_machine=KV)  # one member: its data is all it takes
    await first.kill(1)
    other = ProcessCluster(tmp_path / "other", 2, state_machine=KV)
    (tmp_path / "other").mkdir()
    shutil.copytree(first.data_dir(1), other.data_dir(2))
    try:
        await other.start([2])
        process = other.servers[2].process
        assert process is not None
        with trio.fail_after(15):
            await process.wait()
        assert process.returncode == 1
        log = other.servers[2].log_tail(5)
        assert "belongs to member 1 of cluster " in log and "not to member 2" in log, log
    finally:
        await other.aclose()


async def test_a_member_without_tls_is_refused_by_the_tls_members(tmp_path: Path) -> None:
    certs = Certificates(tmp_path)
    default_client_tls.set(TlsContexts.for_client(client_context(certs.ca_path, *certs.client)))
    (tmp_path / "mixed").mkdir()
    cluster = ProcessCluster(
        tmp_path / "mixed",
        3,
        state_machine=KV,
        serve_options=lambda member_id: certs.serve_options(member_id) if member_id != 3 else [],
    )
    try:
        await cluster.start()
        await cluster.wait_for_leader([1, 2], timeout=20)
        with trio.fail_after(10):  # member 3's polls reach them in plaintext
            while not all(
                "not TLS (plaintext?)" in cluster.servers[i].log_tail(50) for i in (1, 2)
            ):
                await trio.sleep(0.1)
        plain = await fetch_status([cluster.address(3)], timeout=2, transport=TcpTransport())
        assert isinstance(plain[0], StatusResponse) and plain[0].leader is None, plain
        cluster.assert_running()
    finally:
        await cluster.aclose()
