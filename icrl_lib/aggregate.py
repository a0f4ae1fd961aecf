"""Seeds aggregated on purpose: the paper's metrics per run, then mean and 95% interval per cell, with n shown.

A cell is one experiment without its seeds (:data:`CELL`: model, task, run name as :func:`methods.name_run` writes
it, and the sizes). Per run (:func:`run_metrics`), the paper's metrics (names of ``paper_results.csv``):
``test_acc_step0``, ``test_acc_final`` (last test step), ``test_acc_peak`` and its step (best test step: it selects
on the test set, so report it next to the final value, never alone), ``gain`` (final minus the run's own step 0, its
zero-shot), ``regret`` (wrong training predictions over the run) and ``spearman_rho`` (test accuracy vs step: the
paper's stability measure). Over seeds (:func:`aggregate`,
:func:`accuracy_curves`): mean and a t-interval over seeds, or with one seed a Wilson interval over the test queries
(accuracies only). :func:`paired_differences` compares two methods on the seeds both ran. :func:`join_paper` puts the
paper's published value beside ours. All tables are tidy (one value per row) and parquet-ready.
"""
from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

CELL = ("model_name", "task_name", "method", "method_key", "setting", "train_k", "test_k", "test_every")
SEED = ("seed", "training_seed", "test_seed")
METRICS = ("test_acc_step0", "test_acc_final", "test_acc_peak", "gain", "regret", "spearman_rho")
ACCURACY_METRICS = ("test_acc_step0", "test_acc_final", "test_acc_peak")
LEVEL = 0.95
PAPER_RESULTS = Path(__file__).with_name("data") / "paper_results.csv"


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


def wilson_interval(accuracy: float, queries: int) -> tuple[float, float]:
    """95% Wilson score interval of an accuracy measured on ``queries`` test queries."""
    if not queries or pd.isna(accuracy):
        return math.nan, math.nan
    z = 1.959963984540054
    denominator = 1 + z * z / queries
    center = (accuracy + z * z / (2 * queries)) / denominator
    half = z * math.sqrt(accuracy * (1 - accuracy) / queries + z * z / (4 * queries * queries)) / denominator
    return center - half, center + half


def run_metrics(runs: pd.DataFrame, steps: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per run: cell and seed columns, the paper's metrics, ``peak_step``, ``last_step``, ``queries``.

    ``runs`` is ``results.load_runs`` (one row per test step), ``steps`` ``results.load_run_steps`` (for regret)."""
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
                     "spearman_rho": rho, "queries": int(first.get("n", 0))})
        rows[-1]["gain"] = rows[-1]["test_acc_final"] - rows[-1]["test_acc_step0"]  # over its own step 0 (zero-shot)
    table = pd.DataFrame(rows, columns=["run", *CELL, *SEED, *METRICS, "peak_step", "last_step", "queries"])
    if steps is not None and not steps.empty and not table.empty:
        final = steps.sort_values("step").groupby("run").tail(1).set_index("run")["regret"]
        table["regret"] = table["run"].map(final).astype(float)
    return table


BOUNDS = {"test_acc_step0": (0, 1), "test_acc_final": (0, 1), "test_acc_peak": (0, 1), "accuracy": (0, 1),
          "gain": (-1, 1), "spearman_rho": (-1, 1), "regret": (0, math.inf)}  # an interval is clipped to what the metric can take


def _clip(metric: str, low: float, high: float) -> tuple[float, float]:
    lo, hi = BOUNDS.get(metric, (-math.inf, math.inf))
    return (low if pd.isna(low) else max(lo, low)), (high if pd.isna(high) else min(hi, high))


def aggregate(per_run: pd.DataFrame, metrics=METRICS) -> pd.DataFrame:
    """Per cell and metric: mean, 95% interval and n seeds (tidy). With one seed, accuracies get a Wilson interval
    over the test queries (``interval`` says which); other metrics then have none."""
    rows = []
    for cell, group in per_run.groupby(list(CELL), dropna=False, sort=True):
        for metric in metrics:
            mean, low, high, n = t_interval(group[metric])
            kind = "t over seeds" if n > 1 else None
            if n == 1 and metric in ACCURACY_METRICS:
                low, high = wilson_interval(mean, int(group["queries"].iloc[0]))
                kind = "Wilson over test queries"
            extra = {"peak_step": float(group["peak_step"].mean())} if metric == "test_acc_peak" else {}
            low, high = _clip(metric, low, high)
            rows.append({**dict(zip(CELL, cell)), "metric": metric, "mean": mean, "low": low, "high": high, "n": n,
                         "interval": kind, **extra})
    return pd.DataFrame(rows, columns=[*CELL, "metric", "mean", "low", "high", "n", "interval", "peak_step"])


def metric_text(metric: str, value: float, unit: bool = True) -> str:
    """One value of ``metric`` as the tables write it: accuracies and gains in % with one decimal (``unit``: the %
    sign), Spearman rho with two decimals, other values (regret, tokens) with one decimal and thousands separators."""
    if metric in ACCURACY_METRICS + ("gain",):
        return f"{100 * value:.1f}" + ("%" if unit else "")
    return f"{value:.2f}" if metric == "spearman_rho" else f"{value:,.1f}"


def metrics_table(aggregated: pd.DataFrame) -> pd.DataFrame:
    """``aggregate`` rows as the paper's table: one row per cell, one column per metric, each cell written
    ``mean [low, high]`` (accuracies in %, the peak with its step), and n seeds."""
    def text(row) -> str:
        metric = row["metric"]
        if pd.isna(row["mean"]):
            return "–"
        out = metric_text(metric, row["mean"])
        if not pd.isna(row["low"]):
            out += f" [{metric_text(metric, row['low'], unit=False)}, {metric_text(metric, row['high'], unit=False)}]"
        if row["metric"] == "test_acc_peak" and not pd.isna(row.get("peak_step")):
            out += f" @{row['peak_step']:.0f}"
        return out

    keys = ["model_name", "task_name", "method"]
    shown = aggregated.assign(text=aggregated.apply(text, axis=1) if len(aggregated) else [])
    wide = shown.pivot_table(index=keys, columns="metric", values="text", aggfunc="first")
    wide = wide.reindex(columns=[m for m in METRICS if m in wide.columns])
    names = {"test_acc_step0": "step 0", "test_acc_final": "final", "test_acc_peak": "peak @step",
             "gain": "gain over step 0", "regret": "regret", "spearman_rho": "Spearman ρ"}
    wide.columns = [names[c] for c in wide.columns]
    wide["n"] = aggregated.groupby(keys)["n"].max()
    return wide


def accuracy_curves(runs: pd.DataFrame) -> pd.DataFrame:
    """Per cell and test step: mean test accuracy over seeds, its 95% interval and n (for the main figure)."""
    cell = [k for k in CELL if k in runs.columns]  # hand-made tables may carry fewer columns
    rows = []
    for key, group in runs.groupby([*cell, "step"], dropna=False, sort=True):
        mean, low, high, n = t_interval(group["accuracy"])
        kind = "t over seeds"
        if n == 1:
            low, high = wilson_interval(mean, int(group["n"].iloc[0]) if "n" in group else 0)
            kind = "Wilson over test queries"
        low, high = _clip("accuracy", low, high)
        rows.append({**dict(zip([*cell, "step"], key)), "mean": mean, "low": low, "high": high, "n": n,
                     "interval": kind})
    return pd.DataFrame(rows, columns=[*cell, "step", "mean", "low", "high", "n", "interval"])


def paired_differences(per_run: pd.DataFrame, a: str, b: str, metric: str = "test_acc_final",
                       by: tuple[str, ...] = ("model_name", "task_name")) -> pd.DataFrame:
    """``a`` minus ``b`` (run names, e.g. "explorative ICRL" and "naive ICRL") on the seeds both ran, per ``by``:
    mean difference, its 95% t-interval and n pairs. Pairing removes the seed-to-seed noise both share."""
    rows = []
    for key, group in per_run.groupby(list(by), sort=True):
        left = group[group["method"] == a].set_index(list(SEED))[metric]
        right = group[group["method"] == b].set_index(list(SEED))[metric]
        both = left.index.intersection(right.index)
        mean, low, high, n = t_interval((left.loc[both] - right.loc[both]).tolist())
        rows.append({**dict(zip(by, key if isinstance(key, tuple) else (key,))), "a": a, "b": b, "metric": metric,
                     "mean_difference": mean, "low": low, "high": high, "n_pairs": n})
    return pd.DataFrame(rows, columns=[*by, "a", "b", "metric", "mean_difference", "low", "high", "n_pairs"])


@lru_cache(maxsize=1)
def _paper_table() -> pd.DataFrame:
    table = pd.read_csv(PAPER_RESULTS, keep_default_na=False, na_values={"value": [""], "step": [""]})
    return table.astype({"section": float, "value": float})


def paper_results() -> pd.DataFrame:
    """The paper's published numbers (``paper_results.csv``, shipped with the package; see its README)."""
    return _paper_table().copy()


def join_paper(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` (``aggregate`` rows: model_name, task_name, method_key, setting, metric) with ``paper_value`` (and
    ``paper_step``, ``paper_section``) where the paper reports that cell. A number the paper prints twice is taken
    from its first section, a table before a figure."""
    paper = paper_results().sort_values(["section", "source"], key=lambda s: s if s.name == "section" else s != "T")
    paper = paper.drop_duplicates(["model", "task", "method", "setting", "metric"])
    paper = paper.rename(columns={"model": "model_name", "task": "task_name", "method": "method_key",
                                  "value": "paper_value", "step": "paper_step", "section": "paper_section"})
    keys = ["model_name", "task_name", "method_key", "setting", "metric"]
    return table.merge(paper[[*keys, "paper_value", "paper_step", "paper_section"]], on=keys, how="left")
