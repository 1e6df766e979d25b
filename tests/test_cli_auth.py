"""The command line's roles and tokens (docs/security.md): mistakes are usage errors naming the
fix, and `auth hash-token` prints a tokens file's line without the token in the clear."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from copycat_trio.server.authz import hash_token


def run_cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COPYCAT_")}
    return subprocess.run(
        [sys.executable, "-m", "copycat_trio", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


SERVE = ("serve", "--id", "1", "--members", "1=127.0.0.1:1")
TLS = ("--tls-cert", "c.pem", "--tls-key", "k.pem", "--tls-ca", "ca.pem")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([*SERVE, "--role", "ops=admin"], "--tokens, --role and --anonymous-role need TLS"),
        ([*SERVE, *TLS, "--role", "ops=root"], "'root' is not a role"),
        ([*SERVE, *TLS, "--role", "ops"], "expected IDENTITY=ROLE"),
        (["kv", "get", "k", "--cluster", "127.0.0.1:1", "--token", "t"], "sent over TLS only"),
    ],
)
def test_auth_mistakes_are_usage_errors(args: list[str], message: str) -> None:
    result = run_cli(*args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr


def test_auth_hash_token_prints_the_tokens_file_line_for_a_token_on_stdin() -> None:
    result = run_cli("auth", "hash-token", "batch", stdin="s3cret\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f'batch = "{hash_token("s3cret")}"'
    assert "s3cret" not in result.stdout


def test_auth_hash_token_new_makes_a_random_token_given_once_on_stderr() -> None:
    result = run_cli("auth", "hash-token", "--new", "batch")
    assert result.returncode == 0, result.stderr
    token = result.stderr.strip().rpartition(" ")[2]
    assert len(token) >= 32
    assert result.stdout.strip() == f'batch = "{hash_token(token)}"'
