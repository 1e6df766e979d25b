"""The `copycat_simulation` fixture, run in pytest subprocesses as a user's test suite would."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

USER_TESTS = """
import trio

from copycat_trio.recipes.counter import Counter, Increment, Value


async def test_counts_under_crashes(autojump_clock, copycat_simulation):
    async with copycat_simulation(Counter, seed=5, faults="crashes", servers=3) as sim:
        sim.start_faults(4.0)
        async with sim.client(timeout=2.0) as client:
            with trio.move_on_after(4.0):
                while True:
                    await client.submit(Increment(1))
                    await trio.sleep(0.1)
        await sim.heal()
        assert await sim.settle() is not None
        async with sim.client() as client:
            assert await client.submit(Value()) > 0


async def test_reports_its_seed(autojump_clock, copycat_simulation):
    async with copycat_simulation(Counter, seed=7, faults="partitions", servers=3) as sim:
        sim.start_faults(3.0)
        await trio.sleep(3.0)
        assert sim.seed == 1, "a deliberate failure"
"""


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeini("[pytest]\ntrio_mode = true\n")
    pytester.makepyfile(test_user=USER_TESTS)
    return pytester


def test_a_failing_simulation_reports_seed_schedule_and_replay(suite: pytest.Pytester) -> None:
    result = suite.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*copycat simulation, seed 7*",
            "seed 7, profile partitions*",
            "replay: pytest 'test_user.py::test_reports_its_seed' --copycat-seed 7",
            "fault schedule:",
        ]
    )
    assert "copycat simulation, seed 5" not in result.stdout.str()  # passing tests stay quiet


def test_copycat_seed_overrides_every_test_seed(suite: pytest.Pytester) -> None:
    result = suite.runpytest_subprocess(
        "-p", "no:cacheprovider", "--copycat-seed", "1", "-k", "reports_its_seed"
    )
    result.assert_outcomes(passed=1)
