"""Tidy pandas tables from run logs, and the paper's metrics.

Per training step: reward, running accuracy (cumulative mean reward), regret (cumulative number of wrong training
predictions), context size/composition, tokens (in the prompts vs actually computed) and the KV cache held.
Per test step: accuracy and per-class accuracy. ICL steps have no reward, so their running accuracy and regret are NaN.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd
import yaml

TABLES = ("steps", "tests", "per_class", "test_predictions")


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


def steps_table(records: Iterable[dict]) -> pd.DataFrame:
    """One row per step: reward, running_accuracy, regret, context and token columns."""
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
    return df


def evaluation_table(records: Iterable[dict]) -> pd.DataFrame:
    """One row per test step: accuracy, number of test examples, context size."""
    rows = [{"step": r["step"], "accuracy": r["test"]["accuracy"], "n": len(r["test"]["predictions"]),
             "context_size": (r.get("context") or {}).get("size", 0)} for r in records if r.get("test")]
    return pd.DataFrame(rows, columns=["step", "accuracy", "n", "context_size"])


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


def write_tables(store) -> dict[str, Path]:
    """Write every table of a run as parquet under ``<run>/tables/``."""
    records = store.records()
    folder = store.path / "tables"
    folder.mkdir(exist_ok=True)
    builders = {"steps": steps_table, "tests": evaluation_table, "per_class": per_class_table,
                "test_predictions": evaluation_predictions_table}
    paths = {}
    for name, build in builders.items():
        paths[name] = folder / f"{name}.parquet"
        build(records).to_parquet(paths[name], index=False)
    return paths


def _runs(outputs_dir: str | Path):
    """(run folder, config dict, records) for every run folder under ``outputs_dir``."""
    for cfg in sorted(Path(outputs_dir).glob("*/config.yaml")):
        config = yaml.safe_load(cfg.read_text(encoding="utf-8")) or {}
        log = cfg.parent / "steps.jsonl"
        records = []
        if log.is_file():
            for line in log.read_text(encoding="utf-8").splitlines():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    break  # torn last line of a run in progress
        yield cfg.parent, config, records


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
