"""APPROXIMATE routes: a batching server's string-level guided choice (vLLM, SGLang) picks the label.

The prompt is the run's own (rendered with model_name's chat template, sent as token ids, so the server sees exactly
our tokens), but the label is drawn by the server's structured-output engine: it admits every tokenization that
spells a label, not only the canonical one the trie walks, and decides the end of a label by its own rule. The
law is therefore not the paper's softmax(z[children] / T); the runs say so (``exact: false``) and are refused
unless the config sets ``allow_approximate``. Sampling settings are neutral (no top-k/top-p/min-p, no penalties).
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from icrl_lib.serving.http import ServerClient
from icrl_lib.serving.sampled import ServerSampledPredictor

_REGEX_SPECIAL = re.compile(r"([.^$*+?()\[\]{}|\\/])")


def choice_regex(labels: Sequence[str]) -> str:
    """A regular expression matching exactly `` <label>`` for each label (special characters escaped)."""
    return "(" + "|".join(_REGEX_SPECIAL.sub(r"\\\1", " " + label) for label in labels) + ")"


class _CompletionChoice(ServerSampledPredictor):
    """A completion route: the run's prompt as token ids, the label read back as the text `` <label>``."""

    send_ids = True
    spaced = True

    def __init__(self, client: ServerClient, model: str, encode_batch, labels: Sequence[str], temperature: float,
                 concurrency: int = 64):
        super().__init__(client, model, labels, temperature, encode_batch, concurrency)
        self.max_tokens = max(len(x) for x in self.labels) + 2  # one token per character at worst, then the end


class VllmChoicePredictor(_CompletionChoice):
    """vLLM's ``/v1/completions`` with ``structured_outputs: {"choice": [...]}`` (vLLM 0.11 or later; earlier
    versions called it ``guided_choice``). Per-query seeds make reruns reproduce on one server."""

    def request(self, ids: list[int], seed: int) -> dict[str, Any]:
        return {"model": self.model, "prompt": ids, "max_tokens": self.max_tokens,
                "temperature": self.temperature, "seed": seed, "top_p": 1.0, "top_k": -1, "min_p": 0.0,
                "presence_penalty": 0.0, "frequency_penalty": 0.0, "repetition_penalty": 1.0,
                "structured_outputs": {"choice": [" " + label for label in self.labels]}}

    def text(self, answer: dict[str, Any]) -> str | None:
        choice = answer["choices"][0]
        return choice["text"] if choice.get("finish_reason") == "stop" else None

    def usage(self, answer: dict[str, Any]) -> tuple[int | None, int | None, int]:
        usage = answer.get("usage") or {}
        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")  # --enable-prompt-tokens-details
        return usage.get("prompt_tokens"), cached, int(usage.get("completion_tokens") or 0)


class SglangChoicePredictor(_CompletionChoice):
    """SGLang's native ``/generate`` with ``input_ids`` and a ``regex`` of the labels. SGLang takes no per-request
    seed here, so its draws do not reproduce across reruns (the law is approximate in any case)."""

    path = "/generate"

    def request(self, ids: list[int], seed: int) -> dict[str, Any]:
        return {"input_ids": ids,
                "sampling_params": {"max_new_tokens": self.max_tokens, "temperature": self.temperature,
                                    "top_p": 1.0, "top_k": -1, "min_p": 0.0, "repetition_penalty": 1.0,
                                    "presence_penalty": 0.0, "frequency_penalty": 0.0,
                                    "regex": choice_regex(self.labels)}}

    def text(self, answer: dict[str, Any]) -> str | None:
        reason = (answer.get("meta_info") or {}).get("finish_reason") or {}
        return answer.get("text") if reason.get("type") in ("stop", None) else None

    def usage(self, answer: dict[str, Any]) -> tuple[int | None, int | None, int]:
        meta = answer.get("meta_info") or {}
        return meta.get("prompt_tokens"), meta.get("cached_tokens"), int(meta.get("completion_tokens") or 0)
