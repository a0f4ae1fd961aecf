"""Verdicts on the paper's findings: each :class:`~icrl_lib.paper.findings.Check` tested on our runs' per-query results
(:func:`evaluate`), one row per (finding, model, task) with the effect, its interval, n and the minimum detectable
effect, and a verdict (:func:`judge`, the one place for the rule):

* "not measured": an arm has not run (or a curve is too short or flat for a Spearman rho);
* "uninformative (at the floor)": every arm the claim reads ends at or below its own step 0 or chance, so nothing
  was learned that the claim could be about (an "at most a few points" then holds for any model); only a
  contradiction stands there (an arm that fell below its step 0 does go against "it learns");
* "inconclusive (n seeds)": fewer than :data:`MIN_SEEDS` seeds, so the interval leaves out seed-to-seed variation
  (at the spread measured on CLINIC150 such an interval covers the truth about half the time, not 95%);
* "not testable at this size": the minimum detectable effect exceeds any effect the measure can show;
* else supported, contradicted or inconclusive, read off the interval (:func:`icrl_lib.analysis.stats.verdict`).

Only the last three count: where one statement combines the cells of a finding ("supported on k of n tasks"), n is
the counted cells and each is redrawn at the Bonferroni level for n (``verdict_adjusted``), so the combined statement
keeps a 5% family-wise error. :mod:`icrl_lib.analysis.verdict_tables` writes the tables; the paper's own numbers are
:mod:`icrl_lib.analysis.paper_verdicts`.
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from functools import cache, partial

import numpy as np
import pandas as pd

from icrl_lib.analysis import stats
from icrl_lib.analysis.aggregate import difference, query_results
from icrl_lib.paper.experiments import Family
from icrl_lib.paper.findings import MEASURES, Check

NOT_MEASURED = "not measured"
FLOOR = "uninformative (at the floor)"
UNTESTABLE = "not testable at this size"
MIN_SEEDS = 3  # fewer seeds leave seed-to-seed variation out of (or nearly out of) the interval
COUNTED = (stats.SUPPORTED, stats.CONTRADICTED, stats.INCONCLUSIVE)
MAX_EFFECT = {"final": 1.0, "step0": 1.0, "top_share": 1.0, "rho": 2.0}  # the largest |difference| a measure allows
COLUMNS = ["family", "finding_id", "finding", "model_name", "task_name", "scope", "claim", "reading", "left", "right",
           "left_value", "right_value", "floor", "effect", "low", "high", "level", "n_queries", "n_seeds", "mde",
           "interval", "verdict", "adjusted_level", "verdict_adjusted", "tasks_supported", "note"]


def few_seeds(n: int) -> str:
    """The verdict of a cell with ``n`` < MIN_SEEDS seeds."""
    return f"inconclusive ({n} seed{'s' if n != 1 else ''})"


def counted(verdict: str) -> bool:
    """Whether a verdict counts in "k of n" (an interval drew it, over enough seeds, above the floor)."""
    return verdict in COUNTED


def counted_mask(verdicts: pd.Series) -> pd.Series:
    """Which verdicts count, as a boolean mask (an empty one stays a mask, never a selection of no columns)."""
    return verdicts.map(counted).astype(bool)


def count_text(verdicts: pd.Series) -> str:
    """Counted verdicts as tables write them: "supported 9, contradicted 2 of 11" ("" for none)."""
    counts = verdicts.value_counts()
    parts = [f"{v} {counts[v]}" for v in COUNTED if v in counts]
    return f"{', '.join(parts)} of {len(verdicts)}" if len(verdicts) else ""


def judge(check: Check, estimate: stats.Estimate, floor: bool) -> str:
    """The verdict of one cell: the rule of the module docstring, in its order."""
    if math.isnan(estimate.effect):
        return NOT_MEASURED
    interval = stats.verdict(estimate.low, estimate.high, check.kind, check.threshold)
    if floor and interval != stats.CONTRADICTED:
        return FLOOR
    if estimate.n_seeds < MIN_SEEDS:
        return few_seeds(estimate.n_seeds)
    if not math.isnan(estimate.mde) and estimate.mde > MAX_EFFECT[check.measure]:
        return UNTESTABLE
    return interval


def claim_text(check: Check) -> str:
    """The claim on the difference left - right, in points for accuracies: ``> 0``, ``< +5``, ``|d| <= 5``."""
    scale = 1 if check.measure == "rho" else 100
    t = check.threshold * scale
    if check.kind == "within":
        return f"|d| ≤ {t:g}"
    return f"{'>' if check.kind == 'greater' else '<'} {t:+g}" if t else f"{'>' if check.kind == 'greater' else '<'} 0"


def base_task(task: str, fam: Family) -> str:
    """The paper's task a run's task is (abstract labels drop their ``_unsemantic``)."""
    return task[: -len(fam.task_suffix)] if fam.task_suffix and task.endswith(fam.task_suffix) else task


@cache
def chance(task: str) -> float:
    """1 / the number of labels of ``task`` (a registered name with its variants), 0 when unknown (a task file
    whose labels come from its data)."""
    from icrl_lib.errors import UserError
    from icrl_lib.tasks.task import base_labels, parse_task_name

    try:
        parsed = parse_task_name(task)
        top, labels = parsed.top, base_labels(parsed.spec)
    except (UserError, FileNotFoundError, ValueError):
        return 0.0
    n = top or (len(labels) if labels else 0)
    return 1.0 / n if n else 0.0


def model_size(name: str) -> float:
    """Parameters of a model from its name ("Qwen2.5-0.5B-Instruct" -> 5e8, "smollm2-135m" -> 1.35e8); NaN if none."""
    match = re.search(r"(\d+(?:\.\d+)?)([mb])(?![a-z])", str(name).split("/")[-1].lower())
    return float(match[1]) * (1e6 if match[2] == "m" else 1e9) if match else math.nan


def at_floor(runs: pd.DataFrame, arms: set[str], task: str) -> bool:
    """Whether every arm in ``arms`` ends (mean final over its runs) at or below its step 0 or chance."""
    rows = runs[runs["method"].isin(arms)].groupby("method")[["test_acc_final", "test_acc_step0"]].mean()
    if len(rows) < len(arms):
        return False
    level = np.fmax(rows["test_acc_step0"].fillna(0.0), chance(task))
    return bool((rows["test_acc_final"] <= level + 1e-9).all())


def _side_data(side: tuple[str, str], runs: pd.DataFrame, final: pd.DataFrame, step0: pd.DataFrame):
    """(value, per-run data) of one side: query results of the arm's runs, or (seed, value, floor variance) per run
    for a per-run quantity (rho, top share)."""
    arm, measure = side
    mine = runs[runs["method"] == arm]
    if mine.empty:
        return math.nan, None
    value = float(mine[MEASURES[measure]].mean())
    if measure in ("final", "step0"):
        table = final if measure == "final" else step0
        return value, table[table["run"].isin(mine["run"])]
    if measure == "rho":
        return value, [(int(s), r, stats.rho_floor(int(k)), int(k))
                       for s, r, k in zip(mine["seed"], mine["spearman_rho"], mine["test_points"])]
    window = mine["collapse_window"].fillna(0).astype(int)  # the predictions the share is over (run_metrics)
    return value, [(int(s), v, stats.share_floor(v, int(n)), int(n))
                   for s, v, n in zip(mine["seed"], mine["top_label_share"], window) if n > 0 and not pd.isna(v)]


def _estimate(check: Check, left, right, level: float) -> stats.Estimate:
    if left is None or right is None or (isinstance(left, list) and not left) or (
            isinstance(right, list) and not right):
        return stats.NAN_ESTIMATE
    if _rho_problem(check, (left, right)):
        return stats.NAN_ESTIMATE
    if check.measure in ("rho", "top_share"):
        points = min(k for *_, k in (*left, *right))
        bounds = (-2.0, 2.0) if check.measure == "rho" else (-1.0, 1.0)
        return stats.seed_difference([r[:3] for r in left], [r[:3] for r in right], level, points, bounds)
    return difference(left, right, level)


def _rho_problem(check: Check, data) -> str:
    """Why a Spearman check has no estimate: too few test points, or a flat curve ("" if neither)."""
    if check.measure != "rho" or any(d is None for d in data):
        return ""
    runs = [r for d in data for r in d]
    if any(k < stats.MIN_RHO_POINTS for *_, k in runs):
        return f"needs ≥ {stats.MIN_RHO_POINTS} test points per run (set test_every smaller)"
    if any(r is None or math.isnan(r) for _, r, *_ in runs):
        return "a flat learning curve (the same test accuracy at every test point): its ρ is undefined"
    return ""


def _cells(check: Check, per_run: pd.DataFrame):
    """(model label, task, left runs, right runs) per cell: one model's runs for both sides, or for a check
    ``across="size"`` the largest model's runs against the smallest's (None when fewer than 2 sizes ran)."""
    if not check.across:
        for (model, task), runs in per_run.groupby(["model_name", "task_name"], sort=True):
            yield model, task, runs, runs
        return
    for task, runs in per_run.groupby("task_name", sort=True):
        sizes = sorted((model_size(m), m) for m in runs["model_name"].unique() if not math.isnan(model_size(m)))
        if len(sizes) < 2:
            yield " vs ".join(m for _, m in sizes) or "one model", task, None, None
            continue
        (_, small), (_, large) = sizes[0], sizes[-1]
        yield (f"{large} vs {small}", task, runs[runs["model_name"] == large], runs[runs["model_name"] == small])


def evaluate(fam: Family, per_run: pd.DataFrame, predictions: pd.DataFrame, arms, knobs=None,
             level: float = stats.LEVEL, names: Mapping[str, str] | None = None) -> pd.DataFrame:
    """Every check of ``fam`` per (model, task) of ``per_run`` (``aggregate.run_metrics`` rows with ``method`` set to
    the arm label), paired over ``predictions``' test queries and seeds; :data:`COLUMNS`. ``names``: arm label -> the
    name of its runs (:func:`icrl_lib.paper.methods.name_run`), which the ``left`` and ``right`` columns show, so a
    side reads as the same runs read in every other table (the label where it has none)."""
    names = names or {}
    if per_run.empty:
        return pd.DataFrame(columns=COLUMNS)
    final, step0 = query_results(predictions, per_run, "final"), query_results(predictions, per_run, "step0")
    rows, estimators = [], []
    for check in fam.checks(knobs):
        for model, task, left_runs, right_runs in _cells(check, per_run):
            base = {"family": fam.name, "finding_id": check.id, "finding": check.text, "model_name": model,
                    "task_name": task, "claim": claim_text(check), "reading": check.reading,
                    "scope": "paper" if check.on_task(base_task(task, fam)) else
                    f"beyond the paper (it claims {', '.join(check.tasks)})", "left": _label(check, 0, names),
                    "right": _label(check, 1, names)}
            if left_runs is None:
                rows.append({**base, "floor": False, **stats.NAN_ESTIMATE.as_dict(), "verdict": NOT_MEASURED,
                             "note": "needs runs of at least 2 model sizes"})
                estimators.append(None)
                continue
            (lv, left), (rv, right) = (_side_data(side, runs, final, step0)
                                       for side, runs in zip(check.sides, (left_runs, right_runs)))
            estimate_at: Callable[[float], stats.Estimate] = partial(_estimate, check, left, right)
            estimate = estimate_at(level)
            floor = check.measure != "top_share" and not math.isnan(estimate.effect) and all(
                at_floor(runs, {side[0]}, task) for side, runs in zip(check.sides, (left_runs, right_runs)))
            verdict = judge(check, estimate, floor)
            rows.append({**base, "left_value": lv, "right_value": rv, "floor": floor, **estimate.as_dict(),
                         "verdict": verdict, "note": _note(check, estimate, verdict, task, (left, right))})
            estimators.append(estimate_at)
    table = pd.DataFrame(rows).reindex(columns=COLUMNS)
    return _adjust(table, estimators, {c.id: c for c in fam.checks(knobs)}, level)


def _label(check: Check, i: int, names: Mapping[str, str]) -> str:
    arm, measure = check.sides[i]
    arm = names.get(arm, arm)
    where = (" [largest]" if i == 0 else " [smallest]") if check.across else ""
    return (arm if measure == "final" else f"{arm} [{measure}]") + where


def _note(check: Check, estimate: stats.Estimate, verdict: str, task: str, data) -> str:
    if verdict == NOT_MEASURED:
        return _rho_problem(check, data)
    if verdict == FLOOR:
        level = f"chance (1/{round(1 / chance(task))})" if chance(task) else "chance"
        return f"every arm it reads ends at or below its own step 0 or {level}: nothing learned to compare"
    if verdict.startswith("inconclusive ("):
        seeds = f"{estimate.n_seeds} seed{'s' if estimate.n_seeds != 1 else ''}: needs ≥ {MIN_SEEDS} for a verdict"
        if estimate.n_seeds > 1:
            return seeds
        if check.measure in ("rho", "top_share"):
            return f"{seeds} (a quantity of the whole run: one run gives no interval)"
        return f"{seeds} (the interval shown covers the test queries, not seed-to-seed variation)"
    if verdict == UNTESTABLE:
        unit = "" if check.measure == "rho" else " points"
        scale = 1 if check.measure == "rho" else 100
        return (f"minimum detectable effect {scale * estimate.mde:.1f}{unit} exceeds the largest possible "
                f"({scale * MAX_EFFECT[check.measure]:g}{unit})")
    return ""


def _adjust(table: pd.DataFrame, estimators, checks: dict[str, Check], level: float) -> pd.DataFrame:
    """Add the Bonferroni-adjusted verdict of each counted in-scope cell and the finding's "k of n" count."""
    table = table.assign(adjusted_level=np.nan, verdict_adjusted="", tasks_supported="")
    for finding, rows in table.groupby("finding_id", sort=False):
        check = checks[finding]
        scoped = rows[(rows["scope"] == "paper") & counted_mask(rows["verdict"])]
        m = len(scoped)
        for i in scoped.index:
            estimate = estimators[i](stats.adjusted_level(m, level))
            table.loc[i, "adjusted_level"] = stats.adjusted_level(m, level)
            table.loc[i, "verdict_adjusted"] = judge(check, estimate, False)
        k = int((table.loc[scoped.index, "verdict_adjusted"] == stats.SUPPORTED).sum())
        table.loc[rows.index, "tasks_supported"] = f"{k} of {m}" if m else "–"
    return table[COLUMNS]
