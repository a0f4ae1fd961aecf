"""icrl: in-context reinforcement learning (Monea et al., 2024) as a notebook research toolkit.

Sub-packages by role (the README's "Layout"): ``paper`` (the paper's prompts, strategies, methods, experiment
families and findings), ``tasks``, ``engine`` (models and decoding), ``serving`` (where the model runs), ``runs`` (one
run: plan, loop, run folder), ``analysis`` (tables, metrics, statistics, verdicts, figures), ``sweeps`` (many runs,
launchers), ``families`` (the family notebooks and their reports); ``notebook`` (notebook helpers), ``cli``,
``errors``, ``paths``. Each package's ``__all__`` holds its public names, and notebooks import nothing else (a test
checks); the names most used are here too, e.g. ``from icrl_lib import ExperimentConfig, run_experiment``. Each is
imported on first use (``import icrl_lib`` loads no torch).
"""
from __future__ import annotations

from icrl_lib.lazy import lazy_exports

__version__ = "0.3.0"
__getattr__, __dir__, __all__ = lazy_exports(__name__, modules=(
    "analysis", "cli", "engine", "errors", "families", "notebook", "paper", "paths", "runs", "serving", "sweeps",
    "tasks"), names={
    "runs": ("ExperimentConfig", "load_config", "run_experiment"),
    "tasks": ("Task", "load_task"),
    "paper": ("FAMILIES", "METHODS", "family"),
    "engine": ("load_model",),
    "sweeps": ("load_sweep", "run_sweep"),
    "errors": ("UserError",),
})
