"""A family's report: its sweep, its runs' tables (aggregated over seeds), figures, the paper's numbers beside ours,
and the paper's findings checked on our numbers. The family notebooks (``notebooks/family_<name>.ipynb``) are a
few calls into this module; everything also works on partial results (whatever runs have finished)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

import pandas as pd

from . import plots, results
from .aggregate import metric_text
from .families import Arm, Family, check_findings, configs
from .storage import run_name
from .sweep import Sweep

FIGURE_METRICS = ("test_acc_step0", "test_acc_final", "test_acc_peak", "regret")
RUNNING_WINDOW = 256  # the paper's appendix: running training accuracy over 256 steps


@dataclass(frozen=True)
class Tables:
    """Everything a family's figures and tables are drawn from (tidy DataFrames, ``method`` = the arm's label)."""

    tests: pd.DataFrame
    steps: pd.DataFrame
    per_run: pd.DataFrame
    aggregated: pd.DataFrame
    curves: pd.DataFrame


def family_sweep(fam: Family, params: Mapping[str, Any]) -> tuple[Sweep, Mapping[str, Arm]]:
    """The sweep of ``fam`` for notebook ``params`` and the arm of each run folder name."""
    from dataclasses import replace

    from .notebook import resolve_path

    pairs = configs(fam, params)
    output_dir = str(resolve_path(params.get("output_dir") or "outputs"))
    pairs = [(a, replace(c, output_dir=output_dir)) for a, c in pairs]
    launcher = params.get("launcher", "local")
    options = {launcher: MappingProxyType(dict(params.get("launcher_options") or {}))}
    sweep = Sweep(f"family_{fam.name}", tuple(c for _, c in pairs), launcher, int(params.get("workers", 1)),
                  MappingProxyType(options))
    return sweep, MappingProxyType({run_name(c): a for a, c in pairs})


def collect(sweep: Sweep, arms: Mapping[str, Arm]) -> Tables:
    """The family's runs as tables, each labelled by its arm; runs not started yet are simply absent."""
    tests, steps = results.load(Path(sweep.configs[0].output_dir), runs=arms)
    for table in (tests, steps):
        if not table.empty:
            table["method"] = table["run"].map(lambda r: arms[r].label)
    per_run = results.run_metrics(tests, steps)
    aggregated = results.aggregate(per_run)
    return Tables(tests, steps, per_run, aggregated.assign(arm=aggregated["method"]), results.accuracy_curves(tests))


def references(arms: Mapping[str, Arm]) -> list[str]:
    """Labels of the arms drawn as flat references (zero-shot, ICL)."""
    return sorted({a.label for a in arms.values() if a.reference})


def _over_seeds(steps: pd.DataFrame, column: str) -> pd.DataFrame:
    """Mean of a per-step column over the seeds of each arm (n seeds kept for the legend)."""
    keys = ["model_name", "task_name", "method", "step"]
    grouped = steps.dropna(subset=[column]).groupby(keys, sort=True)
    return grouped[column].mean().to_frame(column).assign(n=grouped["run"].nunique()).reset_index()


def figures(fam: Family, tables: Tables, arms: Mapping[str, Arm]) -> dict[str, Any]:
    """The family's figures: test accuracy (faceted, mean and band), regret, running accuracy, collapse, and final
    accuracy against each value the family sweeps (p_keep, temperature, window, K, the model)."""
    if tables.tests.empty:
        return {"status": plots.empty_figure("no finished test step yet: run the sweep first")}
    out = {"test_accuracy": plots.facet_figure(
        tables.curves, "mean", title=f"{fam.title}: test accuracy (mean over seeds, 95% interval)",
        y_title="test accuracy", percent=True, references=references(arms))}
    steps = tables.steps
    if "reward" in steps and steps["reward"].notna().any():
        steps = steps.sort_values(["run", "step"])
        running = steps.groupby("run")["reward"].transform(lambda s: s.rolling(RUNNING_WINDOW, min_periods=1).mean())
        steps = steps.assign(running_window=running)
        out["regret"] = plots.facet_figure(_over_seeds(steps, "regret"), "regret", title="Cumulative regret (mean "
                                           "over seeds)", y_title="wrong training predictions")
        out["running_accuracy"] = plots.facet_figure(
            _over_seeds(steps, "running_window"), "running_window", percent=True, y_title="training accuracy",
            title=f"Training accuracy over the last {RUNNING_WINDOW} steps (mean over seeds)")
        out["collapse"] = plots.facet_figure(
            _over_seeds(steps, "window_distinct_labels"), "window_distinct_labels", y_title="distinct labels",
            title=f"Exploration: distinct labels predicted in the last {results.COLLAPSE_WINDOW} training steps")
    tokens = token_table(tables)
    if not tokens.empty and (tokens["train_tokens_per_step"] > 0).any():
        out["compute"] = plots.compute_figure(tokens[tokens["train_tokens_per_step"] > 0],
                                              title=f"{fam.title}: compute against accuracy")
    points = knob_points(fam, tables, arms)
    for knob, rows in points.groupby("knob", sort=False):
        out[f"knob_{knob}"] = plots.knob_figure(rows, title=f"{fam.title}: final test accuracy against {knob}",
                                               x_title=knob)
    return out


def knob_points(fam: Family, tables: Tables, arms: Mapping[str, Arm]) -> pd.DataFrame:
    """Final accuracy per arm against the value it sets (series = the arm label before that value); for a family
    swept over models (scaling), against the model."""
    columns = ["knob", "series", "x", "mean", "low", "high", "task_name"]
    if tables.aggregated.empty:
        return pd.DataFrame(columns=columns)
    final = tables.aggregated[tables.aggregated["metric"] == "test_acc_final"]
    if fam.by_model:
        return final.assign(knob="model", series=final["method"], x=final["model_name"])[columns]
    by_label = {a.label: a for a in arms.values()}
    rows = [{"knob": by_label[label].knob, "series": label.rsplit(", ", 1)[0], "x": by_label[label].x, **row}
            for label, row in zip(final["method"], final[["mean", "low", "high", "task_name"]].to_dict("records"))
            if by_label[label].knob is not None]
    return pd.DataFrame(rows, columns=columns)


def token_table(tables: Tables) -> pd.DataFrame:
    """Per arm: training-prompt tokens computed per step and over the run (the paper's compute measure: test
    queries excluded), next to the final accuracy; old logs without a training/test split say so."""
    steps = tables.steps
    if steps.empty or "train_computed_tokens" not in steps or steps["train_computed_tokens"].isna().all():
        return pd.DataFrame(columns=["model_name", "task_name", "method", "train_tokens_per_step",
                                     "train_tokens_total", "final"])
    per_run = steps.groupby(["model_name", "task_name", "method", "run"])["train_computed_tokens"].agg(["mean", "sum"])
    table = per_run.groupby(["model_name", "task_name", "method"]).mean().rename(
        columns={"mean": "train_tokens_per_step", "sum": "train_tokens_total"}).reset_index()
    final = tables.aggregated[tables.aggregated["metric"] == "test_acc_final"][
        ["model_name", "task_name", "method", "mean"]].rename(columns={"mean": "final"})
    return table.merge(final, on=["model_name", "task_name", "method"], how="left")


def token_view(tokens: pd.DataFrame):
    """``token_table`` for reading (a pandas Styler): tokens as whole numbers, final accuracy in %; export the table."""
    return tokens.style.format({"train_tokens_per_step": "{:,.0f}", "train_tokens_total": "{:,.0f}",
                                "final": "{:.1%}"}, na_rep="–").hide(axis="index")


def paper_vs_ours(fam: Family, tables: Tables, arms: Mapping[str, Arm]) -> pd.DataFrame:
    """Per task, arm and metric: our value (mean [95% interval], n) per model, and the paper's value per model it
    ran (same metric definitions). Where our model is one of the paper's, the two sit side by side."""
    if tables.aggregated.empty:
        return pd.DataFrame()
    by_label = {a.label: a for a in arms.values()}
    ours = tables.aggregated[tables.aggregated["metric"].isin(FIGURE_METRICS)].copy()
    ours["paper_method"] = ours["method"].map(lambda label: by_label[label].paper_method)
    ours["paper_setting"] = ours["method"].map(lambda label: by_label[label].paper_setting)
    ours["value"] = [_text(r) for r in ours.to_dict("records")]
    wide = ours.pivot_table(index=["task_name", "method", "paper_method", "paper_setting", "metric"],
                            columns="model_name", values="value", aggfunc="first")
    wide.columns = [f"ours: {m}" for m in wide.columns]
    paper = results.paper_results()
    paper = paper[paper["family"].isin(fam.paper_families)].drop_duplicates(["model", "task", "method", "setting",
                                                                             "metric"])
    paper = paper.assign(value=[_paper_text(r) for r in paper.to_dict("records")])
    theirs = paper.pivot_table(index=["task", "method", "setting", "metric"], columns="model", values="value",
                               aggfunc="first")
    theirs.columns = [f"paper: {m.split('/')[-1]}" for m in theirs.columns]
    keys = wide.reset_index()[["task_name", "paper_method", "paper_setting", "metric"]].apply(tuple, axis=1)
    matched = theirs.reindex(list(keys))
    matched.index = wide.index
    table = wide.join(matched.dropna(axis=1, how="all")).reset_index().drop(columns=["paper_method", "paper_setting"])
    return table.fillna("–")  # the paper reports no such number


def _text(row: Mapping[str, Any]) -> str:
    if pd.isna(row["mean"]):
        return "–"
    scale, unit = (100, "%") if row["metric"] != "regret" else (1, "")
    text = f"{scale * row['mean']:.1f}{unit}"
    if not pd.isna(row["low"]):
        text += f" [{scale * row['low']:.1f}, {scale * row['high']:.1f}]"
    return f"{text} n={int(row['n'])}"


def _paper_text(row: Mapping[str, Any]) -> str:
    if row["metric"] == "regret":
        return f"{row['value']:.0f}"
    return f"{100 * row['value']:.1f}%" + (f" @{row['step']:.0f}" if not pd.isna(row.get("step")) else "")


def findings(fam: Family, tables: Tables) -> pd.DataFrame:
    """The paper's findings for this family, checked on our aggregated numbers (see ``families.check_findings``)."""
    return check_findings(fam, tables.aggregated)


def print_findings(fam: Family, tables: Tables) -> None:
    """One line per finding and (model, task): yes / no / not measured, with the two means."""
    table = findings(fam, tables)
    if table.empty:
        print("No finding can be checked yet (no finished runs, or the arms it compares were not run).")
    for row in table.to_dict("records"):
        verdict = {True: "yes", False: "NO", None: "not measured"}[row["holds"]]
        metric, rho = row["metric"], "ρ " if row["metric"] == "spearman_rho" else ""
        means = "" if row["holds"] is None else \
            f" ({rho}{metric_text(metric, row['left'])} vs {metric_text(metric, row['right'])})"
        note = f"; {row['note']}" if row["note"] else ""
        print(f"{verdict:>12}: {row['finding']} — {row['task_name']}, {row['model_name']}{means}{note}")


def export(fam: Family, figs: Mapping[str, Any], tables: Tables, extra: Mapping[str, pd.DataFrame],
           folder: str | Path) -> dict[str, Path]:
    """Every figure as HTML and every table as parquet + CSV under ``folder``; name -> path of what was written."""
    from .notebook import export_table, save_figures

    paths = {f"figure {k}": v for k, v in save_figures(figs, folder).items()}
    for name, table in {"per_run": tables.per_run, "metrics": tables.aggregated, "curves": tables.curves,
                        **extra}.items():
        if table is not None and not table.empty:
            paths[f"table {name}"] = export_table(table.reset_index(drop=True), folder, name)["parquet"]
    return paths
