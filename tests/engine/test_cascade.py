"""Cascade attention (engine.cascade) against the block-diagonal mask it replaces: the same attention output for
every token of a packed row (grouped-query heads, tokens appended by earlier forwards, an empty prefix), the same
labels and log-probabilities as the masked row and the recompute reference, and untouched ordinary forwards."""
from __future__ import annotations

import pytest
import torch

from icrl_lib.engine.cascade import cascade_forward, enable_cascade, plan_cascade
from icrl_lib.engine.kvcache import extend_cache, new_cache
from tests.engine.test_generation import make_prompts, predictor


class Attention(torch.nn.Module):
    num_key_value_groups = 3
    is_causal = True


def masked_reference(q, k, v, prefix_len, past_owners, new_owners, scale):
    """Plain softmax attention with the packed row's mask: the prefix, the owner's earlier tokens, causally its own."""
    new = torch.tensor(new_owners)
    past = torch.tensor(past_owners, dtype=torch.long)
    order = torch.arange(len(new_owners))
    allowed = torch.cat([torch.ones(len(new_owners), prefix_len, dtype=torch.bool), past[None] == new[:, None],
                         (new[None] == new[:, None]) & (order[None] <= order[:, None])], dim=1)
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    scores = (q @ k.transpose(-1, -2)) * scale
    out = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1) @ v
    return out.transpose(1, 2)


@pytest.mark.parametrize("prefix_len", [37, 0])
def test_cascade_attention_is_the_masked_rows_attention(prefix_len):
    torch.manual_seed(0)
    past_owners = [0, 0, 1, 2, 2, 2]
    new_owners = [0, 1, 1, 2, 3, 3, 3, 4]  # 3 and 4 appended nothing before; 4 has a single token
    keys = prefix_len + len(past_owners) + len(new_owners)
    q = torch.randn(1, 6, len(new_owners), 16, dtype=torch.float64)
    k, v = torch.randn(1, 2, keys, 16, dtype=torch.float64), torch.randn(1, 2, keys, 16, dtype=torch.float64)
    module = Attention()
    module.num_key_value_groups = 3
    plan = plan_cascade(prefix_len, past_owners, new_owners, "cpu")
    out, _ = cascade_forward(module, q, k, v, None, scaling=0.25, cascade=plan)
    expected = masked_reference(q, k, v, prefix_len, past_owners, new_owners, 0.25)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    # The merge matters: the prefix part alone (what a wrong plan would give) is far from it.
    if prefix_len:
        alone = masked_reference(q, k, v, prefix_len, past_owners, [9] * len(new_owners), 0.25)
        assert (alone - expected).abs().max() > 1e-2


@pytest.mark.tiny
def test_ordinary_forwards_are_unchanged_by_the_cascade_implementation(tiny):
    ids = tiny.encode("<|im_start|>user\nQuery: where is my parcel?<|im_end|>")
    assert enable_cascade(tiny.model) and tiny.model.config._attn_implementation == "icrl_cascade"
    after = extend_cache(tiny, new_cache(tiny), ids)
    tiny.model.config._attn_implementation = "sdpa"
    try:
        before = extend_cache(tiny, new_cache(tiny), ids)
    finally:
        tiny.model.config._attn_implementation = "icrl_cascade"
    assert torch.equal(before, after)


@pytest.mark.tiny
@pytest.mark.parametrize("temperature", [1.0, 0.0])
def test_packed_predictions_with_cascade_equal_the_masked_row_and_the_reference(tiny, temperature):
    from icrl_lib.tasks.task import load_task
    from tests.helpers import TICKETS

    task = load_task(TICKETS)
    prompts, context = make_prompts(tiny, task, n_context=3, n_queries=12)
    cascade = predictor(tiny, task, temperature, fast=True)
    masked = predictor(tiny, task, temperature, fast=True, cascade=False)
    reference = predictor(tiny, task, temperature, fast=False)
    got = [cascade.predict(prompts, 11, stream=1, context=context) for _ in range(2)]
    want = masked.predict(prompts, 11, stream=1, context=context)
    ref = reference.predict(prompts, 11, stream=1, context=context)
    for ours in got:  # the second time, on the cached context
        assert [p.label for p in ours] == [p.label for p in want] == [p.label for p in ref]
        assert [p.logprob for p in ours] == pytest.approx([p.logprob for p in want], abs=1e-5)


@pytest.mark.model
@pytest.mark.data
def test_on_the_embedded_model_cascade_predicts_what_the_masked_row_predicts(lm, data_dir):
    from icrl_lib.tasks.task import load_task

    task = load_task("clinic150", str(data_dir))
    prompts, context = make_prompts(lm, task, n_context=12, n_queries=24)
    cascade = predictor(lm, task, 1.0, fast=True)
    masked = predictor(lm, task, 1.0, fast=True, cascade=False)
    ours = cascade.predict(prompts, 5, stream=1, context=context)
    theirs = masked.predict(prompts, 5, stream=1, context=context)
    assert [p.label for p in ours] == [p.label for p in theirs]
    assert [p.logprob for p in ours] == pytest.approx([p.logprob for p in theirs], abs=1e-4)
