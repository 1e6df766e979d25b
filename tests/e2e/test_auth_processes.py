"""Roles and tokens with real `serve` processes over TLS on 127.0.0.1 (issue 13, item 3): a
`write` client puts and gets, but `members remove` is refused UNAUTHORIZED and the member
stays; an `admin` client removes it; a client with a token and no certificate works (and, with
the admin role, changes the membership); a wrong token is refused at once with a clear error."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from copycat_trio.client.admin import fetch_status
from copycat_trio.protocol.messages import StatusResponse
from copycat_trio.server.authz import hash_token
from copycat_trio.transport.tls import TlsContexts, client_context, default_client_tls
from tests.e2e.conftest import StartCluster
from tests.e2e.test_cli_processes import cli
from tests.e2e.test_tls_processes import Certificates

pytestmark = pytest.mark.e2e

KV = "copycat_trio.recipes.kv:KeyValueStore"
TOKEN = "batch-job-token-0123456789"
ADMIN_TOKEN = "operator-bot-token-9876543210"


async def member_ids(address: str) -> set[int]:
    (status,) = await fetch_status([address], timeout=5)
    assert isinstance(status, StatusResponse), status
    return {m.id for m in status.members}


async def test_a_write_client_is_refused_members_remove_and_an_admin_client_is_not(
    start_cluster: StartCluster, tmp_path: Path
) -> None:
    certs = Certificates(tmp_path)
    writer = certs.issue("writer", certs.ca, "writer.example")  # common name none: its name
    admin = certs.issue("ops", certs.ca, "ops.example")
    default_client_tls.set(TlsContexts.for_client(client_context(certs.ca_path, *writer)))

    def options(member_id: int) -> list[str]:
        return [*certs.serve_options(member_id), "--role", "ops.example=admin"]

    cluster = await start_cluster(state_machine=KV, serve_options=options)
    agreement = await cluster.wait_for_leader()
    victim = next(i for i in cluster.ids() if i != agreement.leader)
    addresses = ",".join(cluster.addresses())
    as_writer, as_admin = certs.client_flags(writer), certs.client_flags(admin)

    code, out, err, _ = await cli("kv", "put", "k", "v", "--cluster", addresses, *as_writer)
    assert code == 0, out + err
    code, out, err, _ = await cli("kv", "get", "k", "--cluster", addresses, *as_writer)
    assert (code, out.strip()) == (0, "v"), err
    code, out, err, took = await cli(
        "members", "remove", str(victim), "--cluster", addresses, *as_writer
    )
    assert code == 1, out + err
    assert "UnauthorizedError" in err and "'writer.example' has the write role" in err, err
    assert "admin role" in err and took < 10, (err, took)
    assert victim in await member_ids(cluster.address(agreement.leader))
    assert cluster.servers[victim].running

    code, out, err, _ = await cli(
        "members", "remove", str(victim), "--cluster", addresses, *as_admin
    )
    assert (code, out.strip()) == (0, "ok"), err
    assert victim not in await member_ids(cluster.address(agreement.leader))


async def test_a_token_client_works_and_a_wrong_token_is_refused(
    start_cluster: StartCluster, tmp_path: Path
) -> None:
    certs = Certificates(tmp_path)
    tokens = tmp_path / "tokens.txt"
    tokens.write_text(
        f'# the batch job\nbatch = "{hash_token(TOKEN)}"\nbot = "{hash_token(ADMIN_TOKEN)}"\n'
    )
    default_client_tls.set(TlsContexts.for_client(client_context(certs.ca_path, *certs.client)))

    def options(member_id: int) -> list[str]:
        return [
            *certs.serve_options(member_id),
            *("--client-auth", "none", "--tokens", str(tokens), "--anonymous-role", "read"),
            *("--role", "bot=admin"),
        ]

    cluster = await start_cluster(state_machine=KV, serve_options=options)
    addresses = ",".join(cluster.addresses())
    env = {"COPYCAT_TLS_CA": certs.ca_path, "COPYCAT_TOKEN": TOKEN}
    code, out, err, _ = await cli("kv", "put", "k", "v", "--cluster", addresses, env=env)
    assert code == 0, out + err
    code, out, err, _ = await cli("kv", "get", "k", "--cluster", addresses, env=env)
    assert (code, out.strip()) == (0, "v"), err

    # Without the token the client is anonymous, which these members let only read.
    anonymous = {"COPYCAT_TLS_CA": certs.ca_path}
    code, out, err, _ = await cli("kv", "get", "k", "--cluster", addresses, env=anonymous)
    assert (code, out.strip()) == (0, "v"), err
    code, out, err, _ = await cli("kv", "put", "k", "w", "--cluster", addresses, env=anonymous)
    assert code == 1 and "an anonymous client has the read role" in err, out + err

    wrong = {**env, "COPYCAT_TOKEN": "guessed"}
    code, out, err, took = await cli(
        "kv", "get", "k", "--cluster", addresses, "--timeout", "30", env=wrong
    )
    assert code == 1 and "the token is not valid" in err and "refused" in err, out + err
    assert took < 10, took  # refused at once, not retried until the timeout
    code, out, err, took = await cli(
        "members", "remove", "2", "--cluster", addresses, "--timeout", "30", env=wrong
    )
    assert code == 1 and "the token is not valid" in err, out + err
    assert took < 10, took
    with trio.fail_after(5):
        agreement = await cluster.wait_for_leader()
    cluster.assert_running()

    # A token client with the admin role changes the membership; one with write does not.
    victim = next(i for i in cluster.ids() if i != agreement.leader)
    remove = ("members", "remove", str(victim), "--cluster", addresses)
    code, out, err, _ = await cli(*remove, env=env)
    assert code == 1 and "client 'batch' has the write role" in err, out + err
    code, out, err, _ = await cli(*remove, env={**env, "COPYCAT_TOKEN": ADMIN_TOKEN})
    assert (code, out.strip()) == (0, "ok"), out + err
    assert victim not in await member_ids(cluster.address(agreement.leader))
