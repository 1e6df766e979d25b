"""Runs the code blocks of one markdown file, as tests/test_docs_examples.py does for each doc.

    python -m tests.docs_runner docs/testing.md

The rules a doc follows (docs/testing.md, "The documentation's examples", says the same):

- ```python blocks of a file run in order in one namespace, like a doctest session, so a block may
  use names an earlier one defined; top-level `await` and `async with` work. They run inside one
  Trio run on a MockClock that jumps ahead whenever every task waits (so elections and timeouts
  take no real time), unless a setup comment asks for the real clock. A block with no `await`
  runs in a worker thread (so it may call `trio.run` itself, as a program would).
- A hidden setup is an HTML comment, `<!-- setup: what it does` then python lines then `-->`; it
  runs where it stands. `docs.enter(async_cm)` keeps an async context (a cluster, a client) open
  until the file ends, `docs.defer(fn)` calls `fn` then. `<!-- setup, real clock: ...` anywhere
  makes the whole file run on the real clock (for real servers on loopback).
- A python block whose first line is `# some/path.py` is a file: it is written under a scratch
  directory on sys.path (and PYTHONPATH), imported, and its public names join the namespace.
- Functions named `test_*` that the blocks define are then run by pytest (pytest-trio's
  autojump_clock and this package's copycat_simulation fixture work), the first two cases of a
  parametrized one only, to stay cheap.
- ```sh / ```console blocks run in bash (`set -euo pipefail`) in a scratch directory with the
  venv's bin first on PATH, and any server they leave in the background is killed at the end. In
  a block with `$ ` prompts only the prompted lines run.
- A block right after `<!-- not run: reason -->` is not run; the test reports it, with the
  reason. ```toml, ```yaml and ```ini blocks (cluster files, alert rules, systemd units) are
  parsed. Blocks without a language (output, file layouts) are text.

A failure names the markdown file and the block's line: tracebacks point into the markdown file.
"""

from __future__ import annotations

import ast
import configparser
import contextlib
import importlib
import inspect
import math
import os
import pathlib
import re
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
import traceback
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

RUN_LANGUAGES = {"python", "sh", "console", "toml", "yaml", "ini"}
SHELL_LANGUAGES = {"sh", "console"}
BLOCK_TIMEOUT = 120.0  # seconds (virtual on the MockClock) before a block counts as hung
_FENCE = re.compile(r"^```(\S*)\s*$")
_NOT_RUN = re.compile(r"^<!--\s*not run:\s*(.+?)\s*-->\s*$")
_SETUP = re.compile(r"^<!--\s*setup(,\s*real clock)?:")
_FILE_BLOCK = re.compile(r"^#\s*([\w/]+\.py)\b")


@dataclass
class Block:
    """One fenced block (or hidden setup) of a markdown file; `line` is its first code line."""

    path: str
    line: int
    language: str
    source: str
    not_run: str | None = None
    setup: bool = False

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line - 1}"


@dataclass
class Document:
    """The blocks of one markdown file and whether its session needs the real clock."""

    path: str
    blocks: list[Block] = field(default_factory=list)
    real_clock: bool = False


def parse(path: str) -> Document:
    """Split a markdown file into its fenced blocks and hidden setups, in order."""
    lines = pathlib.Path(path).read_text().splitlines()
    doc = Document(path)
    i = 0
    while i < len(lines):
        setup = _SETUP.match(lines[i])
        fence = _FENCE.match(lines[i])
        if setup:
            doc.real_clock = doc.real_clock or bool(setup.group(1))
            end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "-->")
            doc.blocks.append(
                Block(path, i + 2, "python", "\n".join(lines[i + 1 : end]) + "\n", setup=True)
            )
            i = end + 1
        elif fence:
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            before = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
            marker = _NOT_RUN.match(before)
            doc.blocks.append(
                Block(
                    path,
                    i + 2,
                    fence.group(1) or "text",
                    "\n".join(lines[i + 1 : end]) + "\n",
                    not_run=marker.group(1) if marker else None,
                )
            )
            i = end + 1
        else:
            i += 1
    return doc


def _parse_yaml(source: str) -> None:
    import yaml  # PyYAML: installed with mkdocs, in the dev extra

    yaml.safe_load(source)


def _parse_ini(source: str) -> None:
    # systemd's unit syntax: repeated keys, `%i` specifiers, no interpolation.
    configparser.ConfigParser(strict=False, interpolation=None).read_string(source)


PARSERS: dict[str, Callable[[str], object]] = {
    "toml": tomllib.loads,
    "yaml": _parse_yaml,
    "ini": _parse_ini,
}


class Session:
    """What a hidden setup uses to keep things open until the file's last block has run."""

    def __init__(self, stack: contextlib.AsyncExitStack) -> None:
        self._stack = stack

    async def enter(self, manager: Any) -> Any:
        """Enter an async context manager; it is left when the file ends."""
        return await self._stack.enter_async_context(manager)

    def defer(self, callback: Callable[[], Any]) -> None:
        """Call `callback` when the file ends (before the contexts entered earlier are left)."""
        self._stack.callback(callback)


class Runner:
    """Runs one document's blocks and prints a line per block; `failures` counts what failed."""

    def __init__(self, doc: Document, scratch: pathlib.Path) -> None:
        self.doc = doc
        self.scratch = scratch
        self.source_file = str(pathlib.Path(doc.path).resolve())
        os.chdir(scratch)  # files the blocks write (data directories) go to the scratch directory
        self.files = scratch / "files"
        self.files.mkdir()
        sys.path.insert(0, str(self.files))
        os.environ["PYTHONPATH"] = os.pathsep.join(
            [str(self.files), *filter(None, [os.environ.get("PYTHONPATH")])]
        )
        self.module = types.ModuleType("_docs_session")
        sys.modules["_docs_session"] = self.module
        self.namespace = self.module.__dict__
        self.tests: dict[str, Any] = {}
        self.failures = 0
        self.clock: Any = None  # the session's MockClock, None on the real clock
        self.watchdog: Any = None  # the cancel scope that ends a hung block
        self.current: Block | None = None

    def report(self, block: Block, outcome: str, started: float) -> None:
        kind = "setup" if block.setup else block.language
        print(f"{outcome:4} {block.where} {kind} ({time.monotonic() - started:.1f}s)", flush=True)

    def fail(self, block: Block, started: float) -> None:
        self.failures += 1
        self.report(block, "FAIL", started)
        print(f"FAIL {block.where}: the block above raised:", flush=True)
        traceback.print_exc(file=sys.stdout)

    def compile(self, block: Block) -> types.CodeType:
        """Compile at the block's own lines of the markdown file, so tracebacks point there."""
        padded = "\n" * (block.line - 1) + block.source
        flags = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
        code: types.CodeType = compile(
            padded, self.source_file, "exec", flags=flags, dont_inherit=True
        )
        return code

    def collect_tests(self, block: Block, before: dict[str, Any]) -> None:
        stem = re.sub(r"\W", "_", self.doc.path)
        for name, value in self.namespace.items():
            if name.startswith("test_") and callable(value) and before.get(name) is not value:
                self.tests[f"{name}__{stem}_{block.line - 1}"] = value

    async def run_python(self, block: Block) -> None:
        import trio

        file_name = _FILE_BLOCK.match(block.source)
        if file_name:
            await trio.to_thread.run_sync(self.import_file, block, file_name.group(1))
            return
        code = self.compile(block)
        if code.co_flags & inspect.CO_COROUTINE:
            clock = self.clock
            if clock is not None:
                clock.autojump_threshold = 0
            # A deadline on the whole session (a scope around this block would not nest with the
            # contexts a setup keeps open): a hung block ends the file, reported below.
            self.watchdog.deadline = trio.current_time() + BLOCK_TIMEOUT
            try:
                await eval(code, self.namespace)
            finally:
                self.watchdog.deadline = math.inf
                if clock is not None:
                    clock.autojump_threshold = math.inf
        else:
            # A worker thread, with virtual time standing still: the block may call trio.run.
            await trio.to_thread.run_sync(exec, code, self.namespace)

    def import_file(self, block: Block, name: str) -> None:
        """Write a file block where its first line says, import it, share its public names."""
        target = self.files / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("\n" * (block.line - 1) + block.source)
        module = importlib.import_module(name.removesuffix(".py").replace("/", "."))
        self.namespace.update({k: v for k, v in vars(module).items() if not k.startswith("_")})

    def run_shell(self, block: Block) -> None:
        lines = block.source.splitlines()
        if any(line.startswith("$ ") for line in lines):
            lines = [line[2:] for line in lines if line.startswith("$ ")]
        bin_dir = str(pathlib.Path(sys.executable).parent)
        env = {**os.environ, "PATH": os.pathsep.join([bin_dir, os.environ.get("PATH", "")])}
        cwd = self.scratch / f"sh-{block.line}"
        cwd.mkdir()
        script = "set -euo pipefail\n" + "\n".join(lines) + "\n"
        # Output to a file, not a pipe: servers left in the background would hold a pipe open.
        with open(cwd / "output", "w+") as output:
            process = subprocess.Popen(
                ["bash", "-c", script],
                cwd=cwd,
                env=env,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            try:
                process.wait(timeout=BLOCK_TIMEOUT)
            finally:
                with contextlib.suppress(ProcessLookupError):  # servers left in the background
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            output.seek(0)
            print(output.read(), end="", flush=True)
        if process.returncode != 0:
            raise RuntimeError(f"the commands exited with status {process.returncode}")

    async def run_all(self) -> None:
        import trio

        with trio.CancelScope() as self.watchdog:
            await self.run_blocks()
        if self.watchdog.cancelled_caught:
            self.failures += 1
            where = self.current.where if self.current else self.doc.path
            print(f"FAIL {where}: did not finish within {BLOCK_TIMEOUT}s", flush=True)

    async def run_blocks(self) -> None:
        import trio

        async with contextlib.AsyncExitStack() as stack:
            self.namespace["docs"] = Session(stack)
            self.namespace["__name__"] = "_docs_session"
            for block in self.doc.blocks:
                self.current = block
                started = time.monotonic()
                if block.not_run is not None:
                    print(f"not run {block.where} {block.language}: {block.not_run}", flush=True)
                    continue
                if block.language not in RUN_LANGUAGES:
                    continue
                before = dict(self.namespace)
                try:
                    if block.language == "python":
                        await self.run_python(block)
                    elif block.language in PARSERS:
                        PARSERS[block.language](block.source)
                    else:
                        await trio.to_thread.run_sync(self.run_shell, block)
                except Exception:
                    self.fail(block, started)
                else:
                    self.report(block, "ok", started)
                self.collect_tests(block, before)
            if self.clock is not None:
                self.clock.autojump_threshold = 0  # let the setup's contexts close

    def run(self) -> None:
        import trio
        import trio.testing

        self.clock = None if self.doc.real_clock else trio.testing.MockClock(rate=0)
        if self.clock is not None:
            self.clock.autojump_threshold = math.inf
        trio.run(self.run_all, clock=self.clock)
        if self.tests:
            self.run_tests()

    def run_tests(self) -> None:
        """Run the test functions the blocks defined with pytest, in this process."""
        import pytest

        tests_module = types.ModuleType("_docs_tests")
        tests_module.TESTS = self.tests  # type: ignore[attr-defined]
        sys.modules["_docs_tests"] = tests_module
        test_file = self.scratch / "test_docs_session.py"
        test_file.write_text("from _docs_tests import TESTS\n\nglobals().update(TESTS)\n")
        (self.scratch / "pytest.ini").write_text("[pytest]\ntrio_mode = true\n")
        print(f"pytest: {', '.join(self.tests)}", flush=True)
        status = pytest.main(
            [
                str(test_file),
                "-q",
                "-p",
                "no:cacheprovider",
                "-rA",
                "-W",
                "ignore::pytest.PytestAssertRewriteWarning",
                "--rootdir",
                str(self.scratch),
            ],
            plugins=[FirstCases()],
        )
        if status != 0:
            self.failures += 1
            print(f"FAIL {self.doc.path}: the test functions its blocks define failed", flush=True)


class FirstCases:
    """A pytest plugin: keep the first two cases of each parametrized test, say what was left."""

    def pytest_collection_modifyitems(self, config: Any, items: list[Any]) -> None:
        kept: list[Any] = []
        left: list[Any] = []
        seen: dict[str, int] = {}
        for item in items:
            name = getattr(item, "originalname", item.name)
            seen[name] = seen.get(name, 0) + 1
            (kept if seen[name] <= 2 else left).append(item)
        for name, count in seen.items():
            if count > 2:
                print(f"pytest: {name}: the first 2 of its {count} cases", flush=True)
        if left:
            config.hook.pytest_deselected(items=left)
            items[:] = kept


def main(argv: list[str]) -> int:
    (path,) = argv
    doc = parse(path)
    with tempfile.TemporaryDirectory(prefix="docs-") as scratch:
        runner = Runner(doc, pathlib.Path(scratch))
        runner.run()
    print(f"{path}: {runner.failures} failed", flush=True)
    return 1 if runner.failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
