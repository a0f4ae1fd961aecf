"""Verdicts on the paper's findings: each :class:`~icrl_lib.paper.findings.Check` tested on our runs' per-query results
(:func:`evaluate`) and on the paper's own published numbers (:func:`paper_evaluate`), one row per (finding, model,
task) with the effect, its interval, n and the minimum detectable effect, and a verdict: supported, contradicted or
inconclusive (:func:`icrl_lib.analysis.stats.verdict`), or "not measured" where an arm has not run.

Where one statement combines the cells of a finding ("supported on k of n tasks"), each cell's verdict is redrawn at
the Bonferroni level for n (``verdict_adjusted``), so the combined statement keeps a 5% family-wise error.
:func:`summary` is that statement per finding; :func:`markdown` writes it as the README's table.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from icrl_lib.analysis import stats
from icrl_lib.analysis.aggregate import difference, paper_results, query_results
from icrl_lib.paper.families import FAMILIES, Arm, Family, family
from icrl_lib.paper.findings import MEASURES, Check
from icrl_lib.runs.store import ANALYSIS_DIR
from icrl_lib.runs.tables import COLLAPSE_WINDOW
from icrl_lib.tasks.files import paper_train_k

NOT_MEASURED = "not measured"
CPU_VERDICTS = "outputs/verdicts_cpu.csv"  # the CPU profiles' verdicts (committed): the README's table is made from it
README_MARKERS = ("<!-- verdicts:start -->", "<!-- verdicts:end -->")
PAPER_TEST_QUERIES = 500  # every accuracy the paper prints is over 500 test queries
PAPER_TEST_EVERY = 500
COLUMNS = ["family", "finding", "model_name", "task_name", "scope", "claim", "left", "right", "left_value",
           "right_value", "effect", "low", "high", "level", "n_queries", "n_seeds", "mde", "interval", "verdict",
           "adjusted_level", "verdict_adjusted", "tasks_supported", "note"]


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


def _side(check_side: tuple[str, str], runs: pd.DataFrame, final: pd.DataFrame, step0: pd.DataFrame):
    """(value, per-run data) of one side in one cell: runs of the arm and their query results or (rho, points)."""
    arm, measure = check_side
    mine = runs[runs["method"] == arm]
    if mine.empty:
        return math.nan, None
    value = float(mine[MEASURES[measure]].mean())
    if measure in ("final", "step0"):
        table = final if measure == "final" else step0
        return value, table[table["run"].isin(mine["run"])]
    if measure == "rho":
        return value, [(r, int(k)) for r, k in zip(mine["spearman_rho"], mine["test_points"])]
    window = mine["train_steps"].clip(upper=COLLAPSE_WINDOW).fillna(0).astype(int)
    return value, [(s, int(n)) for s, n in zip(mine["top_label_share"], window) if n > 0 and not pd.isna(s)]


def _estimate(check: Check, left, right, level: float) -> stats.Estimate:
    if (left is None or right is None or (isinstance(left, list) and not left)
            or (isinstance(right, list) and not right)):
        return stats.NAN_ESTIMATE
    if check.measure == "rho":
        return stats.correlation_difference(left, right, level)
    if check.measure == "top_share":
        return stats.unpaired_difference(left, right, level)
    return difference(left, right, level)


def evaluate(fam: Family, per_run: pd.DataFrame, predictions: pd.DataFrame, arms: Mapping[str, Arm],
             knobs: Mapping[str, Any] | None = None, level: float = stats.LEVEL) -> pd.DataFrame:
    """Every check of ``fam`` on our runs, per (model, task): ``per_run`` is ``run_metrics`` with ``method`` = the
    arm label, ``predictions`` ``results.load``'s per-query table."""
    if per_run.empty:
        return pd.DataFrame(columns=COLUMNS)
    final, step0 = query_results(predictions, per_run, "final"), query_results(predictions, per_run, "step0")
    references = {a.label for a in arms.values() if a.reference}
    rows = []
    for check in fam.checks(knobs):
        for (model, task), runs in per_run.groupby(["model_name", "task_name"], sort=True):
            (lv, left), (rv, right) = (_side(side, runs, final, step0) for side in check.sides)
            estimate = _estimate(check, left, right, level)
            measured = left is not None and right is not None and not math.isnan(estimate.effect)
            scope = "paper" if check.on_task(base_task(task, fam)) else \
                f"beyond the paper (it claims {', '.join(check.tasks)})"
            rows.append({"family": fam.name, "finding": check.text, "model_name": model, "task_name": task,
                         "scope": scope, "claim": claim_text(check), "left": _label(check.sides[0]),
                         "right": _label(check.sides[1]), "left_value": lv, "right_value": rv,
                         **estimate.as_dict(),
                         "verdict": stats.verdict(estimate.low, estimate.high, check.kind, check.threshold)
                         if measured else NOT_MEASURED,
                         "note": _note(check, estimate, runs, references, measured, (left, right))})
    table = pd.DataFrame(rows, columns=[c for c in COLUMNS if c not in ("adjusted_level", "verdict_adjusted",
                                                                          "tasks_supported")])
    return _adjust(table, lambda check, model, task: _estimate(check, *(
        _side(side, per_run[(per_run["model_name"] == model) & (per_run["task_name"] == task)], final, step0)[1]
        for side in check.sides), level=stats.adjusted_level(_in_scope_count(table, check.text), level)),
                   fam.checks(knobs))


def _label(side: tuple[str, str]) -> str:
    arm, measure = side
    return arm if measure == "final" else f"{arm} [{measure}]"


def _note(check: Check, estimate: stats.Estimate, runs: pd.DataFrame, references: set[str], measured: bool,
          data) -> str:
    notes = []
    if not measured:
        if check.measure == "rho" and all(d is not None for d in data):
            notes.append(f"needs ≥ {stats.MIN_RHO_POINTS} test points per run (set test_every smaller)")
        return "; ".join(notes)
    if estimate.n_seeds == 1:
        notes.append(f"1 seed: the interval covers {ONE_SEED_NOISE[check.measure]}, not seed-to-seed variation")
    arms = {check.left, check.right}
    if check.measure == "final" and (check.right_measure or "final") == "final" and not arms & references:
        rows = runs[runs["method"].isin(arms)].groupby("method")[["test_acc_final", "test_acc_step0"]].mean()
        if len(rows) == 2 and (rows["test_acc_final"] <= rows["test_acc_step0"]).all():
            notes.append(NEITHER_LEARNED)
    return "; ".join(notes)


NEITHER_LEARNED = "neither arm learned (final ≤ step 0)"
ONE_SEED_NOISE = {"final": "the test queries", "step0": "the test queries", "rho": "the test points",
                  "top_share": "the last training predictions"}


def _caveat(rows: pd.DataFrame) -> str:
    """Where a measured verdict compares two arms that both ended at or below their step 0."""
    tasks = sorted(rows.loc[rows["note"].fillna("").str.contains(NEITHER_LEARNED, regex=False), "task_name"])
    return f"neither arm learned on {', '.join(tasks)}" if tasks else ""


def _in_scope_count(table: pd.DataFrame, finding: str) -> int:
    rows = table[(table["finding"] == finding) & (table["scope"] == "paper") & (table["verdict"] != NOT_MEASURED)]
    return len(rows)


def _adjust(table: pd.DataFrame, estimate_at, checks: Sequence[Check]) -> pd.DataFrame:
    """Add the Bonferroni-adjusted verdict of each in-scope measured cell and the finding's "k of n" count."""
    by_text = {c.text: c for c in checks}
    table = table.assign(adjusted_level=np.nan, verdict_adjusted="", tasks_supported="")
    for finding, rows in table.groupby("finding", sort=False):
        check = by_text[finding]
        scoped = rows[(rows["scope"] == "paper") & (rows["verdict"] != NOT_MEASURED)]
        m = len(scoped)
        for i, row in scoped.iterrows():
            estimate = estimate_at(check, row["model_name"], row["task_name"])
            table.loc[i, "adjusted_level"] = stats.adjusted_level(m)
            table.loc[i, "verdict_adjusted"] = stats.verdict(estimate.low, estimate.high, check.kind, check.threshold)
        k = int((table.loc[scoped.index, "verdict_adjusted"] == stats.SUPPORTED).sum())
        table.loc[rows.index, "tasks_supported"] = f"{k} of {m}" if m else "–"
    return table[COLUMNS]


def paper_values(fam: Family) -> pd.DataFrame:
    """The paper's numbers of ``fam``'s arms (default knobs): model, task (base name), arm, metric, value."""
    by_coords = {(a.paper_method, a.paper_setting): a for a in fam.arms()}
    paper = paper_results()
    rows = paper[paper["family"].isin(fam.paper_families)].drop_duplicates(["model", "task", "method", "setting",
                                                                             "metric"])
    rows = rows.assign(arm=[by_coords[k].label if k in by_coords else None
                            for k in zip(rows["method"], rows["setting"])])
    rows = rows.dropna(subset=["arm"])
    zero_shot = {a.label for a in by_coords.values() if a.fields.get("max_context_examples") == 0}
    finals = rows[rows["arm"].isin(zero_shot) & (rows["metric"] == "test_acc_step0")].assign(metric="test_acc_final")
    rows = pd.concat([rows, finals])  # a zero-shot run's one test is its final one
    return rows.assign(task=[base_task(t, fam) for t in rows["task"]])[["model", "task", "arm", "metric", "value"]]


def paper_evaluate(fam: Family, level: float = stats.LEVEL) -> pd.DataFrame:
    """Every check of ``fam`` on the paper's own numbers (one seed, 500 test queries, arms unpaired: the paper gives
    no per-query results), per (model, task) where it reports both sides; ``claimed``: the paper makes the claim
    there."""
    values = paper_values(fam).set_index(["model", "task", "arm", "metric"])["value"]
    values = values[~values.index.duplicated()]
    rows = []
    for check in fam.checks():
        metrics = [MEASURES[m] for _, m in check.sides]
        cells = {(m, t) for m, t, _, _ in values.index}
        for model, task in sorted(cells):
            sides = [values.get((model, task, arm, metric)) for (arm, _), metric in zip(check.sides, metrics)]
            if any(v is None or pd.isna(v) for v in sides):
                continue
            if check.measure == "rho":
                points = paper_train_k(task) // PAPER_TEST_EVERY + 1
                estimate = stats.correlation_difference([(sides[0], points)], [(sides[1], points)], level)
            else:
                estimate = stats.unpaired_difference([(sides[0], PAPER_TEST_QUERIES)],
                                                     [(sides[1], PAPER_TEST_QUERIES)], level)
            rows.append({"family": fam.name, "finding": check.text, "model_name": model, "task_name": task,
                         "claimed": check.claimed_for(model, task), "claim": claim_text(check),
                         "left_value": sides[0], "right_value": sides[1], **estimate.as_dict(),
                         "verdict": stats.verdict(estimate.low, estimate.high, check.kind, check.threshold)})
    return pd.DataFrame(rows, columns=["family", "finding", "model_name", "task_name", "claimed", "claim", "left_value",
                                       "right_value", *stats.NAN_ESTIMATE.as_dict(), "verdict"])


def paper_summary(paper: pd.DataFrame) -> pd.Series:
    """Per finding, what the paper's own numbers show where it makes the claim: "supported 9, inconclusive 1 of 10"."""
    claimed = paper[paper["claimed"]]
    return claimed.groupby("finding", sort=False)["verdict"].apply(_counts)


def _counts(verdicts: pd.Series) -> str:
    counts = verdicts.value_counts()
    parts = [f"{v} {counts[v]}" for v in (stats.SUPPORTED, stats.CONTRADICTED, stats.INCONCLUSIVE) if v in counts]
    return f"{', '.join(parts)} of {len(verdicts)}" if len(verdicts) else "–"


def summary(table: pd.DataFrame, paper: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per finding: ours (Bonferroni-adjusted verdicts over the cells the paper claims it for, and the cells
    beyond), with the sizes, and what the paper's own numbers show."""
    rows = []
    paper_text = paper_summary(paper) if paper is not None and not paper.empty else pd.Series(dtype=str)
    for (name, finding), rows_ in table.groupby(["family", "finding"], sort=False):
        scoped = rows_[(rows_["scope"] == "paper") & (rows_["verdict"] != NOT_MEASURED)]
        beyond = rows_[(rows_["scope"] != "paper") & (rows_["verdict"] != NOT_MEASURED)]
        rows.append({"family": name, "finding": finding,
                     "ours": _counts(scoped["verdict_adjusted"]) if len(scoped) else NOT_MEASURED,
                     "ours_beyond_the_paper": _counts(beyond["verdict"]) if len(beyond) else "",
                     "caveat": _caveat(pd.concat([scoped, beyond])),
                     "tasks": ", ".join(sorted(set(rows_.loc[rows_["verdict"] != NOT_MEASURED, "task_name"]))),
                     "seeds": int(scoped["n_seeds"].max()) if len(scoped) else 0,
                     "queries": int(scoped["n_queries"].max()) if len(scoped) else 0,
                     "paper": paper_text.get(finding, "no numbers in the paper")})
    return pd.DataFrame(rows, columns=["family", "finding", "ours", "ours_beyond_the_paper", "caveat", "tasks",
                                       "seeds", "queries", "paper"])


VIEW_COLUMNS = {"claim": "claim", "effect": "effect", "interval_95": "95% interval", "n": "queries × seeds",
                "mde": "MDE", "verdict": "verdict", "verdict_adjusted": "adjusted", "tasks_supported": "k of n",
                "note": "note"}


def view(table: pd.DataFrame) -> pd.DataFrame:
    """The verdict table for reading, indexed by finding and task (and model, when there are several): claim, effect
    and 95% interval in points (ρ as a number), queries × seeds, minimum detectable effect, the verdict and its
    Bonferroni-adjusted twin, k of n tasks supported, note; a task beyond the paper's claim says so in its note."""
    def points(row, key):
        value = row[key]
        if pd.isna(value):
            return "–"
        return f"{value:+.2f}" if str(row["interval"]).startswith("Fisher") else f"{100 * value:+.1f}"

    rows = table.to_dict("records")
    shown = pd.DataFrame({
        "family": table["family"], "finding": table["finding"], "task": table["task_name"],
        "model": table["model_name"],
        "claim": table["claim"], "effect": [points(r, "effect") for r in rows],
        "interval_95": [f"[{points(r, 'low')}, {points(r, 'high')}]" if not pd.isna(r["low"]) else "–" for r in rows],
        "n": [f"{int(r['n_queries'])} × {int(r['n_seeds'])}" if r["n_seeds"] else "–" for r in rows],
        "mde": [points(r, "mde").lstrip("+") for r in rows], "verdict": table["verdict"],
        "verdict_adjusted": table["verdict_adjusted"], "tasks_supported": table["tasks_supported"],
        "note": ["; ".join(x for x in (r["scope"] if r["scope"] != "paper" else "", r["note"]) if x) for r in rows]})
    index = (["family"] if shown["family"].nunique() > 1 else []) + ["finding", "task"] + \
        (["model"] if shown["model"].nunique() > 1 else [])
    return shown.drop(columns=[c for c in ("family", "model") if c not in index]).set_index(index).rename(
        columns=VIEW_COLUMNS)


SUMMARY_COLUMNS = {"ours": "ours (Bonferroni over the tasks)",
                   "ours_beyond_the_paper": "ours, beyond the paper's tasks", "caveat": "caveat", "tasks": "tasks",
                   "seeds": "seeds",
                   "queries": "test queries", "paper": "the paper's own numbers"}


def summary_view(summary_table: pd.DataFrame) -> pd.DataFrame:
    """:func:`summary` for reading: indexed by (family and) finding, plain headers, no empty column."""
    index = (["family"] if summary_table["family"].nunique() > 1 else []) + ["finding"]
    shown = summary_table.drop(columns=[c for c in ("family",) if c not in index]).set_index(index).rename(
        columns=SUMMARY_COLUMNS)
    empty = [c for c in shown.columns if (shown[c].astype(str) == "").all()]
    return shown.drop(columns=empty)


def show(table: pd.DataFrame) -> None:
    """Display a verdict table (one family's or several): one line per finding, then every cell (notebooks)."""
    from IPython.display import display

    left = [{"selector": "th.row_heading, td", "props": "text-align: left; vertical-align: top"},
            {"selector": "td", "props": "white-space: nowrap"}]
    display(summary_view(overall(table)).style.set_table_styles(left))
    display(view(table).style.set_table_styles(left))


def markdown(summary_table: pd.DataFrame) -> str:
    """``summary`` as the README's verdict table (a test keeps the README equal to it)."""
    lines = ["| family | finding (the paper's claim) | ours: 135M on CPU (Bonferroni over the tasks) | tasks, seeds × "
             "n (test queries; test points for ρ; training predictions for a collapse) | the paper's own numbers |",
             "|---|---|---|---|---|"]
    for r in summary_table.to_dict("records"):
        beyond = f"; beyond the paper's tasks: {r['ours_beyond_the_paper']}" if r["ours_beyond_the_paper"] else ""
        caveat = f" ({r['caveat']})" if r["caveat"] else ""
        sizes = f"{r['tasks']}, {r['seeds']} × {r['queries']}" if r["seeds"] else "–"
        lines.append(f"| `{r['family']}` | {r['finding']} | {r['ours']}{beyond}{caveat} | {sizes} | {r['paper']} |")
    return "\n".join(lines)


def gather(outputs_dir: str | Path) -> pd.DataFrame:
    """Every family's exported verdict table under ``<outputs_dir>/_analysis/<family>/verdicts.parquet``, in the
    order of :data:`~icrl_lib.paper.families.FAMILIES`."""
    tables = [pd.read_parquet(path) for name in FAMILIES
              for path in [Path(outputs_dir) / ANALYSIS_DIR / name / "verdicts.parquet"] if path.is_file()]
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=COLUMNS)


def overall(table: pd.DataFrame) -> pd.DataFrame:
    """:func:`summary` of a table that holds several families (each with its paper's numbers)."""
    parts = [summary(rows, paper_evaluate(family(name))) for name, rows in table.groupby("family", sort=False)]
    return pd.concat(parts, ignore_index=True) if parts else summary(table)


def write_readme(readme: Path, table: pd.DataFrame) -> None:
    """Replace the README's verdict table (between :data:`README_MARKERS`) with the one of ``table``."""
    text = readme.read_text(encoding="utf-8")
    start, end = README_MARKERS
    if start not in text or end not in text:
        raise ValueError(f"{readme}: no verdict table markers {start} ... {end}")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    readme.write_text(f"{head}{start}\n{markdown(overall(table))}\n{end}{tail}", encoding="utf-8")
