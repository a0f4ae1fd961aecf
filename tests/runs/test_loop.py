"""The loop end to end: on the real embedded model where behaviour matters (it learns in context; the paper's CLI
verbatim), on the tiny random-weight model for the mechanics (determinism, fast == slow, kill -9 and resume, ICL's
stop, zero-shot, token counts, the window search)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from icrl_lib.paper.prompts import Episode, build_messages, feedback_text, render_context, render_prompt, system_prompt
from icrl_lib.runs.loop import run_experiment
from icrl_lib.runs.window import max_examples_for_window
from icrl_lib.tasks.task import load_task
from tests.helpers import ROOT, argv_of, assert_same_run, small, strip_measurements


@pytest.mark.model
@pytest.mark.data
def test_the_embedded_model_learns_in_context_and_writes_tidy_tables(tmp_path, data_dir, lm):
    """Explorative ICRL on CLINIC150 with the main family's CPU sizes and seed: 3% at step 0, 32% at step 149 (on
    trec_coarse and banking77 this model collapses to one label instead)."""
    config = small(tmp_path, data_dir, task_name="clinic150", context_p_keep=0.1, max_context_examples=16, train_k=150,
                   test_every=50, test_k=100, seed=100, training_seed=100, test_seed=100)
    result = run_experiment(config, progress=False, lm=lm)
    task = load_task("clinic150", data_dir)
    assert len(result.records) == 150
    for rec in result.records:
        assert rec.train.prediction in task.labels
        assert rec.train.reward == int(rec.train.prediction == rec.train.answer)
        assert rec.train.feedback == rec.train.reward  # no flipping asked
        # only-positive strategy: every episode in the context had positive feedback
        assert rec.context.positive == rec.context.size <= 16
    tests = [rec for rec in result.records if rec.test]
    assert [rec.step for rec in tests] == [0, 49, 99, 149]
    assert all(p in task.labels for rec in tests for p in rec.test.predictions)
    assert tests[0].test.accuracy < 0.1 and tests[-1].test.accuracy > 0.2  # it learns in context, from rewards alone
    steps = pd.read_parquet(result.run_dir / "tables" / "steps.parquet")
    assert len(steps) == 150 and steps["regret"].iloc[-1] == sum(r.train.reward == 0 for r in result.records)
    log = pd.read_json(result.run_dir / "steps.jsonl", lines=True)
    assert list(log["step"]) == list(range(150))
    assert (steps["computed_tokens"] < steps["prompt_tokens"]).all()  # the context cache was reused at every step


@pytest.mark.tiny
def test_same_config_twice_gives_identical_predictions(tmp_path, tiny, tiny_reference):
    again = run_experiment(small(tmp_path, model_name=tiny.name), progress=False, lm=tiny)
    assert strip_measurements(again.records) == strip_measurements(tiny_reference.records)


@pytest.mark.tiny
def test_fast_path_on_and_off_give_identical_predictions(tmp_path, tiny, tiny_reference):
    slow = run_experiment(small(tmp_path, model_name=tiny.name, fast=False), progress=False, lm=tiny)
    assert_same_run(slow.records, tiny_reference.records)


@pytest.mark.tiny
def test_kill_9_and_resume_equals_an_uninterrupted_run(tmp_path, tiny):
    """The README's resume guarantee: every decision (contexts, predictions, rewards, feedback, test predictions) is
    identical; log-probabilities are recomputed on caches rebuilt in other chunks, so they agree to 1e-4 (relative)."""
    kw = dict(model_name=tiny.name, context_strategy_name="approximate_only_positive", max_contexts=3,
              approximate_context_sampling_method="exact", train_k=120, test_every=40)
    reference = run_experiment(small(tmp_path / "ref", **kw), progress=False, lm=tiny)
    config = small(tmp_path / "killed", **kw)
    proc = subprocess.Popen([sys.executable, "-m", "icrl_lib", *argv_of(config)], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    log = Path(config.output_dir) / reference.run_dir.name / "steps.jsonl"  # same config -> same folder name
    deadline = time.time() + 240
    while time.time() < deadline and (not log.exists() or log.read_text().count("\n") < 50):
        assert proc.poll() is None, "the run ended before it could be killed"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    # Tables are refreshed at every test step: the killed run can be analysed as it stands.
    tests = pd.read_parquet(log.parent / "tables" / "tests.parquet")
    assert tests["step"].tolist()[:2] == [0, 39]
    with open(log, "a") as fh:
        fh.write('{"step": 99, "torn')  # a torn last line, as a kill in the middle of a write leaves
    done_before = log.read_text().count("\n")
    assert 50 <= done_before < 120
    assert_same_run(run_experiment(config, progress=False, lm=tiny).records, reference.records)


@pytest.mark.tiny
def test_icl_stops_at_the_first_test_step_after_the_context_is_full(tmp_path, tiny):
    config = small(tmp_path, model_name=tiny.name, icrl=False, context_strategy_name="random_unbiased",
                   context_p_keep=1.0, max_context_examples=5, train_k=20, test_every=4, test_k=4)
    result = run_experiment(config, progress=False, lm=tiny)
    assert len(result.records) == 8  # tests at 0, 3, 7: 7 is the first test step >= 5
    assert [r.step for r in result.records if r.test] == [0, 3, 7]
    assert all(r.train.prediction is None and r.train.reward is None for r in result.records)
    assert result.records[-1].context.size == 5


@pytest.mark.tiny
def test_zero_shot_is_one_test_step(tmp_path, tiny):
    result = run_experiment(small(tmp_path, model_name=tiny.name, max_context_examples=0, test_k=6), progress=False,
                            lm=tiny)
    assert len(result.records) == 1 and result.records[0].train is None
    assert len(result.records[0].test.predictions) == 6


@pytest.mark.tiny
@pytest.mark.data
def test_computed_tokens_equal_an_independent_count(tmp_path, data_dir, tiny):
    """Zero-shot with the fast path: the prefix shared by all prompts (the system turn and the query's opening) is
    computed once, then each query's own tokens, then the label tokens up to the label's last branching point in the
    trie (tokens the trie forces after it, such as the end-of-turn, are never fed to the model)."""
    lm = tiny
    task = load_task("trec_fine", data_dir)
    result = run_experiment(small(tmp_path, data_dir, model_name=lm.name, task_name="trec_fine",
                                  max_context_examples=0, test_k=8), progress=False, lm=lm)
    system = system_prompt(True, task.description)  # zero-shot is the paper's step 0: the ICRL prompt, no episodes

    def common(a, b):
        return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))

    prompts = [lm.encode(render_prompt(lm.tokenizer, build_messages(system, [], task.format_input(ex), icrl=True,
               prediction_prefix=task.prediction_prefix), task.prediction_prefix)) for ex in task.sample_test(8, 5)]
    shared = min([len(p) - 1 for p in prompts] + [common(prompts[0], p) for p in prompts])
    context = lm.encode(render_context(lm.tokenizer, build_messages(system, [], None, icrl=True,
                                                                     prediction_prefix=task.prediction_prefix)))
    assert shared > common(prompts[0], context)  # "<|im_start|>user\nQuestion:" is shared too, and cached once
    seqs = [tuple(lm.encode(" " + label)) + (lm.eot_id,) for label in task.labels]

    def fed(label):  # depth of the deepest point on the label's path where more than one token is allowed
        s = tuple(lm.encode(" " + label)) + (lm.eot_id,)
        return max(d for d in range(len(s)) if d == 0 or len({t[d] for t in seqs if len(t) > d and t[:d] == s[:d]}) > 1)

    fed_back = sum(fed(label) for label in result.records[0].test.predictions)
    assert fed_back > 0  # some predicted labels needed a second decision, so the count is exercised
    expected = shared + sum(len(p) - shared for p in prompts) + fed_back
    assert dict(result.records[0].tokens) == {"prompt": sum(map(len, prompts)), "computed": expected,
                                              "generated": fed_back}
    assert dict(result.records[0].train_tokens) == {"prompt": 0, "computed": 0, "generated": 0}  # zero-shot: tests only


@pytest.mark.tiny
@pytest.mark.data
@pytest.mark.parametrize("icrl", [True, False])
def test_max_examples_fits_and_one_more_does_not(tiny, data_dir, icrl):
    lm = tiny  # the window search needs the tokenizer and the chat template only
    task = load_task("banking77", data_dir)
    window = 1500
    n = max_examples_for_window(lm, task, window, icrl=icrl)
    # Independent worst case: the longest rows in tokens as episodes, the next one as the query, the longest label
    # as every prediction and the (longer) negative feedback sentence; then the answer and the end-of-turn token.
    rows = sorted((task.format_input(e) for e in task.train + task.test), key=lambda s: len(lm.encode(s)), reverse=True)
    longest_label = max(task.labels, key=lambda s: len(lm.encode(" " + s)))
    assert len(lm.encode(feedback_text(longest_label, False))) > len(lm.encode(feedback_text(longest_label, True)))

    def tokens(k):
        episodes = [Episode(text, longest_label, longest_label if icrl else None, 0 if icrl else None)
                    for text in rows[:k]]
        msgs = build_messages(system_prompt(icrl), episodes, rows[k], icrl=icrl, prediction_prefix="Intent:")
        return len(lm.encode(render_prompt(lm.tokenizer, msgs, "Intent:") + " " + longest_label)) + 1

    assert n > 0 and tokens(n) <= window < tokens(n + 1)


@pytest.mark.model
@pytest.mark.data
def test_cli_runs_a_paper_command_and_never_stores_the_token(tmp_path, data_dir):
    """The README's approximate TREC coarse command, verbatim, then tiny sizes (later flags override earlier)."""
    from tests.test_cli import readme_commands

    out = tmp_path / "cli"
    argv = next(a for a in readme_commands("smollm2-135m-instruct")
                if "trec_coarse" in a and "approximate_only_positive" in a)
    argv = [a.replace("YOUR_HUGGINGFACE_TOKEN_HERE", "hf_SECRETSECRET") for a in argv]
    cmd = [sys.executable, "-m", "icrl_lib", "run", *argv, "--train_k", "4", "--test_every", "2", "--test_k", "3",
           "--debug_k", "1", "--max_context_examples", "4", "--data_dir", str(data_dir), "--output_dir", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "hf_SECRETSECRET" not in proc.stdout + proc.stderr
    files = [p for p in out.rglob("*") if p.is_file()]
    assert files and not any(b"hf_SECRETSECRET" in p.read_bytes() for p in files)
    bad = subprocess.run([sys.executable, "-m", "icrl_lib", "run", "--task_name", "bankin77"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "task_name" in bad.stderr and "banking77" in bad.stderr
