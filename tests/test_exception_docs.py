"""Every exception class of the package says in its docstring what it means (issue 14)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import copycat_trio


def test_every_exception_class_has_a_docstring() -> None:
    missing = []
    for info in pkgutil.walk_packages(copycat_trio.__path__, "copycat_trio."):
        if ".mutants" in info.name or info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if (
                inspect.isclass(obj)
                and issubclass(obj, BaseException)
                and obj.__module__ == module.__name__
                and not (obj.__dict__.get("__doc__") or "").strip()
            ):
                missing.append(f"{module.__name__}.{name}")
    assert not missing, f"exception classes without a docstring: {missing}"
