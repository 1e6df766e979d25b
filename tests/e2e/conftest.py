"""Fixtures for end-to-end tests: clusters of real server processes, always stopped afterwards."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from pathlib import Path
from typing import Any

import pytest

from .procs import ProcessCluster

CLUSTERS = pytest.StashKey[list[ProcessCluster]]()

StartCluster = Callable[..., Awaitable[ProcessCluster]]


@pytest.fixture
async def start_cluster(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[StartCluster]:
    """`await start_cluster(size=3, election_timeout=..., ...)`: a cluster with an agreed leader.

    Every process started through it is stopped and reaped when the test ends, however it ends.
    """
    clusters = request.node.stash.setdefault(CLUSTERS, [])

    def last_resort() -> None:  # runs even if the Trio teardown below never got to run
        for cluster in clusters:
            cluster.kill_leftovers()

    request.addfinalizer(last_resort)

    async def start(size: int = 3, **options: Any) -> ProcessCluster:
        workdir = tmp_path / f"cluster{len(clusters)}"
        workdir.mkdir()
        cluster = ProcessCluster(workdir, size, **options)
        clusters.append(cluster)
        await cluster.start()
        await cluster.wait_for_leader(timeout=20)
        return cluster

    try:
        yield start
    finally:
        for cluster in clusters:
            await cluster.aclose()


@pytest.fixture
async def cluster(start_cluster: StartCluster) -> ProcessCluster:
    """Three AppendLog members with election timeout 0.5 s and heartbeats every 0.1 s."""
    return await start_cluster()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Attach the tail of every server's log to a failed test's report."""
    report = yield
    if report.failed:
        for cluster in item.stash.get(CLUSTERS, []):
            report.sections.append((f"server logs ({cluster.workdir})", cluster.logs_report()))
    return report
