"""The estimate a run prints before its first step: a paper-size run on a CPU warns with its time and names the
quickstart; a short run only estimates; the token range holds the run's own count of computed tokens."""
from __future__ import annotations

import pytest

from icrl_lib.runs.estimate import WARN_SECONDS, estimate, prompt_sizes
from icrl_lib.runs.loop import run_experiment
from icrl_lib.runs.plan import prepare
from tests.helpers import small


@pytest.mark.tiny
@pytest.mark.data
def test_a_paper_size_run_on_a_cpu_warns_with_its_time_before_the_first_step(tmp_path, tiny, data_dir):
    """The paper's defaults (10,000 steps, 21 tests of 500 queries) with the embedded model's speed on a CPU: the
    warning names the time range and the quickstart (the notebook's Run All once started this silently)."""
    plan = prepare(small(tmp_path, data_dir, model_name=tiny.name, task_name="clinic150", train_k=10000,
                         test_every=500, test_k=500, max_context_examples=None, context_p_keep=0.1))
    guess = estimate(plan, 0, *prompt_sizes(plan))
    assert guess.steps == 10000 and guess.tests == 21 and guess.low_tokens < guess.high_tokens
    line = guess.line(tokens_per_second=500.0, device="cpu")  # about the embedded model's prefill rate here
    assert line.startswith("[icrl] warning: 10,000 steps and 21 tests") and "params/quickstart.yaml" in line
    assert guess.seconds(500.0)[1] > WARN_SECONDS
    assert guess.line(500.0, "cuda").startswith("[icrl] estimate:")  # a GPU's time is its user's choice


@pytest.mark.tiny
def test_a_short_run_estimates_a_range_that_holds_what_it_computed(tmp_path, tiny, capsys):
    config = small(tmp_path, model_name=tiny.name)
    result = run_experiment(config, progress=False, lm=tiny)
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("[icrl] estimate:"))
    assert line.startswith("[icrl] estimate: 30 steps and 3 tests of 10 queries left")
    plan = prepare(config, tiny)
    guess = estimate(plan, 0, *prompt_sizes(plan))
    computed = sum(r.tokens.get("computed", 0) for r in result.records)
    assert guess.low_tokens <= computed <= guess.high_tokens * 1.5  # a rough range: the label tokens are not in it
    run_experiment(config, progress=False, lm=tiny)  # resumed and finished: nothing left, nothing estimated
    assert "[icrl] estimate" not in capsys.readouterr().out


@pytest.mark.tiny
def test_estimate_counts_only_the_steps_left(tmp_path, tiny):
    plan = prepare(small(tmp_path, model_name=tiny.name))
    sizes = prompt_sizes(plan)
    whole, rest = estimate(plan, 0, *sizes), estimate(plan, 20, *sizes)
    assert (rest.steps, rest.tests) == (10, 1) and rest.high_tokens < whole.high_tokens


@pytest.mark.tiny
def test_the_prompt_sizes_are_near_the_rendered_ones(tmp_path, tiny):
    """The estimate counts tokens without rendering (the run's renderer must meet its prompts first): within a
    quarter of what the chat template gives for a query, an episode and the head."""
    from icrl_lib.runs.context import ContextBuilder

    plan = prepare(small(tmp_path, model_name=tiny.name))
    builder, encode = ContextBuilder(plan), plan.model.encode
    query = plan.task.format_input(plan.data.test[0])
    head = len(encode(builder.context([])))
    empty = len(encode(builder.prompt([], query)))
    one = len(encode(builder.prompt([plan.gold_episode(plan.data.stream[0])], query)))
    for guessed, rendered in zip(prompt_sizes(plan), (empty - head, one - empty, head)):
        assert abs(guessed - rendered) <= 0.25 * rendered, (guessed, rendered)
