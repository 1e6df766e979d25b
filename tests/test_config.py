"""The cluster file: valid files load; invalid ones are rejected with the line and the reason."""

from __future__ import annotations

import pytest

from copycat_trio.config import ClusterFileError, parse_cluster_file
from copycat_trio.protocol.messages import MemberType
from copycat_trio.server.authz import Role

GOOD = """\
[cluster]
election_timeout = 0.5
heartbeat_interval = 0.1
replace_after = 20

[storage]
directory = "data/m{id}"
snapshot_every = 500

[[members]]
id = 1
address = "127.0.0.1:5001"

[[members]]
id = 2
address = "127.0.0.1:5002"
client_address = "127.0.0.1:6002"
priority = 3

[[members]]
id = 3
address = "127.0.0.1:5003"
type = "reserve"
"""


def test_a_valid_file() -> None:
    cluster = parse_cluster_file(GOOD)
    assert [m.id for m in cluster.members] == [1, 2, 3]
    assert cluster.member(2).client_address == "127.0.0.1:6002"
    assert cluster.member(2).priority == 3
    assert cluster.member(3).type is MemberType.RESERVE
    assert cluster.election_timeout == 0.5 and cluster.replace_after == 20
    assert cluster.directory_for(2) == "data/m2" and cluster.snapshot_every == 500


def test_priority_by_id_is_zookeepers_order() -> None:
    cluster = parse_cluster_file(GOOD.replace("replace_after = 20", "priority_by_id = true"))
    assert [m.priority for m in cluster.members] == [1, 3, 3]


@pytest.mark.parametrize(
    ("change", "line", "reason"),
    [
        (("id = 2", "id = 1"), 15, "member id 1 appears twice"),
        (('address = "127.0.0.1:5003"', 'address = "nowhere"'), 22, "is not HOST:PORT"),
        (('type = "reserve"', 'type = "observer"'), 23, "type must be active, passive or reserve"),
        (("election_timeout = 0.5", "election_timeout = 0.15"), 2, "at least twice"),
        (("snapshot_every = 500", "snapshot_every = -1"), 8, "snapshot_every must be"),
        (("replace_after = 20", "replace_after = 'soon'"), 4, "must be a number"),
        (("priority = 3", "prio = 3"), 18, "unknown member setting 'prio'"),
    ],
)
def test_invalid_files_name_the_line_and_the_reason(
    change: tuple[str, str], line: int, reason: str
) -> None:
    with pytest.raises(ClusterFileError) as info:
        parse_cluster_file(GOOD.replace(*change, 1), "cluster.toml")
    message = str(info.value)
    assert f"cluster.toml, line {line}:" in message, message
    assert reason in message


def test_broken_toml_reports_where() -> None:
    with pytest.raises(ClusterFileError, match="line 2"):
        parse_cluster_file("[cluster]\nelection_timeout = \n", "cluster.toml")


def test_needs_an_active_member() -> None:
    text = '[[members]]\nid = 1\naddress = "127.0.0.1:1"\ntype = "passive"\n'
    with pytest.raises(ClusterFileError, match="at least one member must be active"):
        parse_cluster_file(text)


AUTH = """\
[tls]
cert = "m{id}.pem"
key = "m{id}.key"
ca = "ca.pem"
client_auth = "none"

[auth]
tokens = "tokens.txt"
anonymous = "read"

[auth.roles]
ops = "admin"
"CN with spaces" = "read"

"""


def test_the_auth_tables_give_tokens_roles_and_the_anonymous_role() -> None:
    cluster = parse_cluster_file(AUTH + GOOD)
    assert cluster.tokens_file == "tokens.txt"
    assert cluster.anonymous_role is Role.READ
    assert dict(cluster.roles) == {"ops": Role.ADMIN, "CN with spaces": Role.READ}


@pytest.mark.parametrize(
    ("change", "line", "reason"),
    [
        (('ops = "admin"', 'ops = "root"'), 12, "'root' is not a role"),
        (('anonymous = "read"', 'anonymous = "admin"'), 9, "not admin"),
        (('tokens = "tokens.txt"', "tokenz = 1"), 8, "unknown setting 'tokenz' in [auth]"),
    ],
)
def test_invalid_auth_tables_name_the_line_and_the_reason(
    change: tuple[str, str], line: int, reason: str
) -> None:
    with pytest.raises(ClusterFileError) as info:
        parse_cluster_file((AUTH + GOOD).replace(*change, 1), "cluster.toml")
    message = str(info.value)
    assert f"cluster.toml, line {line}:" in message and reason in message, message


def test_auth_without_tls_is_refused() -> None:
    without_tls = AUTH[AUTH.index("[auth]") :] + GOOD
    with pytest.raises(ClusterFileError, match=r"\[auth\] needs \[tls\]"):
        parse_cluster_file(without_tls, "cluster.toml")
