"""One run, prepared once then looped: an :class:`ExperimentConfig` (:func:`load_config`; each field's help in
:data:`FIELD_HELP`) becomes a :class:`RunPlan` (:func:`prepare`), which :func:`run_experiment` runs in its resumable
run folder (named by :func:`run_name` and :func:`model_label`) to a :class:`RunResult`; ``window`` says how many
episodes fit a token window; :class:`StepInspector` rebuilds any logged step without weights."""
from __future__ import annotations

from icrl_lib.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, modules=("window",), names={
    "config": ("ExperimentConfig", "FIELD_HELP", "load_config"),
    "plan": ("RunPlan", "prepare"),
    "loop": ("RunResult", "run_experiment"),
    "identity": ("model_label", "run_name"),
    "inspector": ("StepInspector", "StepView", "inspect_step", "render_step"),
})
