"""The mutation tool (copycat_trio.testing.mutation): applying and restoring a mutant, a stale
catalogue failing loudly, and the command line on a tiny catalogue of its own (below)."""

from __future__ import annotations

import importlib
import os
import pathlib
import sys

import pytest

from copycat_trio.testing import mutation
from copycat_trio.testing.mutation import (
    Catalogue,
    Edit,
    Mutant,
    MutantError,
    Scenario,
    applied,
    main,
    mutant,
)

HERE = __name__


def double(x: int) -> int:
    return x * 2


def is_even(x: int) -> bool:
    return x % 2 == 0


class Base:
    def size(self) -> int:
        return 1


class Sized(Base):
    def size(self) -> int:
        return super().size() + 10  # super() needs the __class__ cell

    @property
    def twice(self) -> int:
        return self.size() * 2


def _doubles() -> None:
    assert double(2) == 4


def _simulation(seed: int) -> tuple[bool, str]:
    """A stand-in for a simulation: seed s passes if 2s is even; seed 5 always fails (a bug
    of the code under test, not of a mutant)."""
    return is_even(2 * seed) and seed != 5, f"seed {seed}"


CATALOGUE = Catalogue(
    mutants=(
        mutant("triple", "double doubles", f"{HERE}:double", "x * 2", "x * 3"),
        mutant("mod-4", "evenness is modulo 2", f"{HERE}:is_even", "x % 2", "x % 4"),
        mutant("harmless", "none: the same function", f"{HERE}:double", "x * 2", "x + x"),
    ),
    scenarios=(Scenario("doubles", _doubles, "double(2) is 4"),),
    simulation=_simulation,
)

STALE = Catalogue(mutants=(mutant("gone", "none", f"{HERE}:double", "x * 5", "x"),))


def test_a_mutant_changes_behaviour_everywhere_until_restored() -> None:
    copy = double  # as `from module import double` would hold it
    sized = Sized()
    size = sized.size  # a bound method taken before the mutant is applied
    triple = mutant("triple", "r", f"{HERE}:double", "x * 2", "x * 3")
    bigger = Mutant(
        "bigger",
        "r",
        (
            Edit(f"{HERE}:Sized.size", "+ 10", "+ 20"),
            Edit(f"{HERE}:Sized.twice", "* 2", "* 3"),
        ),
    )
    with applied(triple), applied(bigger):
        assert copy(5) == 15
        assert size() == 21
        assert sized.twice == 63
    assert copy(5) == 10
    assert size() == 11
    assert sized.twice == 22


def test_a_stale_snippet_is_an_error_naming_the_mutant_and_changes_nothing() -> None:
    with (
        pytest.raises(MutantError, match=r"mutant 'gone'.*'x \* 5' is not found"),
        applied(STALE.mutants[0]),
    ):
        pass
    twice = mutant("twice", "r", f"{HERE}:Sized.size", "size", "len")  # def size, .size()
    with pytest.raises(MutantError, match="occurs 2 times"), applied(twice):
        pass
    partly = Mutant(
        "partly",
        "r",
        (Edit(f"{HERE}:is_even", "x % 2", "x % 3"), Edit(f"{HERE}:double", "nope", "x")),
    )
    with pytest.raises(MutantError, match="partly"), applied(partly):
        pass
    assert is_even(3) is False and double(3) == 6
    with (
        pytest.raises(MutantError, match="not found"),
        applied(mutant("moved", "r", f"{HERE}:renamed", "a", "b")),
    ):
        pass


def test_code_that_is_not_its_source_on_disk_is_refused(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A function whose running code differs from its file (edited since import, as when
    someone changes the code during a run, or already mutated) is refused rather than mutated
    from the wrong text."""
    path = tmp_path / "edited_module.py"
    path.write_text("def f(x):\n    return x * 2\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("edited_module")
    monkeypatch.setitem(sys.modules, "edited_module", module)
    path.write_text("def f(x):\n    return x * 20\n")  # edited after the import
    with (
        pytest.raises(MutantError, match="source on disk is not the code that runs"),
        applied(mutant("edited", "r", "edited_module:f", "x * 20", "x")),
    ):
        pass
    assert module.f(1) == 2
    original = double.__code__
    double.__code__ = is_even.__code__
    try:
        with (
            pytest.raises(MutantError, match="source on disk is not the code that runs"),
            applied(CATALOGUE.mutants[0]),
        ):
            pass
    finally:
        double.__code__ = original


def test_the_builtin_catalogue_applies_to_the_code_as_it_is() -> None:
    from copycat_trio.testing.mutants import CATALOGUE as BUILTIN

    names = [m.name for m in BUILTIN.mutants]
    assert len(names) == len(set(names))
    scenarios = {s.name for s in BUILTIN.scenarios}
    for m in BUILTIN.mutants:
        with applied(m):
            pass
        assert set(m.aimed_at) <= scenarios, m.name


def test_command_line_catches_by_scenario_and_by_seed(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--catalogue", f"{HERE}:CATALOGUE", "--seeds", "2", "--jobs", "2"]
    assert main([*argv, "--only", "triple", "--only", "mod-4", "--timeout", "60"]) == 0
    out = capsys.readouterr().out
    assert "baseline: 1 scenarios pass without a mutant" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line[:1].isalpha()}
    assert rows["triple"][1:3] == ["doubles", "0"]  # caught by the scenario, no seed run
    assert rows["mod-4"][1:4] == ["seed", "1", "2"]  # seed 0 passed, seed 1 caught it
    assert "2 of 2 mutants caught" in out


def test_command_line_fails_on_a_survivor_a_seed_failing_unmutated_and_a_stale_catalogue(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["--catalogue", f"{HERE}:CATALOGUE", "--seeds", "2", "--only", "harmless"]
    assert main(argv) == 1
    out = capsys.readouterr().out
    assert "SURVIVED" in out and "0 of 1 mutants caught" in out
    assert main([*argv[:2], "--only", "harmless", "--start", "5", "--seeds", "1"]) == 1
    out = capsys.readouterr().out
    assert "seed 5, but it fails unmutated too" in out and "(failing: [5])" in out
    assert main(["--catalogue", f"{HERE}:STALE"]) == 2
    assert "mutant 'gone'" in capsys.readouterr().err
    assert main(["--catalogue", f"{HERE}:CATALOGUE", "--list"]) == 0
    listed = capsys.readouterr().out
    assert "triple: double doubles" in listed and "doubles: double(2) is 4" in listed


def test_a_deadlocked_seed_counts_as_caught_by_that_seed(tmp_path: os.PathLike[str]) -> None:
    """A simulation deadlock ends the worker's process (sim_watch.deadlock_sentinel) after
    writing a report named after the seed; the outcome is read back from it."""
    task = mutation._Task("m0", "x:CATALOGUE", "sequencing", True, (0, 1, 2), False)
    directory = str(tmp_path)
    with open(os.path.join(directory, "m0.progress"), "w") as file:
        file.write("scenario a ok\nseed 0 start 0.5\nseed 0 ok\nseed 1 start 3.25\n")
    os.makedirs(os.path.join(directory, "m0.deadlock"))
    with open(os.path.join(directory, "m0.deadlock", "1.txt"), "w") as file:
        file.write("FAIL seed 1: deadlock at virtual time 9.000\ntasks...")
    outcome = mutation._died(task, directory, 70)
    assert outcome.caught and outcome.seed == 1 and outcome.seeds_run == 2
    assert outcome.seconds == 3.25 and "deadlock" in outcome.seed_failure
    assert not mutation._died(task, str(tmp_path / "elsewhere"), -9).caught
