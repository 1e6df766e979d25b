"""No import circles among the package's modules: read from the source, not from an import.

Every import counts, at module level and inside functions, except those under
`if TYPE_CHECKING:` (annotations only, never run) and under `if __name__ == "__main__":` (run
only when the file is the program, as the module `__main__`, never on import). A circle makes
a module's meaning depend on which side was imported first, and a library module that imports
the command line drags the whole of it in; the test names the circle it finds.
"""

from __future__ import annotations

import ast
import pathlib

import copycat_trio

PACKAGE = pathlib.Path(copycat_trio.__file__).parent


def _module_name(path: pathlib.Path) -> tuple[str, list[str]]:
    """A file's module name and the package its relative imports start from."""
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
        return ".".join(parts), parts
    return ".".join(parts), parts[:-1]


def _never_on_import(node: ast.If, annotations: bool = False) -> bool:
    """`if TYPE_CHECKING:` (unless `annotations`) or `if __name__ == "__main__":`."""
    test = node.test
    if isinstance(test, ast.Compare) and isinstance(test.left, ast.Name):
        main = test.comparators[0] if len(test.comparators) == 1 else None
        return (
            test.left.id == "__name__"
            and isinstance(main, ast.Constant)
            and main.value == "__main__"
        )
    return not annotations and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
    )


def _imports(
    tree: ast.AST, package: list[str], modules: set[str], annotations: bool = False
) -> set[str]:
    """The package's modules this tree imports when it runs (`annotations`: and those it
    imports for type checking only)."""
    found: set[str] = set()
    pending: list[ast.AST] = [tree]
    while pending:
        node = pending.pop()
        if isinstance(node, ast.If) and _never_on_import(node, annotations):
            pending.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for alias in node.names:
                submodule = f"{module}.{alias.name}"
                found.add(submodule if submodule in modules else module)
        pending.extend(ast.iter_child_nodes(node))
    return {name for name in found if name in modules}


def import_graph(annotations: bool = False) -> dict[str, set[str]]:
    """Each module of the package and the package's modules it imports."""
    files = [(*_module_name(path), path) for path in PACKAGE.rglob("*.py")]
    modules = {name for name, _, _ in files}
    return {
        name: _imports(ast.parse(path.read_text()), package, modules, annotations) - {name}
        for name, package, path in files
    }


def find_circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle of imports (its modules in order, the first repeated last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(name: str) -> list[str] | None:
        state[name] = 1
        path.append(name)
        for target in sorted(graph[name]):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state:
                circle = visit(target)
                if circle is not None:
                    return circle
        path.pop()
        state[name] = 2
        return None

    for name in sorted(graph):
        if name not in state:
            circle = visit(name)
            if circle is not None:
                return circle
    return None


def test_the_package_has_no_import_circles() -> None:
    graph = import_graph()
    assert "copycat_trio.cli" in graph and "copycat_trio.core.raft" in graph  # it read them
    circle = find_circle(graph)
    assert circle is None, "import circle: " + " -> ".join(circle or [])


def test_not_even_type_annotations_import_in_a_circle() -> None:
    """A circle through `if TYPE_CHECKING:` imports runs at no import, but it still ties two
    modules' meanings together: a small Protocol on the using side breaks it."""
    circle = find_circle(import_graph(annotations=True))
    assert circle is None, "import circle (counting TYPE_CHECKING): " + " -> ".join(circle or [])


def test_the_checker_finds_a_circle_and_ignores_imports_that_never_run_on_import() -> None:
    modules = {"p", "p.a", "p.b"}
    runtime = ast.parse("from . import b\n")
    typing_only = ast.parse(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import a\n"
    )
    in_function = ast.parse("def f():\n    from .a import x\n")
    as_program = ast.parse('if __name__ == "__main__":\n    from .a import main\n')
    elsewhere = ast.parse('if __name__ == "p.b":\n    from .a import main\n')
    assert _imports(runtime, ["p"], modules) == {"p.b"}
    assert _imports(typing_only, ["p"], modules) == set()
    assert _imports(typing_only, ["p"], modules, annotations=True) == {"p.a"}
    assert _imports(in_function, ["p"], modules) == {"p.a"}
    assert _imports(as_program, ["p"], modules) == set()
    assert _imports(elsewhere, ["p"], modules) == {"p.a"}
    assert find_circle({"p.a": {"p.b"}, "p.b": {"p.a"}}) == ["p.a", "p.b", "p.a"]
    assert find_circle({"p.a": {"p.b"}, "p.b": set()}) is None


def test_no_library_module_imports_the_command_line() -> None:
    """The command line uses the library, never the reverse (testing/ included)."""
    graph = import_graph()
    users = sorted(
        name
        for name, targets in graph.items()
        if "copycat_trio.cli" in targets and name != "copycat_trio.__main__"
    )
    assert users == [], f"modules importing copycat_trio.cli: {users}"
