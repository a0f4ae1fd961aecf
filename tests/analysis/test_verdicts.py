"""Every finding a family checks can fail, and none claims more than its data: reversed, it is contradicted; a tiny
effect on a small sample is inconclusive, on a precise large one supported only where the claim is a tolerance;
arms at the floor are never counted as support; one seed never decides. The paper's own numbers contradict a check
exactly at its named exceptions; the tables, the committed CPU verdicts and the README's table are one."""
from __future__ import annotations

import math
import re

import pandas as pd
import pytest

from icrl_lib.analysis import paper_verdicts, stats, verdict_tables, verdicts
from icrl_lib.analysis.aggregate import paper_results
from icrl_lib.paper import experiments, findings
from tests import helpers as synthetic
from tests.helpers import ROOT

CHECKS = [(name, check) for name, fam in experiments.FAMILIES.items() for check in fam.checks()]
IDS = [c.id for _, c in CHECKS]
SEEDS = (100, 101, 102)


def _row(name: str, check, effect: str, seeds=SEEDS, knobs=None, queries=synthetic.QUERIES) -> pd.Series:
    fam = experiments.family(name)
    per_run, predictions = synthetic.tables(fam, check, effect, seeds, knobs, queries)
    table = verdicts.evaluate(fam, per_run, predictions, {a.label: a for a in fam.arms(knobs)}, knobs)
    return table[table["finding_id"] == check.id].iloc[0]


@pytest.mark.parametrize("name,check", CHECKS, ids=IDS)
def test_the_reversed_effect_contradicts_every_check(name, check):
    row = _row(name, check, "reversed")
    assert row["verdict"] == stats.CONTRADICTED, row.to_dict()
    assert row["verdict_adjusted"] in ("", stats.CONTRADICTED) and row["n_seeds"] == 3


@pytest.mark.parametrize("name,check", CHECKS, ids=IDS)
def test_a_tiny_effect_on_a_small_sample_never_decides(name, check):
    """2 seeds x 20 queries: never supported or contradicted (too few seeds); 3 seeds x 20 queries: the interval
    itself is inconclusive (or the cell is at the floor, or too short for a rho)."""
    two = _row(name, check, "tiny", seeds=SEEDS[:2], queries=20)
    assert two["verdict"] in (verdicts.few_seeds(2), verdicts.FLOOR, verdicts.NOT_MEASURED), two.to_dict()
    three = _row(name, check, "tiny", queries=20)
    assert three["verdict"] in (stats.INCONCLUSIVE, verdicts.FLOOR), three.to_dict()


@pytest.mark.parametrize("name,check", CHECKS, ids=IDS)
def test_a_precise_null_supports_only_a_tolerance_claim(name, check):
    """3 seeds x 1,000 queries with one query of difference: "at most a few points" and "at or above" claims are
    supported (that is what they claim), strict ones inconclusive."""
    row = _row(name, check, "tiny", queries=1000)
    expected = stats.SUPPORTED if check.tolerance else stats.INCONCLUSIVE
    assert row["verdict"] == expected, row.to_dict()


@pytest.mark.parametrize("name,check", CHECKS, ids=IDS)
def test_arms_at_the_floor_are_never_counted_as_support(name, check):
    row = _row(name, check, "floor")
    assert row["verdict"] != stats.SUPPORTED and row["verdict_adjusted"] != stats.SUPPORTED, row.to_dict()
    if check.measure in ("final", "step0"):
        assert row["verdict"] == verdicts.FLOOR and row["tasks_supported"] == "–" and "nothing learned" in row["note"]


@pytest.mark.parametrize("name,check", CHECKS, ids=IDS)
def test_one_seed_never_supports(name, check):
    row = _row(name, check, "forward", seeds=(100,))
    assert row["verdict"] in (verdicts.few_seeds(1), verdicts.NOT_MEASURED), row.to_dict()
    assert row["tasks_supported"] == "–"


def test_the_forward_effect_supports_a_check_on_three_seeds():
    """The other side of the coin: the rule is not a check that can never pass."""
    name, check = next((n, c) for n, c in CHECKS if c.id == "main.explorative_above_zero_shot")
    row = _row(name, check, "forward")
    assert (row["verdict"], row["verdict_adjusted"], row["tasks_supported"]) == (stats.SUPPORTED,) * 2 + ("1 of 1",)


@pytest.mark.parametrize("name", list(experiments.FAMILIES))
def test_the_papers_own_numbers_contradict_a_check_exactly_at_its_named_exceptions(name):
    fam = experiments.family(name)
    paper = paper_verdicts.paper_evaluate(fam)
    claimed = paper[paper["claimed"]]
    with_numbers = {c.id for c in fam.checks() if c.measure != "top_share"}  # collapse: no number in the paper
    assert set(claimed["finding_id"]) == with_numbers, "every check is evaluated on the paper's numbers"
    contradicted = claimed[claimed["verdict"] == stats.CONTRADICTED]
    assert (contradicted["exception"]).all(), contradicted.to_string()
    assert set(claimed.loc[claimed["exception"], "verdict"]) <= {stats.CONTRADICTED}
    texts = paper_verdicts.paper_text(fam)
    for check in fam.checks():
        for model, task in check.exceptions:  # named in the paper column, never dropped from the scope
            assert f"{model.split('/')[-1].removesuffix('-Instruct')} on {task}" in texts[check.id]
            assert check.claimed_for(model, task)


def test_the_context_window_findings_join_the_papers_numbers_by_id_whatever_the_window():
    fam = experiments.family("context_window")
    ours = {c.id for c in fam.checks({"window": [400, 800]})}
    paper = paper_verdicts.paper_text(fam)
    assert ours == set(paper.index) and all(t.startswith("supported 2 of 2") for t in paper)


def test_a_weak_cell_of_the_paper_is_inconclusive_not_widened():
    """Llama's explorative with one exemplar per label vs naive on abstract TREC fine is 0.036 vs 0.030 on 500
    queries each: inconclusive, reported as the paper's weak evidence."""
    paper = paper_verdicts.paper_evaluate(experiments.family("abstract_labels"))
    row = paper[(paper["task_name"] == "trec_fine") & (paper["model_name"] == findings.LLAMA)
                & (paper["finding_id"] == "abstract_labels.one_exemplar_above_naive")].iloc[0]
    assert (row["left_value"], row["right_value"], row["verdict"]) == (0.036, 0.030, stats.INCONCLUSIVE)


def test_the_scaling_question_compares_the_largest_size_with_the_smallest():
    fam = experiments.family("scaling")
    check = next(c for c in fam.checks() if c.id == "scaling.larger_ends_higher")
    paper = paper_verdicts.paper_evaluate(fam)
    rows = paper[paper["finding_id"] == check.id]
    assert set(rows["model_name"]) == {"Qwen/Qwen2.5-72B-Instruct vs Qwen/Qwen2.5-0.5B-Instruct"} and len(rows) == 5
    assert _row("scaling", check, "reversed")["model_name"] == "m-7b vs m-0.5b"
    per_run, predictions = synthetic.tables(fam, check, "forward", SEEDS)
    one = per_run[per_run["model_name"] == "m-7b"]
    row = verdicts.evaluate(fam, one, predictions, {a.label: a for a in fam.arms()}).set_index("finding_id").loc[
        check.id]
    assert row["verdict"] == verdicts.NOT_MEASURED and "2 model sizes" in row["note"]


def test_a_difference_of_a_few_queries_out_of_a_hundred_is_inconclusive():
    fam = experiments.family("approximate")
    check = next(c for c in fam.checks() if c.id == "approximate.k8_above_k1")
    per_run, predictions = synthetic.tables(fam, check, "tiny", SEEDS)
    k8 = set(per_run.loc[per_run["method"] == check.left, "run"])
    last = predictions["step"].max()
    flip = predictions["run"].isin(k8) & (predictions["step"] == last) & ~predictions["correct"]
    for run in k8:  # K=8: 3 more correct of 100 in every seed
        predictions.loc[predictions[flip & (predictions["run"] == run)].index[:3], "correct"] = True
    per_run.loc[per_run["run"].isin(k8), "test_acc_final"] += 0.03
    row = verdicts.evaluate(fam, per_run, predictions, {a.label: a for a in fam.arms()}).set_index(
        "finding_id").loc[check.id]
    assert row["verdict"] == stats.INCONCLUSIVE and row["mde"] > 0.1 and 0.03 <= row["effect"] < 0.04


def test_finding_texts_say_what_the_papers_numbers_show():
    """The numbers a family's finding text quotes are the paper's."""
    paper = paper_results()

    def value(family, model, task, method, setting, metric="test_acc_final"):
        row = paper[(paper["family"] == family) & (paper["model"].str.contains(model)) & (paper["task"] == task)
                    & (paper["method"] == method) & (paper["setting"] == setting) & (paper["metric"] == metric)]
        return float(row["value"].iloc[0])

    texts = {name: fam.finding for name, fam in experiments.FAMILIES.items()}
    drops = [value("context_window", "Llama", t, "explorative", "window=131072;downsampling=random_unbiased")
             - value("context_window", "Llama", t, "explorative", f"window={w};downsampling={d}")
             for t in ("banking77", "clinic150") for w in (4096, 8192)
             for d in ("random_biased_start", "random_biased_end", "random_unbiased")]
    assert (round(100 * min(drops)), round(100 * max(drops))) == (12, 27) and "12-27 points" in texts["context_window"]
    gain = value("main", "Qwen2.5-7B", "banking77", "naive", "") - value("main", "Qwen2.5-7B", "banking77", "naive", "",
                                                                         "test_acc_step0")
    assert round(100 * gain) == 11 and "+11 points" in texts["main"]
    gains = [value("reward_ablations", "Llama", t, "none", "method_family=explorative;temperature=1.0")
             - value("reward_ablations", "Llama", t, "none", "method_family=explorative;temperature=1.0",
                     "test_acc_step0")
             for t in ("banking77", "clinic150")]
    assert [round(100 * g) for g in gains] == [14, 14] and "gains 14 points" in texts["reward_ablations"]
    scaling = paper[(paper["family"] == "scaling") & (paper["method"] == "explorative")]
    wide = scaling.pivot_table(index=["model", "task"], columns="metric", values="value")
    assert (wide["test_acc_final"] - wide["test_acc_step0"]).min() > 0.15 and "Every size" in texts["scaling"]
    ratios = paper.loc[(paper["family"] == "compute") & (paper["metric"] == "tokens_ratio")
                       & paper["model"].str.contains("Llama"), "value"]
    assert (ratios.min(), ratios.max()) == (109, 278) and "100-280x" in texts["approximate"]


def test_the_summary_counts_bonferroni_adjusted_verdicts_over_the_tasks():
    fam = experiments.family("main")
    check = next(c for c in fam.checks() if c.id == "main.explorative_above_zero_shot")
    per_run, predictions = synthetic.tables(fam, check, "reversed", SEEDS)
    other = per_run.assign(task_name="banking77", run=per_run["run"] + "b")
    predictions = pd.concat([predictions, predictions.assign(run=predictions["run"] + "b")])
    table = verdicts.evaluate(fam, pd.concat([per_run, other]), predictions, {a.label: a for a in fam.arms()})
    row = table[table["finding_id"] == check.id]
    assert set(row["adjusted_level"]) == {stats.adjusted_level(2)} == {0.975}
    assert set(row["tasks_supported"]) == {"0 of 2"}
    summary = verdict_tables.summary(table).set_index("finding_id")
    assert summary.loc[check.id, "ours"] == "contradicted 2 of 2"


def test_uncounted_cells_are_shown_and_never_in_k_of_n():
    fam = experiments.family("main")
    check = next(c for c in fam.checks() if c.id == "main.naive_few_points")
    per_run, predictions = synthetic.tables(fam, check, "floor", SEEDS)
    table = verdicts.evaluate(fam, per_run, predictions, {a.label: a for a in fam.arms()})
    summary = verdict_tables.summary(table).set_index("finding_id")
    assert summary.loc[check.id, "ours"] == f"not counted: {verdicts.FLOOR}: 1"
    assert "1 of" not in verdict_tables.markdown(summary.reset_index())


def test_a_task_the_paper_does_not_claim_a_finding_for_is_reported_beyond_it():
    fam = experiments.family("exploration")
    check = fam.checks()[0]  # p_keep: the paper's Banking77 only; the synthetic runs are on CLINIC150
    row = _row("exploration", check, "reversed")
    assert row["scope"].startswith("beyond the paper") and row["tasks_supported"] == "–"
    assert row["verdict"] == stats.CONTRADICTED and row["verdict_adjusted"] == ""


def test_missing_arms_are_not_measured_never_a_verdict():
    fam = experiments.family("approximate")
    check = next(c for c in fam.checks() if c.id == "approximate.k32_above_k8")
    per_run, predictions = synthetic.tables(fam, check, "reversed", knobs={"K": [1, 8]})
    table = verdicts.evaluate(fam, per_run, predictions, {a.label: a for a in fam.arms({"K": [1, 8]})})
    assert table.set_index("finding_id").loc[check.id, "verdict"] == verdicts.NOT_MEASURED


def test_rho_with_too_few_test_points_or_a_flat_curve_says_why():
    fam = experiments.family("scaling")
    check = next(c for c in fam.checks() if c.id == "scaling.explorative_more_stable")
    per_run, predictions = synthetic.tables(fam, check, "reversed", SEEDS)
    arms = {a.label: a for a in fam.arms()}
    short = verdicts.evaluate(fam, per_run.assign(test_points=4), predictions, arms).set_index("finding_id")
    assert short.loc[check.id, "verdict"] == verdicts.NOT_MEASURED and "test points" in short.loc[check.id, "note"]
    flat = per_run.copy()
    flat.loc[flat["method"] == check.left, "spearman_rho"] = math.nan  # run_metrics: a constant curve has no rho
    row = verdicts.evaluate(fam, flat, predictions, arms).set_index("finding_id").loc[check.id]
    assert row["verdict"] == verdicts.NOT_MEASURED and "flat learning curve" in row["note"]


def test_rho_and_collapse_intervals_take_the_run_as_the_unit():
    """Three seeds that agree exactly still give an interval of nonzero width (a seed's variance is never below what
    its own points would give); one seed gives none."""
    same = [(s, 0.5, stats.rho_floor(11)) for s in SEEDS]
    other = [(s, 0.1, stats.rho_floor(11)) for s in SEEDS]
    estimate = stats.seed_difference(same, other, n_points=11, bounds=(-2, 2))
    assert estimate.high - estimate.low > 0.5 and estimate.n_seeds == 3 and estimate.method.startswith("t over")
    assert math.isnan(stats.seed_difference(same[:1], other[:1]).low)


def test_an_mde_beyond_the_measures_range_is_capped_and_untestable():
    check = next(c for _, c in CHECKS if c.id == "main.explorative_above_zero_shot")
    wide = stats.Estimate(0.1, -0.6, 0.8, 0.95, 20, 3, 1.439, "paired over queries and seeds")
    assert verdicts.judge(check, wide, floor=False) == verdicts.UNTESTABLE
    row = {"left": "a", "interval": wide.method, "mde": 1.439}
    assert verdict_tables._mde(row) == "> 100"


def test_the_committed_cpu_verdicts_never_rest_on_one_seed_or_the_floor():
    table = pd.read_csv(ROOT / verdict_tables.CPU_VERDICTS)
    decided = table[table["verdict"].isin([stats.SUPPORTED, stats.CONTRADICTED])]
    assert (decided["n_seeds"] >= verdicts.MIN_SEEDS).all(), decided[["finding_id", "n_seeds"]].to_string()
    assert not table.loc[table["floor"].fillna(False).astype(bool), "verdict"].eq(stats.SUPPORTED).any()
    ids = {c.id for _, c in CHECKS}
    assert set(table["finding_id"]) <= ids


def test_the_readme_verdict_table_is_the_measured_one():
    table = pd.read_csv(ROOT / verdict_tables.CPU_VERDICTS, keep_default_na=False, na_values={
        c: [""] for c in ("left_value", "right_value", "effect", "low", "high", "mde", "adjusted_level")})
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- verdicts:start -->\n(.*?)\n<!-- verdicts:end -->", readme, re.S)
    assert block, "README lacks the verdict table markers"
    assert (block.group(1).strip()
            == verdict_tables.markdown(verdict_tables.summary(table)).strip()), "run `make verdicts`"


def test_show_verdicts_prints_the_papers_weak_cells_with_rho_as_a_number(capsys):
    from icrl_lib.families import report

    fam = experiments.family("scaling")
    report.show_verdicts(fam, pd.DataFrame(columns=verdicts.COLUMNS))
    out = capsys.readouterr().out
    assert "No finding can be checked yet" in out
    assert "The paper's own evidence is weak here: Explorative ICRL learns more stably than Naive+" in out
    assert re.search(r"\(ρ 0\.\d\d vs 0\.\d\d, one run, 500 test queries: inconclusive\)", out)


def test_a_summary_of_a_finding_judged_only_beyond_the_papers_tasks():
    """No cell in the paper's scope (the CI profiles' TREC for a Banking77-only claim): the summary says so, and
    the cells beyond are counted apart (an empty selection once read as a selection of no columns)."""
    fam = experiments.family("exploration")
    check = fam.checks()[0]  # the paper's Banking77 only; the synthetic runs are on CLINIC150
    per_run, predictions = synthetic.tables(fam, check, "reversed", SEEDS)
    table = verdicts.evaluate(fam, per_run, predictions, {a.label: a for a in fam.arms()})
    row = verdict_tables.summary(table).set_index("finding_id").loc[check.id]
    assert (row["ours"], row["ours_beyond_the_paper"]) == (verdict_tables.OUT_OF_SCOPE, "contradicted 1 of 1")
