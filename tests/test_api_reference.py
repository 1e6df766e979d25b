"""The API reference (mkdocs.yml, docs/api/) builds from the docstrings, strictly, in the test run.

CI runs pytest, so this is how the reference is built in CI: a warning fails the build (a
missing module, a broken cross reference), and every public name of the modules below must be
documented in it. `nox -s docs` builds the same into site/.
"""

from __future__ import annotations

import importlib
import inspect
import pathlib
import re
import resource
import subprocess
import sys
from typing import Any

import pytest
import yaml

ROOT = pathlib.Path(__file__).parent.parent
# The public API the reference covers: every public class, function and module these export.
PUBLIC_MODULES = [
    "copycat_trio",
    "copycat_trio.client",
    "copycat_trio.state_machine",
    "copycat_trio.recipes",
    "copycat_trio.recipes.resources",
    "copycat_trio.testing",
    "copycat_trio.testing.pytest_plugin",
    "copycat_trio.testing.nemesis",
    "copycat_trio.testing.failover",
]
BUILD_CPU_SECONDS = 30.0  # CPU time, not wall time: a busy machine must not fail the test


def build(config: pathlib.Path, site: pathlib.Path) -> subprocess.CompletedProcess[str]:
    """`mkdocs build` of `config` into `site`, with warnings as errors."""
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config)]
    return subprocess.run(
        [*command, "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def anchors(site: pathlib.Path) -> set[str]:
    """The ids of every heading of the built pages (one per documented object)."""
    found: set[str] = set()
    for page in site.rglob("*.html"):
        found.update(re.findall(r'<h\d id="([^"]+)"', page.read_text()))
    return found


def resolve(path: str) -> Any:
    """The object a dotted path names, importing the longest module prefix; None if none."""
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            obj = getattr(obj, name, None)
        return obj
    return None


def public_names(module_name: str) -> list[tuple[str, Any]]:
    """The public classes and functions a module exports (`__all__`, else the names it binds
    without a leading underscore)."""
    module = importlib.import_module(module_name)
    names = getattr(module, "__all__", None) or [n for n in vars(module) if not n.startswith("_")]
    exported = [(name, getattr(module, name)) for name in names]
    return [(n, obj) for n, obj in exported if inspect.isclass(obj) or inspect.isfunction(obj)]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    site = tmp_path_factory.mktemp("site")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = build(ROOT / "mkdocs.yml", site)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    took = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert result.returncode == 0, f"the API reference does not build:\n{result.stderr}"
    assert "WARNING" not in result.stderr, result.stderr
    assert took < BUILD_CPU_SECONDS, f"the API reference took {took:.1f} CPU seconds to build"
    return site


def test_the_api_reference_documents_every_public_name(site: pathlib.Path) -> None:
    documented = {id(obj) for obj in map(resolve, anchors(site)) if obj is not None}
    missing = [
        f"{module}.{name}"
        for module in PUBLIC_MODULES
        for name, obj in public_names(module)
        if id(obj) not in documented
    ]
    assert not missing, f"public names missing from docs/api/*.md: {missing}"


def test_the_api_reference_has_the_pages_it_lists(site: pathlib.Path) -> None:
    headings = anchors(site)
    for name in [
        "copycat_trio.open_client",
        "copycat_trio.CopycatServer.bootstrap",
        "copycat_trio.StateMachine",
        "copycat_trio.recipes.Lock.acquire",
        "copycat_trio.testing.pytest_plugin.copycat_simulation",
        "copycat_trio.testing.nemesis.run_nemesis",
        "copycat_trio.OutcomeUnknownError",
    ]:
        assert name in headings, name


def broken_site(tmp_path: pathlib.Path, page: str) -> pathlib.Path:
    """mkdocs.yml's own settings over a one-page docs directory holding `page`."""
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    handler = config["plugins"][0]["mkdocstrings"]["handlers"]["python"]
    handler["paths"] = [str(ROOT)]
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "index.md").write_text(page)
    config.update(docs_dir=str(tmp_path / "docs"), nav=["index.md"])
    (tmp_path / "mkdocs.yml").write_text(yaml.safe_dump(config))
    return tmp_path / "mkdocs.yml"


@pytest.mark.parametrize(
    ("page", "complaint"),
    [
        ("::: copycat_trio.no_such_module\n", "copycat_trio.no_such_module"),
        ("See [the client][copycat_trio.NoSuchClient].\n", "copycat_trio.NoSuchClient"),
        ("::: copycat_trio.open_client\n\n[gone](missing.md)\n", "missing.md"),
    ],
    ids=["missing module", "broken cross reference", "broken link"],
)
def test_a_broken_reference_fails_the_build(
    tmp_path: pathlib.Path, page: str, complaint: str
) -> None:
    result = build(broken_site(tmp_path, page), tmp_path / "site")
    assert result.returncode != 0, result.stderr
    assert complaint in result.stderr, result.stderr
