"""Seeds aggregated on purpose: the paper's metrics per run, then mean and 95% interval per cell, with n shown.

A cell is one experiment without its seeds (:data:`CELL`: model, task, run name as :func:`methods.name_run` writes
it, and the sizes: steps, test queries, the cap on a context's episodes).
Per run (:func:`run_metrics`), the paper's metrics (names of ``paper_results.csv``):
``test_acc_step0``, ``test_acc_final`` (last test step), ``test_acc_peak`` and its step (best test step: it selects
on the test set, so report it next to the final value, never alone), ``gain`` (final minus the run's own step 0, its
zero-shot), ``regret`` (wrong training predictions over the run) and ``regret_per_step`` (the same over the run's
training steps: runs of different lengths compare), ``spearman_rho`` (test accuracy vs step: the paper's stability
measure, over ``test_points`` tests), and exploration collapse over the last ``collapse_window`` training predictions
(``COLLAPSE_WINDOW``, or all of a shorter run's): ``distinct_labels``, ``label_entropy`` (bits) and
``top_label_share`` (share of the most predicted label).

Over seeds (:func:`aggregate`, :func:`accuracy_curves`), the mean and a 95% interval, made as follows:

* accuracies (``test_acc_*``): over the test queries and the seeds (:func:`icrl_lib.analysis.stats.accuracy_interval`):
  test queries are independent trials, so even equal seeds get an interval of nonzero width;
* ``gain``: final minus step 0 over both (unpaired: conservative); ``spearman_rho``: Fisher z over its test points
  and the seeds (:func:`icrl_lib.analysis.stats.correlation_interval`);
* everything else (regret, regret per step and the collapse metrics, the top-label share included): a t-interval
  over seeds only. A run's training predictions are not independent trials (each one's context holds the ones
  before it), so a binomial interval over the window would be too narrow; the seeds are the only independent
  replicates. With one seed, or seeds that all agree, there is no spread to measure: no interval (NaN bounds, and
  ``interval`` says why), never a zero-width one.

:func:`paired_differences` compares two methods on the same test queries and seeds. :func:`join_paper` puts the
paper's published value beside ours. All tables are tidy (one value per row) and parquet-ready.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from icrl_lib.analysis import stats
from icrl_lib.paper.methods import method_order
from icrl_lib.runs.tables import COLLAPSE_WINDOW, collapse_metrics

SIZES = ("train_k", "test_k", "test_every")
# A run's name (methods.name_run) says what it is, never how big: the sizes and the cap on a context's episodes keep
# cells apart instead (and become columns of metrics_table where one name has several).
CELL = ("model_name", "task_name", "method", "method_key", "paper_method", "paper_setting", *SIZES,
        "max_context_examples")
SEED = ("seed", "training_seed", "test_seed")
METRICS = ("test_acc_step0", "test_acc_final", "test_acc_peak", "gain", "regret", "regret_per_step", "spearman_rho",
           "distinct_labels", "label_entropy", "top_label_share")
ACCURACY_METRICS = ("test_acc_step0", "test_acc_final", "test_acc_peak")
COLLAPSE_METRICS = ("distinct_labels", "label_entropy", "top_label_share")
LEVEL = 0.95
PAPER_RESULTS = Path(__file__).parents[1] / "data" / "paper_results.csv"


def t_interval(values) -> tuple[float, float, float, int]:
    """(mean, low, high, n) of a sample with a Student-t 95% interval; NaN bounds below two values."""
    from scipy import stats

    x = np.asarray([v for v in values if v is not None and not pd.isna(v)], dtype=float)
    n = len(x)
    if n == 0:
        return math.nan, math.nan, math.nan, 0
    mean = float(x.mean())
    if n < 2:
        return mean, math.nan, math.nan, n
    half = float(stats.t.ppf(0.5 + LEVEL / 2, n - 1) * x.std(ddof=1) / math.sqrt(n))
    return mean, mean - half, mean + half, n


def run_metrics(runs: pd.DataFrame, steps: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per run: cell and seed columns, the paper's metrics, ``peak_step``, ``last_step``, ``test_points``,
    ``queries``, ``train_steps`` and ``collapse_window`` (the training predictions the collapse metrics are over:
    min(training steps, ``COLLAPSE_WINDOW``) when every step has its prediction).

    ``runs`` is ``load.read(...).tests`` (one row per test step), ``steps`` its ``steps`` (for regret and
    collapse)."""
    rows = []
    for run, tests in runs.sort_values("step").groupby("run", sort=True):
        first = tests.iloc[0]
        accuracy = tests["accuracy"].astype(float)
        peak = int(accuracy.values.argmax())
        rho = tests["step"].corr(accuracy, method="spearman") if len(tests) > 2 and accuracy.nunique() > 1 else math.nan
        rows.append({"run": run, **{k: first.get(k) for k in CELL + SEED},
                     "test_acc_step0": float(accuracy.iloc[0]) if tests["step"].iloc[0] == 0 else math.nan,
                     "test_acc_final": float(accuracy.iloc[-1]), "test_acc_peak": float(accuracy.iloc[peak]),
                     "peak_step": int(tests["step"].iloc[peak]), "last_step": int(tests["step"].iloc[-1]),
                     "spearman_rho": rho, "test_points": len(tests), "queries": int(first.get("n", 0))})
        # over its own step 0 (zero-shot); none for a run that never trained (zero-shot: its one test is step 0)
        rows[-1]["gain"] = rows[-1]["test_acc_final"] - rows[-1]["test_acc_step0"] if len(tests) > 1 else math.nan
    table = pd.DataFrame(rows, columns=["run", *CELL, *SEED, *METRICS, "peak_step", "last_step", "test_points",
                                        "queries", "train_steps", "collapse_window"])
    if steps is not None and not steps.empty and not table.empty:
        trained = (steps.dropna(subset=["reward"]) if "reward" in steps else steps).sort_values("step")
        per_run = trained.groupby("run")
        table["train_steps"] = table["run"].map(per_run.size()).astype(float)
        table["regret"] = table["run"].map(per_run["regret"].last()).astype(float)
        table["regret_per_step"] = table["regret"] / table["train_steps"]
        windows = {run: group["prediction"].tail(COLLAPSE_WINDOW) if "prediction" in group else pd.Series([])
                   for run, group in per_run}
        collapse = {run: collapse_metrics(window) for run, window in windows.items()}
        for key in COLLAPSE_METRICS:
            table[key] = table["run"].map({run: c[key] for run, c in collapse.items()}).astype(float)
        # the predictions the share is over (collapse_metrics counts labels only): 4 for a 4-step run, not 50
        table["collapse_window"] = table["run"].map(
            {run: sum(isinstance(p, str) for p in window) for run, window in windows.items()}).astype(float)
    return table


BOUNDS = {"test_acc_step0": (0, 1), "test_acc_final": (0, 1), "test_acc_peak": (0, 1), "accuracy": (0, 1),
          "gain": (-1, 1), "spearman_rho": (-1, 1), "regret": (0, math.inf), "regret_per_step": (0, 1),
          "distinct_labels": (0, math.inf), "label_entropy": (0, math.inf), "top_label_share": (0, 1)}
# an interval is clipped to what the metric can take


def _clip(metric: str, low: float, high: float) -> tuple[float, float]:
    lo, hi = BOUNDS.get(metric, (-math.inf, math.inf))
    return (low if pd.isna(low) else max(lo, low)), (high if pd.isna(high) else min(hi, high))


def seed_interval(values) -> tuple[float, float, float, int, str | None]:
    """(mean, low, high, n, how) of a t-interval over seeds only, honest about what seeds cannot show: no interval
    (NaN bounds) for one seed or for seeds that all agree (no spread to measure, not a certainty), with the reason in
    ``how``; None when there is no value."""
    present = [float(v) for v in values if v is not None and not pd.isna(v)]
    mean, low, high, n = t_interval(present)
    if n == 0:
        return mean, low, high, n, None
    if n == 1:
        return mean, math.nan, math.nan, n, "none: 1 seed"
    if min(present) == max(present):  # a zero-width interval would claim a certainty the seeds never showed
        return mean, math.nan, math.nan, n, f"none: {n} seeds agree"
    return mean, low, high, n, "t over seeds"


def _interval(metric: str, group: pd.DataFrame, trials: int) -> tuple[float, float, float, int, str | None]:
    """(mean, low, high, n seeds, how) of one metric over a cell's seeds (rows of ``group``): accuracies over their
    ``trials`` test queries and the seeds, the gain as final minus step 0 over both (conservatively unpaired),
    Spearman rho over its test points and the seeds; other metrics (the collapse metrics too: a run's training
    predictions are not independent trials) a t-interval over seeds, none where the seeds cannot give one
    (:func:`seed_interval`)."""
    values = group[metric]
    mean, _, _, n = t_interval(values)
    if n and trials and metric in ACCURACY_METRICS:
        estimate = stats.accuracy_interval(mean, trials, values.dropna().tolist() if n > 1 else ())
        return mean, estimate.low, estimate.high, n, estimate.method
    if n and metric == "spearman_rho":
        rows = group.dropna(subset=["spearman_rho"])
        estimate = stats.correlation_interval(list(zip(rows["spearman_rho"], rows["test_points"])))
        return mean, estimate.low, estimate.high, n, estimate.method
    if n and trials and metric == "gain":
        rows = group.dropna(subset=["gain"])
        estimate = stats.unpaired_difference([(v, trials) for v in rows["test_acc_final"]],
                                             [(v, trials) for v in rows["test_acc_step0"]])
        return mean, estimate.low, estimate.high, n, estimate.method
    return seed_interval(values)


def aggregate(per_run: pd.DataFrame, metrics=METRICS) -> pd.DataFrame:
    """Per cell and metric: mean, 95% interval and n seeds (tidy); ``interval`` says how the interval was made, or
    why there is none.

    Accuracies combine test-query and seed noise (the queries are independent trials, so two seeds with equal
    accuracy never give a zero-width interval); the gain and Spearman rho likewise combine their own trials with the
    seeds. Regret, regret per step and the collapse metrics take a t-interval over seeds only: their trials (training
    steps) share one growing context, so they are not independent and only the seeds replicate. With one seed, or
    seeds that all agree, those get no interval ("none: 1 seed", "none: 2 seeds agree"; NaN bounds), never a
    zero-width one. ``peak_step`` (mean over seeds) comes with the peak, ``collapse_window`` (the shortest of the
    cell's runs: how many training predictions the collapse metrics are over) with the collapse metrics."""
    rows = []
    for cell, group in per_run.groupby(list(CELL), dropna=False, sort=True):
        trials = int(group["queries"].iloc[0] or 0)
        for metric in metrics:
            mean, low, high, n, kind = _interval(metric, group, trials)
            extra = {"peak_step": float(group["peak_step"].mean())} if metric == "test_acc_peak" else {}
            if metric in COLLAPSE_METRICS and "collapse_window" in group:
                extra["collapse_window"] = float(group.loc[group[metric].notna(), "collapse_window"].min())
            low, high = _clip(metric, low, high)
            rows.append({**dict(zip(CELL, cell)), "metric": metric, "mean": mean, "low": low, "high": high, "n": n,
                         "interval": kind, **extra})
    return pd.DataFrame(rows, columns=[*CELL, "metric", "mean", "low", "high", "n", "interval", "peak_step",
                                       "collapse_window"])


def metric_text(metric: str, value: float, unit: bool = True) -> str:
    """One value of ``metric`` as the tables write it: accuracies and gains in % with one decimal (``unit``: the %
    sign), Spearman rho with two decimals, other values (regret, tokens) with one decimal and thousands separators."""
    if metric in ACCURACY_METRICS + ("gain", "top_label_share"):
        return f"{100 * value:.1f}" + ("%" if unit else "")
    if metric in ("spearman_rho", "label_entropy", "regret_per_step"):
        return f"{value:.2f}"
    return f"{value:,.1f}"


def metrics_table(aggregated: pd.DataFrame, order: Sequence[str] | None = None) -> pd.DataFrame:
    """``aggregate`` rows as the paper's table: one row per cell, one column per metric, each cell written
    ``mean [low, high]`` (accuracies in %, the peak with its step), or the mean alone where there is no interval (one
    seed, or seeds that agree), and n seeds. Collapse metrics of runs shorter than ``COLLAPSE_WINDOW`` say the
    window they are over ("(last 4)"). Rows follow the paper's order of methods (``methods.method_order``), or
    ``order`` (a family's arms). Rows are named by the run name (``method``); where one name has cells of different
    sizes, the sizes that tell them apart are index levels too, so no two rows ever read alike."""
    def text(row) -> str:
        metric = row["metric"]
        if pd.isna(row["mean"]):
            return "–"
        out = metric_text(metric, row["mean"])
        if not pd.isna(row["low"]):
            out += f" [{metric_text(metric, row['low'], unit=False)}, {metric_text(metric, row['high'], unit=False)}]"
        if row["metric"] == "test_acc_peak" and not pd.isna(row.get("peak_step")):
            out += f" @{row['peak_step']:.0f}"
        window = row.get("collapse_window")
        if metric in COLLAPSE_METRICS and not pd.isna(window) and window < COLLAPSE_WINDOW:
            out += f" (last {window:.0f})"  # the header says the full window: a shorter run says its own
        return out

    keys = ["model_name", "task_name", "method"]
    shown = aggregated.assign(text=aggregated.apply(text, axis=1) if len(aggregated) else [])
    for size in (c for c in (*SIZES, "max_context_examples") if c in shown):
        shown[size] = shown[size].map(_size_text)
        if (shown.groupby(keys)[size].nunique() > 1).any():
            keys.append(size)
    wide = shown.pivot_table(index=keys, columns="metric", values="text", aggfunc="first")
    wide = wide.reindex(columns=[m for m in METRICS if m in wide.columns])
    names = {"test_acc_step0": "step 0", "test_acc_final": "final", "test_acc_peak": "peak @step",
             "gain": "gain over step 0", "regret": "regret", "regret_per_step": "regret per step",
             "spearman_rho": "Spearman ρ", "distinct_labels": f"labels (last {COLLAPSE_WINDOW})",
             "label_entropy": "entropy (bits)", "top_label_share": "top label share"}
    wide.columns = [names[c] for c in wide.columns]
    wide["n"] = shown.groupby(keys)["n"].max()
    rank = {m: i for i, m in enumerate(order or method_order(list(wide.index.get_level_values("method"))))}
    return wide.sort_index(key=lambda index: index.map(rank) if index.name == "method" else index)


def _size_text(value) -> str | int:
    """A size as an index level shows it: a whole number, or "–" for none (no cap: as many episodes as fit)."""
    return "–" if value is None or pd.isna(value) else int(value)


def accuracy_curves(runs: pd.DataFrame) -> pd.DataFrame:
    """Per cell and test step: mean test accuracy over seeds, its 95% interval (test queries and seeds) and n."""
    cell = [k for k in CELL if k in runs.columns]  # hand-made tables may carry fewer columns
    rows = []
    for key, group in runs.groupby([*cell, "step"], dropna=False, sort=True):
        mean, low, high, n, kind = _interval("test_acc_final", group.rename(columns={"accuracy": "test_acc_final"}),
                                             int(group["n"].iloc[0]) if "n" in group else 0)
        low, high = _clip("accuracy", low, high)
        rows.append({**dict(zip([*cell, "step"], key)), "mean": mean, "low": low, "high": high, "n": n,
                     "interval": kind})
    return pd.DataFrame(rows, columns=[*cell, "step", "mean", "low", "high", "n", "interval"])


def query_results(predictions: pd.DataFrame, per_run: pd.DataFrame, which: str = "final") -> pd.DataFrame:
    """Per run and test query: answer and correct (0/1) at the run's last test step (``which="final"``) or at step 0
    (``"step0"``), with the run's seed; ``predictions`` is ``results.load``'s per-query table."""
    if which not in ("final", "step0"):
        raise ValueError(f"which: {which!r}; allowed: final, step0")
    if predictions.empty or per_run.empty:
        return pd.DataFrame(columns=["run", "seed", "example", "answer", "correct"])
    step = per_run.set_index("run")["last_step"] if which == "final" else pd.Series(0, index=per_run["run"])
    rows = predictions[predictions["run"].isin(step.index)]
    rows = rows[rows["step"] == rows["run"].map(step)]
    seed = per_run.set_index("run")["seed"]
    return rows.assign(seed=rows["run"].map(seed), correct=rows["correct"].astype(float))[
        ["run", "seed", "example", "answer", "correct"]].sort_values(["run", "example"])


def side_vectors(results: pd.DataFrame) -> tuple[dict[int, list[float]], dict[int, tuple]]:
    """{seed: correct per query} of one arm's runs (``query_results`` rows) and {seed: the answers of its queries}."""
    vectors, answers = {}, {}
    for (run, seed), group in results.groupby(["run", "seed"], sort=True):
        if int(seed) in vectors:  # two runs of one seed (other sizes, another family): never one value silently
            raise ValueError(f"two runs of seed {int(seed)} on one side ({run} and another): compare runs of one "
                             "cell (same sizes) only")
        vectors[int(seed)] = group["correct"].tolist()
        answers[int(seed)] = tuple(group["answer"])
    return vectors, answers


def difference(left: pd.DataFrame, right: pd.DataFrame, level: float = stats.LEVEL) -> stats.Estimate:
    """Accuracy of one side minus the other (``query_results`` rows of each): paired over queries where both tested
    the same ones (per seed; across seeds too when every seed has one test set), else unpaired; seeds paired where
    both ran them (:mod:`icrl_lib.analysis.stats`)."""
    a, answers_a = side_vectors(left)
    b, answers_b = side_vectors(right)
    if not a or not b:
        return stats.NAN_ESTIMATE
    common = set(a) & set(b)
    shared = len(set(answers_a.values()) | set(answers_b.values())) == 1  # one test set for every run
    if shared or (common and all(answers_a[s] == answers_b[s] for s in common)):
        return stats.paired_difference(a, b, level, shared_queries=shared)
    return stats.unpaired_difference([(float(np.mean(v)), len(v)) for v in a.values()],
                                     [(float(np.mean(v)), len(v)) for v in b.values()], level)


def paired_differences(per_run: pd.DataFrame, predictions: pd.DataFrame, a: str, b: str,
                       by: tuple[str, ...] = ("model_name", "task_name", *SIZES)) -> pd.DataFrame:
    """Final test accuracy of run name ``a`` minus ``b`` (e.g. "explorative ICRL" and "naive ICRL") per ``by``: the
    difference, its 95% interval over the shared test queries and seeds (:func:`difference`), n and the minimum
    detectable effect. ``by`` keeps the sizes apart: runs of one arm with another schedule are another cell."""
    final = query_results(predictions, per_run)
    rows = []
    for key, group in per_run.groupby(list(by), sort=True):
        runs = {m: set(group.loc[group["method"] == m, "run"]) for m in (a, b)}
        estimate = difference(final[final["run"].isin(runs[a])], final[final["run"].isin(runs[b])])
        rows.append({**dict(zip(by, key if isinstance(key, tuple) else (key,))), "a": a, "b": b,
                     **estimate.as_dict()})
    return pd.DataFrame(rows, columns=[*by, "a", "b", *stats.NAN_ESTIMATE.as_dict()])


@lru_cache(maxsize=1)
def _paper_table() -> pd.DataFrame:
    table = pd.read_csv(PAPER_RESULTS, keep_default_na=False, na_values={"value": [""], "step": [""]},
                        dtype={"section": str})  # "3.1" and "3.10" are two sections, not one number
    return table.astype({"value": float})


def paper_results() -> pd.DataFrame:
    """The paper's published numbers (``paper_results.csv``, shipped with the package; see its README)."""
    return _paper_table().copy()


def _section_order(section: str) -> tuple[int, ...]:
    """``"3.10"`` -> (3, 10): sections sort as the paper numbers them."""
    return tuple(int(part) for part in str(section).split("."))


def join_paper(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` (``aggregate`` rows: model_name, task_name, paper_method, paper_setting, metric) with ``paper_value``
    (and ``paper_step``, ``paper_section``) where the paper reports that cell: the same model, task and setting
    (``families.paper_coordinates``). A number the paper prints twice is taken from its first section, a table
    before a figure."""
    paper = paper_results().sort_values(["section", "source"],
                                        key=lambda s: s.map(_section_order) if s.name == "section" else s != "T")
    paper = paper.drop_duplicates(["model", "task", "method", "setting", "metric"])
    paper = paper.rename(columns={"model": "model_name", "task": "task_name", "method": "paper_method",
                                  "setting": "paper_setting", "value": "paper_value", "step": "paper_step",
                                  "section": "paper_section"})
    keys = ["model_name", "task_name", "paper_method", "paper_setting", "metric"]
    ours = table.astype({k: object for k in keys})  # a run the paper has no counterpart for: None, never NaN
    return ours.merge(paper[[*keys, "paper_value", "paper_step", "paper_section"]], on=keys, how="left")
