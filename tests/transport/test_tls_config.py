"""TLS settings from the cluster file's [tls] table and from `serve`'s flags and environment."""

from __future__ import annotations

import argparse

import pytest

from copycat_trio.cli import UsageError, _serve_tls, build_parser
from copycat_trio.config import ClusterFileError, parse_cluster_file
from copycat_trio.transport.tls import TlsSettings

MEMBERS = """
[[members]]
id = 1
address = "127.0.0.1:5001"
"""


def test_the_tls_table_names_each_members_files() -> None:
    text = (
        '[tls]\ncert = "certs/m{id}.pem"\nkey = "certs/m{id}.key"\nca = "certs/ca.pem"\n'
        'client_auth = "none"\nserver_name = "copycat"\n' + MEMBERS
    )
    tls = parse_cluster_file(text).tls_for(2)
    assert tls == TlsSettings(
        cert="certs/m2.pem",
        key="certs/m2.key",
        ca="certs/ca.pem",
        client_auth="none",
        server_name="copycat",
    )
    assert parse_cluster_file(MEMBERS).tls_for(1) is None


@pytest.mark.parametrize(
    ("table", "error"),
    [
        ('cert = "c"\nkey = "k"\n', "line 1: \\[tls\\] needs ca"),
        ('cert = "c"\nkey = "k"\nca = "a"\npassword = "x"\n', "unknown setting 'password'"),
        ('cert = "c"\nkey = "k"\nca = "a"\nclient_auth = "maybe"\n', "client auth must be"),
    ],
)
def test_a_bad_tls_table_is_refused_with_its_line(table: str, error: str) -> None:
    with pytest.raises(ClusterFileError, match=error):
        parse_cluster_file("[tls]\n" + table + MEMBERS)


def serve_args(*flags: str) -> argparse.Namespace:
    return build_parser().parse_args(["serve", "--id", "1", "--members", "1=127.0.0.1:1", *flags])


def test_serve_takes_tls_from_flags_environment_and_file(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CERT", "KEY", "CA"):
        monkeypatch.delenv(f"COPYCAT_TLS_{name}", raising=False)
    assert _serve_tls(serve_args(), None) is None
    flags = ("--tls-cert", "c.pem", "--tls-key", "k.pem", "--tls-ca", "ca.pem")
    assert _serve_tls(serve_args(*flags, "--client-auth", "none"), None) == TlsSettings(
        cert="c.pem", key="k.pem", ca="ca.pem", client_auth="none"
    )
    monkeypatch.setenv("COPYCAT_TLS_CA", "env-ca.pem")
    from_file = TlsSettings(cert="f.pem", key="f.key", ca="f-ca.pem")
    assert _serve_tls(serve_args("--tls-cert", "c.pem"), from_file) == TlsSettings(
        cert="c.pem", key="f.key", ca="env-ca.pem"
    )
    monkeypatch.delenv("COPYCAT_TLS_CA")
    with pytest.raises(UsageError, match="--tls-key, --tls-ca"):
        _serve_tls(serve_args("--tls-cert", "c.pem"), None)
    with pytest.raises(UsageError, match="--client-auth goes with TLS"):
        _serve_tls(serve_args("--client-auth", "none"), None)
