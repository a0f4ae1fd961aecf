"""The paper's experiment families: their params files give exactly the paper's settings, their notebooks are the
generated ones, findings are checked honestly, and an executed family notebook's HTML export keeps its figures."""
from __future__ import annotations

import json
import subprocess
import sys

import nbformat
import pandas as pd
import pytest

from icrl_lib import notebook
from icrl_lib.analysis import aggregate
from icrl_lib.analysis.aggregate import paper_results
from icrl_lib.errors import UserError
from icrl_lib.families import comparison, family_notebook, report, spec
from icrl_lib.paper import experiments
from icrl_lib.runs.config import read_yaml_mapping
from icrl_lib.runs.identity import run_name
from icrl_lib.tasks.files import paper_train_k
from tests.helpers import ROOT

NOT_RUNNABLE = {"gemini-1.5-flash-8b"}  # an API model of the paper: not a transformers checkpoint
VALUES_ONLY = {"zero_shot", "compute"}  # paper families whose numbers the family shows but whose arms it does not run


@pytest.mark.parametrize("name", list(experiments.FAMILIES))
def test_paper_params_expand_to_exactly_the_papers_settings(name):
    """The arms (the paper's method and setting: strategies, p_keep, temperatures, K, sampling, windows,
    exemplars), models and tasks of params/families/<name>/paper.yaml are those of paper_results.csv."""
    fam = experiments.family(name)
    params = read_yaml_mapping(ROOT / "params" / "families" / name / "paper.yaml")
    pairs = spec.configs(fam, params)
    paper = paper_results()
    rows = paper[paper["family"].isin(set(fam.paper_families) - VALUES_ONLY)]
    assert {(a.paper_method, a.paper_setting) for a, _ in pairs} == set(zip(rows["method"], rows["setting"]))
    assert {c.model_name for _, c in pairs} == set(rows["model"]) - NOT_RUNNABLE
    assert {c.task_name for _, c in pairs} == set(rows["task"])
    for a, config in pairs:  # the sizes of the paper's README commands
        assert (config.test_every, config.test_k, config.max_context_examples) == (500, 500, 0 if a.label == "zero-shot"
                                                                                   else None)
        assert config.train_k == paper_train_k(config.task_name.removesuffix("_unsemantic"))  # the task file's
    assert len({c.seed for _, c in pairs}) == 3 and {c.test_seed for _, c in pairs} == {100}  # one test set


def test_arms_are_built_from_the_method_table():
    arms = {a.label: a for a in experiments.family("reward_ablations").arms()}
    inverted = arms["naive: inverted"].fields
    assert (inverted["context_strategy_name"], inverted["temperature"], inverted["icrl_flip_feedback_prob"]) == (
        "random_biased_end", 2.0, 1.0)
    assert arms["explorative: none"].fields["icrl_omit_feedback"] is True
    assert arms["naive: only_positive"].fields == experiments.config_fields("naive_plus")  # the paper's Naive+
    window = {a.label: a for a in experiments.family("context_window").arms({"window": [512]})}
    assert window["window 512, random_biased_end"].fields["max_window_tokens"] == 512


def test_family_parameters_are_checked_before_anything_runs():
    fam = experiments.family("exploration")
    with pytest.raises(UserError, match="knobs: exploration has no knob 'K'; allowed: p_keep, temperature"):
        spec.configs(fam, {"knobs": {"K": [1]}})
    with pytest.raises(UserError, match="arms: exploration has no arm"):
        spec.configs(fam, {"arms": ["explorative ICRL"]})
    with pytest.raises(UserError, match="arm_overrides: exploration has no arm"):
        spec.configs(fam, {"arm_overrides": {"naive": {"temperature": 1.0}}})
    with pytest.raises(UserError, match="unknown parameter"):
        spec.configs(fam, {"modles": []})
    with pytest.raises(UserError, match="family: unknown 'mian'; allowed: main"):
        experiments.family("mian")
    with pytest.raises(UserError, match=r"seeds: each must be an int .*got \[\[100, 100, 100\]\]"):
        spec.configs(fam, {"seeds": [[100, 100, 100]]})
    with pytest.raises(UserError, match="max_context_examples: no value for task 'banking77'"):
        spec.configs(fam, {"tasks": ["banking77"], "max_context_examples": {"clinic150": 16}})


def test_every_arm_and_seed_tests_the_same_queries_and_sizes_may_differ_per_task():
    """Seeds vary contexts, sampling and the training order; the test set is one, so arms and seeds pair per query."""
    pairs = spec.configs(experiments.family("abstract_labels"), {
        "tasks": ["trec_coarse", "clinic150"], "seeds": [100, 101], "test_seed": 7,
        "max_context_examples": {"trec_coarse": 22, "clinic150": 166}})
    assert {(c.seed, c.training_seed) for _, c in pairs} == {(100, 100), (101, 101)}
    assert {c.test_seed for _, c in pairs} == {7}
    caps = {c.task_name: c.max_context_examples for a, c in pairs if a.label == "naive ICRL"}
    assert caps == {"trec_coarse_unsemantic": 22, "clinic150_unsemantic": 166}


def test_an_arms_own_fields_win_over_the_sizes():
    """Zero-shot stays zero-shot when a params file sets max_context_examples (the bug this pins merged it)."""
    pairs = spec.configs(experiments.family("main"), {"max_context_examples": 32, "tasks": ["trec_coarse"]})
    configs = {a.label: c for a, c in pairs}
    assert configs["zero-shot"].max_context_examples == 0 and configs["naive ICRL"].max_context_examples == 32
    assert len({c.context_strategy_name for c in configs.values()}) == 5  # ICL, naive, naive+, explorative, approx.


def test_the_token_table_reads_as_whole_tokens_and_percentages():
    tokens = pd.DataFrame([{"model_name": "m", "task_name": "t", "method": "explorative: both",
                            "train_tokens_per_step": 259.86, "train_tokens_total": 38979.0, "final": 0.35},
                           {"model_name": "m", "task_name": "t", "method": "naive: both",
                            "train_tokens_per_step": 352.5, "train_tokens_total": 52877.0, "final": float("nan")}])
    html = report.token_view(tokens).to_html()
    assert all(text in html for text in (">260<", ">38,979<", ">35.0%<", ">–<")) and "0.350000" not in html
    assert tokens.loc[0, "final"] == 0.35  # the exported table keeps its numbers


@pytest.mark.parametrize("name", list(experiments.FAMILIES))
def test_the_committed_family_notebook_is_the_generated_one(name, tmp_path):
    committed = nbformat.read(ROOT / "notebooks" / f"family_{name}.ipynb", as_version=4)
    generated = family_notebook.build(name)
    assert [(c.cell_type, c.source, c.get("id")) for c in committed.cells] == \
        [(c.cell_type, c.source, c.get("id")) for c in generated.cells], "run `make family-notebooks`"
    assert generated.metadata["kernelspec"]["name"] == "python3"
    for which in ("paper", "cpu", "ci"):  # every params file is a valid set of this notebook's parameters
        params = notebook.merge_parameters(spec.PARAMETERS, read_yaml_mapping(
            ROOT / "params" / "families" / name / f"{which}.yaml"), which)
        assert spec.configs(experiments.family(name), params)


def test_the_ci_override_is_applied_only_when_asked(monkeypatch):
    base = dict(spec.PARAMETERS)
    assert family_notebook.parameters("main", base, env={}) == base
    ci = family_notebook.parameters("main", base, env={"ICRL_FAMILY_PARAMS": "ci"})
    assert ci["train_k"] == 4 and ci["output_dir"] == "outputs/_ci"
    with pytest.raises(UserError, match="ICRL_FAMILY_PARAMS=gpu: no "):
        family_notebook.parameters("main", base, env={"ICRL_FAMILY_PARAMS": "gpu"})


@pytest.mark.model
def test_an_executed_family_notebook_keeps_its_figures_in_html(tmp_path, monkeypatch):
    """papermill runs family_scaling with its CI sizes on the real embedded model (nbval runs every family notebook on
    the tiny one); nbconvert's HTML of the result holds the figures' data and plotly.js (offline), and the exported
    files exist and are not empty."""
    import papermill

    monkeypatch.delenv("ICRL_FAMILY_PARAMS", raising=False)  # the CI sizes come as papermill parameters here
    ci = read_yaml_mapping(ROOT / "params" / "families" / "scaling" / "ci.yaml")
    executed = tmp_path / "scaling.ipynb"
    papermill.execute_notebook(str(ROOT / "notebooks" / "family_scaling.ipynb"), str(executed),
                               parameters={**ci, "models": ["smollm2-135m-instruct"],
                                           "output_dir": str(tmp_path / "out")}, kernel_name="python3",
                               cwd=str(ROOT / "notebooks"), progress_bar=False)
    html = tmp_path / "scaling.html"
    subprocess.run([sys.executable, "-m", "jupyter", "nbconvert", "--to", "html", str(executed), "--output",
                    str(html)], check=True, capture_output=True)
    text = html.read_text()
    assert "plotly.js v" in text  # the library itself, embedded: no network needed to view it
    assert text.count("Plotly.newPlot") >= 4  # test accuracy, regret, running accuracy, collapse
    assert "Test accuracy" in text or "test accuracy" in text
    nb = json.loads(executed.read_text())
    mimetypes = {k for c in nb["cells"] for o in c.get("outputs", []) for k in o.get("data", {})}
    assert {"application/vnd.plotly.v1+json", "text/html"} <= mimetypes
    exported = list((tmp_path / "out" / "_analysis" / "scaling").iterdir())
    assert {p.suffix for p in exported} >= {".html", ".parquet", ".csv"}
    assert all(p.stat().st_size > 0 for p in exported)


def test_a_family_runs_on_a_server_backend_like_any_other_config_field():
    from icrl_lib.runs.identity import run_name

    params = {"arm_overrides": {"*": {"backend": "llamacpp", "server_url": "http://127.0.0.1:8080"}}}
    expanded = spec.configs(experiments.FAMILIES["main"], params)
    assert expanded and all(c.backend == "llamacpp" and "@llamacpp" in run_name(c) for _, c in expanded)
    with pytest.raises(UserError, match="allow_approximate"):
        spec.configs(experiments.FAMILIES["main"], {"arm_overrides": {"*": {"backend": "llamacpp-choice",
                                                                      "server_url": "http://127.0.0.1:8080"}}})


def comparison_of(name: str, params: dict, window: int = 8192) -> pd.DataFrame:
    """``comparison.paper_vs_ours`` of hand-made finished runs of family ``name`` with ``params`` (final accuracy 0.5;
    ``window``: the model's token window, as ``meta.json`` gives it)."""
    fam = experiments.family(name)
    pairs = spec.configs(fam, params)
    arms = {run_name(c): a for a, c in pairs}
    tests, steps = [], []
    for a, c in pairs:
        cell = {"run": run_name(c), "model_name": c.model_name, "task_name": c.task_name, "method": a.label,
                "method_key": None, "paper_method": None, "paper_setting": None, "train_k": c.train_k,
                "test_k": c.test_k, "test_every": c.test_every, "seed": c.seed, "training_seed": c.training_seed,
                "test_seed": c.test_seed, "context_window": float(c.max_window_tokens or window)}
        last = 0 if c.zero_shot else c.train_k - 1
        tests += [{**cell, "step": step, "accuracy": acc, "n": c.test_k} for step, acc in ((0, 0.1), (last, 0.5))
                  if not (c.zero_shot and step)]
        steps += [] if c.zero_shot else [{**cell, "step": last, "reward": 1.0, "regret": 10.0, "prediction": "x"}]
    tests, steps = pd.DataFrame(tests), pd.DataFrame(steps)
    per_run = aggregate.run_metrics(tests, steps)
    tables = report.Tables(tests, steps, pd.DataFrame(), per_run, aggregate.aggregate(per_run), pd.DataFrame(),
                           {run_name(c): c for _, c in pairs})
    return comparison.paper_vs_ours(fam, tables, arms)


def test_a_capped_cpu_arm_is_compared_with_the_papers_own_setting_and_says_how_it_differs():
    """The CPU profiles cap the context (16 episodes, 150 steps): the paper's value for the same method and task at
    its own setting stands beside ours, and "alike" says what differs (test queries and seeds only change the noise,
    which the interval covers)."""
    cpu = {"tasks": ["banking77"], "seeds": [100, 101], "train_k": 150, "test_every": 50, "test_k": 100,
           "max_context_examples": 16}
    table = comparison_of("main", cpu).set_index(["arm", "metric"])
    row = table.loc[("explorative ICRL", "test_acc_final")]
    assert row["ours: smollm2-135m-instruct"].startswith("50.0% [") and row["paper: Meta-Llama-3.1-8B-Instruct"] == \
        "66.0%"
    assert row["ours: setting"] == "150 steps · 100 test queries · 16 episodes per context · 2 seeds"
    assert row["paper: setting"] == "10,000 steps · 500 test queries · 128K-token window · 1 seed · explorative " \
                                    "(its main configuration)"
    assert row["alike"] == "differs: 150 vs 10,000 steps; 16 episodes per context vs 128K-token window"
    assert not table["paper: setting"].str.contains("no paper counterpart").any()
    zero = table.loc[("zero-shot", "test_acc_step0")]
    assert zero["alike"] == "same setting" and zero["paper: Meta-Llama-3.1-8B-Instruct"] == "17.2%"
    regret = table.loc[("naive ICRL", "regret_per_step")]  # the paper's regret over its own 10,000 steps
    assert regret["paper: Meta-Llama-3.1-8B-Instruct"] == "0.88"


def test_an_arm_the_paper_never_ran_gets_its_methods_default_setting_and_overrides_are_named():
    """context_window's CPU profile: a 400-token window (the paper ran 4K and 8K) and p_keep 0.5 for every arm. The
    window arm is compared with the family's default for its method (the full window); the override shows."""
    cpu = {"tasks": ["clinic150"], "train_k": 150, "test_every": 50, "test_k": 100, "max_context_examples": None,
           "knobs": {"window": [400]}, "arm_overrides": {"*": {"context_p_keep": 0.5}}}
    table = comparison_of("context_window", cpu).set_index(["arm", "metric"])
    small = table.loc[("window 400, random_biased_start", "test_acc_final")]
    assert small["paper: Meta-Llama-3.1-8B-Instruct"] == "81.4%"  # window=131072;downsampling=random_unbiased
    assert small["paper: setting"].endswith("explorative (window=131072;downsampling=random_unbiased)")
    assert small["ours: setting"] == ("150 steps · 100 test queries · 400-token window · strategy "
                                      "random_biased_start_only_positive · p_keep 0.5 · 1 seed")
    assert small["alike"] == ("differs: 150 vs 10,000 steps; 400-token window vs 128K-token window; strategy "
                              "random_biased_start_only_positive vs random_unbiased_only_positive; p_keep 0.5 vs 0.1")
    full = table.loc[("explorative ICRL, full window", "test_acc_final")]
    assert full["alike"] == "differs: 150 vs 10,000 steps; 8K-token window vs 128K-token window; p_keep 0.5 vs 0.1"


def test_a_full_size_arm_is_the_same_setting_and_only_a_task_the_paper_never_ran_has_no_counterpart():
    paper = {"models": ["meta-llama/Meta-Llama-3.1-8B-Instruct"], "tasks": ["banking77"], "seeds": [100, 101, 102],
             "train_k": 10000, "test_every": 500, "test_k": 500, "max_context_examples": None,
             "arms": ["explorative ICRL", "naive ICRL"]}
    table = comparison_of("main", paper, window=131072)
    assert set(table["alike"]) == {"same setting"}
    assert set(table["ours: setting"]) == {"10,000 steps · 500 test queries · 128K-token window · 3 seeds"}
    # the paper ran p_keep only on Banking77: on CLINIC150 the exploration family has no counterpart at all
    table = comparison_of("exploration", {"tasks": ["clinic150"], "knobs": {"p_keep": [0.5], "temperature": [1.0]}})
    assert table["paper: setting"].str.startswith("no paper counterpart (the paper never ran").all()
    assert set(table["alike"]) == {"–"}


def test_the_comparison_shows_its_settings_in_full():
    """A DataFrame's HTML cuts strings at 50 characters (pandas' display.max_colwidth): the view never does."""
    table = comparison_of("main", {"tasks": ["banking77"], "seeds": [100, 101], "max_context_examples": 16})
    html = comparison.paper_vs_ours_view(table).to_html()
    longest = max(table["ours: setting"], key=len)
    assert len(longest) > 50 and longest in html and "white-space: normal" in html
