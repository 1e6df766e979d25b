"""Where metrics are served: the cluster file's [metrics] table and `serve --metrics-address`."""

from __future__ import annotations

import pytest

from copycat_trio.cli import build_parser
from copycat_trio.config import ClusterFileError, parse_cluster_file

MEMBERS = """
[[members]]
id = 1
address = "127.0.0.1:5001"

[[members]]
id = 2
address = "127.0.0.1:5002"
"""


def test_metrics_table_gives_each_member_its_address() -> None:
    cluster = parse_cluster_file('[metrics]\naddress = "127.0.0.1:910{id}"\n' + MEMBERS)
    assert cluster.metrics_address_for(1) == "127.0.0.1:9101"
    assert cluster.metrics_address_for(2) == "127.0.0.1:9102"


def test_no_metrics_table_serves_none() -> None:
    assert parse_cluster_file(MEMBERS).metrics_address_for(1) is None


@pytest.mark.parametrize(
    ("table", "reason"),
    [
        ('[metrics]\naddress = "nowhere"\n', "line 2: address 'nowhere' is not HOST:PORT"),
        ("[metrics]\nport = 9100\n", "line 2: unknown setting 'port' in [metrics]"),
    ],
)
def test_bad_metrics_table_names_the_line(table: str, reason: str) -> None:
    with pytest.raises(ClusterFileError, match=reason.replace("[", r"\[").replace("]", r"\]")):
        parse_cluster_file(table + MEMBERS, "cluster.toml")


def test_serve_takes_a_metrics_address() -> None:
    args = build_parser().parse_args(
        ["serve", "--id", "1", "--members", "1=127.0.0.1:5001", "--metrics-address", "127.0.0.1:0"]
    )
    assert args.metrics_address == "127.0.0.1:0"
