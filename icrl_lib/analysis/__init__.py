"""Results across runs: ``load`` (every run's tables, each log read once), ``aggregate`` (the paper's metrics per run
and over seeds), ``stats`` (intervals and verdicts), ``verdicts`` (the findings tested), ``verdict_tables`` (the
verdicts for reading), ``plots`` (figures), ``step_browser`` (the step inspector as a JupyterLab widget)."""
from __future__ import annotations

from icrl_lib.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, modules=(
    "aggregate", "load", "plots", "stats", "step_browser", "verdict_tables", "verdicts"))
