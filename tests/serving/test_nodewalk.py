"""The node-log-probability walk (the exact route of vLLM and SGLang) against the local backend, bit for bit, through
an in-process scorer on the tiny model; and the vLLM request (the children by id, in chunks of at most 128). The
walk against the real vLLM is tests/serving/test_vllm.py, against SGLang's contract tests/serving/test_sglang.py."""
from __future__ import annotations

import pytest

from icrl_lib.engine.kvcache import extend_cache, new_cache
from icrl_lib.serving.nodewalk import NodeWalkPredictor
from icrl_lib.serving.vllm import VllmScorer
from tests.engine.test_generation import make_prompts, predictor


class InProcessScorer:
    """Scores a node's children the way the local reference path computes them: the prompt, then the label tokens
    so far, each query on its own cache extended one trie level at a time (same shapes, same float32 logits)."""

    computed = 0

    def __init__(self, lm):
        self.lm, self.caches = lm, {}

    def warm(self, ids):
        """Nothing to warm: each query computes its whole prompt, as the reference path does."""

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


def test_the_vllm_request_asks_for_the_children_by_id_in_chunks_vllm_accepts():
    scorer = VllmScorer(client=None, model="m")
    children = tuple(range(300))
    bodies = scorer.requests([1, 2, 3], children)
    assert [len(b["logprob_token_ids"]) for b in bodies] == [128, 128, 44]  # vLLM refuses more than 128 a request
    assert sum((b["logprob_token_ids"] for b in bodies), []) == list(children)
    body = bodies[0]
    assert body["logprobs"] == 1 and body["prompt"] == [1, 2, 3] and "allowed_token_ids" not in body
    assert (body["temperature"], body["top_p"], body["top_k"], body["min_p"], body["repetition_penalty"]) == \
        (1.0, 1.0, -1, 0.0, 1.0)
    assert body["max_tokens"] == 1 and body["return_tokens_as_token_ids"] is True
    old = VllmScorer(client=None, model="m", mode="processed").requests([1], (7, 9))
    assert len(old) == 1 and old[0]["allowed_token_ids"] == [7, 9] and old[0]["logprobs"] == 2


def test_answers_of_an_unexpected_shape_are_one_line_naming_the_field():
    from icrl_lib.errors import ServerRefused
    from icrl_lib.serving.http import ServerClient
    from icrl_lib.serving.sglang import SglangScorer

    class Answers:  # a client whose server answers with 200s of the wrong shape
        base_url = "http://127.0.0.1:9"
        read = ServerClient.read

        def __init__(self, answer):
            self.answer = answer

        def post(self, path, body):
            return self.answer

    with pytest.raises(ServerRefused, match=r"the answer has no choices\.0\.logprobs\.top_logprobs\.0"):
        VllmScorer(Answers({"choices": [{"logprobs": None}]}), "m").scores([([1], (2, 3))])
    with pytest.raises(ServerRefused, match=r"top_logprobs\.0 is not a mapping"):
        VllmScorer(Answers({"choices": [{"logprobs": {"top_logprobs": [[-1.0]]}}]}), "m").scores([([1], (2, 3))])
    with pytest.raises(ServerRefused, match=r"output_token_ids_logprobs is not \[\[logprob, token id, text\]"):
        SglangScorer(Answers([{"meta_info": {"output_token_ids_logprobs": [[{"id": 2}]]}}])).scores([([1], (2, 3))])
