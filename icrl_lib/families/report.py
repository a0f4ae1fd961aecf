"""A family's report: its sweep, its runs' tables (aggregated over seeds), figures, the paper's numbers beside ours,
and the paper's findings checked on our numbers. The family notebooks (``notebooks/family_<name>.ipynb``) are a
few calls into this module; everything also works on partial results (whatever runs have finished)."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pandas as pd

from icrl_lib.analysis import aggregate, load, paper_verdicts, plots, stats, verdict_tables, verdicts
from icrl_lib.analysis.aggregate import metric_text
from icrl_lib.families.spec import configs
from icrl_lib.notebook import export_table, resolve_path, save_figures
from icrl_lib.paper.experiments import Arm, Family
from icrl_lib.paper.methods import name_run
from icrl_lib.runs.config import ExperimentConfig
from icrl_lib.runs.identity import run_name
from icrl_lib.runs.store import ANALYSIS_DIR
from icrl_lib.runs.tables import COLLAPSE_WINDOW
from icrl_lib.sweeps.sweep import Sweep

RUNNING_WINDOW = 256  # the paper's appendix: running training accuracy over 256 steps


@dataclass(frozen=True)
class Tables:
    """Everything a family's figures and tables are drawn from (tidy DataFrames): ``method`` is the run's name, the
    one every table gives it (:func:`icrl_lib.paper.methods.name_run`: ``results.ipynb`` names the same run folder
    alike), ``arm`` the label of its arm (what parameters and the paper's findings refer to)."""

    tests: pd.DataFrame
    steps: pd.DataFrame
    predictions: pd.DataFrame  # every test prediction (per query): what the verdicts pair on
    per_run: pd.DataFrame
    aggregated: pd.DataFrame
    curves: pd.DataFrame
    configs: Mapping[str, ExperimentConfig]  # run folder name -> its config
    names: Mapping[str, str] = field(default_factory=dict)  # arm label -> its runs' name, in the family's order

    def name(self, label: str) -> str:
        """The name of the runs of the arm ``label`` (the label itself for hand-made tables without names)."""
        return self.names.get(label, label)


def family_sweep(fam: Family, params: Mapping[str, Any]) -> tuple[Sweep, Mapping[str, Arm]]:
    """The sweep of ``fam`` for notebook ``params`` and the arm of each run folder name."""
    pairs = configs(fam, params)
    output_dir = str(resolve_path(params.get("output_dir") or "outputs"))
    pairs = [(a, replace(c, output_dir=output_dir)) for a, c in pairs]
    launcher = params.get("launcher", "local")
    options = {launcher: MappingProxyType(dict(params.get("launcher_options") or {}))}
    sweep = Sweep(f"family_{fam.name}", tuple(c for _, c in pairs), launcher=launcher,
                  workers=int(params.get("workers", 1)), options=MappingProxyType(options))
    return sweep, MappingProxyType({run_name(c): a for a, c in pairs})


def runs_overview(status: pd.DataFrame) -> pd.DataFrame:
    """The sweep's status per arm (rows) and task (columns): "3/3 done", or what is not done yet."""
    def cell(states: pd.Series) -> str:
        counts = states.value_counts()
        text = f"{int(counts.get('done', 0))}/{len(states)} done"
        rest = [f"{int(n)} {state}" for state, n in counts.items() if state != "done"]
        return text + (f" ({', '.join(rest)})" if rest else "")

    if status.empty:
        return pd.DataFrame()
    table = status.groupby(["method", "task_name"], sort=False)["state"].agg(cell).unstack("task_name")
    table.index.name, table.columns.name = "run", None
    return table


def arm_names(sweep: Sweep, arms: Mapping[str, Arm]) -> dict[str, str]:
    """Arm label -> the name of its runs (:func:`icrl_lib.paper.methods.name_run` of their config: what the arm is,
    overrides included), in the family's order."""
    configs = {run_name(c): c for c in sweep.configs}
    names: dict[str, str] = {}
    for folder, a in arms.items():
        names.setdefault(a.label, name_run(configs[folder].to_dict()))
    return names


def collect(sweep: Sweep, arms: Mapping[str, Arm]) -> Tables:
    """The family's runs as tables, each named as every table names it (``method``) and labelled by its arm
    (``arm``); runs not started yet are simply absent."""
    tests, steps, predictions = load.read(Path(sweep.configs[0].output_dir), runs=arms)
    for table in (tests, steps):
        if not table.empty:
            table["arm"] = table["run"].map(lambda r: arms[r].label)
    per_run = aggregate.run_metrics(tests, steps)
    per_run["arm"] = per_run["run"].map(lambda r: arms[r].label)
    aggregated = aggregate.aggregate(per_run)
    label = dict(zip(per_run["method"], per_run["arm"]))
    return Tables(tests, steps, predictions, per_run, aggregated.assign(arm=aggregated["method"].map(label)),
                  aggregate.accuracy_curves(tests), MappingProxyType({run_name(c): c for c in sweep.configs}),
                  MappingProxyType(arm_names(sweep, arms)))


def arm_order(arms: Mapping[str, Arm], tables: Tables | None = None) -> list[str]:
    """The family's run names (arm labels without ``tables``) in its (the paper's) order."""
    return list(dict.fromkeys(tables.name(a.label) if tables else a.label for a in arms.values()))


def references(arms: Mapping[str, Arm], tables: Tables | None = None) -> list[str]:
    """Names (labels without ``tables``) of the arms drawn as flat references (zero-shot, ICL)."""
    return sorted({tables.name(a.label) if tables else a.label for a in arms.values() if a.reference})


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
    sizes = f"<br><sup>{sizes_caption(tables)}</sup>"
    out = {"test_accuracy": plots.facet_figure(
        tables.curves, "mean", title=f"{fam.title}: test accuracy (mean over seeds, 95% interval){sizes}",
        y_title="test accuracy", percent=True, references=references(arms, tables))}
    steps = tables.steps
    if "reward" in steps and steps["reward"].notna().any():
        steps = steps.sort_values(["run", "step"])
        running = steps.groupby("run")["reward"].transform(lambda s: s.rolling(RUNNING_WINDOW, min_periods=1).mean())
        steps = steps.assign(running_window=running)
        out["regret"] = plots.facet_figure(_over_seeds(steps, "regret"), "regret", title="Cumulative regret (mean "
                                           f"over seeds){sizes}", y_title="wrong training predictions")
        out["running_accuracy"] = plots.facet_figure(
            _over_seeds(steps, "running_window"), "running_window", percent=True, y_title="training accuracy",
            title=f"Training accuracy over the last {RUNNING_WINDOW} steps (mean over seeds){sizes}")
        out["collapse"] = plots.facet_figure(
            _over_seeds(steps, "window_distinct_labels"), "window_distinct_labels", y_title="distinct labels",
            title=f"Exploration: distinct labels predicted in the last {COLLAPSE_WINDOW} training steps{sizes}")
    tokens = token_table(tables)
    if not tokens.empty and (tokens["train_tokens_per_step"] > 0).any():
        out["compute"] = plots.compute_figure(tokens[tokens["train_tokens_per_step"] > 0],
                                              title=f"{fam.title}: compute against accuracy{sizes}")
    points = knob_points(fam, tables, arms)
    for knob, rows in points.groupby("knob", sort=False):
        out[f"knob_{knob}"] = plots.knob_figure(rows, title=f"{fam.title}: final test accuracy against {knob}{sizes}",
                                               x_title=knob)
    return out


def sizes_caption(tables: Tables) -> str:
    """What a family's figures show, in one line: the models, the longest run's steps, test queries and seeds."""
    runs = tables.per_run
    models = ", ".join(sorted(m.split("/")[-1] for m in runs["model_name"].unique()))
    seeds = runs["seed"].nunique()
    return (f"{models} · {int(runs['last_step'].max()) + 1:,} steps · {int(runs['queries'].max())} test queries · "
            f"{seeds} seed{'s' if seeds > 1 else ''}")


def knob_points(fam: Family, tables: Tables, arms: Mapping[str, Arm]) -> pd.DataFrame:
    """Final accuracy per arm against the value it sets (series = the runs' name without that value); for a family
    swept over models (scaling), against the model."""
    columns = ["knob", "series", "x", "mean", "low", "high", "task_name"]
    if tables.aggregated.empty:
        return pd.DataFrame(columns=columns)
    final = tables.aggregated[tables.aggregated["metric"] == "test_acc_final"]
    if fam.by_model:
        return final.assign(knob="model", series=final["method"], x=final["model_name"])[columns]
    by_label = {a.label: a for a in arms.values()}
    config = {a.label: tables.configs[folder] for folder, a in arms.items() if folder in tables.configs}
    labels = final["arm"] if "arm" in final else final["method"]

    def series(label: str, name: str) -> str:
        knob = by_label[label].knob
        return name_run(config[label].to_dict(), leave_out=(knob,)) if label in config else name

    rows = [{"knob": by_label[label].knob, "series": series(label, name), "x": by_label[label].x, **row}
            for label, name, row in zip(labels, final["method"],
                                        final[["mean", "low", "high", "task_name"]].to_dict("records"))
            if by_label[label].knob is not None]
    return pd.DataFrame(rows, columns=columns)


def token_table(tables: Tables) -> pd.DataFrame:
    """Per arm: training-prompt tokens computed per step and over the run (the paper's compute measure: test
    queries excluded), next to the final accuracy."""
    steps = tables.steps
    if steps.empty:
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


def verdict_table(fam: Family, tables: Tables, arms: Mapping[str, Arm], params: Mapping[str, Any]) -> pd.DataFrame:
    """The paper's findings tested on these runs (:func:`icrl_lib.analysis.verdicts.evaluate`: arms by label), for
    the knobs they ran; its sides (``left``, ``right``) named as every table names their runs."""
    per_run = tables.per_run.assign(method=tables.per_run["arm"]) if "arm" in tables.per_run else tables.per_run
    return verdicts.evaluate(fam, per_run, tables.predictions, arms, params.get("knobs"),
                             names=side_names(fam, params, tables.names))


def side_names(fam: Family, params: Mapping[str, Any], ran: Mapping[str, str]) -> dict[str, str]:
    """Arm label -> name for every side a finding of ``fam`` may read: ``ran`` (the names of the runs, from
    :func:`arm_names`), else the name of the arm's fields with the parameters' overrides (a side that has not run,
    or a knob value the parameters leave out)."""
    overrides = params.get("arm_overrides") or {}
    names = {a.label: name_run({**a.fields, **overrides.get("*", {}), **overrides.get(a.label, {})})
             for a in (*fam.arms(), *fam.arms(params.get("knobs")))}
    return {**names, **ran}


def show_verdicts(fam: Family, table: pd.DataFrame) -> None:
    """The verdicts first as one line per finding (ours, Bonferroni-adjusted over the tasks, and the paper's own
    numbers), then per (model, task) with effect, 95% interval, n and minimum detectable effect, then where the
    paper's own evidence is weak (inconclusive on its 500 test queries)."""
    paper = paper_verdicts.paper_evaluate(fam)
    if table.empty:
        print("No finding can be checked yet: no finished runs.")
    else:
        verdict_tables.show(table)
    weak = paper[paper["claimed"] & (paper["verdict"] == stats.INCONCLUSIVE)]
    for row in weak.to_dict("records"):
        metric = "spearman_rho" if row["interval"].startswith("Fisher") else "test_acc_final"
        values = f"{metric_text(metric, row['left_value'])} vs {metric_text(metric, row['right_value'])}"
        print(f"The paper's own evidence is weak here: {row['finding']} — {row['task_name']}, {row['model_name']} "
              f"({'ρ ' if metric == 'spearman_rho' else ''}{values}, one run, 500 test queries: inconclusive)")


def export_folder(fam: Family, params: Mapping[str, Any]) -> Path:
    """Where a family notebook writes its figures and tables: ``export_dir``, else
    ``<output_dir>/_analysis/<family>``."""
    return resolve_path(params.get("export_dir")
                        or Path(params.get("output_dir") or "outputs") / ANALYSIS_DIR / fam.name)


def export(fam: Family, figs: Mapping[str, Any], tables: Tables, extra: Mapping[str, pd.DataFrame],
           folder: str | Path) -> dict[str, Path]:
    """Every figure as HTML and every table as parquet + CSV under ``folder``; name -> path of what was written."""
    paths = {f"figure {k}": v for k, v in save_figures(figs, folder).items()}
    for name, table in {"per_run": tables.per_run, "metrics": tables.aggregated, "curves": tables.curves,
                        **extra}.items():
        if table is not None and not table.empty:
            paths[f"table {name}"] = export_table(table.reset_index(drop=True), folder, name)["parquet"]
    return paths
