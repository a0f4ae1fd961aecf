"""Where the paper reports a run: from the run's own setting, one rule for the family notebooks and results.ipynb."""
from __future__ import annotations

import pytest

from icrl_lib.analysis.coordinates import paper_coordinates
from icrl_lib.paper.methods import config_fields
from icrl_lib.runs.config import ExperimentConfig


@pytest.mark.parametrize("fields, task, coordinates", [
    (config_fields("explorative"), "banking77", {("main", "explorative", ""),
                                                 ("exploration", "explorative", "p_keep=0.1"),
                                                 ("approximate", "explorative", "K=inf")}),
    (config_fields("explorative", context_p_keep=0.05), "banking77", {("exploration", "explorative", "p_keep=0.05")}),
    (config_fields("naive_plus", temperature=0.5), "banking77", {("exploration", "naive_plus", "temperature=0.5")}),
    (config_fields("approximate", approximate_context_sampling_method="exact"), "clinic150",
     {("approximate", "approximate", "K=8;sampling=exact")}),
    (config_fields("zero_shot"), "nlu", {("main", "zero_shot", "temperature=1.0")}),
    (config_fields("explorative", max_window_tokens=4096, context_strategy_name="random_biased_start_only_positive"),
     "clinic150", {("context_window", "explorative", "window=4096;downsampling=random_biased_start")}),
    (config_fields("naive", temperature=2.0, icrl_flip_feedback=True, icrl_flip_feedback_prob=1.0), "banking77",
     {("reward_ablations", "inverted", "method_family=naive;temperature=2.0")}),
    (config_fields("explorative", exemplars_per_label=1), "trec_coarse_unsemantic",
     {("abstract_labels", "explorative", "exemplars_per_label=1")}),
    (config_fields("explorative", max_context_examples=16), "banking77", set()),  # a capped context: not the paper's
    (config_fields("approximate", context_p_keep=0.5), "banking77", set()),
])
def test_paper_coordinates_are_the_setting_a_run_actually_has(fields, task, coordinates):
    """One rule for where the paper reports a run (family notebooks and results.ipynb): the run's own setting."""
    found = set(paper_coordinates(ExperimentConfig.from_dict({**fields, "task_name": task})))
    assert coordinates <= found and bool(found) == bool(coordinates)
