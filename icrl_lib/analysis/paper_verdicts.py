"""The paper's findings tested on the paper's own published numbers (``paper_results.csv``): what its evidence shows
where it makes each claim, beside ours.

The paper prints one run per cell on 500 test queries and no per-query results, so its differences are unpaired
(Agresti-Caffo) and its Spearman rho intervals treat test points as independent (Fisher z): as generous to the paper
as its numbers allow. A check's ``exceptions`` are the cells where the paper's own numbers contradict its words; they
stay in the claim's scope and are shown as contradicted (:func:`paper_summary` names them).
"""
from __future__ import annotations

import pandas as pd

from icrl_lib.analysis import stats
from icrl_lib.analysis.aggregate import paper_results
from icrl_lib.analysis.verdicts import base_task, claim_text, count_text, model_size
from icrl_lib.paper.experiments import Family
from icrl_lib.paper.findings import MEASURES, Check
from icrl_lib.tasks.files import paper_train_k

PAPER_TEST_QUERIES = 500  # every accuracy the paper prints is over 500 test queries
PAPER_TEST_EVERY = 500
COLUMNS = ["family", "finding_id", "finding", "model_name", "task_name", "claimed", "exception", "claim", "left_value",
           "right_value", *stats.NAN_ESTIMATE.as_dict(), "verdict"]


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


def _estimate(check: Check, task: str, left: float, right: float, level: float) -> stats.Estimate:
    if check.measure == "rho":
        points = paper_train_k(task) // PAPER_TEST_EVERY + 1
        return stats.correlation_difference([(left, points)], [(right, points)], level)
    return stats.unpaired_difference([(left, PAPER_TEST_QUERIES)], [(right, PAPER_TEST_QUERIES)], level)


def _cells(check: Check, values: pd.Series):
    """(model label, model the claim is read for, task, left key, right key) of every cell the paper reports."""
    cells = sorted({(m, t) for m, t, _, _ in values.index})
    (left_arm, left_m), (right_arm, right_m) = check.sides
    if not check.across:
        for model, task in cells:
            yield model, model, task, (model, task, left_arm, MEASURES[left_m]), \
                (model, task, right_arm, MEASURES[right_m])
        return
    for task in sorted({t for _, t in cells}):
        sized = sorted((model_size(m), m) for m, t in cells if t == task
                       and (model_size(m) == model_size(m)) and (m, task, left_arm, MEASURES[left_m]) in values.index)
        if len(sized) >= 2:
            (_, small), (_, large) = sized[0], sized[-1]
            yield f"{large} vs {small}", large, task, (large, task, left_arm, MEASURES[left_m]), \
                (small, task, right_arm, MEASURES[right_m])


def paper_evaluate(fam: Family, level: float = stats.LEVEL) -> pd.DataFrame:
    """Every check of ``fam`` on the paper's own numbers, per cell where it reports both sides; ``claimed``: the
    paper makes the claim there; ``exception``: one of the check's named exceptions."""
    values = paper_values(fam).set_index(["model", "task", "arm", "metric"])["value"]
    values = values[~values.index.duplicated()]
    rows = []
    for check in fam.checks():
        for label, model, task, left_key, right_key in _cells(check, values):
            sides = [values.get(left_key), values.get(right_key)]
            if any(v is None or pd.isna(v) for v in sides):
                continue
            estimate = _estimate(check, task, *sides, level)
            rows.append({"family": fam.name, "finding_id": check.id, "finding": check.text, "model_name": label,
                         "task_name": task, "claimed": check.claimed_for(model, task),
                         "exception": (model, task) in check.exceptions, "claim": claim_text(check),
                         "left_value": sides[0], "right_value": sides[1], **estimate.as_dict(),
                         "verdict": stats.verdict(estimate.low, estimate.high, check.kind, check.threshold)})
    return pd.DataFrame(rows, columns=COLUMNS)


def paper_summary(paper: pd.DataFrame) -> pd.Series:
    """Per finding id, what the paper's own numbers show where it makes the claim: "supported 9, contradicted 2 of 11
    (its exceptions: Llama-3.1-8B on nlu, trec_fine)"."""
    out = {}
    for finding, rows in paper[paper["claimed"]].groupby("finding_id", sort=False):
        text = count_text(rows["verdict"])
        named = rows[rows["exception"]]
        if len(named):
            cells = ", ".join(f"{m.split('/')[-1].removesuffix('-Instruct')} on {t}"
                              for m, t in zip(named["model_name"], named["task_name"]))
            text += f" (its exceptions, contradicted by its own numbers: {cells})"
        out[finding] = text
    return pd.Series(out, dtype=object)


def paper_text(fam: Family) -> pd.Series:
    """:func:`paper_summary` of ``fam``; a check without numbers in the paper says so."""
    summary = paper_summary(paper_evaluate(fam))
    return pd.Series({c.id: summary.get(c.id, "no numbers in the paper") for c in fam.checks()}, dtype=object)
