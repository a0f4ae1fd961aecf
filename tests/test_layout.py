"""The package's shape: sub-packages by role, each importing only the layers below it, no import cycles, one owner of
the run-folder format's file names, and ruff clean."""
from __future__ import annotations

import ast
import re
import subprocess
import sys

from tests.helpers import ROOT

PACKAGE = ROOT / "icrl_lib"
# Each package or top-level module imports only those of its own layer or below (the README's "Layout").
LAYERS = {"errors": 0, "paths": 0, "lazy": 0, "paper": 1, "tasks": 2, "engine": 3, "serving": 4, "runs": 5,
          "analysis": 6, "sweeps": 7, "notebook": 8, "jupyter": 8, "families": 9, "cli": 10, "__main__": 10,
          "__init__": 10}


def modules() -> dict[str, set[str]]:
    """icrl_lib module -> the icrl_lib modules it imports (anywhere in the file, functions included)."""
    graph = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        imports = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("icrl_lib"):
                base = node.module
                imports |= {f"{base}.{a.name}" if f"{base}.{a.name}".replace(".", "/") in _files() else base
                            for a in node.names}
            elif isinstance(node, ast.Import):
                imports |= {a.name for a in node.names if a.name.startswith("icrl_lib")}
        graph[name] = imports - {name}
    return graph


def _files() -> set[str]:
    return {str(p.relative_to(ROOT).with_suffix("")) for p in PACKAGE.rglob("*.py")}


def layer(module: str) -> int:
    part = module.split(".")[1] if module.count(".") else "__init__"
    return LAYERS[part]


def test_every_package_and_module_has_a_layer():
    tops = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()
            if (p.suffix == ".py" or (p / "__init__.py").is_file())}
    assert tops <= set(LAYERS), tops - set(LAYERS)


def test_no_upward_imports():
    upward = [(m, i) for m, imports in modules().items() for i in imports if i != "icrl_lib" and layer(i) > layer(m)]
    assert upward == [], upward


def test_no_import_cycles():
    graph = modules()
    index, low, stack, on_stack, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    sys.setrecursionlimit(10000)
    for v in graph:
        if v not in index:
            visit(v)
    assert cycles == [], cycles


def test_one_module_owns_the_run_folder_file_names():
    """steps.jsonl, meta.json, data.json, debug_prompts.txt, _cache, _sweeps, _analysis: spelled in runs/store.py
    only."""
    names = re.compile(r"""["'](steps\.jsonl|meta\.json|data\.json|config\.yaml|debug_prompts\.txt|_cache|_sweeps|"""
                       r"""_analysis)["']""")
    spelled = [str(p.relative_to(ROOT)) for p in PACKAGE.rglob("*.py") if names.search(p.read_text(encoding="utf-8"))]
    assert spelled == ["icrl_lib/runs/store.py"], spelled


def test_ruff_is_clean():
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "."], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_library_name_the_makefile_and_readme_use_exists():
    """``make family-notebooks`` once imported a module the restructuring had moved: the Makefile's and README's
    ``from icrl_lib.x import y`` lines, dotted ``icrl_lib.x.y`` names and ``icrl_lib/…`` paths must resolve."""
    import importlib
    import importlib.util

    texts = {name: (ROOT / name).read_text() for name in ("Makefile", "README.md")}
    missing = []
    for name, text in texts.items():
        for module, names in re.findall(r"from (icrl_lib[\w.]*) import ([\w, ]+)", text):
            try:
                found = importlib.import_module(module)
            except ImportError:
                found = None
            for attr in (n.strip() for n in names.split(",")):
                if found is None or not hasattr(found, attr) and importlib.util.find_spec(f"{module}.{attr}") is None:
                    missing.append(f"{name}: from {module} import {attr}")
        for dotted in set(re.findall(r"`(icrl_lib(?:\.\w+)+)", text)):
            parts = dotted.split(".")
            for cut in range(len(parts), 0, -1):  # the longest importable prefix, then attributes
                try:
                    obj = importlib.import_module(".".join(parts[:cut]))
                except ImportError:
                    continue
                for attr in parts[cut:]:
                    obj = getattr(obj, attr, None)
                if obj is None:
                    missing.append(f"{name}: {dotted}")
                break
        for path in set(re.findall(r"(icrl_lib/[\w/.]*\w)", text)):
            if not (ROOT / path).exists():
                missing.append(f"{name}: {path}")
    assert not missing, missing
