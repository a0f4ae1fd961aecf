"""A family notebook's parameters and the run configs they expand to (arms x models x tasks x seeds)."""
from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from icrl_lib.errors import UserError
from icrl_lib.paper.experiments import Arm, Family
from icrl_lib.runs.config import ExperimentConfig

# A family notebook's parameters (params/families/<family>/*.yaml): name -> (default, type as papermill shows it, help)
PARAMETER_HELP = MappingProxyType({
    "models": (["smollm2-135m-instruct"], "list", "embedded alias, hub ids or local folders (scaling: the sizes)"),
    "tasks": (["clinic150"], "list", "tasks (abstract labels add _unsemantic itself)"),
    "seeds": ([100], "list", "seeds of contexts, sampling and the training order (each sets seed and training_seed)"),
    "test_seed": (100, "int", "one test set for every arm and seed, so comparisons are paired on the same queries"),
    "train_k": (150, "Any", "training steps: an int, or a mapping task -> steps (the paper: 10000 / 5000 for TREC)"),
    "test_every": (50, "int", "test after every test_every steps (and at step 0 and the last step)"),
    "test_k": (60, "Optional[int]", "test queries per test step; None: the whole test split"),
    "max_context_examples": (32, "Any", "episodes in a context: an int, None (as many as fit the window), or a "
                                        "mapping task -> either"),
    "knobs": ({}, "dict", "the values the family sweeps, e.g. {'p_keep': [0.1, 1.0]}; empty: the paper's"),
    "arm_overrides": ({}, "dict", "config fields per arm label ('*': every arm), e.g. {'*': {'context_p_keep': 0.5}}"),
    "arms": (None, "Optional[list]", "arm labels to run; None: all of the family"),
    "launcher": ("local", "str", "local, slurm or ray (see icrl_lib.sweeps.launchers)"),
    "workers": (2, "int", "runs at once"),
    "launcher_options": ({}, "dict", "slurm (submitit) or ray settings, as in a sweep file"),
    "output_dir": ("outputs", "str", "folder of the run folders (relative: to the checkout)"),
    "run": (True, "bool", "False: only analyse the runs that exist"),
    "export_dir": (None, "Optional[str]", "where figures and tables go; None: <output_dir>/_analysis/<family>"),
})


PARAMETERS = MappingProxyType({k: v[0] for k, v in PARAMETER_HELP.items()})


def configs(fam: Family, params: Mapping[str, Any]) -> list[tuple[Arm, ExperimentConfig]]:
    """(arm, config) for every arm x model x task x seed of ``params`` (see :data:`PARAMETERS`); UserError on a bad
    parameter, before anything runs."""
    p = {**PARAMETERS, **params}
    unknown = sorted(set(params) - set(PARAMETERS))
    if unknown:
        raise UserError(f"{fam.name}: unknown parameter(s) {unknown}; allowed: {', '.join(PARAMETERS)}")
    arms = fam.arms(p["knobs"])
    labels = {a.label for a in arms} | {"*"}
    bad = sorted(set(p["arm_overrides"]) - labels)
    if bad:
        raise UserError(f"arm_overrides: {fam.name} has no arm(s) {bad}; allowed: {sorted(labels)}")
    if p["arms"] is not None:
        missing = sorted(set(p["arms"]) - {a.label for a in arms})
        if missing:
            raise UserError(f"arms: {fam.name} has no arm(s) {missing}; allowed: {[a.label for a in arms]}")
        arms = tuple(a for a in arms if a.label in p["arms"])
    bad = [s for s in p["seeds"] if not isinstance(s, int) or isinstance(s, bool)]
    if bad:
        raise UserError(f"seeds: each must be an int (it sets seed and training_seed; test_seed is one for all runs), "
                        f"got {bad}")
    out = []
    for a in arms:
        extra = {**p["arm_overrides"].get("*", {}), **p["arm_overrides"].get(a.label, {})}
        for model in p["models"]:
            for task in p["tasks"]:
                for seed in p["seeds"]:
                    # Every arm and seed tests the same queries: differences are paired per query.
                    seeds = {"seed": seed, "training_seed": seed, "test_seed": p["test_seed"]}
                    sizes = {"train_k": _per_task(p, "train_k", task), "test_every": p["test_every"],
                             "test_k": p["test_k"], "max_context_examples": _per_task(p, "max_context_examples", task),
                             "output_dir": p["output_dir"], "debug_k": 0}  # an arm's own fields win (zero-shot: 0)
                    fields = {**sizes, **a.fields, **extra, **seeds, "model_name": model,
                              "task_name": task + fam.task_suffix}
                    try:
                        out.append((a, ExperimentConfig.from_dict(fields)))
                    except ValueError as err:
                        raise UserError(f"{fam.name}, arm {a.label!r}: {err}") from None
    return out


def _per_task(params: Mapping[str, Any], key: str, task: str) -> Any:
    """``params[key]``, or its value for ``task`` when it is a mapping task -> value (UserError if task is missing)."""
    value = params[key]
    if not isinstance(value, Mapping):
        return value
    if task not in value:
        raise UserError(f"{key}: no value for task {task!r}; the mapping gives {sorted(value)}")
    return value[task]
