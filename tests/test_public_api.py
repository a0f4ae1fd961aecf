"""The public names: every package states them in ``__all__``, notebooks and the README import nothing else, every
name resolves, no two modules share a name, and importing a package loads no torch (its names load on first use)."""
from __future__ import annotations

import ast
import importlib
import json
import pkgutil
import re
import subprocess
import sys
from collections import Counter

import pytest

from tests.helpers import ROOT

PACKAGE = ROOT / "icrl_lib"
PACKAGES = ["icrl_lib"] + sorted(f"icrl_lib.{p.name}" for p in PACKAGE.iterdir() if (p / "__init__.py").is_file())
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def notebook_code(path) -> str:
    """A notebook's code cells as one Python source, IPython magics and shell lines left out."""
    cells = [c for c in json.loads(path.read_text(encoding="utf-8"))["cells"] if c["cell_type"] == "code"]
    lines = ("".join(c["source"]).splitlines() for c in cells)
    return "\n".join(line for cell in lines for line in cell if not line.lstrip().startswith(("%", "!")))


def readme_code() -> str:
    return "\n".join(re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(encoding="utf-8"), re.S))


def private_imports(source: str) -> list[str]:
    """The ``icrl_lib`` names ``source`` imports that are not in the ``__all__`` of the package it imports them
    from (a module is not a place to import from: its package is)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "icrl_lib":
            pairs = [(node.module, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            pairs = [tuple(a.name.rsplit(".", 1)) for a in node.names if a.name.startswith("icrl_lib.")]
        else:
            continue
        for module, name in pairs:
            if module not in PACKAGES or name not in getattr(importlib.import_module(module), "__all__", ()):
                found.append(f"from {module} import {name}")
    return found


def test_private_imports_are_found():
    assert private_imports("from icrl_lib.runs.loop import run_experiment\nimport icrl_lib.runs.store\n"
                           "from icrl_lib import notebook\nimport os\n") == [
        "from icrl_lib.runs.loop import run_experiment", "from icrl_lib.runs import store"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebooks_import_only_public_names(path):
    assert private_imports(notebook_code(path)) == []


def test_readme_snippets_import_only_public_names():
    assert "import" in readme_code()
    assert private_imports(readme_code()) == []


@pytest.mark.parametrize("package", PACKAGES)
def test_every_package_states_its_public_names(package):
    module = importlib.import_module(package)
    assert module.__doc__, f"{package}: no docstring"
    assert getattr(module, "__all__", None) and len(set(module.__all__)) == len(module.__all__), module.__all__
    assert set(module.__all__) <= set(dir(module)), "dir() (tab completion) leaves out public names"


@pytest.mark.parametrize("package", PACKAGES)
def test_every_public_name_resolves(package):
    module = importlib.import_module(package)
    submodules = {m.name for m in pkgutil.iter_modules(module.__path__)}
    for name in module.__all__:
        value = getattr(module, name)
        if name in submodules:  # a class or function by a sub-module's name would be replaced by the module
            assert value is importlib.import_module(f"{package}.{name}"), name
    with pytest.raises(AttributeError):
        module.no_such_name  # noqa: B018


def test_no_two_modules_share_a_name():
    """Modules and packages: ``from icrl_lib.x import notebook`` never means two things."""
    names = [p.stem for p in PACKAGE.rglob("*.py") if p.stem not in ("__init__", "__main__")]
    names += [p.parent.name for p in PACKAGE.rglob("__init__.py") if p.parent != PACKAGE]
    assert [n for n, count in Counter(names).items() if count > 1] == []


@pytest.mark.parametrize("package", PACKAGES + ["icrl_lib.cli"])
def test_importing_a_package_loads_no_torch(package):
    code = f"import sys, {package}; assert 'torch' not in sys.modules, 'torch imported'"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
