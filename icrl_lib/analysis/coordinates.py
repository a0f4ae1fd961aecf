"""Where the paper reports a run: the one rule, from the run's own setting, that the family notebooks and
``results.ipynb`` share."""
from __future__ import annotations

from functools import cache

from icrl_lib.paper.experiments import FAMILIES
from icrl_lib.runs.config import ExperimentConfig

# The fields that say which method and setting a run is (sizes, seeds and places are not).
SETTING_FIELDS = ("context_strategy_name", "temperature", "context_p_keep", "max_context_examples", "icrl",
                  "icrl_omit_feedback", "icrl_flip_feedback", "icrl_flip_feedback_prob", "max_contexts",
                  "approximate_context_sampling_method", "exemplars_per_label", "max_window_tokens", "system_prompt",
                  "dtype")


@cache
def _paper_grid() -> tuple[tuple[str, str, str, str, tuple], ...]:
    """(family, task suffix, paper method, paper setting, setting fields) of every arm the paper ran."""
    out = []
    for fam in FAMILIES.values():
        for a in fam.arms():
            identity = ExperimentConfig.from_dict(dict(a.fields)).identity()
            out.append((fam.name, fam.task_suffix, a.paper_method, a.paper_setting,
                        tuple((k, identity.get(k)) for k in SETTING_FIELDS)))
    return tuple(out)


def paper_coordinates(config: ExperimentConfig) -> tuple[tuple[str, str, str], ...]:
    """Where the paper reports a run with exactly this method and setting: (family, ``paper_results.csv`` method,
    setting), in the order of :data:`FAMILIES`; empty when it ran no such setting (e.g. a 16-episode cap on the
    context, p_keep 0.5 for approximate ICRL, a 400-token window). The one rule for the family notebooks and
    ``results.ipynb``."""
    identity = config.identity()
    mine = tuple((k, identity.get(k)) for k in SETTING_FIELDS)
    return tuple((family_name, method, setting) for family_name, suffix, method, setting, fields in _paper_grid()
                 if fields == mine and config.task_name.endswith("_unsemantic") == bool(suffix))
