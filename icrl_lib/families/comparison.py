"""A family notebook's "Paper vs ours": per task, arm and metric, our value per model beside the paper's value per
model for the same method and task *at the paper's own setting*, both settings written in full, and whether they
are alike.

The paper's setting of an arm is the arm's coordinates in ``paper_results.csv`` as the family defines it
(:class:`icrl_lib.paper.experiments.Arm`: ``paper_method``, ``paper_setting``). Where the paper never ran that setting
on the task (a knob value it did not sweep, e.g. a 400-token window), the family's default for the method stands in
(its arm that is the method's own definition, e.g. the full window), else the first setting of the method the paper
ran there. Only where the paper never ran the method on the task in this family is there "no paper counterpart".

Our sizes (steps, a cap on the context) and overrides (p_keep) often differ from the paper's, as the CPU profiles
do: ``alike`` names what differs, so that a small run is read against the paper's number knowing how far from its
setting it is. Test queries and seeds are shown but not compared: they change only the noise, which our interval
covers.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd

from icrl_lib.analysis import aggregate
from icrl_lib.analysis.aggregate import metric_text
from icrl_lib.analysis.coordinates import SETTING_FIELDS
from icrl_lib.paper.experiments import Arm, Family
from icrl_lib.paper.methods import differences, window_text
from icrl_lib.runs.config import ExperimentConfig
from icrl_lib.tasks.files import paper_train_k

if TYPE_CHECKING:  # for the annotation only
    from icrl_lib.families.report import Tables

COMPARED_METRICS = ("test_acc_step0", "test_acc_final", "test_acc_peak", "regret_per_step", "spearman_rho")
PAPER_WINDOW = 131072  # the paper's models' max_model_len (128K)
PAPER_TEST_QUERIES = 500
SAME = "same setting"
NONE = "–"
# Compared as the window, not as fields: a cap in episodes or tokens
WINDOW_FIELDS = ("max_context_examples", "max_window_tokens")
SHORT = {"context_p_keep": "p_keep", "temperature": "T", "max_contexts": "K", "context_strategy_name": "strategy",
         "approximate_context_sampling_method": "sampling", "exemplars_per_label": "exemplars",
         "icrl_flip_feedback_prob": "flip_p", "icrl_omit_feedback": "feedback omitted",
         "icrl_flip_feedback": "feedback flipped", "system_prompt": "prompt"}


@dataclass(frozen=True)
class Setting:
    """One side's setting as the table writes and compares it."""

    steps: frozenset[int]  # training steps of the runs (empty: not a number: zero-shot, the paper's ICL)
    steps_text: str
    queries: int
    window: str  # "16 episodes per context", "128K-token window", "no context"
    fields: Mapping[str, Any]  # the setting fields (coordinates.SETTING_FIELDS) the run uses, the window's aside
    seeds: int


def paper_vs_ours(fam: Family, tables: Tables, arms: Mapping[str, Arm]) -> pd.DataFrame:
    """Per task, arm (the family's order, named as every table names its runs) and metric: our value (mean [95%
    interval], n seeds) per model, the paper's value per model for the same method and task at its own setting
    (:func:`paper_arm`), ``ours: setting`` and ``paper: setting`` in full, and ``alike`` ("same setting" or "differs:
    ..."). Regret is per training step, so runs of different lengths compare."""
    if tables.aggregated.empty:
        return pd.DataFrame()
    by_label = {a.label: a for a in arms.values()}
    order = {label: i for i, label in enumerate(by_label)}
    paper = aggregate.paper_results()
    paper = paper[paper["family"].isin(fam.paper_families)].drop_duplicates(["model", "task", "method", "setting",
                                                                             "metric"])
    ours = tables.aggregated[tables.aggregated["metric"].isin(COMPARED_METRICS)]
    key = "arm" if "arm" in ours and "arm" in tables.per_run else "method"  # hand-made tables: method = the label
    rows = []
    for (task, label), cell in ours.groupby(["task_name", key], sort=False):
        arm = by_label[label]
        runs = tables.per_run[(tables.per_run[key] == label) & (tables.per_run["task_name"] == task)]
        config = tables.configs.get(runs["run"].iloc[0]) if not runs.empty else None
        config = config or ExperimentConfig.from_dict(dict(arm.fields))  # hand-made tables may lack configs
        theirs = paper_arm(fam, arm, task, paper)
        mine = our_setting(tables, runs, config)
        if theirs is None:
            sides = {"ours: setting": setting_text(mine), "alike": NONE,
                     "paper: setting": f"no paper counterpart (the paper never ran {arm.paper_method} on {task} "
                                       "in this family)"}
            values = paper.iloc[:0]
        else:
            reference = paper_setting(theirs, task)
            sides = {"ours: setting": setting_text(mine, reference), "paper: setting": _paper_text(theirs, reference),
                     "alike": alike(mine, reference)}
            values = paper[(paper["task"] == task) & (paper["method"] == theirs.paper_method)
                           & (paper["setting"] == theirs.paper_setting)]
        for metric, by_metric in cell.groupby("metric", sort=False):
            if config.zero_shot and metric != "test_acc_step0":
                continue  # its one test is step 0
            row = {"task": task, "arm": cell["method"].iloc[0], "metric": metric, "order": order.get(label, len(order)),
                   **{f"ours: {m}": _our_value(r) for m, r in zip(by_metric["model_name"],
                                                                  by_metric.to_dict("records"))}}
            for r in values[values["metric"] == ("regret" if metric == "regret_per_step" else metric)].to_dict(
                    "records"):
                row[f"paper: {r['model'].split('/')[-1]}"] = _paper_value(r, task, metric)
            rows.append({**row, **sides})
    table = pd.DataFrame(rows).sort_values(["task", "order", "metric"], key=lambda s: s.map(COMPARED_METRICS.index)
                                           if s.name == "metric" else s, kind="stable")
    settings = ["ours: setting", "paper: setting", "alike"]
    table = table[[c for c in table.columns if c not in ("order", *settings)] + settings].fillna(NONE)
    values = [c for c in table.columns if c.startswith(("ours: ", "paper: ")) and c not in settings]
    return table[(table[values] != NONE).any(axis=1)].reset_index(drop=True)  # a metric neither side has: no row


def paper_vs_ours_view(table: pd.DataFrame):
    """``paper_vs_ours`` for reading (a pandas Styler): every cell in full, long ones wrapped. A DataFrame's own HTML
    cuts strings at pandas' ``display.max_colwidth`` (50 characters), which hid the seeds and what differs."""
    settings = [c for c in ("ours: setting", "paper: setting", "alike") if c in table.columns]
    return (table.style.hide(axis="index")
            .set_properties(**{"white-space": "normal", "text-align": "left", "vertical-align": "top"})
            .set_properties(subset=settings, **{"min-width": "14em", "max-width": "30em"}))


def paper_arm(fam: Family, arm: Arm, task: str, paper: pd.DataFrame) -> Arm | None:
    """The arm (of ``fam`` at the paper's own knob values) whose coordinates the paper reports ``arm``'s method at on
    ``task`` (``paper``: this family's rows): ``arm`` itself where the paper ran its setting there, else the family's
    default for the method (the arm that is the method's own definition), else the first setting of the method it
    ran there; None where it never ran the method on the task in this family."""
    ran = paper[paper["task"] == task]
    settings = set(zip(ran["method"], ran["setting"]))
    if (arm.paper_method, arm.paper_setting) in settings:
        return arm
    same = [a for a in fam.arms() if a.paper_method == arm.paper_method and (a.paper_method, a.paper_setting)
            in settings]
    defaults = [a for a in same if not differences(dict(a.fields))]
    return (defaults or same or [None])[0]


def our_setting(tables: Tables, runs: pd.DataFrame, config: ExperimentConfig) -> Setting:
    """Our side: the steps ``runs`` (``per_run`` rows of one arm and task) went to, their test queries, window (the
    cap on episodes, else the token window their contexts were fitted to), ``config``'s setting fields and seeds."""
    steps = frozenset() if config.zero_shot else frozenset(int(s) + 1 for s in runs["last_step"].dropna())
    if config.zero_shot:
        window = "no context"
    elif config.max_context_examples is not None:
        window = f"{config.max_context_examples} episodes per context"
    else:
        tokens = tables.tests.loc[tables.tests["run"].isin(runs["run"]), "context_window"].dropna().unique() \
            if "context_window" in tables.tests else []
        window = " / ".join(window_text(int(w)) for w in sorted(tokens)) or "window unknown"
    if config.zero_shot:
        text = "step 0 only"
    else:  # seeds still running may be behind the others: their range
        text = " to ".join(f"{s:,}" for s in sorted({min(steps), max(steps)})) + " steps" if steps else "no steps yet"
    return Setting(steps, text, int(runs["queries"].max()) if not runs.empty else 0, window, _fields(config),
                   int(runs["seed"].nunique()))


def paper_setting(arm: Arm, task: str) -> Setting:
    """The paper's side for ``arm``'s coordinates on ``task``: its steps (the task file's), 500 test queries, its
    window (the setting's, else 128K tokens), the arm's fields and one seed."""
    if arm.paper_method == "zero_shot":
        steps, text, window = frozenset(), "step 0 only", "no context"
    else:
        tokens = next((int(p.split("=")[1]) for p in arm.paper_setting.split(";") if p.startswith("window=")),
                      PAPER_WINDOW)
        window = window_text(tokens)
        if arm.paper_method == "icl":  # the paper's ICL final: the first test once the context is full
            steps, text = frozenset(), "until its context is full"
        else:
            k = paper_train_k(task.removesuffix("_unsemantic"))
            steps, text = frozenset({k}), f"{k:,} steps"
    return Setting(steps, text, PAPER_TEST_QUERIES, window, _fields(ExperimentConfig.from_dict(dict(arm.fields))), 1)


def setting_text(ours: Setting, paper: Setting | None = None) -> str:
    """Our setting in full: steps, test queries, window, the fields that differ from ``paper``'s, seeds."""
    fields = [f"{_short(k)} {_value(k, ours.fields.get(k))}" for k in _differing(ours, paper)] if paper else []
    seeds = f"{ours.seeds} seed{'s' if ours.seeds != 1 else ''}"
    return " · ".join([ours.steps_text, f"{ours.queries} test queries", ours.window, *fields, seeds])


def alike(ours: Setting, paper: Setting) -> str:
    """"same setting", or "differs: " and what does (steps, window, fields), ours first: e.g. "differs: 150 vs
    10,000 steps; 16 episodes per context vs 128K-token window; p_keep 0.5 vs 0.1"."""
    parts = []
    if paper.steps and ours.steps != paper.steps:
        parts.append(f"{ours.steps_text.removesuffix(' steps')} vs {paper.steps_text}")
    if ours.window != paper.window:
        parts.append(f"{ours.window} vs {paper.window}")
    parts += [f"{_short(k)} {_value(k, ours.fields.get(k))} vs {_value(k, paper.fields.get(k))}"
              for k in _differing(ours, paper)]
    return f"differs: {'; '.join(parts)}" if parts else SAME


def _fields(config: ExperimentConfig) -> dict[str, Any]:
    identity = config.identity()  # only the fields the run uses (none of training for zero-shot)
    return {k: identity[k] for k in SETTING_FIELDS if k in identity and k not in WINDOW_FIELDS}


def _differing(ours: Setting, paper: Setting) -> list[str]:
    return [k for k in SETTING_FIELDS if k in {*ours.fields, *paper.fields}
            and ours.fields.get(k) != paper.fields.get(k)]


def _short(field: str) -> str:
    return SHORT.get(field, field)


def _value(field: str, value: Any) -> str:
    if field == "system_prompt":
        return "the paper's" if value is None else "custom"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, bool):
        return str(value).lower()
    return NONE if value is None else str(value)


def _paper_text(arm: Arm, setting: Setting) -> str:
    coordinates = f"{arm.paper_method} ({arm.paper_setting or 'its main configuration'})"
    return " · ".join([setting.steps_text, f"{setting.queries} test queries", setting.window, "1 seed",
                       coordinates])


def _our_value(row: Mapping[str, Any]) -> str:
    if pd.isna(row["mean"]):
        return NONE
    text = metric_text(row["metric"], row["mean"])
    if not pd.isna(row["low"]):
        text += (f" [{metric_text(row['metric'], row['low'], unit=False)}, "
                 f"{metric_text(row['metric'], row['high'], unit=False)}]")
    return f"{text} n={int(row['n'])}"


def _paper_value(row: Mapping[str, Any], task: str, metric: str) -> str:
    if metric == "regret_per_step":  # the paper prints regret over its whole run
        return metric_text(metric, row["value"] / paper_train_k(task.removesuffix("_unsemantic")))
    text = metric_text(metric, row["value"])
    return text + (f" @{row['step']:.0f}" if not pd.isna(row.get("step")) else "")
