"""Every finding a family checks can fail: with the effect reversed it is contradicted, with no effect it is
inconclusive; the paper's own numbers never contradict it where the paper makes it; the finding texts say what the
paper's numbers show; and the verdict table, its summary and the README's table are one."""
from __future__ import annotations

import re

import pandas as pd
import pytest

from icrl_lib.analysis import stats, verdicts
from icrl_lib.analysis.aggregate import paper_results
from icrl_lib.paper import families, findings
from tests import helpers as synthetic
from tests.helpers import ROOT

CHECKS = [(name, check) for name, fam in families.FAMILIES.items() for check in fam.checks()]
CPU_KNOBS = {"context_window": {"window": [400, 800]}}  # knob-dependent labels, as the CPU profile runs them


def _verdict(name: str, check, effect: str, seeds=(100,), knobs=None) -> pd.Series:
    fam = families.family(name)
    per_run, predictions = synthetic.tables(fam, check, effect, seeds, knobs)
    table = verdicts.evaluate(fam, per_run, predictions, {a.label: a for a in fam.arms(knobs)}, knobs)
    return table[table["finding"] == check.text].iloc[0]


@pytest.mark.parametrize("name,check", CHECKS, ids=[f"{n}: {c.text[:60]}" for n, c in CHECKS])
@pytest.mark.parametrize("seeds", [(100,), (100, 101)], ids=["1 seed", "2 seeds"])
def test_every_check_is_contradicted_by_the_reversed_effect_and_open_without_one(name, check, seeds):
    reversed_ = _verdict(name, check, "reversed", seeds)
    assert reversed_["verdict"] == stats.CONTRADICTED, reversed_.to_dict()
    none = _verdict(name, check, "none", seeds)
    assert none["verdict"] == stats.INCONCLUSIVE, none.to_dict()
    assert none["n_seeds"] == len(seeds) and none["low"] < none["effect"] < none["high"]


def test_knob_dependent_checks_follow_the_knobs_a_profile_runs():
    fam = families.family("context_window")
    checks = fam.checks(CPU_KNOBS["context_window"])
    assert [c.left for c in checks] == ["window 400, random_unbiased", "window 800, random_unbiased"]
    for check in checks:
        assert _verdict("context_window", check, "reversed", knobs=CPU_KNOBS["context_window"])["verdict"] == \
            stats.CONTRADICTED


@pytest.mark.parametrize("name", list(families.FAMILIES))
def test_the_papers_own_numbers_never_contradict_a_check_where_the_paper_makes_it(name):
    """Each check with numbers in the paper is evaluated in at least one cell it is claimed for, and is never
    contradicted there (500 test queries, unpaired); inconclusive cells are where the paper's evidence is weak."""
    fam = families.family(name)
    paper = verdicts.paper_evaluate(fam)
    claimed = paper[paper["claimed"]]
    with_numbers = {c.text for c in fam.checks() if c.measure != "top_share"}  # collapse: no number in the paper
    assert set(claimed["finding"]) == with_numbers, "every check is evaluated on the paper's numbers"
    contradicted = claimed[claimed["verdict"] == stats.CONTRADICTED]
    assert contradicted.empty, contradicted.to_string()


@pytest.mark.parametrize("name,check", [(n, c) for n, c in CHECKS if c.exceptions])
def test_an_exception_is_named_in_the_text_and_is_where_the_paper_contradicts_it(name, check):
    """Exceptions are never a way to hide a weak cell: each is named in the check's text and contradicted by the
    paper's own numbers."""
    paper = verdicts.paper_evaluate(families.family(name)).set_index(["finding", "model_name", "task_name"])
    for model, task in check.exceptions:
        assert model.split("/")[-1].split("-Instruct")[0] in check.text and task.lower() in check.text.lower()
        assert paper.loc[(check.text, model, task), "verdict"] == stats.CONTRADICTED


def test_a_weak_cell_of_the_paper_is_inconclusive_not_widened():
    """The issue's example: Llama's explorative with one exemplar per label vs naive on abstract TREC fine is 0.036
    vs 0.030 on 500 queries each: inconclusive, reported as the paper's weak evidence."""
    paper = verdicts.paper_evaluate(families.family("abstract_labels"))
    row = paper[(paper["task_name"] == "trec_fine") & (paper["model_name"] == findings.LLAMA)
                & (paper["finding"].str.startswith("Explorative ICRL with 1 exemplar"))].iloc[0]
    assert (row["left_value"], row["right_value"], row["verdict"]) == (0.036, 0.030, stats.INCONCLUSIVE)


def test_a_difference_of_a_few_queries_out_of_a_hundred_is_inconclusive():
    """23/60-style differences: 3 queries out of 100 apart on one seed never read as a finding."""
    fam = families.family("approximate")
    check = next(c for c in fam.checks() if c.text.startswith("K=8 ends above K=1"))
    per_run, predictions = synthetic.tables(fam, check, "none")
    k8 = per_run.loc[per_run["method"] == check.left, "run"].iloc[0]
    last = predictions["step"].max()
    flip = (predictions["run"] == k8) & (predictions["step"] == last) & ~predictions["correct"]
    predictions.loc[predictions[flip].index[:3], "correct"] = True  # K=8: 33 of 100, K=1: 30 of 100
    per_run.loc[per_run["run"] == k8, "test_acc_final"] = 0.33
    table = verdicts.evaluate(fam, per_run, predictions, {a.label: a for a in fam.arms()})
    row = table[table["finding"] == check.text].iloc[0]
    assert round(row["effect"], 2) == 0.03 and row["verdict"] == stats.INCONCLUSIVE and row["mde"] > 0.1


def test_finding_texts_say_what_the_papers_numbers_show():
    """The numbers a family's finding text quotes are the paper's."""
    paper = paper_results()

    def value(family, model, task, method, setting, metric="test_acc_final"):
        row = paper[(paper["family"] == family) & (paper["model"].str.contains(model)) & (paper["task"] == task)
                    & (paper["method"] == method) & (paper["setting"] == setting) & (paper["metric"] == metric)]
        return float(row["value"].iloc[0])

    texts = {name: fam.finding for name, fam in families.FAMILIES.items()}
    # context_window: "12-27 points below the full 128K window"
    drops = [value("context_window", "Llama", t, "explorative", "window=131072;downsampling=random_unbiased")
             - value("context_window", "Llama", t, "explorative", f"window={w};downsampling={d}")
             for t in ("banking77", "clinic150") for w in (4096, 8192)
             for d in ("random_biased_start", "random_biased_end", "random_unbiased")]
    assert (round(100 * min(drops)), round(100 * max(drops))) == (12, 27) and "12-27 points" in texts["context_window"]
    # main: "Qwen2.5-7B on Banking77 is the exception: +11 points"
    gain = value("main", "Qwen2.5-7B", "banking77", "naive", "") - value("main", "Qwen2.5-7B", "banking77", "naive", "",
                                                                         "test_acc_step0")
    assert round(100 * gain) == 11 and "+11 points" in texts["main"]
    # reward_ablations: "explorative ICRL still gains 14 points" without feedback
    gains = [value("reward_ablations", "Llama", t, "none", "method_family=explorative;temperature=1.0")
             - value("reward_ablations", "Llama", t, "none", "method_family=explorative;temperature=1.0",
                     "test_acc_step0")
             for t in ("banking77", "clinic150")]
    assert [round(100 * g) for g in gains] == [14, 14] and "gains 14 points" in texts["reward_ablations"]
    # scaling: "every size ... improves substantially over zero-shot": explorative gains >= 15 points everywhere
    scaling = paper[(paper["family"] == "scaling") & (paper["method"] == "explorative")]
    wide = scaling.pivot_table(index=["model", "task"], columns="metric", values="value")
    assert (wide["test_acc_final"] - wide["test_acc_step0"]).min() > 0.15 and "Every size" in texts["scaling"]
    # approximate: "processing 100-280x fewer tokens"
    ratios = paper.loc[(paper["family"] == "compute") & (paper["metric"] == "tokens_ratio")
                       & paper["model"].str.contains("Llama"), "value"]
    assert (ratios.min(), ratios.max()) == (109, 278) and "100-280x" in texts["approximate"]


def test_the_summary_counts_bonferroni_adjusted_verdicts_over_the_tasks():
    fam = families.family("main")
    check = fam.checks()[2]  # explorative above zero-shot
    per_run, predictions = synthetic.tables(fam, check, "reversed")
    other = per_run.assign(task_name="banking77", run=per_run["run"] + "b")
    predictions = pd.concat([predictions, predictions.assign(run=predictions["run"] + "b")])
    table = verdicts.evaluate(fam, pd.concat([per_run, other]), predictions, {a.label: a for a in fam.arms()})
    row = table[table["finding"] == check.text]
    assert set(row["adjusted_level"]) == {stats.adjusted_level(2)} == {0.975}
    assert set(row["tasks_supported"]) == {"0 of 2"}
    summary = verdicts.summary(table, verdicts.paper_evaluate(fam))
    assert summary.set_index("finding").loc[check.text, "ours"] == "contradicted 2 of 2"


def test_a_task_the_paper_does_not_claim_a_finding_for_is_reported_beyond_it():
    fam = families.family("exploration")
    check = fam.checks()[0]  # p_keep: the paper's Banking77 only; the synthetic runs are on CLINIC150
    row = _verdict("exploration", check, "reversed")
    assert row["scope"].startswith("beyond the paper") and row["tasks_supported"] == "–"
    assert row["verdict"] == stats.CONTRADICTED and row["verdict_adjusted"] == ""


def test_missing_arms_are_not_measured_never_a_verdict():
    fam = families.family("approximate")
    check = fam.checks()[2]  # K=32: not in the CPU profile
    per_run, predictions = synthetic.tables(fam, check, "reversed", knobs={"K": [1, 8]})
    table = verdicts.evaluate(fam, per_run, predictions, {a.label: a for a in fam.arms({"K": [1, 8]})})
    assert table.set_index("finding").loc[check.text, "verdict"] == verdicts.NOT_MEASURED


def test_rho_with_too_few_test_points_is_inconclusive_and_says_why():
    fam = families.family("scaling")
    check = fam.checks()[2]
    per_run, predictions = synthetic.tables(fam, check, "reversed")
    per_run["test_points"] = 4
    row = verdicts.evaluate(fam, per_run, predictions, {a.label: a for a in fam.arms()}).set_index("finding").loc[
        check.text]
    assert row["verdict"] == verdicts.NOT_MEASURED and "test points" in row["note"]


def test_the_readme_verdict_table_is_the_measured_one():
    """The README's verdict table is ``verdicts.markdown`` of the committed CPU verdict table, so no sentence claims
    more than the table shows."""
    table = pd.read_csv(ROOT / verdicts.CPU_VERDICTS)
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- verdicts:start -->\n(.*?)\n<!-- verdicts:end -->", readme, re.S)
    assert block, "README lacks the verdict table markers"
    assert (block.group(1).strip()
            == verdicts.markdown(verdicts.overall(table)).strip()), "run `python -m icrl_lib verdicts --readme`"


def test_a_comparison_of_two_arms_that_did_not_learn_says_so():
    """Only-positive vs both means little when both ended at or below their step 0: the verdict stays what the
    interval gives, and a note says neither arm learned; a reference arm (zero-shot) never gets the note."""
    fam = families.family("reward_ablations")
    check = fam.checks()[1]  # explorative: only-positive above both
    per_run, predictions = synthetic.tables(fam, check, "none")
    per_run.loc[per_run["method"].isin([check.left, check.right]), "test_acc_step0"] = 0.9
    row = verdicts.evaluate(fam, per_run, predictions, {a.label: a for a in fam.arms()}).set_index("finding").loc[
        check.text]
    assert "neither arm learned" in row["note"] and "1 seed" in row["note"]
    main = families.family("main")
    check = main.checks()[0]  # naive vs zero-shot
    per_run, predictions = synthetic.tables(main, check, "none")
    per_run["test_acc_step0"] = 0.9
    row = verdicts.evaluate(main, per_run, predictions, {a.label: a for a in main.arms()}).set_index("finding").loc[
        check.text]
    assert "neither arm learned" not in row["note"]


def test_the_summary_says_where_neither_arm_learned():
    """A supported "at most a few points apart" between two collapsed arms must not read as a clean support."""
    fam = families.family("reward_ablations")
    check = fam.checks()[4]  # noisy rewards cost at most a few points: an equivalence claim
    per_run, predictions = synthetic.tables(fam, check, "none")
    per_run.loc[per_run["method"].isin([check.left, check.right]), "test_acc_step0"] = 0.9
    table = verdicts.evaluate(fam, per_run, predictions, {a.label: a for a in fam.arms()})
    summary = verdicts.summary(table).set_index("finding")
    assert summary.loc[check.text, "caveat"] == "neither arm learned on clinic150"
    assert "neither arm learned on clinic150" in verdicts.markdown(summary.reset_index())


def test_a_one_seed_note_names_what_its_interval_covers():
    fam = families.family("scaling")
    check = fam.checks()[2]  # Spearman rho: the interval covers the test points, not queries
    per_run, predictions = synthetic.tables(fam, check, "reversed")
    row = verdicts.evaluate(fam, per_run, predictions, {a.label: a for a in fam.arms()}).set_index("finding").loc[
        check.text]
    assert "1 seed: the interval covers the test points" in row["note"]


def test_show_verdicts_prints_the_papers_weak_cells_with_rho_as_a_number(capsys):
    from icrl_lib.families import report

    fam = families.family("scaling")
    report.show_verdicts(fam, pd.DataFrame(columns=verdicts.COLUMNS))
    out = capsys.readouterr().out
    assert "No finding can be checked yet" in out
    assert "The paper's own evidence is weak here: Explorative ICRL learns more stably than Naive+" in out
    assert re.search(r"\(ρ 0\.\d\d vs 0\.\d\d, one run, 500 test queries: inconclusive\)", out)
