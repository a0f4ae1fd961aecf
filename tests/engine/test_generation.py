"""Constrained decoding and the KV-cache fast path (mechanics: on the tiny random-weight model, whose label
probabilities are far from degenerate, with the committed support-tickets task)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from icrl_lib.engine.generation import LabelPredictor, choose_token
from icrl_lib.engine.kvcache import PrefixCachePool, extend_cache, new_cache
from icrl_lib.paper.prompts import Episode, build_messages, render_context, render_prompt, system_prompt
from icrl_lib.tasks.task import load_task
from icrl_lib.tasks.trie import LabelTrie
from tests.helpers import TICKETS, label_logprobs


@pytest.fixture(scope="module")
def trec():
    """The committed support-tickets task: six teams, several of them two-token names (a trie with branching)."""
    return load_task(TICKETS)


def predictor(lm, task, temperature, **kw) -> LabelPredictor:
    return LabelPredictor(lm, LabelTrie.build(task.labels, lm.encode, lm.eot_id), temperature, **kw)


def make_prompts(lm, task, n_context: int, n_queries: int, icrl: bool = True):
    """Prompts sharing one ICRL context of real training episodes (predictions = gold, alternating feedback)."""
    train = task.sample_train(n_context + n_queries, seed=7)[1]
    episodes = [
        Episode(task.format_input(ex), task.answer(ex), task.answer(ex), i % 2)
        for i, ex in enumerate(train[:n_context])
    ]
    system = system_prompt(icrl, task.description)

    def render(query):
        msgs = build_messages(system, episodes, query, icrl=icrl, prediction_prefix=task.prediction_prefix,
                              system_role=lm.system_role)
        return (render_prompt(lm.tokenizer, msgs, task.prediction_prefix) if query
                else render_context(lm.tokenizer, msgs))

    return [render(task.format_input(ex)) for ex in train[n_context:]], render(None)


@pytest.mark.tiny
def test_end_of_turn_comes_from_the_template(tiny):
    lm = tiny
    assert lm.tokenizer.convert_ids_to_tokens(lm.eot_id) == "<|im_end|>"
    rendered = lm.tokenizer.apply_chat_template([{"role": "assistant", "content": "X"}], tokenize=False)
    assert "X<|im_end|>" in rendered


@pytest.mark.tiny
def test_trie_allows_exactly_the_label_sequences(tiny, trec):
    lm = tiny
    trie = LabelTrie.build(trec.labels, lm.encode, lm.eot_id)
    # Walk every path of the trie: the complete paths are exactly the labels' token sequences.
    complete, stack = set(), [()]
    while stack:
        node = stack.pop()
        for token in trie.children.get(node, ()):
            (complete.add(node + (token,)) if token == lm.eot_id else stack.append(node + (token,)))
    assert complete == {tuple(lm.encode(" " + label)) + (lm.eot_id,) for label in trec.labels}


def test_choose_token_follows_the_cdf():
    logits = torch.tensor([0.0, math.log(3.0), 5.0])  # restricted to tokens 0 and 1: p = 0.25, 0.75
    assert choose_token(logits, (0, 1), 1.0, 0.2)[0] == 0
    assert choose_token(logits, (0, 1), 1.0, 0.3)[0] == 1
    assert choose_token(logits, (0, 1), 0.0, 0.0)[0] == 1  # greedy
    assert choose_token(logits, (0, 1), 1.0, 0.3)[1] == pytest.approx(math.log(0.75))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_choose_token_takes_logits_on_the_gpu():
    # Regression: the draw mixed a CPU tensor with CUDA logits and every GPU run crashed at its first sampled token.
    logits = torch.randn(50, generator=torch.Generator().manual_seed(0))
    allowed = (3, 7, 11, 40)
    for u in (0.0, 0.3, 0.7, 0.999):
        assert choose_token(logits.cuda(), allowed, 1.0, u) == choose_token(logits, allowed, 1.0, u)


@pytest.mark.tiny
@pytest.mark.parametrize("n_context", [0, 6])
def test_cached_label_probabilities_equal_uncached(tiny, trec, n_context):
    lm = tiny
    task = trec
    prompts, _ = make_prompts(lm, task, n_context, 2)
    scorer = predictor(lm, task, 1.0)
    for prompt in prompts:
        cached = label_logprobs(scorer, prompt, cached=True)
        uncached = label_logprobs(scorer, prompt, cached=False)
        assert sum(math.exp(v) for v in cached.values()) == pytest.approx(1.0, abs=1e-5)  # fp32 logits
        a = np.array([cached[k] for k in task.labels])
        b = np.array([uncached[k] for k in task.labels])
        np.testing.assert_allclose(np.exp(a), np.exp(b), atol=1e-4)  # probabilities within 1e-4


@pytest.mark.tiny
@pytest.mark.parametrize("temperature", [1.0, 0.0])
def test_fast_path_predictions_equal_full_recompute(tiny, trec, temperature):
    lm = tiny
    prompts, context = make_prompts(lm, trec, 8, 12)
    fast = predictor(lm, trec, temperature, fast=True, batch_size=5)  # 3 packed chunks
    slow = predictor(lm, trec, temperature, fast=False)
    a = fast.predict(prompts, seed=123, stream=1, context=context)
    b = slow.predict(prompts, seed=123, stream=1, context=context)
    assert [p.label for p in a] == [p.label for p in b]
    assert all(p.label in trec.labels for p in a)
    np.testing.assert_allclose([p.logprob for p in a], [p.logprob for p in b], atol=1e-4)
    # The fast path computed far fewer tokens for the same prompts.
    ta, tb = fast.tokens.take(), slow.tokens.take()
    assert ta["prompt"] == tb["prompt"] and ta["computed"] < tb["computed"] / 3


@pytest.mark.tiny
def test_sampling_frequencies_match_trie_probabilities(tiny, trec):
    lm = tiny
    prompts, _ = make_prompts(lm, trec, 3, 1)
    sampler = predictor(lm, trec, 1.0)
    probs = {k: math.exp(v) for k, v in label_logprobs(sampler, prompts[0]).items()}
    n = 600
    draws = sampler.predict(prompts * n, seed=2024, stream=1)  # independent draw per query index
    freq = {k: sum(p.label == k for p in draws) / n for k in trec.labels}
    for label, p in probs.items():
        sd = math.sqrt(p * (1 - p) / n)
        assert abs(freq[label] - p) <= 4 * sd + 1e-3, (label, freq[label], p)
    assert len({p.label for p in draws}) > 1  # the prompt is not degenerate, so the test can fail


@pytest.mark.tiny
def test_same_seed_same_predictions_and_streams_differ(tiny, trec):
    lm = tiny
    prompts, context = make_prompts(lm, trec, 4, 6)
    sampler = predictor(lm, trec, 1.0)
    first = [p.label for p in sampler.predict(prompts, seed=5, stream=1, context=context)]
    again = [p.label for p in sampler.predict(prompts, seed=5, stream=1, context=context)]
    other = [p.label for p in sampler.predict(prompts, seed=5, stream=0, context=context)]
    assert first == again and first != other  # a stream of its own: training and test draws never coincide


@pytest.mark.tiny
def test_incrementally_extended_cache_equals_encoding_from_scratch(tiny, trec):
    lm = tiny
    prompts, _ = make_prompts(lm, trec, 10, 1)
    ids = lm.encode(prompts[0])
    cuts = [len(ids) // 4, len(ids) // 2, len(ids) - 1]
    pool = PrefixCachePool(lm, budget_tokens=100_000)
    for cut in cuts:  # a growing context, as approximate ICRL's: extended in place, never re-encoded
        entry = pool.acquire(ids[:cut])
    assert len(pool.entries) == 1 and pool.stats.computed_tokens == cuts[-1]
    fresh = new_cache(lm)
    reference = extend_cache(lm, fresh, ids[: cuts[-1]])
    torch.testing.assert_close(entry.last_logits, reference, atol=1e-4, rtol=1e-4)
    # and the next token's logits on top of both caches agree
    a = extend_cache(lm, entry.cache, ids[-1:])
    b = extend_cache(lm, fresh, ids[-1:])
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.tiny
def test_pool_reuses_the_longest_common_prefix_and_respects_its_budget(tiny, trec):
    lm = tiny
    prompts, _ = make_prompts(lm, trec, 6, 2)
    a, b = lm.encode(prompts[0]), lm.encode(prompts[1])
    shared = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
    assert 4 * (len(a) - shared) <= len(a)  # the prompts differ only in their short query
    pool = PrefixCachePool(lm, budget_tokens=2 * len(a) + len(b), max_entries=2)
    pool.acquire(a)
    entry = pool.acquire(b)  # shares the context with a: a's cache is cropped to it in place, then b's tail computed
    assert pool.stats.computed_tokens == len(a) + len(b) - shared
    assert len(pool.entries) == 1 and entry.ids == b
    half = b[: len(b) // 2] + list(reversed(b[len(b) // 2:]))  # keeps only half of b: b stays, a copy is grown
    pool.acquire(half)
    assert len(pool.entries) == 2 and pool.entries[0].ids == b and pool.entries[1].ids == half
    assert pool.stats.computed_tokens == len(a) + len(b) - shared + len(b) - len(b) // 2
    pool.acquire(list(reversed(a)))  # nothing in common: the least recently used entry goes
    assert [e.ids for e in pool.entries] == [half, list(reversed(a))] and pool.stats.evictions == 1
    assert sum(len(e.ids) for e in pool.entries) <= pool.budget_tokens


@pytest.mark.tiny
def test_a_pool_too_small_for_the_contexts_evicts_and_recomputes_with_the_same_predictions(tiny, trec):
    """Approximate ICRL at a size where K contexts do not fit the memory budget: the pool never holds more than its
    budget, evicts the least recently used context and recomputes it when it comes back; predictions do not change."""
    lm = tiny
    system = system_prompt(True, trec.description)

    def messages(shown, query):
        return build_messages(system, shown, query, icrl=True, prediction_prefix=trec.prediction_prefix,
                              system_role=lm.system_role)

    contexts = []
    for seed in (1, 2, 3):  # three unrelated contexts, as K=3 approximate contexts are
        train = trec.sample_train(8, seed=seed)[1]
        shown = [Episode(trec.format_input(ex), trec.answer(ex), trec.answer(ex), 1) for ex in train[:6]]
        prompts = [render_prompt(lm.tokenizer, messages(shown, trec.format_input(ex)), trec.prediction_prefix)
                   for ex in train[6:]]
        contexts.append((prompts, render_context(lm.tokenizer, messages(shown, None))))
    longest = max(len(lm.encode(c)) for _, c in contexts)
    small = predictor(lm, trec, 1.0, fast=True, cache_budget_tokens=int(1.5 * longest))
    large = predictor(lm, trec, 1.0, fast=True, cache_budget_tokens=10**6)
    for step, k in enumerate([0, 1, 2, 0, 1, 2, 0]):
        prompts, context = contexts[k]
        got = small.predict(prompts, seed=step, stream=1, context=context)
        want = large.predict(prompts, seed=step, stream=1, context=context)
        assert [p.label for p in got] == [p.label for p in want]
        assert [p.logprob for p in got] == pytest.approx([p.logprob for p in want], abs=1e-5)
        assert small.cache_report()["tokens"] <= small.pool.budget_tokens
    assert small.pool.stats.evictions >= 5 and large.pool.stats.evictions == 0
    assert small.pool.stats.computed_tokens > large.pool.stats.computed_tokens  # evicted contexts were recomputed
