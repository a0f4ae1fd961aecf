"""A run's tables from its step log: one row per step, per test step, per test prediction, per class and per
predicted label; written as parquet under ``<run>/tables/`` at every test step.

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
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from icrl_lib.errors import os_error
from icrl_lib.runs.record import StepRecord
from icrl_lib.runs.store import TABLES_DIR

COLLAPSE_WINDOW = 50  # training steps over which distinct predicted labels, their entropy and the top share are taken


def label_entropy(labels) -> float:
    """Shannon entropy (bits) of the empirical distribution of ``labels``; 0 when one label is always predicted."""
    counts = np.array(list(Counter(labels).values()), dtype=float)
    if counts.sum() == 0:
        return float("nan")
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum()) + 0.0  # + 0.0: no -0.0


def collapse_metrics(predictions) -> dict[str, float]:
    """Exploration collapse of a run's last training predictions: distinct labels, their entropy (bits) and the share
    of the most predicted one (1.0: one label only, the paper's degeneration)."""
    labels = [p for p in predictions if isinstance(p, str)]
    if not labels:
        return {"distinct_labels": math.nan, "label_entropy": math.nan, "top_label_share": math.nan}
    counts = Counter(labels)
    return {"distinct_labels": float(len(counts)), "label_entropy": label_entropy(labels),
            "top_label_share": max(counts.values()) / len(labels)}


TABLES = ("steps", "tests", "per_class", "test_predictions", "test_distribution")


RUN_COLUMNS = ("run", "run_name", "run_dir")  # whichever a table has identifies one run


def require_columns(df: pd.DataFrame, columns: Iterable[str], what: str) -> None:
    """ValueError naming ``what`` and the missing columns when ``df`` lacks any of ``columns``."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what}: table lacks column(s) {missing}; it has {list(df.columns)}")


def run_column(df: pd.DataFrame) -> str | None:
    """The column that identifies a run in ``df`` (first of ``RUN_COLUMNS`` present), or None for one run."""
    return next((c for c in RUN_COLUMNS if c in df.columns), None)


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


def steps_table(records: Iterable[StepRecord], collapse_window: int = COLLAPSE_WINDOW) -> pd.DataFrame:
    """One row per step: reward, running_accuracy, regret, collapse, context and token columns."""
    rows = []
    for rec in records:
        t = rec.train
        reward, feedback = (t.reward, t.feedback) if t else (None, None)
        rows.append({
            "step": rec.step, "prediction": t.prediction if t else None, "answer": t.answer if t else None,
            "reward": np.nan if reward is None else float(reward),
            "feedback": np.nan if feedback is None else float(feedback),
            "flipped": bool(t and t.flipped), "context_size": rec.context.size,
            "context_positive": rec.context.positive, "context_index": rec.context.context_index,
            "prompt_tokens": rec.tokens.get("prompt", 0), "computed_tokens": _count(rec.tokens.get("computed", 0)),
            "train_prompt_tokens": rec.train_tokens.get("prompt", np.nan),
            "train_computed_tokens": _count(rec.train_tokens.get("computed", np.nan)),
            "cached_tokens": rec.cache.get("tokens", 0), "cache_evictions": rec.cache.get("evictions", 0),
            "seconds": rec.seconds, "tested": rec.test is not None,
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


def tests_table(records: Iterable[StepRecord]) -> pd.DataFrame:
    """One row per test step: accuracy, number of test examples, context size, distinct labels predicted and their
    entropy (bits)."""
    rows = [{"step": r.step, "accuracy": r.test.accuracy, "n": len(r.test.predictions), "context_size": r.context.size,
             "distinct_predictions": len(set(r.test.predictions)),
             "prediction_entropy": label_entropy(r.test.predictions)} for r in records if r.test]
    return pd.DataFrame(rows, columns=["step", "accuracy", "n", "context_size", "distinct_predictions",
                                       "prediction_entropy"])


def test_distribution_table(records: Iterable[StepRecord]) -> pd.DataFrame:
    """Per test step and predicted label: how often it was predicted (count, share) and how often it is the answer."""
    rows = []
    for r in records:
        if not r.test:
            continue
        predicted, gold, n = Counter(r.test.predictions), Counter(r.test.answers), len(r.test.answers)
        rows += [{"step": r.step, "label": label, "count": count, "share": count / n, "gold_share": gold[label] / n}
                 for label, count in predicted.most_common()]
    return pd.DataFrame(rows, columns=["step", "label", "count", "share", "gold_share"])


def test_predictions_table(records: Iterable[StepRecord]) -> pd.DataFrame:
    """One row per (test step, test example): answer, prediction, correct."""
    rows = [{"step": r.step, "example": i, "answer": a, "prediction": p, "correct": a == p}
            for r in records if r.test for i, (a, p) in enumerate(zip(r.test.answers, r.test.predictions))]
    return pd.DataFrame(rows, columns=["step", "example", "answer", "prediction", "correct"])


def per_class_table(records: Iterable[StepRecord]) -> pd.DataFrame:
    """Per test step and gold label: accuracy and count."""
    preds = test_predictions_table(records)
    if preds.empty:
        return pd.DataFrame(columns=["step", "label", "accuracy", "n"])
    grouped = preds.groupby(["step", "answer"])["correct"].agg(["mean", "size"]).reset_index()
    return grouped.rename(columns={"answer": "label", "mean": "accuracy", "size": "n"})


TABLES = {"steps": steps_table, "tests": tests_table, "per_class": per_class_table,
          "test_predictions": test_predictions_table, "test_distribution": test_distribution_table}


def write_tables(run_dir: str | Path, records: list[StepRecord]) -> dict[str, Path]:
    """Write every table of a run as parquet under ``<run_dir>/tables/`` (each file replaced atomically)."""
    folder = Path(run_dir) / TABLES_DIR
    paths = {}
    for name, build in TABLES.items():
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


# Library functions named for the paper's "test" steps, not tests: pytest must not collect them where imported.
for _function in (tests_table, test_predictions_table, test_distribution_table):
    _function.__test__ = False
del _function


def _count(value) -> float:
    """A token count, NaN where the backend could not tell (a server that does not report its cache)."""
    return np.nan if value is None else value
