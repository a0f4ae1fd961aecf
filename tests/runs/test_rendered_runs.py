"""Incremental rendering in real runs: at every step of a run on the tiny model and real data, the context and every
prompt the run renders are the whole rendering's text, and the token ids the model computed are those of that text.

One short run per kind of context: naive, explorative (flipped feedback, exemplars), approximate (K = 3; also with
exemplars and no system role, and with abstract labels), omitted feedback and ICL. A non-additive chat template is
rendered whole, with the same prompts.
"""
from __future__ import annotations

import copy
import dataclasses

import pytest

from icrl_lib.engine.split_tokens import PromptTokenizer
from icrl_lib.paper.prompts import Episode, build_messages, render_context, render_prompt
from icrl_lib.runs.context import ContextBuilder
from icrl_lib.runs.loop import run_experiment
from icrl_lib.runs.plan import prepare
from tests.helpers import small

COMMON = dict(train_k=14, test_every=5, test_k=4, max_context_examples=6)
RUNS = {
    "naive": dict(context_strategy_name="random_biased_end", context_p_keep=1.0),
    "explorative": dict(context_strategy_name="random_unbiased", context_p_keep=0.5, icrl_flip_feedback=True,
                        icrl_flip_feedback_prob=0.3, exemplars_per_label=1, max_context_examples=10),
    "approximate": dict(context_strategy_name="approximate", context_p_keep=0.7, max_contexts=3,
                        approximate_context_sampling_method="exact"),
    "approximate_no_system_role": dict(context_strategy_name="approximate", context_p_keep=0.7, max_contexts=3,
                                       approximate_context_sampling_method="uniform", exemplars_per_label=1,
                                       max_context_examples=12, system_role=False),
    "approximate_abstract_labels": dict(task_name="trec_coarse_unsemantic", context_p_keep=0.7, max_contexts=2,
                                        context_strategy_name="approximate_only_positive",
                                        approximate_context_sampling_method="exact"),
    "omit_feedback": dict(context_strategy_name="random_biased_end_only_negative", context_p_keep=1.0,
                          icrl_omit_feedback=True),
    "icl": dict(icrl=False, context_strategy_name="random_biased_end", context_p_keep=1.0),
}


def whole(builder: ContextBuilder, episodes, query=None) -> str:
    """The step's context (no query) or prompt, rendered whole from the paper's message list."""
    plan, c = builder.plan, builder.plan.config
    messages = build_messages(plan.system, episodes, query, icrl=c.icrl, prediction_prefix=plan.task.prediction_prefix,
                              omit_feedback=c.icrl_omit_feedback, system_role=plan.model.system_role)
    if query is None:
        return render_context(plan.model.tokenizer, messages)
    return render_prompt(plan.model.tokenizer, messages, plan.task.prediction_prefix)


def checked_run(config, lm) -> dict:
    """Run ``config``, comparing every rendering with the whole one and every computed prompt's ids with the ids of
    its whole rendering; what was compared, counted."""
    seen = dict(contexts=0, prompts=0, ids=0, builders=[])
    context, prompt = ContextBuilder.context, ContextBuilder.prompt
    with_context, shared = PromptTokenizer.with_context, PromptTokenizer.shared
    wholes: dict[str, str] = {}  # incremental prompt text -> its whole rendering

    def spy_context(self, episodes):
        if self not in seen["builders"]:
            seen["builders"].append(self)
        text = context(self, episodes)
        assert text == whole(self, episodes)
        seen["contexts"] += 1
        return text

    def spy_prompt(self, episodes, query):
        text = prompt(self, episodes, query)
        wholes[text] = whole(self, episodes, query)
        assert text == wholes[text]
        seen["prompts"] += 1
        return text

    def spy_with_context(self, text, context_text):
        ids, shared_len = with_context(self, text, context_text)
        assert list(ids) == self.encode([wholes[text]])[0]
        seen["ids"] += 1
        return ids, shared_len

    def spy_shared(self, texts):
        encoded = shared(self, texts)
        assert encoded.full() == self.encode([wholes[t] for t in texts])
        seen["ids"] += len(texts)
        return encoded

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ContextBuilder, "context", spy_context)
        mp.setattr(ContextBuilder, "prompt", spy_prompt)
        mp.setattr(PromptTokenizer, "with_context", spy_with_context)
        mp.setattr(PromptTokenizer, "shared", spy_shared)
        seen["result"] = run_experiment(config, progress=False, lm=lm)
    return seen


@pytest.mark.tiny
@pytest.mark.data
@pytest.mark.parametrize("name", sorted(RUNS))
def test_every_step_renders_what_a_whole_rendering_gives(tiny, data_dir, tmp_path, name):
    kw = {**COMMON, **RUNS[name]}
    lm = dataclasses.replace(tiny, system_role=kw.pop("system_role", True))
    seen = checked_run(small(tmp_path, data_dir, model_name=tiny.name, **kw), lm)
    steps = len(seen["result"].records)
    assert steps == COMMON["train_k"] or name == "icl"  # ICL stops once its context is full
    assert seen["contexts"] == steps
    icrl = kw.get("icrl", True)
    tests = sum(1 for r in seen["result"].records if r.test is not None)
    assert seen["ids"] == (steps if icrl else 0) + tests * COMMON["test_k"]
    assert seen["prompts"] == seen["ids"]  # the local backend renders no sample prompts (server routes do)
    renderer = seen["builders"][-1].renderer
    assert renderer.additive  # SmolLM2's template is additive, with and without a system role
    if name.startswith("approximate"):  # the K contexts grow: most renderings reuse a prefix
        assert renderer.reused >= seen["ids"]


@pytest.mark.tiny
@pytest.mark.data
def test_a_template_that_is_not_additive_is_rendered_whole_in_a_run(tiny, data_dir, tmp_path):
    tokenizer = copy.deepcopy(tiny.tokenizer)
    tokenizer.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }} of {{ messages | length }}\n"
                               "{{ m['content'] }}<|im_end|>\n{% endfor %}"
                               "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    lm = dataclasses.replace(tiny, tokenizer=tokenizer)
    config = small(tmp_path, data_dir, model_name=tiny.name, **{**COMMON, **RUNS["approximate"]})
    builder = ContextBuilder(prepare(config, lm))
    assert builder.renderer.additive is False
    episodes = [Episode(f"Question: q{i}", "number", "location", i % 2) for i in range(3)]
    for k in range(4):
        assert builder.context(episodes[:k]) == whole(builder, episodes[:k])
        assert builder.prompt(episodes[:k], "Question: why?") == whole(builder, episodes[:k], "Question: why?")
    assert builder.renderer.reused == 0
    seen = checked_run(config, lm)  # and a whole run, compared at every step
    assert seen["builders"][-1].renderer.additive is False and seen["contexts"] == COMMON["train_k"]
