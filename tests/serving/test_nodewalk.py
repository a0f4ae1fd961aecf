"""The node-log-probability walk (vLLM's exact route) against the local backend, bit for bit, through an in-process
scorer on the tiny model; and the vLLM request shape (neutral sampling, the children as allowed tokens)."""
from __future__ import annotations

import pytest
import torch

from icrl_lib.engine.kvcache import extend_cache, new_cache
from icrl_lib.errors import ServerError
from icrl_lib.serving.nodewalk import NodeWalkPredictor, VllmScorer
from tests.engine.test_generation import make_prompts, predictor


class InProcessScorer:
    """Scores a node's children the way the local reference path computes them: the prompt, then the label tokens
    so far, each query on its own cache extended one trie level at a time (same shapes, same float32 logits)."""

    computed = 0

    def __init__(self, lm):
        self.lm, self.caches = lm, {}

    def scores(self, requests):
        out = []
        for ids, children in requests:
            key = next((k for k in self.caches if list(ids[:len(k)]) == list(k)), None)
            cache, logits = self.caches.pop(key) if key is not None else (new_cache(self.lm), None)
            todo = list(ids[len(key):]) if key is not None else list(ids)
            logits = extend_cache(self.lm, cache, todo) if todo else logits
            self.computed += len(todo)
            self.caches[tuple(ids)] = (cache, logits)
            out.append(logits[list(children)])
        return out


@pytest.mark.tiny
@pytest.mark.parametrize("temperature", [1.0, 0.7, 0.0])
def test_the_walk_draws_what_the_local_backend_draws(tiny, temperature):
    from icrl_lib.tasks.task import load_task
    from tests.helpers import TICKETS

    task = load_task(TICKETS)
    local = predictor(tiny, task, temperature, fast=False)
    prompts, _ = make_prompts(tiny, task, n_context=4, n_queries=12)
    walk = NodeWalkPredictor(tiny.encode_batch, local.trie, temperature, InProcessScorer(tiny))
    for seed in (5, 6):
        ours, theirs = walk.predict(prompts, seed, stream=1), local.predict(prompts, seed, stream=1)
        assert ours == theirs  # labels and log-probabilities, exactly
    assert len({p.label for p in ours}) > 1 or temperature == 0
    counts = walk.tokens.take()
    assert counts["prompt"] == 2 * sum(len(x) for x in tiny.encode_batch(prompts)) and counts["computed"] > 0


def test_the_vllm_request_asks_for_exactly_the_children_with_neutral_sampling():
    scorer = VllmScorer(client=None, model="m")
    body = scorer.request([1, 2, 3], (7, 9))
    assert body["allowed_token_ids"] == [7, 9] and body["logprobs"] == 2 and body["prompt"] == [1, 2, 3]
    assert (body["temperature"], body["top_p"], body["top_k"], body["min_p"], body["repetition_penalty"]) == \
        (1.0, 1.0, -1, 0.0, 1.0)
    assert body["max_tokens"] == 1 and body["return_tokens_as_token_ids"] is True


def test_vllm_answers_are_read_by_token_id_and_cache_counters_give_tokens_computed():
    scorer = VllmScorer(client=None, model="m")
    answer = {"choices": [{"logprobs": {"top_logprobs": [{"token_id:9": -0.1, "token_id:7": -2.4}]}}],
              "usage": {"prompt_tokens": 100, "prompt_tokens_details": {"cached_tokens": 96}}}
    assert torch.equal(scorer._parse(answer, (7, 9)), torch.tensor([-2.4, -0.1], dtype=torch.float64))
    assert scorer.computed == 4
    scorer._parse({**answer, "usage": {"prompt_tokens": 100}}, (7, 9))
    assert scorer.computed is None  # not reported: unknown from then on, never guessed


def test_raw_vllm_logprobs_that_miss_a_child_name_the_server_flag():
    scorer = VllmScorer(client=None, model="m")
    answer = {"choices": [{"logprobs": {"top_logprobs": [{"token_id:3": -0.1, "token_id:9": -2.4}]}}]}
    with pytest.raises(ServerError, match="--logprobs-mode processed_logprobs"):
        scorer._parse(answer, (7, 9))
