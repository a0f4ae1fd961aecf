"""icrl: in-context reinforcement learning (Monea et al., 2024) as a notebook research toolkit.

Sub-packages by role (the README's "Layout"): ``paper`` (the paper's prompts, strategies, methods, families and
findings), ``tasks``, ``engine`` (models and decoding), ``runs`` (one run: plan, loop, run folder), ``analysis``
(tables, metrics, statistics, verdicts, figures), ``sweeps`` (many runs, launchers), ``families`` (the family
notebooks' reports); ``notebook`` (notebook helpers), ``cli``, ``errors``, ``paths``. Notebooks import from these,
e.g. ``from icrl_lib.analysis import aggregate, load, plots``; each is imported on first use (``import icrl_lib``
loads no torch).
"""
from __future__ import annotations

import importlib

__version__ = "0.3.0"
__all__ = ["analysis", "cli", "engine", "errors", "families", "notebook", "paper", "paths", "runs", "sweeps", "tasks"]


def __getattr__(name: str):
    if name in __all__:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
