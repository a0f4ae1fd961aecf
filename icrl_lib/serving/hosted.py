"""APPROXIMATE routes on hosted chat APIs: an OpenAI-compatible endpoint (a JSON schema with the labels as an enum)
and Gemini (``text/x.enum``), as the paper ran Gemini 1.5 Flash-8B.

The server applies its model's own chat template to the run's messages (the paper's wording, roles and feedback
turns, the system text as a system instruction), and its structured-output engine picks a label: there is no
prediction prefix to continue ("Intent:"), the label is not sampled token by token from softmax(z[children] / T),
and the provider's sampler defaults that cannot be switched off (Gemini's top-k) apply. Prompt tokens are the
server's count; tokens computed are the prompt less what the server says its cache served.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from icrl_lib.errors import ServerError, UserError
from icrl_lib.serving.http import ServerClient
from icrl_lib.serving.llamacpp import LLAMA_CPP_PYTHON_NEUTRAL, llama_cpp_python
from icrl_lib.serving.sampled import ServerSampledPredictor
from icrl_lib.serving.server import ServerRoute

Messages = Sequence[dict[str, str]]


def label_schema(labels: Sequence[str]) -> dict[str, Any]:
    """A JSON schema of ``{"label": <one of labels>}`` (strict: nothing else)."""
    return {"type": "object", "properties": {"label": {"type": "string", "enum": list(labels)}},
            "required": ["label"], "additionalProperties": False}


class OpenAIEnumPredictor(ServerSampledPredictor):
    """``/v1/chat/completions`` with ``response_format`` = the label schema. ``dialect`` llama-cpp-python takes the
    schema as ``{"type": "json_object", "schema": ...}`` and its non-neutral sampler defaults are switched off;
    every other server gets OpenAI's ``json_schema`` form and only the parameters OpenAI defines."""

    path = "/v1/chat/completions"
    chat = True

    def __init__(self, client: ServerClient, model: str, labels: Sequence[str], temperature: float,
                 dialect: str = "openai", concurrency: int = 8):
        super().__init__(client, model, labels, temperature, None, concurrency)
        schema = label_schema(self.labels)
        if dialect == "llama-cpp-python":
            self.format, self.extra = {"type": "json_object", "schema": schema}, LLAMA_CPP_PYTHON_NEUTRAL
        else:
            self.format = {"type": "json_schema", "json_schema": {"name": "label", "strict": True, "schema": schema}}
            self.extra = {"presence_penalty": 0.0, "frequency_penalty": 0.0}
        self.max_tokens = max(len(x) for x in self.labels) + 32  # the JSON around the label, at worst a char a token

    def request(self, messages: Messages, seed: int) -> dict[str, Any]:
        return {"model": self.model, "messages": list(messages), "temperature": self.temperature, "top_p": 1.0,
                "n": 1, "seed": seed, "max_tokens": self.max_tokens, "response_format": self.format, **self.extra}

    what = "/v1/chat/completions"

    def text(self, answer: dict[str, Any]) -> str | None:
        choice = self.client.read(answer, "choices.0", self.what)
        if choice.get("finish_reason") != "stop":
            return None
        content = self.client.read(choice, "message.content", self.what)
        try:
            value = json.loads(content)
        except (TypeError, ValueError):
            return content
        return value.get("label") if isinstance(value, dict) else str(value)


def gemini_contents(messages: Messages) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """(system instruction, contents) of a chat: roles user/model, the system text as Gemini's system instruction."""
    system = None
    contents = []
    for m in messages:
        if m["role"] == "system":
            system = {"parts": [{"text": m["content"]}]}
        else:
            contents.append({"role": "model" if m["role"] == "assistant" else "user",
                             "parts": [{"text": m["content"]}]})
    return system, contents


class GeminiEnumPredictor(ServerSampledPredictor):
    """Gemini's ``generateContent`` with ``responseMimeType: text/x.enum`` and the labels as the response schema's
    enum (the API key goes in ``x-goog-api-key``)."""

    path = "/v1beta/models/{model}:generateContent"
    chat = True

    def __init__(self, client: ServerClient, model: str, labels: Sequence[str], temperature: float,
                 concurrency: int = 8):
        super().__init__(client, model, labels, temperature, None, concurrency)

    def request(self, messages: Messages, seed: int) -> dict[str, Any]:
        system, contents = gemini_contents(messages)
        body: dict[str, Any] = {"contents": contents, "generationConfig": {
            "temperature": self.temperature, "topP": 1.0, "candidateCount": 1, "seed": seed,
            "responseMimeType": "text/x.enum", "responseSchema": {"type": "STRING", "enum": list(self.labels)}}}
        if system is not None:
            body["systemInstruction"] = system
        return body

    def text(self, answer: dict[str, Any]) -> str | None:
        candidate = self.client.read(answer, "candidates.0", "Gemini generateContent")
        if candidate.get("finishReason") != "STOP":
            return None
        return "".join(part.get("text", "") for part in (candidate.get("content") or {}).get("parts") or [])

    def usage(self, answer: dict[str, Any]) -> tuple[int | None, int | None, int]:
        meta = answer.get("usageMetadata") or {}
        # Protocol-buffer JSON leaves zero counts out: no cachedContentTokenCount means nothing came from the cache.
        return (meta.get("promptTokenCount"), meta.get("cachedContentTokenCount", 0),
                int(meta.get("candidatesTokenCount") or 0))


class ChatRoute(ServerRoute):
    """A hosted chat route: the server applies its own template and tokenizer, so nothing is tokenized here."""

    sends_ids = False

    def check(self, client: ServerClient, samples: list[str]) -> str:
        return "not checked: the server renders the messages with its own chat template"


class OpenAIEnumRoute(ChatRoute):
    """An OpenAI-compatible chat endpoint with the labels as a JSON-schema enum (llama-cpp-python's own form of the
    schema where that is the server)."""

    def identify(self, client: ServerClient) -> str:
        if found := llama_cpp_python(client):
            return found
        version = (client.try_get("/version") or {}).get("version")
        return f"OpenAI-compatible server {version}" if version else "OpenAI-compatible (version not reported)"

    @property
    def detail(self) -> str:  # type: ignore[override]
        return "response_format " + ("json_object with a schema (llama-cpp-python's form)"
                                     if self.software.startswith("llama-cpp-python") else "json_schema")

    def predictor(self, lm: Any = None) -> OpenAIEnumPredictor:
        dialect = "llama-cpp-python" if self.software.startswith("llama-cpp-python") else "openai"
        return OpenAIEnumPredictor(self.client, self.model, self.plan.trie.labels, self.config.temperature, dialect,
                                   self.config.server_concurrency or 8)


class GeminiEnumRoute(ChatRoute):
    """The Gemini API: ``text/x.enum`` responses, the key in ``x-goog-api-key``."""

    key_header = "x-goog-api-key"
    detail = "generateContent; responseMimeType text/x.enum"

    def served_model(self, client: ServerClient, wanted: str | None) -> str:
        if wanted is None:
            raise UserError("server_model: the Gemini API serves many models; name one, e.g. gemini-1.5-flash-8b")
        try:
            self._found = client.get(f"/v1beta/models/{wanted}")
        except ServerError as err:
            raise UserError(f"server_model: {wanted!r} at {self.url}: {err}") from None
        return wanted

    def identify(self, client: ServerClient) -> str:
        found = self._found
        return f"Gemini API ({found.get('name', self.model)}, version {found.get('version', 'not reported')})"

    def predictor(self, lm: Any = None) -> GeminiEnumPredictor:
        return GeminiEnumPredictor(self.client, self.model, self.plan.trie.labels, self.config.temperature,
                                   self.config.server_concurrency or 8)
