"""The step inspector: every prompt it rebuilds from a run folder (log + plan, no weights) is the prompt the run sent.

The runs are short experiments on the tiny model, one per kind of context (naive, explorative with flipped feedback
and exemplars, approximate with K contexts, omitted feedback, zero-shot, ICL), with every model call captured: the
prompt texts the predictor got and the token ids it computed them with. Then the inspector is asked about every
training step and every test query of every test step.
"""
from __future__ import annotations

import math
import subprocess
import sys
from dataclasses import dataclass, field

import pytest

from icrl_lib.analysis.plots import label_distribution_figure
from icrl_lib.engine.generation import LabelPredictor
from icrl_lib.engine.split_tokens import PromptTokenizer
from icrl_lib.errors import UserError
from icrl_lib.paper.prompts import feedback_text
from icrl_lib.runs.inspector import StepInspector, inspect_step, render_step
from icrl_lib.runs.loop import run_experiment
from icrl_lib.runs.store import DEBUG_FILE, DEBUG_SEPARATOR
from tests.helpers import ROOT, assert_one_line_error, cli, small

COMMON = dict(train_k=12, test_every=4, test_k=4, max_context_examples=4, debug_k=1000)
RUNS = {
    "naive": dict(context_strategy_name="random_biased_end", context_p_keep=1.0),
    "explorative": dict(context_strategy_name="random_unbiased", context_p_keep=0.5, icrl_flip_feedback=True,
                        icrl_flip_feedback_prob=0.3, exemplars_per_label=1, max_context_examples=10),
    "approximate": dict(context_strategy_name="approximate", context_p_keep=0.5, max_contexts=3,
                        approximate_context_sampling_method="exact"),
    "omit_feedback": dict(context_strategy_name="random_biased_end_only_negative", context_p_keep=1.0,
                          icrl_omit_feedback=True),
    "zero_shot": dict(max_context_examples=0),
    "icl": dict(icrl=False, context_strategy_name="random_biased_end", context_p_keep=1.0),
}


@dataclass
class Captured:
    """Every model call of one run: (seed, stream) -> the prompts and the token ids the predictor computed."""

    prompts: dict[tuple[int, int], list[str]] = field(default_factory=dict)
    ids: dict[tuple[int, int], list[list[int]]] = field(default_factory=dict)


def captured_run(config, lm):
    """Run ``config`` on ``lm``, capturing every model call: the prompts and the token ids the predictor computed."""
    captured, pending = Captured(), []
    predict, with_context, shared = LabelPredictor.predict, PromptTokenizer.with_context, PromptTokenizer.shared

    def spy_predict(self, prompts, seed, stream=0, context=None):
        result = predict(self, prompts, seed, stream, context)
        captured.prompts[seed, stream] = list(prompts)
        captured.ids[seed, stream] = pending.pop()
        return result

    def spy_context(self, prompt, context):
        ids, shared_len = with_context(self, prompt, context)
        pending.append([list(ids)])
        return ids, shared_len

    def spy_shared(self, prompts):
        encoded = shared(self, prompts)
        pending.append(encoded.full())
        return encoded

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(LabelPredictor, "predict", spy_predict)
        mp.setattr(PromptTokenizer, "with_context", spy_context)
        mp.setattr(PromptTokenizer, "shared", spy_shared)
        result = run_experiment(config, progress=False, lm=lm)
    assert not pending
    return result, captured


@pytest.fixture(scope="module")
def runs(tiny, tmp_path_factory):
    """name -> (run result, captured calls)."""
    return {name: captured_run(small(tmp_path_factory.mktemp(name), model_name=tiny.name, **{**COMMON, **kw}), tiny)
            for name, kw in RUNS.items()}


@pytest.mark.tiny
@pytest.mark.parametrize("name", sorted(RUNS))
def test_every_rebuilt_prompt_is_the_prompt_the_run_sent(runs, name):
    result, captured = runs[name]
    inspector = StepInspector.open(result.run_dir)
    config = inspector.plan.config
    checked = set()
    for rec in result.records:
        seed = config.seed + rec.step
        if rec.train is not None:
            view = inspector.view(rec.step)
            assert (view.step, view.kind, view.query) == (rec.step, "train", None)
            assert (view.input, view.answer, view.prediction) == (rec.train.input, rec.train.answer,
                                                                  rec.train.prediction)
            assert (view.reward, view.feedback, view.flipped) == (rec.train.reward, rec.train.feedback,
                                                                  rec.train.flipped)
            assert tuple(e.index for e in view.episodes if e.index is not None) == rec.context.indices
            assert len(view.episodes) == rec.context.size
            assert view.context_index == rec.context.context_index
            if config.icrl:
                assert view.prompt == captured.prompts[seed, 0][0]
                assert list(view.token_ids) == captured.ids[seed, 0][0]
                assert view.token_count == rec.train_tokens["prompt"]  # what the run counted
                assert view.logprob == rec.train.logprob
                shown = None if config.icrl_omit_feedback else feedback_text(rec.train.prediction,
                                                                             rec.train.feedback == 1)
                assert view.feedback_text == shown
                checked.add((seed, 0))
            else:  # ICL: the gold label joins the history, no model call
                assert view.prompt is None and view.token_ids is None and not view.model_call
        if rec.test is not None:
            prompts, ids = captured.prompts[seed, 1], captured.ids[seed, 1]
            assert len(prompts) == len(rec.test.predictions) == config.test_k
            for i, (prompt, prompt_ids) in enumerate(zip(prompts, ids)):
                view = inspector.view(rec.step, query=i)
                assert (view.kind, view.query) == ("test", i)
                assert view.prompt == prompt
                assert list(view.token_ids) == prompt_ids
                assert (view.prediction, view.answer) == (rec.test.predictions[i], rec.test.answers[i])
                assert view.reward == int(rec.test.predictions[i] == rec.test.answers[i])
                assert view.feedback_text is None
            tested = sum(inspector.view(rec.step, query=i).token_count for i in range(len(prompts)))
            assert tested == rec.tokens["prompt"] - rec.train_tokens["prompt"]  # what the run counted
            checked.add((seed, 1))
    assert checked == set(captured.prompts)  # every model call of the run was rebuilt


@pytest.mark.tiny
@pytest.mark.parametrize("name", sorted(RUNS))
def test_the_debug_prompts_are_the_rebuilt_ones(runs, name):
    """debug_prompts.txt (debug_k large) holds each step's training prompt, then its first test prompt."""
    result, _ = runs[name]
    inspector = StepInspector.open(result.run_dir)
    expected = []
    for rec in result.records:
        if rec.train is not None and rec.train.prediction is not None:
            expected.append(inspector.view(rec.step).prompt)
        if rec.test is not None:
            expected.append(inspector.view(rec.step, query=0).prompt)
    text = (result.run_dir / DEBUG_FILE).read_text(encoding="utf-8")
    assert text == "".join(p + "\n" + DEBUG_SEPARATOR for p in expected)


@pytest.mark.tiny
def test_what_changed_since_the_previous_step(runs):
    result, _ = runs["naive"]
    inspector = StepInspector.open(result.run_dir)
    for rec in result.records[1:]:
        view = inspector.view(rec.step)
        before, now = set(result.records[rec.step - 1].context.indices), set(rec.context.indices)
        assert set(view.added) == now - before and set(view.dropped) == before - now
    # naive with a budget of 4 keeps the 4 newest episodes: at step 6, episode 5 came in and episode 1 went out
    assert (inspector.view(6).added, inspector.view(6).dropped) == ((5,), (1,))
    episodes = inspector.view(6).episodes
    assert [e.index for e in episodes] == [2, 3, 4, 5]
    assert all(e.reward == result.records[e.index].train.reward for e in episodes)


@pytest.mark.tiny
def test_approximate_runs_name_the_context_and_what_each_context_kept(runs):
    result, _ = runs["approximate"]
    inspector = StepInspector.open(result.run_dir)
    for rec in result.records:
        view = inspector.view(rec.step)
        assert view.context_index == rec.context.context_index
        assert view.context_lengths == rec.context.context_lengths
        assert len(view.contexts) == 3 and view.contexts[view.context_index] == rec.context.indices
        assert tuple(len(c) for c in view.contexts) == rec.context.context_lengths
    view = inspector.view(8)
    text = render_step(view)
    assert f"approximate context {view.context_index} of 3" in text
    kept = [str(k) for k, c in enumerate(view.contexts) if 7 in c]
    assert f"episode [7] kept by context(s): {', '.join(kept) or 'none'}" in text


@pytest.mark.tiny
def test_exemplars_lead_the_context_and_flipped_feedback_is_shown_as_the_model_saw_it(runs):
    result, _ = runs["explorative"]
    inspector = StepInspector.open(result.run_dir)
    view = inspector.view(5)
    exemplars = [e for e in view.episodes if e.index is None]
    assert len(exemplars) == 6 and view.episodes[:6] == tuple(exemplars)
    flipped = [r for r in result.records if r.train.flipped]
    assert flipped, "the flip probability should flip one of 12 steps"
    rec = flipped[0]
    view = inspector.view(rec.step)
    assert view.flipped and view.feedback == 1 - view.reward
    assert "flipped" in render_step(view)


@pytest.mark.tiny
def test_probabilities_are_the_law_the_prediction_was_drawn_from(runs, tiny):
    """The drawn label's probability under --probs is the one the run logged (exp of its log-probability)."""
    result, _ = runs["naive"]
    inspector = StepInspector.open(result.run_dir)
    for step in (0, 5, 11):
        view = inspector.view(step, probs=True, lm=tiny)
        probs = dict(view.probabilities)
        assert sum(probs.values()) == pytest.approx(1.0, abs=1e-5)
        assert probs[view.prediction] == pytest.approx(math.exp(view.logprob), rel=1e-3, abs=1e-5)
        assert view.probabilities == tuple(sorted(view.probabilities, key=lambda lp: -lp[1]))
        assert view.probabilities[view.rank - 1][0] == view.prediction
        assert "rank" in render_step(view)
    test_view = inspector.view(3, query=2, probs=True, lm=tiny)
    assert sum(p for _, p in test_view.probabilities) == pytest.approx(1.0, abs=1e-5)
    fig = label_distribution_figure(test_view, top=2)
    bars = fig.data[0]
    assert test_view.prediction in bars.x and len(bars.x) <= 3
    assert list(bars.y) == sorted(bars.y, reverse=True)


@pytest.mark.tiny
def test_bad_steps_and_queries_name_the_argument_and_the_allowed_range(runs, tmp_path):
    result, _ = runs["naive"]
    inspector = StepInspector.open(result.run_dir)
    with pytest.raises(UserError, match=r"step: 12 .*allowed: 0\.\.11"):
        inspector.view(12)
    with pytest.raises(UserError, match=r"step: -1 .*allowed: 0\.\.11"):
        inspector.view(-1)
    with pytest.raises(UserError, match=r"query: step 5 has no test; test steps: 0, 3, 7, 11"):
        inspector.view(5, query=0)
    with pytest.raises(UserError, match=r"query: 4 .*allowed: 0\.\.3"):
        inspector.view(3, query=4)
    with pytest.raises(UserError, match="run folder"):
        StepInspector.open(tmp_path / "nowhere")
    zero = StepInspector.open(runs["zero_shot"][0].run_dir)
    assert zero.view(0).kind == "test" and zero.view(0).query == 0  # no training query: the first test query


@pytest.mark.tiny
def test_the_cli_prints_the_step_without_loading_torch(runs, tmp_path):
    result, _ = runs["approximate"]
    code = ("import sys, runpy; sys.argv = ['icrl', 'inspect', sys.argv[1], '--step', '5'];"
            "from icrl_lib.cli import main; rc = main();"
            "assert 'torch' not in sys.modules, 'the inspector loaded torch'; sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code, str(result.run_dir)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    view = inspect_step(result.run_dir, 5)
    assert proc.stdout.strip() == render_step(view).strip()
    assert view.prompt in proc.stdout
    proc = cli("inspect", str(result.run_dir), "--step", "7", "--query", "1")
    assert proc.returncode == 0, proc.stderr
    assert inspect_step(result.run_dir, 7, query=1).prompt in proc.stdout
    proc = cli("inspect", str(result.run_dir), "--step", "2", "--probs")  # loads the run's (tiny) model
    assert proc.returncode == 0, proc.stderr
    drawn = inspect_step(result.run_dir, 2).prediction
    assert "label distribution at temperature 1 (the drawn label ranks" in proc.stdout
    assert any(line.endswith(f"{drawn}   <- drawn") for line in proc.stdout.splitlines())


@pytest.mark.tiny
def test_the_cli_refuses_bad_input_in_one_line(runs, tmp_path):
    folder = str(runs["naive"][0].run_dir)
    assert_one_line_error(cli("inspect", str(tmp_path / "nowhere"), "--step", "0"), "run folder", "nowhere")
    assert_one_line_error(cli("inspect", folder, "--step", "40"), "step: 40", "allowed: 0..11")
    assert_one_line_error(cli("inspect", folder, "--step", "5", "--query", "0"), "query: step 5 has no test",
                          "0, 3, 7, 11")
    assert_one_line_error(cli("inspect", folder, "--step", "3", "--query", "9"), "query: 9", "allowed: 0..3")


@pytest.mark.tiny
def test_a_run_in_progress_can_be_inspected_while_another_process_holds_it(runs):
    """The inspector never takes the run folder's lock (a long run can be looked at while it runs)."""
    from icrl_lib.runs.store import RunStore

    result, _ = runs["naive"]
    inspector = StepInspector.open(result.run_dir)
    with RunStore.open(inspector.plan.run_dir, inspector.plan.config):
        assert StepInspector.open(result.run_dir).view(2).prompt == inspector.view(2).prompt


@pytest.mark.tiny
def test_a_greedy_run_drew_the_label_of_probability_one(tiny, tmp_path):
    """Temperature 0: the law is a point mass on the argmax path, and that is the label the run predicted."""
    result = run_experiment(small(tmp_path, model_name=tiny.name, temperature=0.0, train_k=5, test_every=5, test_k=3),
                            progress=False, lm=tiny)
    inspector = StepInspector.open(result.run_dir)
    views = [inspector.view(s, probs=True, lm=tiny) for s in range(5)]
    views += [inspector.view(4, query=q, probs=True, lm=tiny) for q in range(3)]
    for view in views:
        assert view.rank == 1 and view.probabilities[0] == (view.prediction, 1.0)
        assert all(p == 0.0 for _, p in view.probabilities[1:])


@pytest.mark.tiny
def test_a_moved_folder_is_inspected_and_a_tampered_log_is_refused_with_its_line(runs, tmp_path):
    import json
    import shutil

    from icrl_lib.runs.store import LOG_FILE

    result, captured = runs["explorative"]
    moved = tmp_path / "elsewhere" / result.run_dir.name
    shutil.copytree(result.run_dir, moved)
    inspector = StepInspector.open(moved)
    assert inspector.view(7).prompt == captured.prompts[inspector.plan.config.seed + 7, 0][0]
    lines = (moved / LOG_FILE).read_text().splitlines()
    record = json.loads(lines[5])
    record["context"]["indices"] = [0]
    lines[5] = json.dumps(record)
    (moved / LOG_FILE).write_text("\n".join(lines) + "\n")
    inspector = StepInspector.open(moved)
    assert inspector.view(4).step == 4  # the steps before the damage are still read
    with pytest.raises(UserError, match=r"line 6: the context differs from what the strategy draws"):
        inspector.view(7)
