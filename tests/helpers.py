"""Shared test helpers: run configs on the tiny and the real model, run comparisons, the CLI in a subprocess,
exact label log-probabilities, and synthetic family runs for the verdict tests."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from icrl_lib.analysis import aggregate
from icrl_lib.paper.experiments import Family
from icrl_lib.paper.findings import Check
from icrl_lib.runs.config import ExperimentConfig
from icrl_lib.runs.record import StepRecord

ROOT = Path(__file__).resolve().parents[1]
TICKETS = str(ROOT / "params" / "tasks" / "support_tickets" / "task.yaml")  # a committed task: no ../shared/data


# --- runs ---------------------------------------------------------------------------------------------------------

def small(tmp_path, data_dir=None, **kw) -> ExperimentConfig:
    """A short explorative run: on trec_coarse with ``data_dir``, else on the committed support-tickets task."""
    base = dict(task_name="trec_coarse" if data_dir else TICKETS, context_strategy_name="random_unbiased_only_positive",
                context_p_keep=0.5, max_context_examples=8, train_k=30, test_every=15, test_k=10, debug_k=0, seed=3,
                training_seed=4, test_seed=5, data_dir=str(data_dir) if data_dir else None,
                output_dir=str(tmp_path / "out"))
    base.update(kw)
    return ExperimentConfig.from_dict(base)


def as_json(records) -> list[dict]:
    """Typed step records (or their JSON objects) as JSON objects."""
    return [r.to_json() if isinstance(r, StepRecord) else json.loads(json.dumps(r)) for r in records]


def strip_measurements(records, logprob_digits: int | None = None, logprob: bool = True) -> list[dict]:
    """Wall time and computed tokens depend on what the KV cache held, not on the experiment; log-probabilities
    from differently shaped forwards agree to float precision only (rounded, or dropped with ``logprob=False``)."""
    out = []
    for rec in as_json(records):
        rec.pop("seconds")
        rec.pop("cache")
        rec["tokens"].pop("computed")
        rec["tokens"].pop("generated")
        for key in ("computed", "generated"):  # the training prompt's share of the same measurements
            (rec.get("train_tokens") or {}).pop(key, None)
        if rec["train"] and rec["train"]["logprob"] is not None:
            if not logprob:
                rec["train"].pop("logprob")
            elif logprob_digits is not None:
                rec["train"]["logprob"] = round(rec["train"]["logprob"], logprob_digits)
        out.append(rec)
    return out


def assert_same_run(a, b) -> None:
    """The resume guarantee: identical decisions; log-probabilities equal to 1e-4 (relative)."""
    assert strip_measurements(a, logprob=False) == strip_measurements(b, logprob=False)
    for x, y in zip(as_json(a), as_json(b)):
        if x["train"] and x["train"]["logprob"] is not None:
            assert x["train"]["logprob"] == pytest.approx(y["train"]["logprob"], rel=1e-4, abs=1e-6)


def cli(*args: str, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    """``python -m icrl_lib <args>`` from the checkout."""
    return subprocess.run([sys.executable, "-m", "icrl_lib", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, **kw)


def argv_of(config: ExperimentConfig) -> list[str]:
    """``icrl run`` flags that rebuild ``config``."""
    out = ["run"]
    for key, value in config.to_dict().items():
        if isinstance(value, bool):
            out.append(f"--{key}" if value else f"--no-{key}")
        elif value is not None:
            out.append(f"--{key}={value}")
        elif key == "test_k":
            out.append("--test_k=None")
    return out


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str, code: int = 2) -> str:
    """Exit ``code``, no traceback, and one ``error:`` line on stderr holding every needle."""
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def trec_copy(data_dir: Path, tmp_path: Path, name: str = "data") -> Path:
    """A private copy of the TREC mirror (to damage or edit)."""
    root = tmp_path / name
    root.mkdir(parents=True, exist_ok=True)
    shutil.copytree(data_dir / "trec", root / "trec")
    return root


# --- the tiny model -------------------------------------------------------------------------------------------------

def save_tiny_model(folder: Path) -> Path:
    """The library's ``smollm2-tiny-random`` (a 2-layer random-weight Llama, hidden size 32, with the embedded SmolLM2
    tokenizer and chat template) saved as a local model folder: every mechanics test runs on it in a fraction of the
    real model's time."""
    from icrl_lib.engine.embedded import random_model
    from icrl_lib.engine.models import model_facts, resolve_model

    tokenizer = model_facts("smollm2-135m-instruct", resolve_model("smollm2-135m-instruct")).tokenizer
    random_model(tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


# --- exact label probabilities (what constrained sampling draws from) ----------------------------------------------

def label_logprobs(predictor, prompt: str, cached: bool = True) -> dict[str, float]:
    """Exact log-probability of every label under ``predictor``'s constrained decoding at its temperature (> 0).

    ``cached=True`` is the engine's :func:`~icrl_lib.engine.generation.label_logprobs` (the prompt encoded once,
    every label sequence scored packed on top of it); ``cached=False`` recomputes prompt + label for each label
    here, independently. Both must agree (tested).
    """
    import torch

    from icrl_lib.engine.generation import label_logprobs as engine_label_logprobs

    if predictor.temperature == 0:
        raise ValueError("temperature: label probabilities need temperature > 0 (0 is greedy decoding)")
    ids = predictor.lm.encode(prompt)
    if cached:
        return engine_label_logprobs(predictor.lm, predictor.trie, ids, predictor.temperature)
    result = {}
    for label, s in zip(predictor.trie.labels, predictor.trie.sequences):
        with torch.inference_mode():
            out = predictor.lm.model(input_ids=torch.tensor([ids + list(s[:-1])], device=predictor.lm.model.device))
        full = out.logits[0].float()
        total = 0.0
        for d in range(len(s)):
            allowed = predictor.trie.children[s[:d]]
            lp = torch.log_softmax(full[len(ids) - 1 + d][list(allowed)].double() / predictor.temperature, dim=0)
            total += float(lp[allowed.index(s[d])])
        result[label] = total
    return result


# --- synthetic family runs for the verdict tests ------------------------------------------------------------------

QUERIES = 100  # the CPU profiles' test size
STEPS = 150
TEST_STEPS = tuple(sorted({0, STEPS - 1} | {s for s in range(STEPS) if (s + 1) % 15 == 0}))  # 11 points: rho works
EFFECTS = ("reversed", "forward", "tiny", "floor")


def correct(first: int, count: int, queries: int = QUERIES) -> np.ndarray:
    """0/1 over the queries: ``count`` correct ones starting at query ``first`` (wrapping)."""
    out = np.zeros(queries)
    out[[(first + i) % queries for i in range(count)]] = 1
    return out


def _curve(shape: str, queries: int = QUERIES) -> list[np.ndarray]:
    """Per test step the correct queries of a test-accuracy curve: rising, falling, a fixed zig-zag (rho ~ 0.3) or
    flat at zero (the floor)."""
    n = len(TEST_STEPS)
    if shape == "rising":
        counts = np.linspace(0.10, 0.60, n)
    elif shape == "falling":
        counts = np.linspace(0.60, 0.10, n)
    elif shape == "zero":
        counts = np.zeros(n)
    else:
        counts = np.array([30, 20, 35, 25, 40, 22, 38, 28, 30, 26, 36][:n]) / 100
    return [correct(7 * i, int(round(c * queries)), queries) for i, c in enumerate(counts)]


def _training(kind: str) -> list[str]:
    """150 training predictions whose last 50 are collapsed (one label 90%), diverse (all distinct) or 30% one label."""
    last = {"collapsed": ["label 0"] * 45 + [f"label {i}" for i in range(1, 6)],
            "diverse": [f"label {i}" for i in range(50)],
            "third": ["label 0"] * 15 + [f"label {i}" for i in range(1, 36)]}[kind]
    return [f"label {i % 40}" for i in range(STEPS - 50)] + last


def _side_counts(check: Check, effect: str, queries: int) -> tuple[int, int]:
    """Correct queries of the left and right side for an accuracy check: "reversed" (far from the claim, the other
    way), "forward" (as the claim says, inside a tolerance claim's margin)."""
    reversed_ = {"greater": (10, 60), "less": (60, 10), "within": (70, 10)}[check.kind]
    forward = (reversed_[1], reversed_[0]) if not check.tolerance else (30, 29)
    left, right = reversed_ if effect == "reversed" else forward
    return round(left * queries / 100), round(right * queries / 100)


def tables(fam: Family, check: Check, effect: str, seeds=(100,), knobs=None,
           queries: int = QUERIES) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per_run, predictions) of every arm of ``fam`` on clinic150 (plus the family's suffix), with ``check``'s sides
    set so that its difference is ``effect`` (:data:`EFFECTS`): "reversed" (far from the claim, the other way),
    "forward" (as the claim says), "tiny" (the sides equal but for one query of the first seed, with 30% of queries
    disagreeing: no effect worth the name, real noise) or "floor" (both sides' arms at 0% from step 0 on). Every
    other arm, and every side outside "floor", starts at 5% at step 0, so the arms learned. A check ``across="size"``
    gets two models, m-0.5b and m-7b: its left side is on the larger, its right on the smaller."""
    (left_arm, left_measure), (right_arm, right_measure) = check.sides
    models = ("m-7b", "m-0.5b") if check.across else ("m",)
    low = round(5 * queries / 100)
    tests, steps, predictions = [], [], []
    for model in models:
        sides = [(arm, measure, i) for i, (arm, measure) in enumerate(check.sides)
                 if not check.across or model == models[i]]
        for arm in fam.arms(knobs):
            zero_shot = arm.fields.get("max_context_examples") == 0
            mine = [(measure, i) for a, measure, i in sides if a == arm.label]
            if not mine and arm.label not in (left_arm, right_arm):
                continue  # only the arms the check reads: the others would never change its verdict
            for n_seed, seed in enumerate(seeds):
                run = f"{model}|{arm.label}|{seed}"
                curve = _curve("zero" if effect == "floor" and mine else "zigzag", queries)
                if check.measure not in ("rho",) and not (effect == "floor" and mine):
                    curve[0] = correct(50, low, queries)  # every arm learns from a 5% step 0
                training = _training("third")
                if check.measure == "rho" and mine and effect in ("reversed", "forward"):
                    wants_left_up = (check.kind == "less") == (effect == "reversed")
                    curve = _curve("rising" if wants_left_up == (mine[0][1] == 0) else "falling", queries)
                elif check.measure == "top_share" and mine and effect in ("reversed", "forward"):
                    left_high = (check.kind == "less") == (effect == "reversed")
                    training = _training("collapsed" if left_high == (mine[0][1] == 0) else "diverse")
                elif check.measure in ("final", "step0") and mine and effect != "floor":
                    counts = _side_counts(check, effect, queries) if effect != "tiny" else \
                        (round(30 * queries / 100) + (n_seed == 0), round(30 * queries / 100))
                    for measure, i in mine:
                        start = 0 if i == 0 or effect != "tiny" else round(15 * queries / 100)
                        index = 0 if measure == "step0" or zero_shot else len(TEST_STEPS) - 1
                        curve[index] = correct(start, counts[i], queries)
                points = [(0, curve[0])] if zero_shot else list(zip(TEST_STEPS, curve))
                base = {"run": run, "method": arm.label, "model_name": model,
                        "task_name": "clinic150" + fam.task_suffix, "seed": seed, "training_seed": seed,
                        "test_seed": 100, "train_k": STEPS, "test_k": queries, "test_every": 15}
                tests += [{**base, "step": s, "accuracy": float(c.mean()), "n": queries} for s, c in points]
                predictions += [{"run": run, "step": s, "example": i, "answer": f"label {i % 7}", "correct": bool(c[i])}
                                for s, c in points for i in range(queries)]
                if not zero_shot:
                    steps += [{**base, "step": s, "prediction": p, "reward": float(s % 3 == 0)}
                              for s, p in enumerate(training)]
    tests, steps = pd.DataFrame(tests), pd.DataFrame(steps)
    steps["regret"] = (steps["reward"] == 0).groupby(steps["run"]).cumsum().astype(float)
    return aggregate.run_metrics(tests, steps), pd.DataFrame(predictions)
