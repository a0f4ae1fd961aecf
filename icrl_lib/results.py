"""Tidy pandas tables from run logs, and the paper's metrics.

Per training step: reward, running accuracy (cumulative mean reward), regret (cumulative number of wrong training
predictions), exploration collapse (distinct labels predicted and their entropy over the last ``COLLAPSE_WINDOW``
steps), context size/composition, tokens (in the prompts vs actually computed) and the KV cache held.
Per test step: accuracy, how many distinct labels were predicted (and their entropy), per-class accuracy and the
distribution of predictions. ICL steps have no reward, so their running accuracy and regret are NaN.
"""
from __future__ import annotations

import math
import os
from collections import Counter
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from .config import read_yaml_mapping
from .errors import os_error
from .storage import read_log

TABLES = ("steps", "tests", "per_class", "test_predictions", "test_distribution")
COLLAPSE_WINDOW = 50  # training steps over which distinct predicted labels and their entropy are measured


def method_of(config: dict[str, Any]) -> str:
    """The paper's name for a configuration's method."""
    strategy = config.get("context_strategy_name")
    if config.get("max_context_examples") == 0:
        return "zero-shot"
    if not config.get("icrl", True):
        return "ICL"
    if strategy == "random_biased_end" and float(config.get("context_p_keep", 0)) == 1.0:
        return "naive ICRL"
    if strategy == "random_unbiased_only_positive":
        return "explorative ICRL"
    if strategy == "approximate_only_positive":
        return "approximate ICRL"
    return str(strategy)


def label_entropy(labels: Iterable[str]) -> float:
    """Shannon entropy (bits) of the empirical distribution of ``labels``; 0 when one label is always predicted."""
    counts = np.array(list(Counter(labels).values()), dtype=float)
    if counts.sum() == 0:
        return float("nan")
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum()) + 0.0  # + 0.0: no -0.0


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
            "cached_tokens": cache.get("tokens", 0), "cache_evictions": cache.get("evictions", 0),
            "seconds": rec.get("seconds", np.nan), "tested": rec.get("test") is not None,
        })
    df = pd.DataFrame(rows, columns=["step", "prediction", "answer", "reward", "feedback", "flipped", "context_size",
                                     "context_positive", "context_index", "prompt_tokens", "computed_tokens",
                                     "cached_tokens", "cache_evictions", "seconds", "tested"])
    has_reward = df["reward"].notna()
    df["running_accuracy"] = df["reward"].expanding().mean().where(has_reward)
    df["regret"] = (df["reward"] == 0).cumsum().astype(float).where(has_reward)
    df["cumulative_prompt_tokens"] = df["prompt_tokens"].cumsum()
    df["cumulative_computed_tokens"] = df["computed_tokens"].cumsum()
    return pd.concat([df, window_collapse(df["prediction"], collapse_window)], axis=1)


def evaluation_table(records: Iterable[dict]) -> pd.DataFrame:
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


def evaluation_predictions_table(records: Iterable[dict]) -> pd.DataFrame:
    """One row per (test step, test example): answer, prediction, correct."""
    rows = [{"step": r["step"], "example": i, "answer": a, "prediction": p, "correct": a == p}
            for r in records if r.get("test") for i, (a, p) in enumerate(zip(r["test"]["answers"], r["test"]["predictions"]))]
    return pd.DataFrame(rows, columns=["step", "example", "answer", "prediction", "correct"])


def per_class_table(records: Iterable[dict]) -> pd.DataFrame:
    """Per test step and gold label: accuracy and count."""
    preds = evaluation_predictions_table(records)
    if preds.empty:
        return pd.DataFrame(columns=["step", "label", "accuracy", "n"])
    grouped = preds.groupby(["step", "answer"])["correct"].agg(["mean", "size"]).reset_index()
    return grouped.rename(columns={"answer": "label", "mean": "accuracy", "size": "n"})


def write_tables(run_dir: str | Path, records: list[dict]) -> dict[str, Path]:
    """Write every table of a run as parquet under ``<run_dir>/tables/`` (each file replaced atomically)."""
    folder = Path(run_dir) / "tables"
    builders = {"steps": steps_table, "tests": evaluation_table, "per_class": per_class_table,
                "test_predictions": evaluation_predictions_table, "test_distribution": test_distribution_table}
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


def _runs(outputs_dir: str | Path):
    """(run folder, config dict, records) for every run folder under ``outputs_dir`` (see ``storage.read_log``)."""
    for cfg in sorted(Path(outputs_dir).glob("*/config.yaml")):
        yield cfg.parent, read_yaml_mapping(cfg), read_log(cfg.parent / "steps.jsonl")


def _with_config(df: pd.DataFrame, run_dir: Path, config: dict) -> pd.DataFrame:
    df = df.copy()
    df.insert(0, "run", run_dir.name)
    df["method"] = method_of(config)
    for key in ("model_name", "task_name", "context_strategy_name", "context_p_keep", "temperature", "icrl",
                "max_context_examples", "max_contexts", "approximate_context_sampling_method", "seed"):
        df[key] = config.get(key)
    return df


def load_runs(outputs_dir: str | Path = "outputs") -> pd.DataFrame:
    """Test results of every run under ``outputs_dir``: one row per test step, with config columns and ``method``."""
    frames = [_with_config(evaluation_table(recs), d, c) for d, c, recs in _runs(outputs_dir)]
    frames = [f for f in frames if not f.empty]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["run", "step", "accuracy", "n", "context_size", "method", "model_name", "task_name"])


def load_run_steps(outputs_dir: str | Path = "outputs") -> pd.DataFrame:
    """Training steps of every run under ``outputs_dir`` (regret, running accuracy, tokens) with config columns."""
    frames = [_with_config(steps_table(recs), d, c) for d, c, recs in _runs(outputs_dir)]
    frames = [f for f in frames if not f.empty]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["run", "step", "reward", "regret", "method", "model_name", "task_name"])
