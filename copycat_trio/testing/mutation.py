"""Mutation testing: break one rule at a time and check that the tests notice.

A `Mutant` names a rule and the few characters of source that keep it (a function, by its
qualified name, and a snippet in it) and what to put there instead. `applied(mutant)` rewrites
that function in place, for as long as the block lasts: the function's source is edited,
compiled in its own module, and swapped in as its `__code__`, so every reference to it (bound
methods, `from x import f` copies, dispatch tables) runs the mutant. Each mutant of a
`Catalogue` is applied in a process of its own, then the catalogue's named scenarios (fast,
deterministic checks aimed at particular rules) and simulation seeds run on it until one fails:
that one caught it.

    python -m copycat_trio.testing.mutation                  # the built-in catalogue, 100 seeds
    python -m copycat_trio.testing.mutation --list
    python -m copycat_trio.testing.mutation --only dedup-off --seeds 20
    python -m copycat_trio.testing.mutation --catalogue mypackage.mutants:CATALOGUE

The run first checks the unmutated code (every scenario must pass, and every seed that caught a
mutant must pass without it), so a broken check is not counted as catching anything. It exits 0
only when every mutant was caught. A snippet that is no longer found exactly once in its
function (the code changed since the catalogue was written) is an error naming the mutant,
never a silent survivor. See docs/testing.md.
"""

from __future__ import annotations
import __future__

import argparse
import ast
import contextlib
import functools
import importlib
import inspect
import json
import logging
import multiprocessing
import multiprocessing.connection
import os
import sys
import tempfile
import textwrap
import time
import types
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import attrs

__all__ = [
    "Catalogue",
    "Edit",
    "Mutant",
    "MutantError",
    "MutantOutcome",
    "Scenario",
    "applied",
    "kv_simulation",
    "main",
    "mutant",
]

DEFAULT_CATALOGUE = "copycat_trio.testing.mutants:CATALOGUE"


# --- what a mutant is ----------------------------------------------------------------------------


@attrs.frozen
class Edit:
    """Replace `old` (which must occur exactly once) by `new` in the source of `target`."""

    target: str
    """"package.module:Qualified.name" of a function or method (a property means its getter)."""
    old: str
    new: str


@attrs.frozen
class Mutant:
    """One broken rule: the edits that break it and a sentence saying which rule that is."""

    name: str
    rule: str
    edits: tuple[Edit, ...]
    aimed_at: tuple[str, ...] = ()
    """Names of the scenarios written to catch it (for --list; every scenario runs anyway)."""


def mutant(
    name: str,
    rule: str,
    target: str,
    old: str,
    new: str,
    *more: Edit,
    aimed_at: Sequence[str] = (),
) -> Mutant:
    """A mutant of one edit (plus `more`, if the rule lives in several places)."""
    return Mutant(name, rule, (Edit(target, old, new), *more), tuple(aimed_at))


@attrs.frozen
class Scenario:
    """A named check: a function that raises (AssertionError or anything else) when a rule
    is broken. It must pass on the unmutated code, be deterministic, and take seconds."""

    name: str
    check: Callable[[], object]
    rule: str = ""


Simulation = Callable[[int], tuple[bool, str]]
"""Runs one seed: (passed, a line saying what happened)."""


@attrs.frozen
class Catalogue:
    """Mutants and what should catch them: the named scenarios, then simulation seeds."""

    mutants: tuple[Mutant, ...]
    scenarios: tuple[Scenario, ...] = ()
    simulation: Simulation | None = None


class MutantError(Exception):
    """A mutant cannot be applied: its target or snippet is not where the catalogue says (the
    code changed since the catalogue was written), or the edited source does not compile."""


# --- applying one -------------------------------------------------------------------------------

_FUTURE_FLAGS = 0
for _feature in __future__.all_feature_names:
    _FUTURE_FLAGS |= getattr(__future__, _feature).compiler_flag


def _resolve(target: str) -> types.FunctionType:
    """The function object `target` ("module:Qual.name") names, unwrapped from staticmethod,
    classmethod, property (its getter) and functools.wraps decorators."""
    module_name, sep, qualname = target.partition(":")
    if not sep or not qualname:
        raise MutantError(f"target {target!r} is not 'package.module:Qualified.name'")
    try:
        owner: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise MutantError(f"target {target!r}: cannot import {module_name}: {exc}") from exc
    obj: Any = owner
    for part in qualname.split("."):
        namespace = getattr(obj, "__dict__", {})
        if part in namespace:
            obj = namespace[part]
        elif hasattr(obj, part):
            obj = getattr(obj, part)
        else:
            raise MutantError(f"target {target!r}: {part!r} not found (renamed or moved?)")
    if isinstance(obj, staticmethod | classmethod):
        obj = obj.__func__
    elif isinstance(obj, property):
        obj = obj.fget
    obj = inspect.unwrap(obj)
    if not isinstance(obj, types.FunctionType):
        raise MutantError(f"target {target!r} is a {type(obj).__name__}, not a function")
    return obj


def _compile_function(function: types.FunctionType, source: str) -> types.CodeType:
    """Compile `source` (one def, as inspect.getsource gives it) as `function` was compiled:
    inside its classes (for private-name mangling and super()'s __class__), with its closure's
    names, its module's __future__ flags and its line numbers; return the function's code."""
    code = function.__code__
    parts = function.__qualname__.split(".")
    if "<locals>" in parts:
        parts = parts[parts.index("<locals>") + 1 :]
        if "<locals>" in parts:
            raise MutantError(f"{function.__qualname__}: nested too deeply to mutate")
    text = textwrap.dedent(source)
    for name in reversed(parts[:-1]):
        text = f"class {name}:\n" + textwrap.indent(text, "    ")
    # Names the module binds by import: the compiler calls their attributes differently
    # (LOAD_ATTR, not LOAD_METHOD), and the mutant must compile exactly as the original did.
    imports = "".join(f"import {name}\n" for name in _imported_names(function.__module__))
    text = imports + text
    closure = [v for v in code.co_freevars if v != "__class__"]
    if closure:
        cells = "".join(f"    {v} = None\n" for v in closure)
        text = "def __mutant_scope__():\n" + cells + textwrap.indent(text, "    ")
    tree = ast.parse(text)
    node = next(
        (
            n
            for n in ast.walk(tree)
            if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name == parts[-1]
        ),
        None,
    )
    if node is None:
        raise MutantError(f"{function.__qualname__}: its source defines no {parts[-1]}")
    first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
    ast.increment_lineno(tree, code.co_firstlineno - first)
    _rewrite_like_pytest(tree, function)
    module_code = compile(
        tree, code.co_filename, "exec", flags=code.co_flags & _FUTURE_FLAGS, dont_inherit=True
    )
    found = _find_code(module_code, code.co_name, code.co_firstlineno)
    if found is None:
        raise MutantError(f"{function.__qualname__}: compiled source has no such function")
    found = found.replace(co_qualname=code.co_qualname)
    if found.co_freevars != code.co_freevars:
        raise MutantError(
            f"{function.__qualname__}: the mutant's free variables {found.co_freevars} differ "
            f"from the original's {code.co_freevars}"
        )
    return found


def _rewrite_like_pytest(tree: ast.Module, function: types.FunctionType) -> None:
    """Under pytest, a plugin's package (copycat_trio registers one) is imported with its
    asserts rewritten; rewrite the mutant's the same way, so that it compiles as the original
    did and the two can be compared."""
    module = sys.modules.get(function.__module__)
    loader = getattr(module, "__loader__", None)
    if type(loader).__name__ != "AssertionRewritingHook" or module is None:
        return
    if module.__name__ not in getattr(loader, "_rewritten_names", {module.__name__: None}):
        return
    from _pytest.assertion.rewrite import rewrite_asserts

    with open(function.__code__.co_filename, "rb") as file:
        source = file.read()
    rewrite_asserts(tree, source, function.__code__.co_filename, getattr(loader, "config", None))


@functools.cache
def _imported_names(module_name: str) -> tuple[str, ...]:
    """The names a module's top-level import statements bind (even under `if`)."""
    module = sys.modules.get(module_name)
    try:
        tree = ast.parse(inspect.getsource(module)) if module is not None else None
    except (OSError, TypeError):
        tree = None
    if tree is None:
        return ()
    names: list[str] = []
    statements = list(tree.body)
    while statements:
        node = statements.pop()
        if isinstance(node, ast.Import):
            names += [a.asname or a.name.split(".")[0] for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names += [a.asname or a.name for a in node.names if a.name != "*"]
        elif isinstance(node, ast.If | ast.Try | ast.With):
            for field in ("body", "orelse", "finalbody", "handlers"):
                for child in getattr(node, field, []):
                    statements += child.body if isinstance(child, ast.ExceptHandler) else [child]
    return tuple(sorted(set(names)))


def _find_code(code: types.CodeType, name: str, line: int) -> types.CodeType | None:
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            if const.co_name == name and const.co_firstlineno == line:
                return const
            inner = _find_code(const, name, line)
            if inner is not None:
                return inner
    return None


def _same_code(a: types.CodeType, b: types.CodeType) -> bool:
    """Whether two code objects do the same thing (line numbers aside)."""

    def consts(c: types.CodeType) -> list[object]:
        return [("code", x.co_name) if isinstance(x, types.CodeType) else x for x in c.co_consts]

    return (
        a.co_code == b.co_code
        and a.co_names == b.co_names
        and a.co_varnames == b.co_varnames
        and consts(a) == consts(b)
        and all(
            _same_code(x, y)
            for x, y in zip(a.co_consts, b.co_consts, strict=True)
            if isinstance(x, types.CodeType) and isinstance(y, types.CodeType)
        )
    )


def _prepare(mutant: Mutant) -> list[tuple[types.FunctionType, types.CodeType]]:
    """Check every edit of `mutant` and compile its functions; changes nothing yet."""
    by_target: dict[str, list[Edit]] = {}
    for edit in mutant.edits:
        by_target.setdefault(edit.target, []).append(edit)
    patches = []
    for target, edits in by_target.items():
        function = _resolve(target)
        where = f"mutant {mutant.name!r}, target {target}"
        try:
            source = inspect.getsource(function)
        except (OSError, TypeError) as exc:
            raise MutantError(f"{where}: no source: {exc}") from exc
        try:
            same = _same_code(_compile_function(function, source), function.__code__)
        except (MutantError, SyntaxError):
            same = False
        if not same:
            raise MutantError(
                f"{where}: the source on disk is not the code that runs (the file changed "
                "since it was imported, or the function is already mutated)"
            )
        text = textwrap.dedent(source)
        for edit in edits:
            count = text.count(edit.old)
            if count != 1:
                found = "is not found" if count == 0 else f"occurs {count} times"
                raise MutantError(
                    f"{where}: the snippet {edit.old!r} {found} in the function (the code "
                    "changed: update the catalogue)"
                )
            text = text.replace(edit.old, edit.new)
        try:
            code = _compile_function(function, text)
        except SyntaxError as exc:
            raise MutantError(f"{where}: the edited source does not compile: {exc}") from exc
        patches.append((function, code))
    return patches


@contextlib.contextmanager
def applied(mutant: Mutant) -> Iterator[None]:
    """Run the block with `mutant` in force (in this process); the original code is restored
    on leaving it. Raises MutantError, changing nothing, if any edit does not apply."""
    patches = _prepare(mutant)
    originals = [(function, function.__code__) for function, _ in patches]
    try:
        for function, code in patches:
            function.__code__ = code
        yield
    finally:
        for function, code in reversed(originals):
            function.__code__ = code


# --- the default simulation -----------------------------------------------------------------


def kv_simulation(seed: int) -> tuple[bool, str]:
    """One seed of the key-value simulation (copycat_trio.testing.simulation), stopped after
    120 s of real time: a mutant that makes the cluster spin is caught, not waited for."""
    from .simulation import run_simulation

    result = run_simulation(seed, wall_limit=120.0)
    if result.ok:
        return True, result.summary()
    failures = result.failures()
    lines = failures[0].strip().splitlines() if failures else ["failed"]
    # A traceback says what went wrong on its last line; anything else on its first.
    first = lines[-1].strip(" |+") if "Traceback" in lines[0] else lines[0]
    return False, f"{result.summary()}: {first[:300]}"


# --- running one mutant (in a process of its own) ----------------------------------------------


@attrs.frozen
class _Task:
    key: str
    catalogue: str
    mutant: str | None
    """None: the unmutated code (the baseline)."""
    scenarios: bool
    seeds: tuple[int, ...]
    all_checks: bool
    """Run every seed too, even once a scenario caught the mutant."""


@attrs.define
class MutantOutcome:
    """What happened to one mutant (or to the baseline)."""

    name: str
    scenario_failures: list[tuple[str, str, float]] = attrs.Factory(list)
    """(scenario, what failed, seconds since the mutant was applied) for each that failed."""
    seed: int | None = None
    """The first seed that failed, if any."""
    seed_failure: str = ""
    seeds_run: int = 0
    seconds: float = 0.0
    """From applying the mutant to its first catch (or to the end, if none)."""
    error: str | None = None
    """The mutant could not be applied, or its process died: not caught, and not a survivor."""
    baseline_fails: bool = False
    """The catching seed fails without the mutant too: it proves nothing."""

    @property
    def caught(self) -> bool:
        if self.error is not None:
            return False
        return bool(self.scenario_failures) or (self.seed is not None and not self.baseline_fails)

    def caught_by(self) -> str:
        if self.error is not None:
            return f"ERROR: {self.error.splitlines()[0][:80]}"
        if self.scenario_failures:
            more = len(self.scenario_failures) - 1
            return self.scenario_failures[0][0] + (f" (+{more} more)" if more else "")
        if self.seed is not None:
            if self.baseline_fails:
                return f"seed {self.seed}, but it fails unmutated too: SURVIVED?"
            return f"seed {self.seed}"
        return "SURVIVED"


def load_catalogue(reference: str) -> Catalogue:
    """The Catalogue at "package.module:NAME" (NAME defaults to CATALOGUE)."""
    module_name, _, attribute = reference.partition(":")
    module = importlib.import_module(module_name)
    catalogue = getattr(module, attribute or "CATALOGUE")
    if not isinstance(catalogue, Catalogue):
        raise TypeError(f"{reference} is a {type(catalogue).__name__}, not a Catalogue")
    return catalogue


def _short(exc: BaseException) -> str:
    """One line for a failure (the first exception inside an exception group)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    text = f"{type(exc).__name__}: {exc}".strip()
    return " ".join(text.split())[:300]


def _run_task(task: _Task, directory: str) -> None:
    """A worker process's work: apply the mutant, run the checks, write the outcome."""
    from .sim_watch import DEADLOCK_DIR_VARIABLE

    logging.getLogger("copycat_trio").setLevel(logging.CRITICAL)
    deadlocks = os.path.join(directory, f"{task.key}.deadlock")
    os.makedirs(deadlocks, exist_ok=True)
    os.environ[DEADLOCK_DIR_VARIABLE] = deadlocks
    progress = open(os.path.join(directory, f"{task.key}.progress"), "a", buffering=1)  # noqa: SIM115
    outcome = MutantOutcome(task.mutant or "(none)")
    started = time.monotonic()
    try:
        catalogue = load_catalogue(task.catalogue)
        chosen = next((m for m in catalogue.mutants if m.name == task.mutant), None)
        if task.mutant is not None and chosen is None:
            raise MutantError(f"no mutant named {task.mutant!r} in {task.catalogue}")
        with applied(chosen) if chosen is not None else contextlib.nullcontext():
            _checks(task, catalogue, outcome, started, progress)
    except MutantError as exc:
        outcome.error = str(exc)
    except Exception as exc:  # the tool's own failure, not a catch
        outcome.error = f"the run failed: {_short(exc)}"
    if outcome.seed is None and not outcome.scenario_failures:
        outcome.seconds = time.monotonic() - started
    with open(os.path.join(directory, f"{task.key}.json"), "w") as file:
        json.dump(attrs.asdict(outcome), file)
    progress.close()


def _checks(
    task: _Task, catalogue: Catalogue, outcome: MutantOutcome, started: float, progress: Any
) -> None:
    if task.scenarios:
        # The scenarios aimed at this mutant first, so that the time to catch it is theirs.
        chosen = next((m for m in catalogue.mutants if m.name == task.mutant), None)
        aimed = chosen.aimed_at if chosen is not None else ()
        order = sorted(catalogue.scenarios, key=lambda s: s.name not in aimed)
        for scenario in order:
            try:
                scenario.check()
            except Exception as exc:
                elapsed = time.monotonic() - started
                outcome.scenario_failures.append((scenario.name, _short(exc), elapsed))
                if len(outcome.scenario_failures) == 1:
                    outcome.seconds = elapsed
                progress.write(f"scenario {scenario.name} FAIL\n")
            else:
                progress.write(f"scenario {scenario.name} ok\n")
    if outcome.scenario_failures and not task.all_checks:
        return
    if catalogue.simulation is None:
        return
    for seed in task.seeds:
        progress.write(f"seed {seed} start {time.monotonic() - started:.3f}\n")
        try:
            ok, summary = catalogue.simulation(seed)
        except Exception as exc:
            ok, summary = False, f"seed {seed} could not run: {_short(exc)}"
        outcome.seeds_run += 1
        progress.write(f"seed {seed} {'ok' if ok else 'FAIL'}\n")
        if not ok:
            outcome.seed = seed
            outcome.seed_failure = summary
            if not outcome.scenario_failures:
                outcome.seconds = time.monotonic() - started
            return


def _died(task: _Task, directory: str, exitcode: int | None) -> MutantOutcome:
    """The outcome of a worker that ended without writing one: a simulation deadlock ends its
    process (see sim_watch.deadlock_sentinel) after writing a report naming the seed."""
    outcome = MutantOutcome(task.mutant or "(none)")
    lines: list[str] = []
    with contextlib.suppress(OSError), open(os.path.join(directory, f"{task.key}.progress")) as f:
        lines = f.read().splitlines()
    outcome.scenario_failures = [
        (line.split()[1], "failed", 0.0) for line in lines if line.endswith(" FAIL")
    ]
    starts = [line.split() for line in lines if line.startswith("seed ") and " start " in line]
    outcome.seeds_run = len(starts)
    deadlocks = os.path.join(directory, f"{task.key}.deadlock")
    reports = sorted(os.listdir(deadlocks)) if os.path.isdir(deadlocks) else []
    if reports and starts:
        outcome.seed = int(reports[0].split(".")[0])
        with open(os.path.join(deadlocks, reports[0])) as file:
            outcome.seed_failure = file.read().splitlines()[0][:300]
        outcome.seconds = float(starts[-1][3])
    else:
        outcome.error = f"its process died (exit status {exitcode}) without a report"
    return outcome


def _run_all(
    tasks: Sequence[_Task],
    jobs: int,
    timeout: float | None,
    on_done: Callable[[MutantOutcome], None],
) -> dict[str, MutantOutcome]:
    """Run each task in a fresh process (spawned, so no mutant leaks into another), at most
    `jobs` at once; a task still running after `timeout` seconds is killed (an error)."""
    context = multiprocessing.get_context("spawn")
    results: dict[str, MutantOutcome] = {}
    queue = list(tasks)
    running: dict[int, tuple[_Task, Any, float]] = {}
    with tempfile.TemporaryDirectory(prefix="copycat-mutation-") as directory:
        while queue or running:
            while queue and len(running) < jobs:
                task = queue.pop(0)
                process = context.Process(target=_run_task, args=(task, directory))
                process.start()
                running[process.sentinel] = (task, process, time.monotonic())
            multiprocessing.connection.wait(list(running), timeout=1.0)
            for sentinel, (task, process, began) in list(running.items()):
                if process.is_alive():
                    if timeout is not None and time.monotonic() - began > timeout:
                        process.kill()
                        process.join()
                        del running[sentinel]
                        outcome = _died(task, directory, None)
                        outcome.error = f"still running after {timeout:g}s (killed)"
                        results[task.key] = outcome
                        on_done(outcome)
                    continue
                process.join()
                del running[sentinel]
                path = os.path.join(directory, f"{task.key}.json")
                if os.path.exists(path):
                    with open(path) as file:
                        data = json.load(file)
                    data["scenario_failures"] = [tuple(f) for f in data["scenario_failures"]]
                    outcome = MutantOutcome(**data)
                else:
                    outcome = _died(task, directory, process.exitcode)
                results[task.key] = outcome
                on_done(outcome)
    return results


# --- the command line ------------------------------------------------------------------------


def _table(outcomes: Sequence[MutantOutcome]) -> str:
    rows = [("mutant", "caught by", "seeds", "seconds")]
    for o in outcomes:
        rows.append((o.name, o.caught_by(), str(o.seeds_run), f"{o.seconds:.1f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = []
    for i, row in enumerate(rows):
        lines.append(
            f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:>{widths[2]}}  {row[3]:>7}"
        )
        if i == 0:
            lines.append("-" * (sum(widths) + 13))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m copycat_trio.testing.mutation",
        description="Apply each mutant of a catalogue in turn and check that a named scenario "
        "or a simulation seed catches it.",
    )
    parser.add_argument(
        "--catalogue",
        default=DEFAULT_CATALOGUE,
        help=f"module:NAME of a Catalogue (default {DEFAULT_CATALOGUE})",
    )
    parser.add_argument("--list", action="store_true", help="list the mutants and scenarios")
    parser.add_argument(
        "--only", action="append", default=[], metavar="NAME", help="run this mutant (repeatable)"
    )
    parser.add_argument("--seeds", type=int, default=100, help="seeds per mutant (default 100)")
    parser.add_argument("--start", type=int, default=0, help="first seed (default 0)")
    parser.add_argument("--jobs", type=int, default=2, help="mutants at once (default 2)")
    parser.add_argument(
        "--timeout",
        type=float,
        help="seconds a mutant may take before it is killed (default: 600 + 150 per seed)",
    )
    checks = parser.add_mutually_exclusive_group()
    checks.add_argument("--simulation-only", action="store_true", help="skip the named scenarios")
    checks.add_argument("--scenarios-only", action="store_true", help="run no simulation seeds")
    checks.add_argument(
        "--all-checks",
        action="store_true",
        help="run the seeds even when a scenario caught the mutant (to measure the simulation)",
    )
    parser.add_argument("--verbose", action="store_true", help="say what each check found")
    args = parser.parse_args(argv)

    try:
        catalogue = load_catalogue(args.catalogue)
    except (ImportError, AttributeError, TypeError) as exc:
        print(f"cannot load catalogue {args.catalogue}: {exc}", file=sys.stderr)
        return 2
    if args.list:
        for m in catalogue.mutants:
            print(f"{m.name}: {m.rule}")
            for edit in m.edits:
                print(f"    {edit.target}: {edit.old!r} -> {edit.new!r}")
            if m.aimed_at:
                print(f"    scenarios aimed at it: {', '.join(m.aimed_at)}")
        print("\nscenarios:")
        for s in catalogue.scenarios:
            print(f"  {s.name}: {s.rule}")
        return 0
    names = [m.name for m in catalogue.mutants]
    unknown = [n for n in args.only if n not in names]
    if unknown:
        print(f"no such mutant: {', '.join(unknown)} (see --list)", file=sys.stderr)
        return 2
    chosen = [m for m in catalogue.mutants if not args.only or m.name in args.only]
    stale = []
    for m in chosen:  # every mutant must still apply: a stale catalogue is an error, up front
        try:
            with applied(m):
                pass
        except MutantError as exc:
            stale.append(str(exc))
    if stale:
        print("the catalogue is stale:\n  " + "\n  ".join(stale), file=sys.stderr)
        return 2
    seeds = tuple(range(args.start, args.start + args.seeds))
    if args.scenarios_only:
        seeds = ()
    if args.timeout is None:  # a seed stops itself after 120 s; a scenario that hangs does not
        args.timeout = 600.0 + 150.0 * len(seeds)
    began = time.monotonic()

    if not args.simulation_only and catalogue.scenarios:
        baseline = _run_all(
            [_Task("baseline", args.catalogue, None, True, (), False)], 1, args.timeout, _quiet
        )["baseline"]
        if baseline.scenario_failures or baseline.error:
            print("the unmutated code fails its own checks, so nothing can be measured:")
            for name, failure, _ in baseline.scenario_failures:
                print(f"  scenario {name}: {failure}")
            if baseline.error:
                print(f"  {baseline.error}")
            return 2
        print(f"baseline: {len(catalogue.scenarios)} scenarios pass without a mutant", flush=True)

    tasks = [
        _Task(f"m{i}", args.catalogue, m.name, not args.simulation_only, seeds, args.all_checks)
        for i, m in enumerate(chosen)
    ]
    outcomes = _run_all(tasks, max(1, args.jobs), args.timeout, _progress)
    ordered = [outcomes[t.key] for t in tasks]

    # A seed counts only if it passes without the mutant.
    catching = sorted({o.seed for o in ordered if o.seed is not None})
    if catching:
        checks_ = [_Task(f"s{s}", args.catalogue, None, False, (s,), False) for s in catching]
        verdicts = _run_all(checks_, max(1, args.jobs), args.timeout, _quiet)
        # A seed whose check could not run is not known to pass: it proves nothing either.
        failing = {
            s
            for s in catching
            if verdicts[f"s{s}"].seed is not None or verdicts[f"s{s}"].error is not None
        }
        for o in ordered:
            o.baseline_fails = o.seed in failing
        print(
            f"baseline: {len(catching) - len(failing)} of {len(catching)} catching seeds pass "
            "without a mutant" + (f" (failing: {sorted(failing)})" if failing else ""),
            flush=True,
        )

    print()
    print(_table(ordered))
    if args.verbose or any(not o.caught for o in ordered):
        print()
        for o in ordered:
            for name, failure, _ in o.scenario_failures if args.verbose else []:
                print(f"{o.name}: scenario {name}: {failure}")
            if o.seed is not None and (args.verbose or not o.caught):
                print(f"{o.name}: seed {o.seed}: {o.seed_failure}")
            if o.error:
                print(f"{o.name}: {o.error}")
    caught = sum(o.caught for o in ordered)
    print(
        f"\n{caught} of {len(ordered)} mutants caught, "
        f"{sum(o.seeds_run for o in ordered)} seeds run, {time.monotonic() - began:.0f}s"
    )
    return 0 if caught == len(ordered) else 1


def _quiet(outcome: MutantOutcome) -> None:
    pass


def _progress(outcome: MutantOutcome) -> None:
    print(f"  {outcome.name}: {outcome.caught_by()} ({outcome.seconds:.1f}s)", flush=True)


if __name__ == "__main__":
    # Run the imported module's main, not this __main__ copy's: catalogues (and the worker
    # processes) refer to copycat_trio.testing.mutation's classes and functions.
    from copycat_trio.testing import mutation as _module

    with contextlib.suppress(BrokenPipeError):
        sys.exit(_module.main())
