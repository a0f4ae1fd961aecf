"""The node-log-probability walk (vLLM's exact route) against the local backend, bit for bit, through an in-process
scorer on the tiny model; and the vLLM request shape (neutral sampling, the children as allowed tokens)."""
from __future__ import annotations

import json

import pytest
import torch

from icrl_lib.engine.kvcache import extend_cache, new_cache
from icrl_lib.errors import ServerError
from icrl_lib.serving.nodewalk import NodeWalkPredictor, SglangScorer, VllmScorer
from tests.engine.test_generation import make_prompts, predictor
from tests.serving.conftest import JsonHandler, serving


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


class ModelServer(JsonHandler):
    """A 127.0.0.1 server that answers vLLM's and SGLang's documented node requests from the tiny model: vLLM's
    processed log-probabilities (over the allowed tokens), SGLang's full-vocabulary ones for the asked ids."""

    lm = None
    bodies: list = []
    raw = False  # vLLM without --logprobs-mode processed_logprobs: the whole vocabulary's top tokens

    def do_GET(self):  # noqa: N802
        self.send_json({"/v1/models": {"data": [{"id": "tiny"}]}, "/version": {"version": "0.11.0"}}[self.path])

    def do_POST(self):  # noqa: N802 - http.server's naming
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        type(self).bodies.append(body)
        if self.path == "/tokenize":
            answer = {"tokens": type(self).lm.encode(body["prompt"])}
        elif self.path == "/v1/completions" and type(self).raw:
            answer = {"choices": [{"logprobs": {"top_logprobs": [{"token_id:0": -0.1}]}}]}
        elif "allowed_token_ids" not in body and "token_ids_logprob" not in body:  # a warm-up: nothing to score
            answer = {"usage": {"prompt_tokens": len(body["prompt"])}} if self.path == "/v1/completions" else \
                [{"meta_info": {"prompt_tokens": len(body["input_ids"][0]), "cached_tokens": 0}}]
        elif self.path == "/v1/completions":
            logits = self._logits(body["prompt"])[body["allowed_token_ids"]]
            logp = torch.log_softmax(logits, 0)
            answer = {"choices": [{"logprobs": {"top_logprobs": [
                {f"token_id:{t}": float(v) for t, v in zip(body["allowed_token_ids"], logp)}]}}],
                "usage": {"prompt_tokens": len(body["prompt"])}}
        else:  # SGLang /generate, batched
            answer = []
            for ids, asked in zip(body["input_ids"], body["token_ids_logprob"]):
                logp = torch.log_softmax(self._logits(ids), 0)
                pairs = [[float(logp[t]), t, None] for t in asked]
                answer.append({"meta_info": {"prompt_tokens": len(ids), "cached_tokens": 0,
                                             "output_token_ids_logprobs": [pairs]}})
        self.send_json(answer)

    def _logits(self, ids):
        with torch.inference_mode():
            return extend_cache(type(self).lm, new_cache(type(self).lm), ids)


@pytest.mark.tiny
@pytest.mark.parametrize("backend", ["vllm", "sglang"])
def test_the_walk_over_http_draws_what_the_local_backend_draws(tiny, backend):
    """Through a real HTTP round trip in each server's request shape: the same labels as the local backend, the
    same log-probabilities to float precision (the server's are shifted logits), all queries of a level batched."""
    from icrl_lib.serving.http import ServerClient
    from icrl_lib.tasks.task import load_task
    from tests.helpers import TICKETS

    ModelServer.lm, ModelServer.bodies = tiny, []
    with serving(ModelServer) as url:
        task = load_task(TICKETS)
        local = predictor(tiny, task, 1.0, fast=False)
        prompts, _ = make_prompts(tiny, task, n_context=2, n_queries=6)
        client = ServerClient(url)
        scorer = VllmScorer(client, "tiny", concurrency=4) if backend == "vllm" else SglangScorer(client)
        walk = NodeWalkPredictor(tiny.encode_batch, local.trie, 1.0, scorer)
        ours = walk.predict(prompts, 9, stream=1)
        theirs = local.predict(prompts, 9, stream=1)
    assert [p.label for p in ours] == [p.label for p in theirs]
    assert [p.logprob for p in ours] == pytest.approx([p.logprob for p in theirs], abs=1e-5)
    assert walk.tokens.take()["computed"] == (None if backend == "vllm" else sum(  # vLLM here omits cached_tokens
        len(b_ids) for b in ModelServer.bodies for b_ids in b["input_ids"]))
    warm = ModelServer.bodies[0]  # the shared context first, so that the server's prefix cache serves the rest
    shared = warm["prompt"] if backend == "vllm" else warm["input_ids"][0]
    ids = tiny.encode_batch(prompts)
    assert len(shared) >= 64 and all(x[:len(shared)] == shared for x in ids) and len(shared) < min(map(len, ids))
    if backend == "sglang":
        assert len(ModelServer.bodies[1]["input_ids"]) == len(prompts)  # the first level: every query at once


def test_the_sglang_request_batches_a_level_and_reads_its_answer_by_token_id():
    body = SglangScorer.request([([1, 2], (7, 9)), ([1, 3], (4, 5))])
    assert body["input_ids"] == [[1, 2], [1, 3]] and body["token_ids_logprob"] == [[7, 9], [4, 5]]
    assert body["sampling_params"]["max_new_tokens"] == 1 and body["return_logprob"] is True
    scorer = SglangScorer(client=None)
    answer = {"meta_info": {"prompt_tokens": 50, "cached_tokens": 48,
                            "output_token_ids_logprobs": [[[-2.0, 9, " b"], [-0.2, 7, " a"]]]}}
    assert torch.equal(scorer._parse(answer, (7, 9)), torch.tensor([-0.2, -2.0], dtype=torch.float64))
    assert scorer.computed == 2
    with pytest.raises(ServerError, match=r"no log-probability for tokens \[4\]"):
        scorer._parse(answer, (4, 7))


@pytest.mark.tiny
def test_the_probe_names_vllms_missing_flag_before_the_run_starts(tiny):
    from icrl_lib.errors import UserError
    from icrl_lib.serving.probe import connect

    ModelServer.lm, ModelServer.bodies, ModelServer.raw = tiny, [], False
    try:
        with serving(ModelServer) as url:
            conn = connect("vllm", url, None, None, 30.0, 0, tiny.encode, ["Query: where is my parcel?"])
            assert (conn.info.software, conn.info.model, conn.info.exact) == ("vLLM 0.11.0", "tiny", True)
            ModelServer.raw = True
            with pytest.raises(UserError, match="^server_url: vLLM returned no log-probability .*--logprobs-mode "
                                                "processed_logprobs"):
                connect("vllm", url, None, None, 30.0, 0, tiny.encode, ["Query: where is my parcel?"])
    finally:
        ModelServer.raw = False
