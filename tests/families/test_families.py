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
from icrl_lib.analysis.aggregate import paper_results
from icrl_lib.errors import UserError
from icrl_lib.families import notebook as family_notebook
from icrl_lib.families import report, spec
from icrl_lib.paper import families
from icrl_lib.runs.config import read_yaml_mapping
from icrl_lib.tasks.files import paper_train_k
from tests.helpers import ROOT

NOT_RUNNABLE = {"gemini-1.5-flash-8b"}  # an API model of the paper: not a transformers checkpoint
VALUES_ONLY = {"zero_shot", "compute"}  # paper families whose numbers the family shows but whose arms it does not run


@pytest.mark.parametrize("name", list(families.FAMILIES))
def test_paper_params_expand_to_exactly_the_papers_settings(name):
    """The arms (the paper's method and setting: strategies, p_keep, temperatures, K, sampling, windows,
    exemplars), models and tasks of params/families/<name>/paper.yaml are those of paper_results.csv."""
    fam = families.family(name)
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
    arms = {a.label: a for a in families.family("reward_ablations").arms()}
    inverted = arms["naive: inverted"].fields
    assert (inverted["context_strategy_name"], inverted["temperature"], inverted["icrl_flip_feedback_prob"]) == (
        "random_biased_end", 2.0, 1.0)
    assert arms["explorative: none"].fields["icrl_omit_feedback"] is True
    assert arms["naive: only_positive"].fields == families.config_fields("naive_plus")  # the paper's Naive+
    window = {a.label: a for a in families.family("context_window").arms({"window": [512]})}
    assert window["window 512, random_biased_end"].fields["max_window_tokens"] == 512


def test_family_parameters_are_checked_before_anything_runs():
    fam = families.family("exploration")
    with pytest.raises(UserError, match="knobs: exploration has no knob 'K'; allowed: p_keep, temperature"):
        spec.configs(fam, {"knobs": {"K": [1]}})
    with pytest.raises(UserError, match="arms: exploration has no arm"):
        spec.configs(fam, {"arms": ["explorative ICRL"]})
    with pytest.raises(UserError, match="arm_overrides: exploration has no arm"):
        spec.configs(fam, {"arm_overrides": {"naive": {"temperature": 1.0}}})
    with pytest.raises(UserError, match="unknown parameter"):
        spec.configs(fam, {"modles": []})
    with pytest.raises(UserError, match="family: unknown 'mian'; allowed: main"):
        families.family("mian")
    with pytest.raises(UserError, match=r"seeds: each must be an int .*got \[\[100, 100, 100\]\]"):
        spec.configs(fam, {"seeds": [[100, 100, 100]]})
    with pytest.raises(UserError, match="max_context_examples: no value for task 'banking77'"):
        spec.configs(fam, {"tasks": ["banking77"], "max_context_examples": {"clinic150": 16}})


def test_every_arm_and_seed_tests_the_same_queries_and_sizes_may_differ_per_task():
    """Seeds vary contexts, sampling and the training order; the test set is one, so arms and seeds pair per query."""
    pairs = spec.configs(families.family("abstract_labels"), {
        "tasks": ["trec_coarse", "clinic150"], "seeds": [100, 101], "test_seed": 7,
        "max_context_examples": {"trec_coarse": 22, "clinic150": 166}})
    assert {(c.seed, c.training_seed) for _, c in pairs} == {(100, 100), (101, 101)}
    assert {c.test_seed for _, c in pairs} == {7}
    caps = {c.task_name: c.max_context_examples for a, c in pairs if a.label == "naive ICRL"}
    assert caps == {"trec_coarse_unsemantic": 22, "clinic150_unsemantic": 166}


def test_an_arms_own_fields_win_over_the_sizes():
    """Zero-shot stays zero-shot when a params file sets max_context_examples (the bug this pins merged it)."""
    pairs = spec.configs(families.family("main"), {"max_context_examples": 32, "tasks": ["trec_coarse"]})
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


@pytest.mark.parametrize("name", list(families.FAMILIES))
def test_the_committed_family_notebook_is_the_generated_one(name, tmp_path):
    committed = nbformat.read(ROOT / "notebooks" / f"family_{name}.ipynb", as_version=4)
    generated = family_notebook.build(name)
    assert [(c.cell_type, c.source, c.get("id")) for c in committed.cells] == \
        [(c.cell_type, c.source, c.get("id")) for c in generated.cells], "run `make family-notebooks`"
    assert generated.metadata["kernelspec"]["name"] == "python3"
    for which in ("paper", "cpu", "ci"):  # every params file is a valid set of this notebook's parameters
        params = notebook.merge_parameters(spec.PARAMETERS, read_yaml_mapping(
            ROOT / "params" / "families" / name / f"{which}.yaml"), which)
        assert spec.configs(families.family(name), params)


def test_the_ci_override_is_applied_only_when_asked(monkeypatch):
    base = dict(spec.PARAMETERS)
    assert family_notebook.parameters("main", base, env={}) == base
    ci = family_notebook.parameters("main", base, env={"ICRL_FAMILY_PARAMS": "ci"})
    assert ci["train_k"] == 4 and ci["output_dir"] == "outputs/_ci"
    with pytest.raises(UserError, match="ICRL_FAMILY_PARAMS=gpu: no "):
        family_notebook.parameters("main", base, env={"ICRL_FAMILY_PARAMS": "gpu"})


@pytest.mark.model
def test_an_executed_family_notebook_keeps_its_figures_in_html(tmp_path, monkeypatch):
    """papermill runs family_scaling with its CI sizes; nbconvert's HTML of the result holds the figures' data and
    plotly.js (offline), and the exported files exist and are not empty."""
    import papermill

    monkeypatch.delenv("ICRL_FAMILY_PARAMS", raising=False)  # the CI sizes come as papermill parameters here
    ci = read_yaml_mapping(ROOT / "params" / "families" / "scaling" / "ci.yaml")
    executed = tmp_path / "scaling.ipynb"
    papermill.execute_notebook(str(ROOT / "notebooks" / "family_scaling.ipynb"), str(executed),
                               parameters={**ci, "output_dir": str(tmp_path / "out")}, kernel_name="python3",
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
    from icrl_lib.runs.store import run_name

    params = {"arm_overrides": {"*": {"backend": "llamacpp", "server_url": "http://127.0.0.1:8080"}}}
    expanded = spec.configs(families.FAMILIES["main"], params)
    assert expanded and all(c.backend == "llamacpp" and "@llamacpp" in run_name(c) for _, c in expanded)
    with pytest.raises(UserError, match="allow_approximate"):
        spec.configs(families.FAMILIES["main"], {"arm_overrides": {"*": {"backend": "llamacpp-choice",
                                                                      "server_url": "http://127.0.0.1:8080"}}})
