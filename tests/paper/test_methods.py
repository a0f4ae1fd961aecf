"""The method table: one definition for configs, run names, plot order and colours, the README and the grid."""
from __future__ import annotations

from pathlib import Path

import pytest

from icrl_lib.paper import methods
from icrl_lib.paper.methods import config_fields, name_run
from icrl_lib.runs.config import ExperimentConfig, load_config

ROOT = Path(__file__).resolve().parents[2]


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
    (config_fields("explorative", context_p_keep=0.5), "explorative ICRL, p_keep=0.5"),
    (config_fields("naive", temperature=2.0), "naive ICRL, T=2"),
    (config_fields("naive_plus", temperature=1), "naive+ ICRL, T=1"),
    (config_fields("approximate", max_contexts=4), "approximate ICRL, K=4"),
    (config_fields("approximate", approximate_context_sampling_method="exact"), "approximate ICRL, exact sampling"),
    (config_fields("naive", icrl_flip_feedback=True, icrl_flip_feedback_prob=0.1), "naive ICRL, 10% noisy rewards"),
    (config_fields("explorative", icrl_omit_feedback=True), "explorative ICRL, no rewards"),
    # a cap on the episodes is a size, never part of the name; a token window is a setting, where it has an effect
    (config_fields("explorative", exemplars_per_label=1, max_context_examples=64),
     "explorative ICRL, 1 exemplar/label"),
    (config_fields("icl", max_context_examples=4), "ICL"),
    (config_fields("explorative", max_window_tokens=4096), "explorative ICRL, 4K-token window"),
    (config_fields("explorative", max_window_tokens=4096, max_context_examples=16), "explorative ICRL"),
    (config_fields("icl", temperature=0.0), "ICL, T=0"),
    (config_fields("zero_shot"), "zero-shot"),
    (config_fields("zero_shot", icrl=False, temperature=0.0), "zero-shot, ICL prompt, T=0"),
    # the paper's reward ablations (§3.4): explorative ICRL with every episode in its context, rewards inverted
    (config_fields("explorative", context_strategy_name="random_unbiased", icrl_flip_feedback=True,
                   icrl_flip_feedback_prob=1.0), "explorative ICRL, all episodes, inverted rewards"),
    (config_fields("naive", context_strategy_name="random_biased_end_only_negative", temperature=2.0),
     "naive ICRL, negative episodes only, T=2"),
    (config_fields("naive", context_strategy_name="random_biased_end_only_positive", temperature=2.0),
     "naive+ ICRL"),
    # the context-window family: explorative ICRL that downsamples otherwise
    (config_fields("explorative", context_strategy_name="random_biased_end_only_positive", max_window_tokens=400),
     "explorative ICRL, random_biased_end downsampling, 400-token window"),
    (dict(context_strategy_name="random_biased_start", context_p_keep=0.1),
     "explorative ICRL, random_biased_start downsampling, all episodes"),
    (config_fields("naive", context_p_keep=0.5), "naive ICRL, p_keep=0.5"),
    (config_fields("explorative", system_prompt="Be brief."), "explorative ICRL, custom prompt"),
    # numerics other than the device's own choice are a setting: bf16 runs are never averaged with fp32 ones
    (config_fields("explorative", dtype="bfloat16"), "explorative ICRL, bfloat16"),
    (config_fields("explorative", dtype="auto"), "explorative ICRL"),
])
def test_a_run_is_named_by_what_differs_from_its_method(fields, name):
    assert named(**fields) == name


def test_seeds_and_sizes_are_never_part_of_a_name():
    base = config_fields("explorative", context_strategy_name="random_unbiased", icrl_flip_feedback=True,
                         icrl_flip_feedback_prob=1.0)
    names = {named(**base, seed=s, training_seed=s, test_seed=t, train_k=k, test_k=q, test_every=e,
                   max_context_examples=m, model_name=model, task_name=task)
             for s in (100, 101) for t in (100, 7) for k, q, e in ((4, 3, 2), (150, 100, 50))
             for m in (4, 16, None) for model in ("smollm2-135m-instruct", "Qwen/Qwen2.5-7B-Instruct")
             for task in ("clinic150", "trec_coarse")}
    assert names == {"explorative ICRL, all episodes, inverted rewards"}


def test_unknown_method_key_is_named():
    with pytest.raises(ValueError, match="method: unknown 'explorativ'; allowed: zero_shot, icl"):
        config_fields("explorativ")


