"""A pytest plugin (loaded automatically where copycat_trio is installed): the `copycat_simulation`
fixture, for running your own state machine in a deterministic simulation under faults.

    async def test_counter(autojump_clock, copycat_simulation):
        async with copycat_simulation(Counter, faults="crashes", servers=3) as sim:
            ...

The fixture is a factory with `open_simulation`'s arguments (see docs/testing.md). What it adds:

- the seed: `seed=` if the test passes one, else `--copycat-seed N` from the command line, else 0;
  `--copycat-seed` overrides every test's own seed, to replay one failing run across a suite;
- on a failing test, a report section per simulation the test opened: its seed, configuration,
  fault schedule and the end of its trace, and the command line that replays it.

The test must also request `autojump_clock` (pytest-trio gives a test the clock it asks for by
name). The fixture is synchronous on purpose: a simulation opened in an async fixture would run
in a different task order in each process, and so not replay (see docs/testing.md).
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from .simulation import Simulation

__all__ = ["copycat_simulation"]

_OPENED = pytest.StashKey[list[Any]]()

SimulationFactory = Callable[..., AbstractAsyncContextManager["Simulation"]]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("copycat_trio")
    group.addoption(
        "--copycat-seed",
        type=int,
        default=None,
        help="seed for every copycat_simulation (replays a failing simulation)",
    )


@pytest.fixture
def copycat_simulation(request: pytest.FixtureRequest) -> SimulationFactory:
    """`async with copycat_simulation(state_machine, seed=..., faults=..., **settings) as sim:`
    a simulated cluster (see `copycat_trio.testing.simulation.open_simulation`)."""
    from .simulation import open_simulation

    opened = request.node.stash.setdefault(_OPENED, [])
    forced: int | None = request.config.getoption("--copycat-seed", None)

    @asynccontextmanager
    async def factory(
        state_machine: Callable[[], Any], *, seed: int = 0, **options: Any
    ) -> AsyncIterator[Simulation]:
        seed = forced if forced is not None else seed
        async with open_simulation(state_machine, seed=seed, **options) as sim:
            opened.append(sim)
            yield sim

    return factory


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Attach each simulation's seed, fault schedule and trace tail to a failed test."""
    report = yield
    if report.failed:
        for sim in item.stash.get(_OPENED, []):
            report.sections.append((f"copycat simulation, seed {sim.seed}", _describe(item, sim)))
    return report


def _describe(item: pytest.Item, sim: Simulation) -> str:
    from .simulation import SCHEDULE_KINDS

    return "\n".join(
        [
            sim.config.describe(),
            f"replay: pytest '{item.nodeid}' --copycat-seed {sim.seed}",
            "fault schedule:",
            sim.trace.format(SCHEDULE_KINDS) or "(no faults)",
            "end of the trace:",
            sim.trace.format(limit=60),
        ]
    )
