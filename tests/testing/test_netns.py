"""The network lab's partitions, as the cuts they make (no namespaces needed)."""

from __future__ import annotations

import ipaddress

import pytest

from copycat_trio.testing.netns import NetworkLab


class RecordingLab(NetworkLab):
    """A lab whose `ip` commands are recorded instead of run."""

    def __init__(self, hosts: int) -> None:
        super().__init__(hosts, ipaddress.IPv4Network("10.200.7.0/24"))
        self.commands: list[tuple[str, ...]] = []

    async def _ip(self, *args: str, check: bool = True) -> None:
        self.commands.append(args)


def test_addresses_and_names_are_in_the_lab_subnet() -> None:
    lab = RecordingLab(5)
    assert lab.address(1) == "10.200.7.1"
    assert lab.address(5) == "10.200.7.5"
    assert lab.caller_address == "10.200.7.254"
    assert all(len(name) <= 15 for name in [*lab.namespaces.values(), lab.caller_link])
    assert lab.exec_prefix(2)[:3] == ["ip", "netns", "exec"]


async def test_partition_cuts_every_cross_pair_both_ways() -> None:
    lab = RecordingLab(5)
    await lab.partition([1, 2], [4, 5])
    assert lab.cuts == {(a, b) for a in (1, 2) for b in (4, 5)} | {
        (b, a) for a in (1, 2) for b in (4, 5)
    }
    assert not any(3 in cut for cut in lab.cuts)  # the bridge sees both sides


async def test_isolate_and_heal() -> None:
    lab = RecordingLab(3)
    await lab.isolate(2)
    assert lab.cuts == {(2, 1), (1, 2), (2, 3), (3, 2)}
    cut = lab.commands[0]
    assert "neigh" in cut and "permanent" in cut
    await lab.heal()
    assert lab.cuts == set()
    assert sum("del" in command for command in lab.commands) == 4


async def test_cut_to_itself_is_nothing() -> None:
    lab = RecordingLab(2)
    await lab.cut(1, 1)
    assert lab.cuts == set() and lab.commands == []


def test_lab_size_is_checked() -> None:
    with pytest.raises(ValueError):
        RecordingLab(0)


def test_nemesis_says_when_it_cannot_partition(monkeypatch: pytest.MonkeyPatch) -> None:
    from copycat_trio.testing import nemesis

    monkeypatch.setattr(nemesis, "unavailable_reason", lambda: "creating namespaces needs root")
    used, note = nemesis.decide_netns(None)
    assert not used and "NOT played: creating namespaces needs root" in note
    with pytest.raises(RuntimeError, match="needs root"):
        nemesis.decide_netns(True)
    assert nemesis.decide_netns(False) == (False, "not played (--no-netns)")
