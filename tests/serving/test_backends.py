"""Backends as plug-ins: each registry entry names the class that opens its route, nothing else in the toolkit
branches on a backend's name (checked on the source, with a check that is shown to catch one), the analysis layer
does not import the serving layer, and a server route runs without torch."""
from __future__ import annotations

import ast
import subprocess
import sys

import pytest

from icrl_lib.runs.config import ExperimentConfig
from icrl_lib.serving.backends import BACKENDS, DEFAULT_BACKEND, SERVER_BACKENDS
from tests.helpers import ROOT

PACKAGE = ROOT / "icrl_lib"


def name_branches(source: str, filename: str = "<source>") -> list[str]:
    """Places in ``source`` that decide by a backend's name: a comparison of something called backend with a
    registry name, a ``BACKENDS[...]`` lookup by a literal, or ``backend.startswith("...")``."""
    found = []
    names = set(BACKENDS)
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            parts = [node.left, *node.comparators]
            literals = [p for p in parts if isinstance(p, ast.Constant) and p.value in names]
            others = [ast.unparse(p) for p in parts if not isinstance(p, ast.Constant)]
            if literals and any("backend" in o.lower() for o in others):
                found.append(f"{filename}:{node.lineno}: {ast.unparse(node)}")
        elif isinstance(node, ast.Subscript) and "BACKENDS" in ast.unparse(node.value) and \
                isinstance(node.slice, ast.Constant):
            found.append(f"{filename}:{node.lineno}: {ast.unparse(node)}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                node.func.attr in ("startswith", "endswith") and "backend" in ast.unparse(node.func.value).lower():
            found.append(f"{filename}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_the_check_catches_a_branch_on_a_backend_name():
    assert name_branches('if config.backend == "vllm":\n    pass') != []
    assert name_branches('x = BACKENDS["local"].exact') != []
    assert name_branches('if self.info.backend.startswith("llamacpp"):\n    pass') != []
    assert name_branches('if entry.in_process:\n    pass') == []


def test_no_module_branches_on_a_backends_name():
    found = [hit for path in sorted(PACKAGE.rglob("*.py")) if path.name != "backends.py"
             for hit in name_branches(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))]
    assert found == [], found


def test_the_analysis_layer_does_not_import_serving():
    for path in sorted((PACKAGE / "analysis").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            modules = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            assert not any(m.startswith("icrl_lib.serving") for m in modules), path


@pytest.mark.parametrize("name", list(BACKENDS))
def test_every_entry_names_a_class_that_opens_its_route(name):
    entry = BACKENDS[name]
    cls = entry.plugin_class()
    assert callable(cls.open) and callable(cls.predictor)
    assert callable(cls.record) and callable(cls.check_resume)
    assert entry.in_process == (name == DEFAULT_BACKEND) and (name in SERVER_BACKENDS) != entry.in_process


def test_one_rule_names_a_runs_model_with_its_backend():
    local = ExperimentConfig(model_name="org/m")
    served = ExperimentConfig(model_name="org/m", backend="vllm", server_url="http://127.0.0.1:1")
    hosted = ExperimentConfig(model_name="org/m", backend="gemini-enum", server_url="https://x", server_model="g",
                              allow_approximate=True, max_context_examples=4)
    assert (local.model_tag, served.model_tag, hosted.model_tag) == ("org/m", "org/m@vllm", "g@gemini-enum")


def test_a_server_route_runs_without_torch():
    code = ("import sys; import icrl_lib.serving.vllm, icrl_lib.serving.sglang, icrl_lib.serving.llamacpp, "
            "icrl_lib.serving.hosted; assert 'torch' not in sys.modules, 'torch imported'")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_the_readmes_server_table_says_what_each_route_was_exercised_against():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 6 and cells[0].startswith("`") and cells[0].strip("`") in BACKENDS:
            rows[cells[0].strip("`")] = cells[5].replace("`", "")
    assert rows == {name: entry.tested_with for name, entry in BACKENDS.items()}
