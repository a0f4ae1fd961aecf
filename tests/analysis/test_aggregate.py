"""The paper's metrics per run and their aggregates over seeds, against hand-computed values; paired differences;
the paper's published numbers and the join on them; token tables."""
from __future__ import annotations

import math

import pandas as pd
import pytest
from scipy import stats as scipy_stats

from icrl_lib.analysis import aggregate, load


def synthetic_runs() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Two methods x three seeds on one task; tests at steps 0, 9, 19 with 10 queries each."""
    tests, steps = [], []
    accuracies = {("A", 1): [0.1, 0.5, 0.4], ("A", 2): [0.2, 0.6, 0.8], ("A", 3): [0.0, 0.4, 0.6],
                  ("B", 1): [0.1, 0.2, 0.2], ("B", 2): [0.2, 0.3, 0.3], ("B", 3): [0.0, 0.1, 0.4]}
    regrets = {("A", 1): 12, ("A", 2): 8, ("A", 3): 10, ("B", 1): 15, ("B", 2): 14, ("B", 3): 16}
    for (method, seed), accs in accuracies.items():
        cell = {"run": f"{method}{seed}", "model_name": "m", "task_name": "t", "method": method, "method_key": None,
                "paper_method": None, "paper_setting": None, "train_k": 20, "test_k": 10, "test_every": 10,
                "seed": seed, "training_seed": seed, "test_seed": seed}
        tests += [{**cell, "step": step, "accuracy": acc, "n": 10} for step, acc in zip((0, 9, 19), accs)]
        steps.append({**cell, "step": 19, "regret": float(regrets[method, seed])})
    return pd.DataFrame(tests), pd.DataFrame(steps)


def test_run_metrics_and_their_aggregate_by_hand():
    tests, steps = synthetic_runs()
    per_run = aggregate.run_metrics(tests, steps).set_index("run")
    a2 = per_run.loc["A2"]
    assert (a2.test_acc_step0, a2.test_acc_final, a2.test_acc_peak, a2.peak_step, a2.regret) == (0.2, 0.8, 0.8, 19, 8)
    assert a2.gain == pytest.approx(0.6)  # final minus the run's own step 0
    assert per_run.loc["A1", "peak_step"] == 9 and per_run.loc["A1", "spearman_rho"] == pytest.approx(0.5)
    assert per_run.loc["A2", "spearman_rho"] == pytest.approx(1.0)
    table = aggregate.aggregate(per_run.reset_index()).set_index(["method", "metric"])
    final = table.loc[("A", "test_acc_final")]
    # finals 0.4, 0.8, 0.6 of 10 queries each. Queries: Agresti-Coull centre (6 + 2) / 14, variance c(1-c)/14, 9 df;
    # seeds: variance 0.04 / 3, 2 df; Welch-Satterthwaite df for their sum.
    centre = 8 / 14
    v_query, v_seed = centre * (1 - centre) / 14, 0.04 / 3
    df = (v_query + v_seed) ** 2 / (v_query ** 2 / 9 + v_seed ** 2 / 2)
    half = scipy_stats.t.ppf(0.975, df) * math.sqrt(v_query + v_seed)
    assert (final["mean"], final["n"], final["interval"]) == (pytest.approx(0.6), 3,
                                                              "Agresti-Coull over queries + seeds")
    assert (final["low"], final["high"]) == (pytest.approx(centre - half), pytest.approx(centre + half))
    regret = table.loc[("B", "regret")]
    assert (regret["mean"], regret["low"], regret["high"]) == (
        pytest.approx(15), pytest.approx(15 - 4.302652729911275 / math.sqrt(3)),
        pytest.approx(15 + 4.302652729911275 / math.sqrt(3)))
    assert table.loc[("A", "test_acc_peak"), "peak_step"] == pytest.approx((9 + 19 + 19) / 3)
    assert table.loc[("A", "regret_per_step"), "mean"] == pytest.approx(10)  # one logged training step per run here


def test_one_seed_gets_an_interval_over_the_test_queries_and_equal_seeds_never_a_zero_width_one():
    tests, steps = synthetic_runs()
    one = tests[tests["run"] == "A1"]
    curve = aggregate.accuracy_curves(one).set_index("step")
    # accuracy 0.5 on 10 queries: centre 7/14, variance 0.25/14, t(0.975, 9) = 2.262157
    assert curve.loc[9, "interval"] == "Agresti-Coull over queries + seeds" and curve.loc[9, "n"] == 1
    half = 2.2621571627409915 * math.sqrt(0.25 / 14)
    assert (curve.loc[9, "low"], curve.loc[9, "high"]) == (pytest.approx(0.5 - half), pytest.approx(0.5 + half))
    per_run = aggregate.run_metrics(one, steps)
    assert math.isnan(aggregate.aggregate(per_run).set_index("metric").loc["regret", "low"])
    equal = pd.concat([one, one.assign(run="A1b", seed=9)])  # two seeds, the same accuracy at every step
    twice = aggregate.accuracy_curves(equal).set_index("step")
    # 0.1 of 10: not [0.1, 0.1]
    assert twice.loc[0, "n"] == 2 and twice.loc[0, "low"] == 0 and twice.loc[0, "high"] > 0.2


def test_paired_differences_on_shared_queries_and_seeds():
    """A minus B on the same 10 test queries, seeds 1 and 2: per-query differences (Agresti-Min) plus seed noise."""
    tests, steps = synthetic_runs()
    tests = tests[tests["seed"] < 3]
    per_run = aggregate.run_metrics(tests, steps)
    correct = {("A", 1): [1] * 4 + [0] * 6, ("A", 2): [1] * 8 + [0] * 2, ("B", 1): [0, 1] + [0] * 8,
               ("B", 2): [1] * 3 + [0] * 7}
    predictions = pd.DataFrame([{"run": f"{m}{s}", "step": 19, "example": i, "answer": f"a{i}", "correct": bool(c)}
                                for (m, s), cs in correct.items() for i, c in enumerate(cs)])
    diff = aggregate.paired_differences(per_run, predictions, "A", "B").iloc[0]
    assert diff["effect"] == pytest.approx((0.4 - 0.1 + 0.8 - 0.3) / 2) and diff["n_seeds"] == 2
    assert diff["n_queries"] == 10 and diff["low"] < diff["effect"] < diff["high"] and diff["mde"] > 0
    assert diff["interval"] == "paired over queries and seeds"


def test_the_papers_numbers_ship_with_the_package_and_join_on_a_known_cell():
    paper = aggregate.paper_results()
    assert len(paper) == 1226 and {"family", "model", "task", "method", "setting", "metric", "value"} <= set(paper)
    ours = pd.DataFrame([{"model_name": "meta-llama/Meta-Llama-3.1-8B-Instruct", "task_name": "banking77",
                          "paper_method": "explorative", "paper_setting": "", "metric": "test_acc_final", "mean": 0.61},
                         {"model_name": "smollm2-135m-instruct", "task_name": "banking77",
                          "paper_method": "explorative", "paper_setting": "", "metric": "test_acc_final",
                          "mean": 0.05}])
    joined = aggregate.join_paper(ours)
    assert joined["paper_value"].iloc[0] == pytest.approx(0.660) and joined["paper_section"].iloc[0] == "3.1"
    assert math.isnan(joined["paper_value"].iloc[1])  # the paper never ran this model


def test_token_comparison_per_step_with_a_note_where_no_ratio_exists():
    usage = pd.DataFrame({"task_name": ["t", "t", "u"], "model_name": ["m"] * 3,
                          "method_key": ["explorative", "approximate", "explorative"],
                          "train_computed_tokens": [3000.0, 300.0, 100.0], "steps": [10, 10, 10]})
    table = load.method_token_comparison(usage).set_index("task_name")
    assert (table.loc["t", "explorative"], table.loc["t", "approximate"], table.loc["t", "ratio"]) == (300, 30, 10)
    assert table.loc["t", "note"] == "" and table.loc["u", "note"] == "no approximate run here"
    assert pd.isna(table.loc["u", "ratio"])


def test_paired_differences_pair_each_seed_on_its_own_test_set():
    """Sweeps give every seed its own test set (test_seed = seed): the arms still pair per seed."""
    tests, steps = synthetic_runs()
    tests = tests[tests["seed"] < 3]
    per_run = aggregate.run_metrics(tests, steps)
    correct = {("A", 1): [1] * 4 + [0] * 6, ("A", 2): [1] * 8 + [0] * 2, ("B", 1): [0, 1] + [0] * 8,
               ("B", 2): [1] * 3 + [0] * 7}
    predictions = pd.DataFrame([{"run": f"{m}{s}", "step": 19, "example": i, "answer": f"s{s}q{i}", "correct": bool(c)}
                                for (m, s), cs in correct.items() for i, c in enumerate(cs)])
    diff = aggregate.paired_differences(per_run, predictions, "A", "B").iloc[0]
    assert diff["interval"] == "paired over each seed's queries and seeds" and diff["effect"] == pytest.approx(0.4)
    other = predictions.assign(answer=predictions["answer"] + predictions["run"])  # no query shared: unpaired
    assert aggregate.paired_differences(per_run, other, "A", "B").iloc[0]["interval"].startswith("unpaired")


def test_paired_differences_never_mix_runs_of_different_sizes():
    """A seed run twice with another test schedule (another family's runs of the same arm) is another cell, not a
    second value for that seed: each size is compared on its own, and a side with two runs of one seed is refused."""
    tests, steps = synthetic_runs()
    tests, steps = tests[tests["seed"] < 3], steps[steps["seed"] < 3]
    dense = tests[tests["run"] == "A1"].assign(run="A1dense", test_every=5)
    per_run = aggregate.run_metrics(pd.concat([tests, dense]), pd.concat([steps, steps[steps["run"] == "A1"].assign(
        run="A1dense", test_every=5)]))
    correct = {("A1", 19): [1] * 4 + [0] * 6, ("A2", 19): [1] * 8 + [0] * 2, ("B1", 19): [0, 1] + [0] * 8,
               ("B2", 19): [1] * 3 + [0] * 7, ("A1dense", 19): [1] * 10}
    predictions = pd.DataFrame([{"run": r, "step": st, "example": i, "answer": f"a{i}", "correct": bool(c)}
                                for (r, st), cs in correct.items() for i, c in enumerate(cs)])
    diffs = aggregate.paired_differences(per_run, predictions, "A", "B")
    assert list(diffs["test_every"]) == [5, 10]
    assert diffs.set_index("test_every").loc[10, "effect"] == pytest.approx((0.4 - 0.1 + 0.8 - 0.3) / 2)
    assert diffs.set_index("test_every").loc[5, "interval"] == "no data"  # B has no run with that schedule
    final = aggregate.query_results(predictions, per_run)
    with pytest.raises(ValueError, match="seed 1"):
        aggregate.side_vectors(final[final["run"].isin(["A1", "A1dense"])])


def test_runs_without_a_paper_counterpart_join_to_nothing():
    ours = pd.DataFrame([{"model_name": "m", "task_name": "banking77", "paper_method": None, "paper_setting": None,
                          "metric": "test_acc_final", "mean": 0.1}])
    assert aggregate.join_paper(ours)["paper_value"].isna().all()


def collapse_runs(predictions: dict[int, list[str]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One run per seed of one cell: its training predictions (one step each, rewarded) and tests at step 0 and the
    last step."""
    tests, steps = [], []
    for seed, labels in predictions.items():
        cell = {"run": f"r{seed}", "model_name": "m", "task_name": "t", "method": "A", "method_key": None,
                "paper_method": None, "paper_setting": None, "train_k": len(labels), "test_k": 10, "test_every": 10,
                "seed": seed, "training_seed": seed, "test_seed": 1}
        tests += [{**cell, "step": step, "accuracy": 0.5, "n": 10} for step in (0, len(labels) - 1)]
        steps += [{**cell, "step": i, "reward": 1.0, "regret": 0.0, "prediction": label}
                  for i, label in enumerate(labels)]
    return pd.DataFrame(tests), pd.DataFrame(steps)


def test_seeds_that_agree_give_no_interval_never_a_zero_width_one():
    """Regret and the collapse metrics are t-intervals over seeds only: two equal seeds have no spread to measure, so
    there is no interval (not [3.0, 3.0]), and the table shows the mean and n alone; one seed likewise."""
    tests, steps = synthetic_runs()
    one, one_step = tests[tests["run"] == "A1"], steps[steps["run"] == "A1"]
    equal = aggregate.run_metrics(pd.concat([one, one.assign(run="A1b", seed=9)]),
                                  pd.concat([one_step, one_step.assign(run="A1b", seed=9)]))
    table = aggregate.aggregate(equal).set_index("metric")
    for metric in ("regret", "regret_per_step"):
        row = table.loc[metric]
        # regret 12 over one logged training step: 12 per step too
        assert (row["mean"], row["n"], row["interval"]) == (12, 2, "none: 2 seeds agree")
        assert math.isnan(row["low"]) and math.isnan(row["high"])
    shown = aggregate.metrics_table(aggregate.aggregate(equal)).iloc[0]
    assert shown["regret"] == "12.0" and shown["n"] == 2
    single = aggregate.aggregate(aggregate.run_metrics(one, one_step)).set_index("metric").loc["regret"]
    assert single["interval"] == "none: 1 seed" and math.isnan(single["low"])
    labels = aggregate.aggregate(aggregate.run_metrics(*collapse_runs({1: list("aab"), 2: list("bba")})))
    labels = labels.set_index("metric")
    for metric in ("distinct_labels", "label_entropy", "top_label_share"):
        assert labels.loc[metric, "interval"] == "none: 2 seeds agree" and math.isnan(labels.loc[metric, "high"])


def test_the_top_label_share_is_a_t_interval_over_seeds():
    """A run's training predictions share one growing context, so they are not independent trials: the share's
    interval is over seeds (shares 0.5, 0.7, 0.9: sd 0.2, t with 2 df), not binomial over the window."""
    shares = {1: list("aaaaabbbbb"), 2: list("aaaaaaabbb"), 3: list("aaaaaaaaab")}
    row = aggregate.aggregate(aggregate.run_metrics(*collapse_runs(shares))).set_index("metric").loc["top_label_share"]
    half = scipy_stats.t.ppf(0.975, 2) * 0.2 / math.sqrt(3)
    assert (row["mean"], row["n"], row["interval"]) == (pytest.approx(0.7), 3, "t over seeds")
    assert (row["low"], row["high"]) == (pytest.approx(0.7 - half), pytest.approx(min(1.0, 0.7 + half)))


def test_the_collapse_window_of_a_short_run_is_its_training_steps():
    """The collapse metrics are over the last COLLAPSE_WINDOW training predictions, or all of a shorter run's."""
    per_run = aggregate.run_metrics(*collapse_runs({1: list("abab"), 2: list("ab" * 40)})).set_index("run")
    assert per_run.loc["r1", "collapse_window"] == 4 and per_run.loc["r2", "collapse_window"] == 50
    assert per_run.loc["r1", "top_label_share"] == 0.5
