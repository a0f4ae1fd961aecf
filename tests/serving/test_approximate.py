"""The approximate routes: refused unless asked, named as approximate in run folders and tables, and their requests
in each server's documented shape. vLLM's and SGLang's guided choice and the Gemini API are answered by a 127.0.0.1
server that checks the request and draws by the seed it was sent; the OpenAI-compatible enum route runs against the
real llama-cpp-python server (tests/serving/test_llamacpp.py's fixture)."""
from __future__ import annotations

import json
import re

import httpx
import pytest

from icrl_lib.analysis.load import read
from icrl_lib.errors import ServerError, UserError
from icrl_lib.runs.config import ExperimentConfig
from icrl_lib.runs.loop import run_experiment
from icrl_lib.runs.store import model_label
from icrl_lib.serving.choice import SglangChoicePredictor, VllmChoicePredictor, choice_regex
from icrl_lib.serving.hosted import GeminiEnumPredictor, gemini_contents
from icrl_lib.serving.http import ServerClient
from icrl_lib.serving.probe import connect
from icrl_lib.serving.sampled import query_seed
from icrl_lib.tasks.task import load_task
from tests.helpers import TICKETS, small
from tests.serving.conftest import JsonHandler, serving

LABELS = ("order", "order status", "refund (partial)", "cancel")
KEY = "test-key-8c1e"  # what the fake Gemini API expects in x-goog-api-key


def encode_batch(texts):
    return [[ord(c) for c in t] for t in texts]


class Documented(JsonHandler):
    """Answers vLLM's guided choice, SGLang's regex and Gemini's enum requests: the answer is the option the request's
    seed picks (SGLang, which takes no seed: the prompt's length), so a test can tell that each query got its own."""

    bodies: list = []
    answer_text: str | None = None  # forces this text (an answer that is not a label)

    def do_GET(self):  # noqa: N802 - http.server's naming
        if self.path.startswith("/v1beta/models/"):
            if self.headers.get("x-goog-api-key") != KEY or self.headers.get("authorization"):
                return self.send_json({"error": {"message": "API key not valid. Please pass a valid API key."}}, 400)
            name = self.path.rsplit("/", 1)[1]
            if name != "gemini-test":
                return self.send_json({"error": {"message": f"models/{name} is not found"}}, 404)
            return self.send_json({"name": "models/gemini-test", "version": "001"})
        self.send_json({"/v1/models": {"data": [{"id": "served"}]}, "/version": {"version": "0.11.0"},
                    "/get_server_info": {"version": "0.5.0"}}.get(self.path, {}), 200 if self.path else 404)

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        type(self).bodies.append((self.path, body))
        forced = type(self).answer_text
        if self.path == "/tokenize":
            return self.send_json({"tokens": encode_batch([body["prompt"]])[0]})
        if self.path == "/v1/completions":
            options = body["structured_outputs"]["choice"]
            text = forced or options[body["seed"] % len(options)]
            return self.send_json({"choices": [{"text": text, "finish_reason": "stop"}],
                               "usage": {"prompt_tokens": len(body["prompt"]), "completion_tokens": 2}})
        if self.path == "/generate":
            if body.get("input_ids") == []:
                raise ValueError
            options = [o.replace("\\", "") for o in body["sampling_params"]["regex"][1:-1].split("|")]
            text = forced or options[len(body["input_ids"]) % len(options)]
            meta = {"prompt_tokens": len(body["input_ids"]), "cached_tokens": 3, "completion_tokens": 2,
                    "finish_reason": {"type": "stop"}}
            return self.send_json({"text": text, "meta_info": meta})
        config = body["generationConfig"]
        options = config["responseSchema"]["enum"]
        text = forced or options[config["seed"] % len(options)]
        candidate = {"content": {"role": "model", "parts": [{"text": text}]}, "finishReason": "STOP"}
        usage = {"promptTokenCount": 40, "candidatesTokenCount": 1}
        self.send_json({"candidates": [candidate], "usageMetadata": usage})



@pytest.fixture
def documented():
    Documented.bodies, Documented.answer_text = [], None
    with serving(Documented) as url:
        yield url


def test_the_label_regex_matches_exactly_the_labels_with_their_space():
    pattern = re.compile(choice_regex(LABELS))
    assert all(pattern.fullmatch(" " + label) for label in LABELS)
    assert not pattern.fullmatch(" refund partial") and not pattern.fullmatch("order")


@pytest.mark.parametrize("kind", ["vllm", "sglang"])
def test_guided_choice_sends_our_token_ids_with_neutral_sampling_and_reads_the_label(documented, kind):
    client = ServerClient(documented, retries=0)
    cls = VllmChoicePredictor if kind == "vllm" else SglangChoicePredictor
    predictor = cls(client, "served", encode_batch, LABELS, 0.7, concurrency=4)
    prompts = [f"<|im_start|>user\nQuery: {i}{'!' * i}<|im_end|>\nIntent:" for i in range(6)]
    labels = [p.label for p in predictor.predict(prompts, seed=107, stream=1)]
    sent = sorted((b for _, b in Documented.bodies), key=lambda b: len(b.get("prompt") or b.get("input_ids")))
    ids = encode_batch(prompts)
    if kind == "vllm":
        assert [b["prompt"] for b in sent] == ids  # the run's own tokens, not text the server would re-tokenize
        assert sorted(b["seed"] for b in sent) == sorted(query_seed(107, 1, i) for i in range(6))
        assert sent[0]["structured_outputs"]["choice"] == [" " + x for x in LABELS]
        params = sent[0]
        assert labels == [LABELS[query_seed(107, 1, i) % 4] for i in range(6)]
        assert predictor.tokens.take() == {"prompt": sum(map(len, ids)), "computed": None, "generated": 12}
    else:
        assert [b["input_ids"] for b in sent] == ids
        params = sent[0]["sampling_params"]
        assert labels == [LABELS[len(x) % 4] for x in ids]
        assert predictor.tokens.take() == {"prompt": sum(map(len, ids)), "computed": sum(map(len, ids)) - 18,
                                           "generated": 12}
    assert (params["temperature"], params["top_p"], params["top_k"], params["min_p"]) == (0.7, 1.0, -1, 0.0)
    assert all(p.logprob is None for p in predictor.predict(prompts[:1], seed=1))
    Documented.answer_text = " order status please"
    with pytest.raises(ServerError, match=r"^served answered ' order status please', not one of the 4 labels$"):
        predictor.predict(prompts[:1], seed=1)


def test_gemini_gets_the_chat_as_contents_and_a_system_instruction():
    messages = [{"role": "system", "content": "You are an useful assistant."}, {"role": "user", "content": "Q: a"},
                {"role": "assistant", "content": "Intent: order"}, {"role": "user", "content": "good\n\nQ: b"}]
    system, contents = gemini_contents(messages)
    assert system == {"parts": [{"text": "You are an useful assistant."}]}
    assert [(c["role"], c["parts"][0]["text"]) for c in contents] == [
        ("user", "Q: a"), ("model", "Intent: order"), ("user", "good\n\nQ: b")]


def test_gemini_requests_an_enum_with_the_key_in_its_header(documented, monkeypatch):
    monkeypatch.setenv("GEMINI_KEY", KEY)
    conn = connect("gemini-enum", documented, "gemini-test", "GEMINI_KEY", 30.0, 0, None, ["never tokenized"])
    assert conn.info.software == "Gemini API (models/gemini-test, version 001)" and not conn.info.exact
    assert conn.info.tokenization.startswith("not checked")
    predictor = conn.predictor(None, type("Trie", (), {"labels": LABELS})(), 1.0, ())
    assert isinstance(predictor, GeminiEnumPredictor) and predictor.chat
    chats = [[{"role": "system", "content": "sys"}, {"role": "user", "content": f"Q: {i}"}] for i in range(3)]
    labels = [p.label for p in predictor.predict(chats, seed=5, stream=0)]
    assert labels == [LABELS[query_seed(5, 0, i) % 4] for i in range(3)]
    path, body = Documented.bodies[-1]
    assert path == "/v1beta/models/gemini-test:generateContent"
    assert body["generationConfig"]["responseMimeType"] == "text/x.enum"
    assert body["generationConfig"]["responseSchema"] == {"type": "STRING", "enum": list(LABELS)}
    # Protocol-buffer JSON leaves out a zero cachedContentTokenCount: all 40 prompt tokens were computed.
    assert predictor.tokens.take() == {"prompt": 120, "computed": 120, "generated": 3}
    with pytest.raises(UserError, match=r"^server_model: 'gemini-nope' at http://127\.0\.0\.1:\d+: .*HTTP 404: "
                                        r"models/gemini-nope is not found$"):
        connect("gemini-enum", documented, "gemini-nope", "GEMINI_KEY", 30.0, 0, None, [])
    monkeypatch.setenv("GEMINI_KEY", "wrong")
    with pytest.raises(UserError, match="API key not valid"):
        connect("gemini-enum", documented, "gemini-test", "GEMINI_KEY", 30.0, 0, None, [])


@pytest.mark.parametrize("backend", ["vllm-choice", "sglang-choice", "openai-enum", "gemini-enum"])
def test_every_approximate_backend_is_refused_unless_asked(backend):
    with pytest.raises(ValueError, match=rf"^backend: {backend} samples labels approximately .* set "
                                         r"allow_approximate: true"):
        ExperimentConfig(backend=backend, server_url="http://127.0.0.1:1", server_model="m",
                         max_context_examples=8)


def test_a_hosted_chat_backend_needs_its_model_and_a_context_size():
    base = dict(backend="gemini-enum", server_url="https://generativelanguage.googleapis.com",
                allow_approximate=True)
    with pytest.raises(ValueError, match=r"^server_model: backend gemini-enum needs the hosted model's id"):
        ExperimentConfig(**base, max_context_examples=8)
    with pytest.raises(ValueError, match=r"^max_context_examples: backend gemini-enum sends messages"):
        ExperimentConfig(**base, server_model="gemini-1.5-flash-8b")
    a = ExperimentConfig(**base, server_model="gemini-1.5-flash-8b", max_context_examples=8)
    b = ExperimentConfig(**base, server_model="gemini-1.5-flash-8b", max_context_examples=8, model_name="other/tok")
    assert a.model_id == "gemini-1.5-flash-8b" and a.identity() == b.identity()  # model_name has no effect there


@pytest.mark.tiny
def test_a_gemini_run_is_named_by_the_hosted_model_and_never_stores_the_key(tiny, documented, tmp_path, monkeypatch):
    monkeypatch.setenv("GEMINI_KEY", KEY)
    config = small(tmp_path, model_name=tiny.name, backend="gemini-enum", server_url=documented,
                   server_model="gemini-test", api_key_env="GEMINI_KEY", allow_approximate=True, train_k=6,
                   test_every=3, test_k=5, debug_k=2)
    result = run_experiment(config, progress=False)
    assert "__gemini-test@gemini-enum__" in result.run_dir.name
    labels = set(load_task(TICKETS).labels)
    assert all(r.train.prediction in labels for r in result.records)
    tests = read(tmp_path / "out").tests
    assert set(tests["model_name"]) == {"gemini-test@gemini-enum"} and not tests["exact"].any()
    debug = (result.run_dir / "debug_prompts.txt").read_text()
    assert '"role": "system"' in debug and "You are an useful assistant." in debug  # the messages, as sent
    first = next(b for p, b in Documented.bodies if p.endswith(":generateContent"))
    assert first["systemInstruction"]["parts"][0]["text"].startswith("You are an useful assistant.")
    for path in result.run_dir.rglob("*"):
        assert path.is_dir() or KEY not in path.read_text(errors="replace"), path


@pytest.mark.model
@pytest.mark.data
def test_the_openai_enum_route_runs_against_a_real_server(llama_server, data_dir, tmp_path):
    served = httpx.get(f"{llama_server.url}/v1/models").json()["data"][0]["id"]  # the GGUF's path
    config = ExperimentConfig.from_dict(dict(
        task_name="clinic150", context_strategy_name="approximate_only_positive", max_contexts=2,
        approximate_context_sampling_method="uniform", context_p_keep=0.5, max_context_examples=16, train_k=4,
        test_every=2, test_k=6, debug_k=1, data_dir=str(data_dir), output_dir=str(tmp_path / "out"),
        backend="openai-enum", server_url=llama_server.url, server_model=served,
        allow_approximate=True))
    result = run_experiment(config, progress=False)
    assert f"__{model_label(served)}@openai-enum__" in result.run_dir.name
    meta = json.loads((result.run_dir / "meta.json").read_text())["server"]
    assert meta["software"].startswith("llama-cpp-python") and meta["route"].startswith("APPROXIMATE")
    labels = set(load_task("clinic150", str(data_dir)).labels)
    assert all(p in labels for r in result.records if r.test for p in r.test.predictions)
    steps = read(tmp_path / "out").steps
    assert (steps["prompt_tokens"] > 0).all() and steps["computed_tokens"].isna().all()  # the server's count
