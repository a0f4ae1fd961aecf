"""Tidy pandas tables from run logs, and the paper's metrics.

Per training step: reward, running accuracy (cumulative mean reward), regret (cumulative number of wrong training
predictions), exploration collapse (distinct labels predicted and their entropy over the last ``COLLAPSE_WINDOW``
steps), context size/composition, tokens (in the prompts vs actually computed) and the KV cache held.
Per test step: accuracy, how many distinct labels were predicted (and their entropy), per-class accuracy and the
distribution of predictions. ICL steps have no reward, so their running accuracy and regret are NaN.
Over runs: :func:`load_runs` / :func:`load_run_steps`, and from :mod:`icrl_lib.aggregate` the paper's metrics per run,
their aggregates over seeds with intervals, paired differences and the paper's published numbers.
"""
from __future__ import annotations

import json
import math
import os
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, NamedTuple, Sequence

import numpy as np
import pandas as pd

from .config import read_yaml_mapping
from .errors import os_error
from .aggregate import (COLLAPSE_WINDOW, accuracy_curves, aggregate, join_paper, label_entropy,  # noqa: F401
                        metrics_table, paired_differences, paper_results, run_metrics)  # the results API
from .methods import key_of, name_run
from .storage import read_log

TABLES = ("steps", "tests", "per_class", "test_predictions", "test_distribution")
RUN_COLUMNS = ("run", "run_name", "run_dir")  # whichever a table has identifies one run
CONFIG_COLUMNS = ("model_name", "task_name", "context_strategy_name", "context_p_keep", "temperature", "icrl",
                  "max_context_examples", "max_contexts", "approximate_context_sampling_method", "seed",
                  "training_seed", "test_seed", "train_k", "test_k", "test_every")  # copied into load_runs tables


def require_columns(df: pd.DataFrame, columns: Iterable[str], what: str) -> None:
    """ValueError naming ``what`` and the missing columns when ``df`` lacks any of ``columns``."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what}: table lacks column(s) {missing}; it has {list(df.columns)}")


def run_column(df: pd.DataFrame) -> str | None:
    """The column that identifies a run in ``df`` (first of ``RUN_COLUMNS`` present), or None for one run."""
    return next((c for c in RUN_COLUMNS if c in df.columns), None)


def format_duration(seconds: float) -> str:
    """``3h02m``, ``14m25s`` or ``42s`` (progress lines and ETAs)."""
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def window_collapse(predictions: pd.Series, window: int = COLLAPSE_WINDOW) -> pd.DataFrame:
    """Per row: distinct labels and their entropy (bits) among the last ``window`` non-null predictions (NaN
    before the first one). The paper's central failure, exploration collapse, shows as both falling towards 1 / 0."""
    distinct, entropy, recent = [], [], []
    for value in predictions:
        if isinstance(value, str):
            recent = (recent + [value])[-window:]
        distinct.append(len(set(recent)) if recent else math.nan)
        entropy.append(label_entropy(recent) if recent else math.nan)
    return pd.DataFrame({"window_distinct_labels": distinct, "window_label_entropy": entropy},
                        index=predictions.index)


def steps_table(records: Iterable[dict], collapse_window: int = COLLAPSE_WINDOW) -> pd.DataFrame:
    """One row per step: reward, running_accuracy, regret, collapse, context and token columns."""
    rows = []
    for rec in records:
        train = rec.get("train") or {}
        ctx = rec.get("context") or {}
        tokens = rec.get("tokens") or {}
        cache = rec.get("cache") or {}
        reward = train.get("reward")
        rows.append({
            "step": rec["step"], "prediction": train.get("prediction"), "answer": train.get("answer"),
            "reward": np.nan if reward is None else float(reward),
            "feedback": np.nan if train.get("feedback") is None else float(train["feedback"]),
            "flipped": bool(train.get("flipped", False)), "context_size": ctx.get("size", 0),
            "context_positive": ctx.get("positive", 0), "context_index": ctx.get("context_index"),
            "prompt_tokens": tokens.get("prompt", 0), "computed_tokens": tokens.get("computed", 0),
            "train_prompt_tokens": (rec.get("train_tokens") or {}).get("prompt", np.nan),
            "train_computed_tokens": (rec.get("train_tokens") or {}).get("computed", np.nan),
            "cached_tokens": cache.get("tokens", 0), "cache_evictions": cache.get("evictions", 0),
            "seconds": rec.get("seconds", np.nan), "tested": rec.get("test") is not None,
        })
    df = pd.DataFrame(rows, columns=["step", "prediction", "answer", "reward", "feedback", "flipped", "context_size",
                                     "context_positive", "context_index", "prompt_tokens", "computed_tokens",
                                     "train_prompt_tokens", "train_computed_tokens",
                                     "cached_tokens", "cache_evictions", "seconds", "tested"])
    has_reward = df["reward"].notna()
    df["running_accuracy"] = df["reward"].expanding().mean().where(has_reward)
    df["regret"] = (df["reward"] == 0).cumsum().astype(float).where(has_reward)
    df["cumulative_prompt_tokens"] = df["prompt_tokens"].cumsum()
    df["cumulative_computed_tokens"] = df["computed_tokens"].cumsum()
    return pd.concat([df, window_collapse(df["prediction"], collapse_window)], axis=1)


def tests_table(records: Iterable[dict]) -> pd.DataFrame:
    """One row per test step: accuracy, number of test examples, context size, distinct labels predicted and their
    entropy (bits)."""
    rows = [{"step": r["step"], "accuracy": r["test"]["accuracy"], "n": len(r["test"]["predictions"]),
             "context_size": (r.get("context") or {}).get("size", 0),
             "distinct_predictions": len(set(r["test"]["predictions"])),
             "prediction_entropy": label_entropy(r["test"]["predictions"])} for r in records if r.get("test")]
    return pd.DataFrame(rows, columns=["step", "accuracy", "n", "context_size", "distinct_predictions",
                                       "prediction_entropy"])


def test_distribution_table(records: Iterable[dict]) -> pd.DataFrame:
    """Per test step and predicted label: how often it was predicted (count, share) and how often it is the answer."""
    rows = []
    for r in records:
        if not r.get("test"):
            continue
        predicted, gold, n = Counter(r["test"]["predictions"]), Counter(r["test"]["answers"]), len(r["test"]["answers"])
        rows += [{"step": r["step"], "label": label, "count": count, "share": count / n, "gold_share": gold[label] / n}
                 for label, count in predicted.most_common()]
    return pd.DataFrame(rows, columns=["step", "label", "count", "share", "gold_share"])


def test_predictions_table(records: Iterable[dict]) -> pd.DataFrame:
    """One row per (test step, test example): answer, prediction, correct."""
    rows = [{"step": r["step"], "example": i, "answer": a, "prediction": p, "correct": a == p}
            for r in records if r.get("test") for i, (a, p) in enumerate(zip(r["test"]["answers"], r["test"]["predictions"]))]
    return pd.DataFrame(rows, columns=["step", "example", "answer", "prediction", "correct"])


def per_class_table(records: Iterable[dict]) -> pd.DataFrame:
    """Per test step and gold label: accuracy and count."""
    preds = test_predictions_table(records)
    if preds.empty:
        return pd.DataFrame(columns=["step", "label", "accuracy", "n"])
    grouped = preds.groupby(["step", "answer"])["correct"].agg(["mean", "size"]).reset_index()
    return grouped.rename(columns={"answer": "label", "mean": "accuracy", "size": "n"})


def write_tables(run_dir: str | Path, records: list[dict]) -> dict[str, Path]:
    """Write every table of a run as parquet under ``<run_dir>/tables/`` (each file replaced atomically)."""
    folder = Path(run_dir) / "tables"
    builders = {"steps": steps_table, "tests": tests_table, "per_class": per_class_table,
                "test_predictions": test_predictions_table, "test_distribution": test_distribution_table}
    paths = {}
    for name, build in builders.items():
        paths[name] = folder / f"{name}.parquet"
        tmp = folder / f".{name}.{os.getpid()}.tmp"
        try:
            folder.mkdir(exist_ok=True)
            build(records).to_parquet(tmp, index=False)
            os.replace(tmp, paths[name])
        except OSError as err:
            raise os_error("writing", paths[name], err, "the step log is kept: fix the cause and rerun the same "
                           "command to resume") from None
    return paths


def _runs(outputs_dir: str | Path, runs: Iterable[str] | None = None):
    """(run folder, config dict, records) for every run folder under ``outputs_dir`` (only ``runs``, folder names,
    when given; see ``storage.read_log``)."""
    wanted = None if runs is None else set(runs)
    for cfg in sorted(Path(outputs_dir).glob("*/config.yaml")):
        if wanted is None or cfg.parent.name in wanted:
            yield cfg.parent, read_yaml_mapping(cfg), read_log(cfg.parent / "steps.jsonl")


def _with_config(df: pd.DataFrame, run_dir: Path, config: dict) -> pd.DataFrame:
    df = df.copy()
    df["context_window"] = _window(run_dir, config)
    df.insert(0, "run", run_dir.name)
    df["method"] = name_run(config)
    df["method_key"] = key_of(config)
    df["paper_method"], df["paper_setting"] = _paper_coordinate(config)
    for key in CONFIG_COLUMNS:
        df[key] = config.get(key)
    return df


class Loaded(NamedTuple):
    """Every run's tables, from one read of each log."""

    tests: pd.DataFrame  # load_runs: one row per test step
    steps: pd.DataFrame  # load_run_steps: one row per step
    predictions: pd.DataFrame  # one row per (run, test step, test query): answer, prediction, correct


def _window(run_dir: Path, config: dict) -> float:
    """The token window a run's contexts were fitted to: ``max_window_tokens``, else its model's (``meta.json``);
    NaN when unknown (a run that never got far enough to write meta.json)."""
    if config.get("max_window_tokens") and config.get("max_context_examples") is None:
        return float(config["max_window_tokens"])
    try:
        return float(json.loads((run_dir / "meta.json").read_text())["model"]["context_window"])
    except (OSError, ValueError, KeyError, TypeError):
        return math.nan


def _paper_coordinate(config: dict) -> tuple[str | None, str | None]:
    """The paper's (method, setting) of a run's config (``families.paper_coordinates``, its first family), or
    (None, None) where the paper ran no such setting."""
    from .config import ExperimentConfig
    from .families import paper_coordinates

    try:
        found = paper_coordinates(ExperimentConfig.from_dict(config))
    except ValueError:  # a config this version cannot read: no paper counterpart, but the run still loads
        return None, None
    return found[0][1:] if found else (None, None)


def load(outputs_dir: str | Path = "outputs", runs: Iterable[str] | None = None) -> Loaded:
    """:func:`load_runs`, :func:`load_run_steps` and every test prediction together, each log read once; ``runs``
    limits them to those run folder names (a sweep's)."""
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


def load_runs(outputs_dir: str | Path = "outputs") -> pd.DataFrame:
    """Test results of every run under ``outputs_dir``: one row per test step, with config columns and ``method``."""
    return _concat([_with_config(tests_table(recs), d, c) for d, c, recs in _runs(outputs_dir)], TESTS_EMPTY)


def load_run_steps(outputs_dir: str | Path = "outputs") -> pd.DataFrame:
    """Training steps of every run under ``outputs_dir`` (regret, running accuracy, tokens) with config columns."""
    return _concat([_with_config(steps_table(recs), d, c) for d, c, recs in _runs(outputs_dir)], STEPS_EMPTY)


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
    """Per run: tokens in the prompts vs tokens computed (``load_run_steps`` rows), the share computed, and the
    training prompts apart from the test queries (``train_*``; the paper's compute table counts training prompts only).
    Runs logged before that split have NaN there."""
    keys = [c for c in ("task_name", "model_name", "method", "method_key") if c in steps.columns]
    totals = token_totals(steps, keys)
    share = totals["computed_tokens"] / totals["prompt_tokens"].where(totals["prompt_tokens"] > 0)
    out = totals.assign(computed_share=share)
    if "train_computed_tokens" in steps.columns:
        key = run_column(steps)
        train = steps.groupby(key)[["train_prompt_tokens", "train_computed_tokens"]].sum(min_count=1)
        out = out.merge(train, left_on=key, right_index=True, how="left")
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
    usage = usage.assign(per_step=usage.get("train_computed_tokens", pd.Series(dtype=float)) / usage["steps"])
    rows = []
    for cell, group in usage.groupby(keys, sort=True):
        per = {m: group.loc[group["method_key"] == m, "per_step"].mean() for m in methods}
        missing = [m for m in methods if m not in set(group["method_key"])]
        note = (f"no {' or '.join(missing)} run here" if missing else
                "runs logged before training and test tokens were counted apart: rerun them" if any(pd.isna(v) for v in
                                                                                                    per.values()) else "")
        ratio = per[methods[0]] / per[methods[1]] if not note and per[methods[1]] else None
        rows.append({**dict(zip(keys, cell if isinstance(cell, tuple) else (cell,))), **per, "ratio": ratio,
                     "note": note})
    return pd.DataFrame(rows, columns=columns)


# Library functions named for the paper's "test" steps, not tests: pytest must not collect them where imported.
for _function in (tests_table, test_predictions_table, test_distribution_table):
    _function.__test__ = False
del _function
