"""Settings for the whole test run."""

from __future__ import annotations

import pytest
from hypothesis import settings

# Hypothesis's per-example deadline (200 ms) is a timing assertion: on a loaded 2-core machine a
# property test's examples can exceed it with nothing wrong. Speed is measured in benchmarks,
# never asserted by tests, so no example has a deadline.
settings.register_profile("copycat", deadline=None)
settings.load_profile("copycat")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--rewrite",
        action="store_true",
        help="regenerate the golden interaction scripts (tests/core/testdata) instead of checking",
    )
