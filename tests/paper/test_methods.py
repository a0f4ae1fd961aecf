"""The method table: one definition for configs, run names, plot order and colours, the README and the grid."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from icrl_lib.paper import methods
from icrl_lib.runs.config import ExperimentConfig, load_config
from icrl_lib.paper.methods import config_fields, name_run

ROOT = Path(__file__).resolve().parents[1]


def named(**fields) -> str:
    return name_run(ExperimentConfig.from_dict(fields).to_dict())


def test_the_readme_table_is_the_method_table():
    assert methods.markdown_table() in (ROOT / "README.md").read_text()


def test_every_grid_file_is_its_method_exactly():
    files = sorted((ROOT / "params" / "grid").rglob("*.yaml"))
    assert len(files) == 40
    for path in files:
        key = path.stem.split("_")[0]  # <method>_<task>.yaml; the grid's method keys hold no underscore
        config = load_config(path).to_dict()
        assert name_run(config) == methods.BY_KEY[key].display, path
        assert {k: config[k] for k in methods.BY_KEY[key].fields} == dict(methods.BY_KEY[key].fields), path


@pytest.mark.parametrize("key", [m.key for m in methods.METHODS])
def test_each_method_built_from_the_table_is_named_plainly(key):
    assert named(**config_fields(key)) == methods.BY_KEY[key].display


@pytest.mark.parametrize("fields, name", [
    (config_fields("explorative", context_p_keep=0.5), "explorative ICRL (p_keep=0.5)"),
    (config_fields("naive", temperature=2.0), "naive ICRL (T=2)"),
    (config_fields("naive_plus", temperature=1), "naive+ ICRL (T=1)"),
    (config_fields("approximate", max_contexts=4), "approximate ICRL (K=4)"),
    (config_fields("approximate", approximate_context_sampling_method="exact"), "approximate ICRL (sampling=exact)"),
    (config_fields("naive", icrl_flip_feedback=True, icrl_flip_feedback_prob=0.1), "naive ICRL (flip_p=0.1)"),
    (config_fields("explorative", icrl_omit_feedback=True), "explorative ICRL (feedback=omitted)"),
    (config_fields("explorative", exemplars_per_label=1, max_context_examples=64),
     "explorative ICRL (exemplars=1, max_examples=64)"),
    (config_fields("explorative", max_window_tokens=4096), "explorative ICRL (window=4096)"),
    (config_fields("icl", temperature=0.0), "ICL (T=0)"),
    (config_fields("zero_shot"), "zero-shot"),
    (config_fields("zero_shot", icrl=False, temperature=0.0), "zero-shot (ICL prompt) (T=0)"),
    (dict(context_strategy_name="random_biased_start", context_p_keep=0.1), "random_biased_start (p_keep=0.1, T=1)"),
])
def test_a_run_is_named_by_what_differs_from_its_method(fields, name):
    assert named(**fields) == name


def test_order_and_colours_are_fixed():
    names = ["approximate ICRL", "explorative ICRL (p_keep=0.5)", "zero-shot", "explorative ICRL", "ICL", "other"]
    assert methods.method_order(names) == ["zero-shot", "ICL", "explorative ICRL", "explorative ICRL (p_keep=0.5)",
                                           "approximate ICRL", "other"]
    assert methods.color_of("explorative ICRL (p_keep=0.5)") == methods.color_of("explorative ICRL") == "#1f77b4"
    assert methods.dash_of("explorative ICRL", names) == "solid"
    assert methods.dash_of("explorative ICRL (p_keep=0.5)", names) == "dash"
    assert methods.color_of("other") == methods.color_of("other") in methods.OTHER_COLORS
    assert len({m.color for m in methods.METHODS}) == len(methods.METHODS)


@pytest.mark.parametrize("family", ["reward_ablations", "context_window", "exploration", "approximate", "main"])
def test_names_drawn_together_get_distinct_styles(family):
    """Every family figure draws all its arms at once: no two may share colour and dash (12 reward ablations once
    shared 8 hashed colours; the paper's 9 naive temperatures shared 5 dashes). Methods keep their colour."""
    from icrl_lib.paper import families

    names = methods.method_order([a.label for a in families.family(family).arms()])
    styles = methods.styles(names)
    assert len(set(styles.values())) == len(names), styles
    for name in names:
        method = methods.base_method(name)
        if method is not None and name == method.display:
            assert styles[name] == (method.color, "solid")
    assert methods.styles(list(reversed(names))) == styles  # the same set looks the same in every figure
    assert all(methods.color_of(n, names) == styles[n][0] for n in names)


def test_unknown_method_key_is_named():
    with pytest.raises(ValueError, match="method: unknown 'explorativ'; allowed: zero_shot, icl"):
        config_fields("explorativ")


@pytest.mark.parametrize("fields, task, coordinates", [
    (config_fields("explorative"), "banking77", {("main", "explorative", ""), ("exploration", "explorative", "p_keep=0.1"),
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
    from icrl_lib.paper.families import paper_coordinates

    found = set(paper_coordinates(ExperimentConfig.from_dict({**fields, "task_name": task})))
    assert coordinates <= found and bool(found) == bool(coordinates)
