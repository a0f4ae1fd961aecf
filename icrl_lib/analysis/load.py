"""Every run under a folder as tidy tables (:func:`load`: each log read once), each row carrying its run's name
(:func:`icrl_lib.paper.methods.name_run`), config columns and the paper's coordinates for its setting; and token
tables over runs. The paper's metrics per run and their aggregates are :mod:`icrl_lib.analysis.aggregate`.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

import pandas as pd

from icrl_lib.analysis.coordinates import paper_coordinates
from icrl_lib.errors import UserError
from icrl_lib.paper.methods import key_of, name_run
from icrl_lib.runs.config import ExperimentConfig, read_yaml_mapping
from icrl_lib.runs.store import CONFIG_FILE, read_meta, read_records, run_folders
from icrl_lib.runs.tables import require_columns, run_column, steps_table, test_predictions_table, tests_table

CONFIG_COLUMNS = ("model_name", "task_name", "context_strategy_name", "context_p_keep", "temperature", "icrl",
                  "max_context_examples", "max_contexts", "approximate_context_sampling_method", "seed",
                  "training_seed", "test_seed", "train_k", "test_k", "test_every")  # copied into every table of read()


def _runs(outputs_dir: str | Path, runs: Iterable[str] | None = None):
    """(run folder, config dict, records) for every run folder under ``outputs_dir`` (only ``runs``, folder names,
    when given; see ``runs.store.read_records``)."""
    wanted = None if runs is None else set(runs)
    for folder in run_folders(outputs_dir):
        if wanted is None or folder.name in wanted:
            yield folder, read_yaml_mapping(folder / CONFIG_FILE), read_records(folder)


def _with_config(df: pd.DataFrame, run_dir: Path, config: dict) -> pd.DataFrame:
    df = df.copy()
    df["context_window"] = _window(run_dir, config)
    df.insert(0, "run", run_dir.name)
    df["method"] = name_run(config)
    df["method_key"] = key_of(config)
    parsed = _config(config)
    df["paper_method"], df["paper_setting"] = _paper_coordinate(parsed)
    for key in CONFIG_COLUMNS:
        df[key] = config.get(key)
    df["backend"] = parsed.backend if parsed else config.get("backend")
    df["exact"] = parsed.backend_entry.exact if parsed else True  # False: an approximate route, never the paper's law
    if parsed is not None:  # as in the run's folder name: a server's runs are never averaged with another backend's
        df["model_name"] = parsed.model_tag
    return df


def _config(config: dict) -> ExperimentConfig | None:
    """The run's config as this version reads it, or None for one it cannot read (the run still loads)."""
    try:
        return ExperimentConfig.from_dict(config)
    except ValueError:
        return None


class Loaded(NamedTuple):
    """Every run's tables, from one read of each log."""

    tests: pd.DataFrame  # one row per test step
    steps: pd.DataFrame  # one row per step
    predictions: pd.DataFrame  # one row per (run, test step, test query): answer, prediction, correct


def _window(run_dir: Path, config: dict) -> float:
    """The token window a run's contexts were fitted to: ``max_window_tokens``, else its model's (``meta.json``);
    NaN when unknown (a run that never got far enough to write meta.json)."""
    if config.get("max_window_tokens") and config.get("max_context_examples") is None:
        return float(config["max_window_tokens"])
    try:
        return float(read_meta(run_dir)["model"]["context_window"])
    except (UserError, KeyError, TypeError, ValueError):
        return math.nan


def _paper_coordinate(parsed: ExperimentConfig | None) -> tuple[str | None, str | None]:
    """The paper's (method, setting) of a run's config (``paper_coordinates``, its first family), or (None, None)
    where the paper ran no such setting."""
    if parsed is None:  # a config this version cannot read: no paper counterpart, but the run still loads
        return None, None
    found = paper_coordinates(parsed)
    return found[0][1:] if found else (None, None)


def read(outputs_dir: str | Path = "outputs", runs: Iterable[str] | None = None) -> Loaded:
    """Every run under ``outputs_dir`` (only ``runs``, folder names, when given: a sweep's), each log read once: one
    row per test step (``tests``), per step (``steps``: regret, running accuracy, tokens) and per test prediction,
    each with its run's config columns, name (``method``) and the paper's coordinates for its setting."""
    tests, steps, predictions = [], [], []
    for d, c, recs in _runs(outputs_dir, runs):
        tests.append(_with_config(tests_table(recs), d, c))
        steps.append(_with_config(steps_table(recs), d, c))
        predictions.append(test_predictions_table(recs).assign(run=d.name))
    return Loaded(_concat(tests, TESTS_EMPTY), _concat(steps, STEPS_EMPTY), _concat(predictions, PREDICTIONS_EMPTY))


TESTS_EMPTY = ["run", "step", "accuracy", "n", "context_size", "method", "model_name", "task_name"]
STEPS_EMPTY = ["run", "step", "reward", "regret", "method", "model_name", "task_name"]
PREDICTIONS_EMPTY = ["step", "example", "answer", "prediction", "correct", "run"]


def _concat(frames: list[pd.DataFrame], empty: list[str]) -> pd.DataFrame:
    frames = [f for f in frames if not f.empty]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=empty)



def final_steps(steps: pd.DataFrame) -> pd.DataFrame:
    """The last logged step of every run (the whole table's last row when there is no run column)."""
    require_columns(steps, ["step"], "final_steps")
    key = run_column(steps)
    ordered = steps.sort_values("step")
    return ordered.groupby(key, sort=False).tail(1) if key else ordered.tail(1)


def token_totals(steps: pd.DataFrame, by: Sequence[str] = ()) -> pd.DataFrame:
    """Sum of ``prompt_tokens`` and ``computed_tokens`` per run (plus ``by`` columns), with steps counted."""
    require_columns(steps, ["prompt_tokens", "computed_tokens", *by], "token_totals")
    key = run_column(steps)
    keys = list(dict.fromkeys([*([key] if key else []), *by]))
    if not keys:
        totals = steps[["prompt_tokens", "computed_tokens"]].sum().to_frame().T
        return totals.assign(steps=len(steps))
    grouped = steps.groupby(keys, sort=True, dropna=False)
    totals = grouped[["prompt_tokens", "computed_tokens"]].sum()
    return totals.assign(steps=grouped.size()).reset_index()


def token_usage_table(steps: pd.DataFrame) -> pd.DataFrame:
    """Per run: tokens in the prompts vs tokens computed (``read(...).steps`` rows), the share computed, and the
    training prompts apart from the test queries (``train_*``; the paper's compute table counts training prompts
    only)."""
    keys = [c for c in ("task_name", "model_name", "method", "method_key") if c in steps.columns]
    totals = token_totals(steps, keys)
    share = totals["computed_tokens"] / totals["prompt_tokens"].where(totals["prompt_tokens"] > 0)
    key = run_column(steps)
    train = steps.groupby(key)[["train_prompt_tokens", "train_computed_tokens"]].sum(min_count=1)
    out = totals.assign(computed_share=share).merge(train, left_on=key, right_index=True, how="left")
    out["test_computed_tokens"] = out["computed_tokens"] - out["train_computed_tokens"]
    return out


def method_token_comparison(usage: pd.DataFrame, methods: tuple[str, str] = ("explorative", "approximate")
                            ) -> pd.DataFrame:
    """Per task and model: training-prompt tokens computed per step by ``methods[0]`` vs ``methods[1]`` (method keys:
    every run of that method, its variants included) and their ratio, with a note wherever a ratio cannot be given."""
    keys = [c for c in ("task_name", "model_name") if c in usage.columns]
    columns = [*keys, *methods, "ratio", "note"]
    if usage.empty or "method_key" not in usage.columns:
        return pd.DataFrame(columns=columns)
    usage = usage.assign(per_step=usage["train_computed_tokens"] / usage["steps"])
    rows = []
    for cell, group in usage.groupby(keys, sort=True):
        per = {m: group.loc[group["method_key"] == m, "per_step"].mean() for m in methods}
        missing = [m for m in methods if m not in set(group["method_key"])]
        note = f"no {' or '.join(missing)} run here" if missing else ""
        ratio = per[methods[0]] / per[methods[1]] if not note and per[methods[1]] else None
        rows.append({**dict(zip(keys, cell if isinstance(cell, tuple) else (cell,))), **per, "ratio": ratio,
                     "note": note})
    return pd.DataFrame(rows, columns=columns)

