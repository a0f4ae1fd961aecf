"""The sglang backends against a 127.0.0.1 server that holds SGLang's request contract: every /generate body is
decoded by SGLang's own generated JSON decoder (``sglang/api/v1/api_types.py`` of the pinned 0.5.23 wheel, the gate
its /generate applies: unknown sampling fields refused with its error text), then by SamplingParams.verify's limits;
a text prompt is tokenized with special tokens, as SGLang does (a template's BOS would be doubled); /tokenize
honours add_special_tokens; cached_tokens is the longest prefix seen before. Answers come from the tiny model, so the
exact route's walk must draw what the local backend draws. SGLang itself needs a GPU; its contract does not."""
from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

from icrl_lib.engine.kvcache import extend_cache, new_cache
from icrl_lib.errors import ServerRefused
from icrl_lib.serving.http import ServerClient
from icrl_lib.serving.nodewalk import NodeWalkPredictor
from icrl_lib.serving.sampled import query_seed
from icrl_lib.serving.sglang import SglangChoicePredictor, SglangScorer, batches, choice_regex
from icrl_lib.tasks.task import load_task
from tests.engine.test_generation import make_prompts, predictor
from tests.helpers import TICKETS
from tests.serving.conftest import REQUIRED, JsonHandler, serving

CONTRACT = Path(sys.prefix) / "sglang-contract" / "api_types.py"  # `make sglang-contract`
TOP_K_ALL = 1 << 30


def load_contract():
    if not CONTRACT.is_file():
        message = f"SGLang's request contract is not here ({CONTRACT}): make sglang-contract"
        pytest.fail(message) if REQUIRED else pytest.skip(message)
    spec = importlib.util.spec_from_file_location("sglang_api_types", CONTRACT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def verify(params, vocab_size: int) -> None:
    """sglang/srt/sampling/sampling_params.py SamplingParams.__post_init__ + verify (0.5.23), as far as a request
    can reach them."""
    temperature, top_k = params.temperature, params.top_k
    if 0 <= temperature < 1e-6:
        temperature, top_k = 1.0, 1
    top_k = TOP_K_ALL if top_k == -1 else top_k
    checks = [(math.isfinite(temperature) and temperature >= 0, "temperature must be a non-negative finite number"),
              (0.0 < params.top_p <= 1.0, "top_p must be in (0, 1]"), (0.0 <= params.min_p <= 1.0, "min_p must be in "
                                                                                                 "[0, 1]"),
              (top_k >= 1, "top_k must be -1 (disable) or at least 1"),
              (-2.0 <= params.frequency_penalty <= 2.0, "frequency_penalty must be in [-2, 2]"),
              (-2.0 <= params.presence_penalty <= 2.0, "presence_penalty must be in [-2, 2]"),
              (0.0 < params.repetition_penalty <= 2.0, "repetition_penalty must be in (0, 2]"),
              (params.max_new_tokens is None or params.max_new_tokens >= 0, "max_new_tokens must be at least 0"),
              (all(0 <= int(t) < vocab_size for t in params.logit_bias), "logit_bias must has keys in vocab"),
              (sum(x is not None for x in (params.json_schema, params.regex, params.ebnf, params.structural_tag))
               <= 1, "Only one of json_schema, regex, ebnf, or structural_tag can be set.")]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)


class FakeSglang(JsonHandler):
    """SGLang 0.5.23's HTTP API as far as the routes use it, answering from ``lm``."""

    lm = contract = None
    bodies: list = []
    seen: list = []  # prompts computed so far (the radix cache)

    def do_GET(self):  # noqa: N802 - http.server's naming
        answers = {"/v1/models": {"object": "list", "data": [{"id": "tiny", "object": "model"}]},
                   "/server_info": {"version": "0.5.23"}, "/health": {}}
        self.send_json(answers[self.path] if self.path in answers else {"detail": "Not Found"},
                       200 if self.path in answers else 404)

    def do_POST(self):  # noqa: N802
        body = self.body()
        cls = type(self)
        cls.bodies.append((self.path, body))
        tok = cls.lm.tokenizer
        if self.path == "/tokenize":
            ids = tok.encode(body["prompt"], add_special_tokens=body.get("add_special_tokens", True))
            return self.send_json({"tokens": ids, "count": len(ids), "max_model_len": 8192})
        if self.path != "/generate":
            return self.send_json({"detail": "Not Found"}, 404)
        try:  # sglang/srt/entrypoints/api_contract.py: the gate every /generate body passes
            request = cls.contract.GenerateRequest.from_json_value(body)
        except cls.contract.JsonContractError as err:
            return self.send_json({"error": str(err)}, 400)
        prompts = request.input_ids if request.input_ids is not None else (
            [tok(t)["input_ids"] for t in request.text] if isinstance(request.text, list) else
            tok(request.text)["input_ids"])  # a text prompt gets the tokenizer's special tokens
        batched = bool(prompts) and isinstance(prompts[0], list)
        prompts = prompts if batched else [prompts]
        params = request.sampling_params or cls.contract.SamplingParams()
        params = params if isinstance(params, list) else [params] * len(prompts)
        asked = request.token_ids_logprob
        asked = (asked if asked and isinstance(asked[0], list) else [asked] * len(prompts)) if asked else None
        try:
            for p in params:
                verify(p, len(tok))
        except ValueError as err:
            return self.send_json({"error": {"message": str(err)}}, 400)
        answers = [self._answer(ids, p, asked[i] if asked else None, request.return_logprob)
                   for i, (ids, p) in enumerate(zip(prompts, params))]
        self.send_json(answers if batched else answers[0])

    def _answer(self, ids, params, asked, logprob):
        cls = type(self)
        cached = max((_common(ids, s) for s in cls.seen), default=0)
        cls.seen.append(list(ids))
        with torch.inference_mode():
            logp = torch.log_softmax(extend_cache(cls.lm, new_cache(cls.lm), ids).double(), 0)
        meta = {"id": "x", "finish_reason": {"type": "length", "length": 1}, "prompt_tokens": len(ids),
                "completion_tokens": 1, "cached_tokens": min(cached, len(ids) - 1)}
        text = " a"
        if params.regex is not None:  # guided: the option the request's seed picks
            options = [o.replace("\\", "") for o in params.regex[1:-1].split("|")]
            text = options[(params.sampling_seed or 0) % len(options)]
            meta["finish_reason"] = {"type": "stop", "matched": 2}
        if logprob and asked:
            meta["output_token_ids_logprobs"] = [[[float(logp[t]), t, None] for t in asked]]
        return {"text": text, "output_ids": [0], "meta_info": meta}


def _common(a, b) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


@pytest.fixture
def sglang(tiny):
    FakeSglang.lm, FakeSglang.contract, FakeSglang.bodies, FakeSglang.seen = tiny, load_contract(), [], []
    with serving(FakeSglang) as url:
        yield url


@pytest.mark.tiny
def test_the_contract_refuses_a_misspelled_sampling_field_as_sglang_does(sglang):
    client = ServerClient(sglang, retries=0)
    with pytest.raises(ServerRefused, match=r"HTTP 400: unknown field `top_kk`, expected one of"):
        client.post("/generate", {"input_ids": [1, 2], "sampling_params": {"top_kk": 3}})
    with pytest.raises(ServerRefused, match=r"HTTP 400: top_p must be in \(0, 1\]"):
        ServerClient(sglang, retries=0).post("/generate", {"input_ids": [1, 2], "sampling_params": {"top_p": 0}})


@pytest.mark.tiny
@pytest.mark.parametrize("limit", [1 << 20, 60])
def test_the_walk_over_sglangs_api_draws_what_the_local_backend_draws(sglang, tiny, limit):
    """Every body passes SGLang's contract; the labels and log-probabilities are the local backend's; a level's
    queries go in as few requests as the size limit allows (60 tokens: one query a request)."""
    task = load_task(TICKETS)
    local = predictor(tiny, task, 1.0, fast=False)
    prompts, _ = make_prompts(tiny, task, n_context=2, n_queries=6)
    walk = NodeWalkPredictor(tiny.encode_batch, local.trie, 1.0, SglangScorer(ServerClient(sglang), limit=limit))
    ours, theirs = walk.predict(prompts, 9, stream=1), local.predict(prompts, 9, stream=1)
    assert [p.label for p in ours] == [p.label for p in theirs]
    assert [p.logprob for p in ours] == pytest.approx([p.logprob for p in theirs], abs=1e-5)
    sent = [b for path, b in FakeSglang.bodies if path == "/generate"]
    assert all("text" not in b for b in sent)  # the run's token ids, never text the server would re-tokenize
    level = [b for b in sent if "token_ids_logprob" in b]
    sizes = [sum(len(x) for x in b["input_ids"]) for b in level]
    if limit > 1000:
        assert len(level[0]["input_ids"]) == len(prompts)  # the first level: every query at once
    else:
        assert all(len(b["input_ids"]) == 1 for b in level) and max(sizes) > limit  # a longer one goes alone
    counts = walk.tokens.take()
    assert counts["computed"] is not None and counts["computed"] < counts["prompt"] + counts["generated"]


def test_batches_are_cut_by_size():
    requests = [([0] * 40, (1, 2)), ([0] * 40, (1, 2)), ([0] * 100, (1,)), ([0] * 10, (3,))]
    assert batches(requests, limit=90) == [[0, 1], [2], [3]]
    assert batches(requests, limit=10_000) == [[0, 1, 2, 3]]


@pytest.mark.tiny
def test_the_regex_route_sends_a_seed_per_query_and_reads_the_label(sglang, tiny):
    labels = ("order", "order status", "refund (partial)", "cancel")
    predictor_ = SglangChoicePredictor(ServerClient(sglang), "tiny", tiny.encode_batch, labels, 0.7, concurrency=4)
    prompts = [f"<|im_start|>user\nQuery: {i}{'!' * i}<|im_end|>\nIntent:" for i in range(6)]
    got = [p.label for p in predictor_.predict(prompts, seed=107, stream=1)]
    assert got == [labels[query_seed(107, 1, i) % 4] for i in range(6)]
    sent = [b for path, b in FakeSglang.bodies if path == "/generate"]
    assert sorted(b["sampling_params"]["sampling_seed"] for b in sent) == sorted(query_seed(107, 1, i)
                                                                                  for i in range(6))
    assert sent[0]["sampling_params"]["regex"] == choice_regex(labels)


@pytest.mark.tiny
@pytest.mark.parametrize("backend", ["sglang", "sglang-choice"])
def test_a_run_on_sglang_probes_it_and_sends_only_token_ids(sglang, tiny, tmp_path, backend):
    """The probe compares /tokenize (no special tokens) with the run's ids; the run then sends input_ids only (a
    text would get the tokenizer's special tokens: a second BOS under a template that writes one)."""
    from icrl_lib.runs.loop import run_experiment
    from tests.helpers import small

    config = small(tmp_path, model_name=tiny.name, backend=backend, server_url=sglang, train_k=4, test_every=2,
                   test_k=5, allow_approximate=backend == "sglang-choice")
    result = run_experiment(config, progress=False, lm=tiny)
    meta = json.loads((result.run_dir / "meta.json").read_text())["server"]
    assert meta["software"] == "SGLang 0.5.23" and meta["tokenization"].startswith("the run's token ids are sent")
    generate = [b for path, b in FakeSglang.bodies if path == "/generate"]
    assert generate and all("input_ids" in b and "text" not in b for b in generate)
    assert all(p in set(load_task(TICKETS).labels) for r in result.records if r.test for p in r.test.predictions)
