"""The core stays pure: no trio, no sockets, no clocks, no threads."""

from __future__ import annotations

import ast
import pathlib

import copycat_trio.core

FORBIDDEN = {
    "trio",
    "trio_util",
    "socket",
    "time",
    "asyncio",
    "threading",
    "os",
    "datetime",
    "select",
}


def test_core_imports_no_io_or_clock() -> None:
    package = pathlib.Path(copycat_trio.core.__file__).parent
    for path in package.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in FORBIDDEN, f"{path.name} imports {name}"
