"""Hosts in Linux network namespaces that the test creates, for partitions between real processes.

`open_network_lab(n)` makes n namespaces, each with one address on a private /24, joined by a
bridge that lives in a namespace of its own, and a veth from the caller's namespace onto that
bridge so the caller (the test's clients) reaches every host. Nothing else on the machine is
touched: no iptables, no sysctl, no routes beyond the one /24 of that veth, and closing the lab
deletes all of it.

Partitions drop packets silently, like a pulled cable: `cut(a, b)` points host a's neighbour
entry for b at a MAC address nobody has, so a's frames to b are flooded and ignored; `heal`
deletes the entry and ARP finds b again. A cut is one-way; TCP needs both ways, so a one-way cut
stops a connection in both directions at the TCP level, as on a real network. The caller's
veth is never cut: clients always reach every host, and see what a partitioned member says.

Needs root (or CAP_NET_ADMIN) and iproute2's `ip`; `unavailable_reason()` says why not.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import random
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterable, Sequence

import trio

__all__ = ["NetworkLab", "NetworkLabError", "open_network_lab", "unavailable_reason"]

PREFIX = "cct"
"""Every namespace and interface the lab makes starts with this, then the owner's pid."""
DEAD_MAC = "02:00:00:00:00:01"
"""A locally administered address no interface has: frames sent to it go nowhere."""


class NetworkLabError(RuntimeError):
    """An `ip` command failed (its command line and output are in the message)."""


def unavailable_reason() -> str | None:
    """Why network namespaces cannot be made here, or None if they can (a quick probe)."""
    if shutil.which("ip") is None:
        return "iproute2's `ip` command is not installed"
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        return "creating network namespaces needs root"
    name = f"{PREFIX}{os.getpid()}probe"
    made = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip() or made.returncode}"
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return None


def sweep_stale() -> list[str]:
    """Delete namespaces and links left by labs whose process has died (say, SIGKILLed)."""
    swept = []
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    for line in listed.splitlines():
        name = line.split()[0] if line.split() else ""
        pid = _owner_pid(name)
        if pid is not None and not _alive(pid):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
            swept.append(name)
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    for line in links.splitlines():
        parts = line.split(":")
        link = parts[1].strip().split("@")[0] if len(parts) > 1 else ""
        pid = _owner_pid(link)
        if pid is not None and not _alive(pid):
            subprocess.run(["ip", "link", "del", link], capture_output=True)
            swept.append(link)
    return swept


def _owner_pid(name: str) -> int | None:
    if not name.startswith(PREFIX):
        return None
    digits = ""
    for char in name[len(PREFIX) :]:
        if not char.isdigit():
            break
        digits += char
    return int(digits) if digits else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def free_subnet(rng: random.Random | None = None) -> ipaddress.IPv4Network:
    """A 10.x.y.0/24 that no route of this namespace covers or overlaps."""
    rng = rng or random.Random()
    routes = subprocess.run(["ip", "-4", "route", "show", "table", "all"], capture_output=True)
    taken = []
    for line in routes.stdout.decode().splitlines():
        words = line.split()
        if words and words[0] in ("local", "broadcast", "unreachable", "blackhole"):
            words = words[1:]
        if not words or words[0] == "default":
            continue
        with contextlib.suppress(ValueError):
            taken.append(ipaddress.ip_network(words[0], strict=False))
    for _ in range(1000):
        candidate = ipaddress.IPv4Network(f"10.{rng.randrange(100, 250)}.{rng.randrange(256)}.0/24")
        if not any(candidate.overlaps(net) for net in taken):
            return candidate
    raise NetworkLabError("no free 10.x.y.0/24 subnet found for the lab")


class NetworkLab:
    """Hosts 1..n in namespaces of their own on one bridge; see the module docstring."""

    def __init__(self, hosts: int, subnet: ipaddress.IPv4Network) -> None:
        if not 1 <= hosts <= 200:
            raise ValueError("a lab has 1 to 200 hosts")
        self.hosts = hosts
        self.subnet = subnet
        tag = f"{PREFIX}{os.getpid()}"
        self.hub = f"{tag}h"
        self.caller_link = f"{tag}c"
        self.namespaces = {i: f"{tag}n{i}" for i in range(1, hosts + 1)}
        base = subnet.network_address
        self.addresses = {i: str(base + i) for i in self.namespaces}
        self.caller_address = str(base + 254)
        self.cuts: set[tuple[int, int]] = set()
        self._made: list[list[str]] = []

    def address(self, host: int) -> str:
        """The host's IP address."""
        return self.addresses[host]

    def exec_prefix(self, host: int) -> list[str]:
        """A command line prefix that runs a program inside the host's namespace."""
        return ["ip", "netns", "exec", self.namespaces[host]]

    async def _ip(self, *args: str, check: bool = True) -> None:
        result = await trio.run_process(
            ["ip", *args], capture_stdout=True, capture_stderr=True, check=False
        )
        if check and result.returncode != 0:
            raise NetworkLabError(
                f"`ip {' '.join(args)}` failed ({result.returncode}): "
                f"{result.stderr.decode(errors='replace').strip()}"
            )

    async def create(self) -> None:
        """Make the namespaces, the bridge and the links; idempotence is not attempted."""
        await self._ip("netns", "add", self.hub)
        await self._ip("-n", self.hub, "link", "add", "br0", "type", "bridge")
        await self._ip("-n", self.hub, "link", "set", "br0", "up")
        prefix_len = str(self.subnet.prefixlen)
        for host, namespace in self.namespaces.items():
            await self._ip("netns", "add", namespace)
            port = f"n{host}"
            await self._ip(
                "-n",
                self.hub,
                "link",
                "add",
                port,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                namespace,
            )
            await self._ip("-n", self.hub, "link", "set", port, "master", "br0", "up")
            await self._ip(
                "-n",
                namespace,
                "addr",
                "add",
                f"{self.addresses[host]}/{prefix_len}",
                "dev",
                "eth0",
            )
            await self._ip("-n", namespace, "link", "set", "eth0", "up")
            await self._ip("-n", namespace, "link", "set", "lo", "up")
        await self._ip(
            "link",
            "add",
            self.caller_link,
            "type",
            "veth",
            "peer",
            "name",
            "caller",
            "netns",
            self.hub,
        )
        await self._ip("-n", self.hub, "link", "set", "caller", "master", "br0", "up")
        await self._ip(
            "addr", "add", f"{self.caller_address}/{prefix_len}", "dev", self.caller_link
        )
        await self._ip("link", "set", self.caller_link, "up")

    async def aclose(self) -> None:
        """Delete every namespace and link the lab made (safe to call more than once)."""
        with trio.CancelScope(shield=True):
            await self._ip("link", "del", self.caller_link, check=False)
            for namespace in [*self.namespaces.values(), self.hub]:
                await self._ip("netns", "del", namespace, check=False)

    # --- partitions --------------------------------------------------------------------------

    async def cut(self, source: int, target: int) -> None:
        """From now on, packets from `source` to `target` vanish (one way)."""
        if source == target:
            return
        await self._ip(
            "-n",
            self.namespaces[source],
            "neigh",
            "replace",
            self.addresses[target],
            "lladdr",
            DEAD_MAC,
            "dev",
            "eth0",
            "nud",
            "permanent",
        )
        self.cuts.add((source, target))

    async def restore(self, source: int, target: int) -> None:
        """Undo `cut(source, target)`."""
        await self._ip(
            "-n",
            self.namespaces[source],
            "neigh",
            "del",
            self.addresses[target],
            "dev",
            "eth0",
            check=False,
        )
        self.cuts.discard((source, target))

    async def partition(self, *sides: Iterable[int]) -> None:
        """Cut every pair of hosts on different sides, both ways; hosts on no side are
        unaffected (a bridge between sides)."""
        groups = [set(side) for side in sides]
        for index, side in enumerate(groups):
            for other in groups[index + 1 :]:
                for a in side:
                    for b in other:
                        await self.cut(a, b)
                        await self.cut(b, a)

    async def isolate(self, host: int, peers: Sequence[int] | None = None) -> None:
        """Cut `host` from every other host (or from `peers`), both ways."""
        others = [h for h in (peers or self.namespaces) if h != host]
        await self.partition([host], others)

    async def heal(self) -> None:
        """Restore every cut."""
        for source, target in sorted(self.cuts):
            await self.restore(source, target)


@contextlib.asynccontextmanager
async def open_network_lab(
    hosts: int, rng: random.Random | None = None
) -> AsyncIterator[NetworkLab]:
    """A lab of `hosts` namespaces, deleted when the block ends (see NetworkLab)."""
    sweep_stale()
    lab = NetworkLab(hosts, free_subnet(rng))
    try:
        await lab.create()
        yield lab
    finally:
        await lab.aclose()
