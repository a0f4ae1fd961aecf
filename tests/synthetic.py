"""Synthetic family runs for the verdict tests: per-query test results and training predictions of every arm, with
one check's two sides set to a chosen effect (reversed, none), built as the tables ``results.load`` gives."""
from __future__ import annotations

import numpy as np
import pandas as pd

from icrl_lib.analysis import load as results
from icrl_lib.paper.families import Family
from icrl_lib.paper.findings import Check

QUERIES = 100  # the CPU profiles' test size
STEPS = 150
TEST_STEPS = tuple(sorted({0, STEPS - 1} | {s for s in range(STEPS) if (s + 1) % 15 == 0}))  # 11 points: rho works
ANSWERS = [f"label {i % 7}" for i in range(QUERIES)]


def correct(first: int, count: int) -> np.ndarray:
    """0/1 over the queries: ``count`` correct ones starting at query ``first`` (wrapping)."""
    out = np.zeros(QUERIES)
    out[[(first + i) % QUERIES for i in range(count)]] = 1
    return out


def _curve(shape: str) -> list[np.ndarray]:
    """Per test step the correct queries of a test-accuracy curve: rising, falling or a fixed zig-zag (rho ~ 0.3)."""
    n = len(TEST_STEPS)
    if shape == "rising":
        counts = np.linspace(10, 60, n)
    elif shape == "falling":
        counts = np.linspace(60, 10, n)
    else:
        counts = [30, 20, 35, 25, 40, 22, 38, 28, 30, 26, 36][:n]
    return [correct(7 * i, int(c)) for i, c in enumerate(counts)]


def _training(kind: str) -> list[str]:
    """150 training predictions whose last 50 are collapsed (one label 90%), diverse (all distinct) or 30% one label."""
    last = {"collapsed": ["label 0"] * 45 + [f"label {i}" for i in range(1, 6)],
            "diverse": [f"label {i}" for i in range(50)],
            "third": ["label 0"] * 15 + [f"label {i}" for i in range(1, 36)]}[kind]
    return [f"label {i % 40}" for i in range(STEPS - 50)] + last


def tables(fam: Family, check: Check, effect: str, seeds=(100,), knobs=None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per_run, predictions) of every arm of ``fam`` on one model and task (``clinic150`` plus the family's suffix),
    with ``check``'s sides set so that its difference is ``effect``: "reversed" (far from the claim, the other
    way) or "none" (the two sides equal in expectation, with disagreeing queries)."""
    (left_arm, left_measure), (right_arm, right_measure) = check.sides
    low, high = {"greater": (10, 60), "less": (60, 10), "within": (70, 10)}[check.kind]
    tests, steps, predictions = [], [], []
    for arm in fam.arms(knobs):
        zero_shot = arm.fields.get("max_context_examples") == 0
        for seed in seeds:
            run = f"{arm.label}|{seed}"
            curve = _curve("zigzag")
            training = _training("third")
            if check.measure == "rho" and arm.label in (left_arm, right_arm):
                side_is_left = arm.label == left_arm
                if effect == "reversed":
                    wanted_up = check.kind == "less"  # the claim says left's rho is greater: make it fall
                    curve = _curve("rising" if wanted_up == side_is_left else "falling")
            elif check.measure == "top_share" and arm.label in (left_arm, right_arm):
                if effect == "reversed":
                    left_high = check.kind == "less"
                    training = _training("collapsed" if left_high == (arm.label == left_arm) else "diverse")
            elif check.measure in ("final", "step0"):
                for label, measure, count, start in ((left_arm, left_measure, low, 0), (right_arm, right_measure, high,
                                                                                        0)):
                    if arm.label != label:
                        continue
                    if effect == "none":  # equal rates, disagreeing on 30 queries: no effect, real noise
                        count, start = 30, (0 if (label, measure) == (left_arm, left_measure) else 15)
                    index = 0 if measure == "step0" or zero_shot else len(TEST_STEPS) - 1
                    curve[index] = correct(start, count)
            points = [(0, curve[0])] if zero_shot else list(zip(TEST_STEPS, curve))
            base = {"run": run, "method": arm.label, "model_name": "m", "task_name": "clinic150" + fam.task_suffix,
                    "seed": seed, "training_seed": seed, "test_seed": 100, "train_k": STEPS, "test_k": QUERIES,
                    "test_every": 15}
            tests += [{**base, "step": s, "accuracy": float(c.mean()), "n": QUERIES} for s, c in points]
            predictions += [{"run": run, "step": s, "example": i, "answer": ANSWERS[i], "correct": bool(c[i])}
                            for s, c in points for i in range(QUERIES)]
            if not zero_shot:
                steps += [{**base, "step": s, "prediction": p, "reward": float(s % 3 == 0)}
                          for s, p in enumerate(training)]
    tests, steps = pd.DataFrame(tests), pd.DataFrame(steps)
    steps["regret"] = (steps["reward"] == 0).groupby(steps["run"]).cumsum().astype(float)
    return results.run_metrics(tests, steps), pd.DataFrame(predictions)
