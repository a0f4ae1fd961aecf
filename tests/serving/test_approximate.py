"""The approximate routes: refused unless asked, named as approximate in run folders and tables. The Gemini API (no
server of it can run here) is answered by a 127.0.0.1 server in its documented shape that draws by the seed it was
sent; the OpenAI-compatible enum route runs against the real llama-cpp-python server. vLLM's guided choice runs
against the real vLLM (test_vllm.py), SGLang's regex route against SGLang's own request contract (test_sglang.py)."""
from __future__ import annotations

import json
import re
from types import SimpleNamespace

import httpx
import pytest

from icrl_lib.analysis.load import read
from icrl_lib.errors import ServerError, UserError
from icrl_lib.runs.config import ExperimentConfig
from icrl_lib.runs.identity import model_label
from icrl_lib.runs.loop import run_experiment
from icrl_lib.serving.backends import BACKENDS
from icrl_lib.serving.hosted import GeminiEnumPredictor, GeminiEnumRoute, gemini_contents
from icrl_lib.serving.sampled import query_seed
from icrl_lib.serving.sglang import choice_regex
from icrl_lib.tasks.task import load_task
from tests.helpers import TICKETS, small
from tests.serving.conftest import JsonHandler, serving

LABELS = ("order", "order status", "refund (partial)", "cancel")
KEY = "test-key-8c1e"  # what the fake Gemini API expects in x-goog-api-key


class Documented(JsonHandler):
    """Answers the Gemini API's model resource and enum requests: the answer is the option the request's seed picks,
    so a test can tell that each query got its own."""

    bodies: list = []
    answer_text: str | None = None  # forces this text (an answer that is not a label)

    def do_GET(self):  # noqa: N802 - http.server's naming
        if not self.path.startswith("/v1beta/models/"):
            return self.send_json({"error": {"message": "not found"}}, 404)
        if self.headers.get("x-goog-api-key") != KEY or self.headers.get("authorization"):
            return self.send_json({"error": {"message": "API key not valid. Please pass a valid API key."}}, 400)
        name = self.path.rsplit("/", 1)[1]
        if name != "gemini-test":
            return self.send_json({"error": {"message": f"models/{name} is not found"}}, 404)
        return self.send_json({"name": "models/gemini-test", "version": "001"})

    def do_POST(self):  # noqa: N802
        body = self.body()
        type(self).bodies.append((self.path, body))
        config = body["generationConfig"]
        options = config["responseSchema"]["enum"]
        text = type(self).answer_text or options[config["seed"] % len(options)]
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


def test_gemini_gets_the_chat_as_contents_and_a_system_instruction():
    messages = [{"role": "system", "content": "You are an useful assistant."}, {"role": "user", "content": "Q: a"},
                {"role": "assistant", "content": "Intent: order"}, {"role": "user", "content": "good\n\nQ: b"}]
    system, contents = gemini_contents(messages)
    assert system == {"parts": [{"text": "You are an useful assistant."}]}
    assert [(c["role"], c["parts"][0]["text"]) for c in contents] == [
        ("user", "Q: a"), ("model", "Intent: order"), ("user", "good\n\nQ: b")]


def gemini(url, model="gemini-test"):
    """The Gemini route opened as a run opens it (a plan that needs no model: the server renders the chat)."""
    config = ExperimentConfig(backend="gemini-enum", server_url=url, server_model=model, api_key_env="GEMINI_KEY",
                              allow_approximate=True, max_context_examples=8, request_retries=0)
    plan = SimpleNamespace(config=config, trie=SimpleNamespace(labels=LABELS), model=None)
    return GeminiEnumRoute.open(BACKENDS["gemini-enum"], plan, ["never tokenized"])


def test_gemini_requests_an_enum_with_the_key_in_its_header(documented, monkeypatch):
    monkeypatch.setenv("GEMINI_KEY", KEY)
    route = gemini(documented)
    assert route.info.software == "Gemini API (models/gemini-test, version 001)" and not route.info.exact
    assert route.info.tokenization.startswith("not checked")
    predictor = route.predictor()
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
    Documented.answer_text = "order status please"
    with pytest.raises(ServerError, match=r"^gemini-test answered 'order status please', not one of the 4 labels$"):
        predictor.predict(chats[:1], seed=1)
    with pytest.raises(UserError, match=r"^server_model: 'gemini-nope' at http://127\.0\.0\.1:\d+: .*HTTP 404: "
                                        r"models/gemini-nope is not found$"):
        gemini(documented, "gemini-nope")
    monkeypatch.setenv("GEMINI_KEY", "wrong")
    with pytest.raises(UserError, match="API key not valid"):
        gemini(documented)


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
def test_the_openai_enum_route_runs_against_a_real_server(llama_cpp_python, data_dir, tmp_path):
    served = httpx.get(f"{llama_cpp_python.url}/v1/models").json()["data"][0]["id"]  # the GGUF's path
    config = ExperimentConfig.from_dict(dict(
        task_name="clinic150", context_strategy_name="approximate_only_positive", max_contexts=2,
        approximate_context_sampling_method="uniform", context_p_keep=0.5, max_context_examples=16, train_k=4,
        test_every=2, test_k=6, debug_k=1, data_dir=str(data_dir), output_dir=str(tmp_path / "out"),
        backend="openai-enum", server_url=llama_cpp_python.url, server_model=served,
        allow_approximate=True))
    result = run_experiment(config, progress=False)
    assert f"__{model_label(served)}@openai-enum__" in result.run_dir.name
    meta = json.loads((result.run_dir / "meta.json").read_text())["server"]
    assert meta["software"].startswith("llama-cpp-python") and meta["route"].startswith("APPROXIMATE")
    labels = set(load_task("clinic150", str(data_dir)).labels)
    assert all(p in labels for r in result.records if r.test for p in r.test.predictions)
    steps = read(tmp_path / "out").steps
    assert (steps["prompt_tokens"] > 0).all() and steps["computed_tokens"].isna().all()  # the server's count
