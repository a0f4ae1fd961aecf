"""The start-up probe of an inference server, run before the run folder is locked: which server and model answer,
and whether the server tokenizes as the run's tokenizer does. Every failure is one line naming what to fix."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from icrl_lib.errors import ServerError, UserError
from icrl_lib.serving.backends import backend
from icrl_lib.serving.choice import SglangChoicePredictor, VllmChoicePredictor
from icrl_lib.serving.hosted import GeminiEnumPredictor, OpenAIEnumPredictor
from icrl_lib.serving.http import ServerClient
from icrl_lib.serving.llamacpp import GrammarPredictor
from icrl_lib.serving.nodewalk import NodeWalkPredictor, SglangScorer, VllmScorer
from icrl_lib.tasks.trie import LabelTrie


@dataclass(frozen=True)
class ServerInfo:
    """What answered: recorded in ``meta.json``; a run resumes only against the same served model."""

    backend: str
    url: str
    software: str  # server and version, as far as it says
    model: str  # the served model's id
    route: str
    exact: bool
    logprobs: bool
    tokenization: str  # how far the server's tokenization was checked against model_name's

    def record(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Connection:
    """A probed server: its client and what it is."""

    client: ServerClient
    info: ServerInfo

    def predictor(self, encode_batch, trie: LabelTrie, temperature: float, banned: Sequence[int]):
        """The backend's predictor (``banned``: end-of-generation tokens other than the end-of-turn)."""
        name, model, client = self.info.backend, self.info.model, self.client
        if name.startswith("llamacpp"):
            return GrammarPredictor(client, model, encode_batch, trie, temperature, banned, exact=self.info.exact)
        if name == "sglang":
            return NodeWalkPredictor(encode_batch, trie, temperature, SglangScorer(client))
        if name == "vllm":
            return NodeWalkPredictor(encode_batch, trie, temperature, VllmScorer(client, model))
        if name == "vllm-choice":
            return VllmChoicePredictor(client, model, encode_batch, trie.labels, temperature)
        if name == "sglang-choice":
            return SglangChoicePredictor(client, model, encode_batch, trie.labels, temperature)
        if name == "openai-enum":
            dialect = "llama-cpp-python" if self.info.software.startswith("llama-cpp-python") else "openai"
            return OpenAIEnumPredictor(client, model, trie.labels, temperature, dialect)
        if name == "gemini-enum":
            return GeminiEnumPredictor(client, model, trie.labels, temperature)
        raise ValueError(f"backend: {name} has no predictor")


def connect(name: str, url: str, served_model: str | None, api_key_env: str | None, timeout: float, retries: int,
            encode, samples: Sequence[str]) -> Connection:
    """Probe the server at ``url`` for backend ``name``: models, software, tokenization of ``samples`` (a rendered
    prompt and labels) against ``encode``. A client for the run (with its timeout and retries) on success."""
    entry = backend(name)
    header = "x-goog-api-key" if name == "gemini-enum" else "Authorization"
    probe = ServerClient(url, api_key_env, timeout=min(timeout, 30.0), retries=1, backoff=0.5, key_header=header)
    try:
        if name == "gemini-enum":
            model, software = _gemini_model(probe, served_model, url)
        else:
            try:
                models = probe.get("/v1/models")
            except ServerError as err:
                raise ServerError(f"server_url: {err}") from None
            ids = [m.get("id") for m in (models.get("data") or []) if isinstance(m, dict)]
            model = _served_model(ids, served_model, url)
            software = _software(probe, name)
        for text in samples if not entry.chat else ():
            theirs, ours = _tokenize(probe, name, model, text), encode(text)
            if theirs != ours:
                raise UserError(f"server_url: {url} tokenizes differently from model_name's tokenizer: {text[:60]!r}"
                                f" -> {theirs[:12]}... here {ours[:12]}...; serve the same model as model_name")
        if name == "vllm" and samples:  # its exact route needs processed log-probabilities: say so before the run
            pair = tuple(sorted({encode(" yes")[0], encode(" no")[0]}))
            try:
                VllmScorer(probe, model).scores([(encode(samples[0]), pair)])
            except ServerError as err:
                raise UserError(f"server_url: {err}") from None
    finally:
        probe.close()
    checked = ("not checked: the server renders the messages with its own chat template" if entry.chat else
               f"equal to model_name's on {len(samples)} rendered prompts")
    info = ServerInfo(name, url, software, model, entry.route, entry.exact, entry.logprobs, checked)
    return Connection(ServerClient(url, api_key_env, timeout=timeout, retries=retries, key_header=header), info)


def _gemini_model(client: ServerClient, wanted: str | None, url: str) -> tuple[str, str]:
    """(model id, software) from the Gemini API's model resource."""
    if wanted is None:
        raise UserError("server_model: the Gemini API serves many models; name one, e.g. gemini-1.5-flash-8b")
    try:
        found = client.get(f"/v1beta/models/{wanted}")
    except ServerError as err:
        raise UserError(f"server_model: {wanted!r} at {url}: {err}") from None
    return wanted, f"Gemini API ({found.get('name', wanted)}, version {found.get('version', 'not reported')})"


def _served_model(ids: list[str], wanted: str | None, url: str) -> str:
    if wanted is not None:
        if wanted not in ids:
            raise UserError(f"server_model: {url} serves {', '.join(map(repr, ids)) or 'no model'}, not {wanted!r}")
        return wanted
    if len(ids) != 1:
        raise UserError(f"server_model: {url} serves {', '.join(map(repr, ids)) or 'no model'}; name one")
    return ids[0]


def _llama_cpp_python(client: ServerClient) -> str | None:
    """``llama-cpp-python <version>`` if that is the server (its OpenAPI title says so), else None."""
    info = (client.try_get("/openapi.json") or {}).get("info") or {}
    return f"llama-cpp-python {info.get('version', '?')}" if "llama" in str(info.get("title", "")).lower() else None


def _software(client: ServerClient, name: str) -> str:
    if name == "openai-enum":
        if found := _llama_cpp_python(client):
            return found
        version = (client.try_get("/version") or {}).get("version")
        return f"OpenAI-compatible server {version}" if version else "OpenAI-compatible (version not reported)"
    name = name.split("-")[0]
    if name == "sglang":
        version = (client.try_get("/get_server_info") or {}).get("version")
        return f"SGLang {version}" if version else "SGLang (version not reported)"
    if name == "vllm":
        version = (client.try_get("/version") or {}).get("version")
        return f"vLLM {version}" if version else "vLLM (version not reported)"
    props = client.try_get("/props")
    if isinstance(props, dict) and props.get("build_info"):
        return f"llama.cpp server {props['build_info']}"
    return _llama_cpp_python(client) or "llama.cpp (version not reported)"


def _tokenize(client: ServerClient, name: str, model: str, text: str) -> list[int]:
    """The server's token ids for ``text`` (special tokens parsed, nothing added), by its own tokenize route."""
    name = name.split("-")[0]
    if name == "vllm":
        return client.post("/tokenize", {"model": model, "prompt": text, "add_special_tokens": False})["tokens"]
    if name == "sglang":  # the prompt's own tokens, as its input log-probabilities list them
        answer = client.post("/generate", {"text": text, "sampling_params": {"max_new_tokens": 1},
                                           "return_logprob": True, "logprob_start_len": 0})
        return [int(entry[1]) for entry in answer["meta_info"]["input_token_logprobs"]]
    answer = client.try_post("/extras/tokenize", {"input": text})  # llama-cpp-python
    if answer is not None:
        return answer["tokens"]
    answer = client.post("/tokenize", {"content": text, "add_special": False, "parse_special": True})  # llama.cpp
    return [t if isinstance(t, int) else t["id"] for t in answer["tokens"]]
