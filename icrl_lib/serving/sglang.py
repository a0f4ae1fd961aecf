"""SGLang's native ``/generate``: the exact route (the client walks the label trie on the children's
log-probabilities) and the approximate regex route. Prompts go as ``input_ids`` (the run's tokens: SGLang would
tokenize a ``text`` with special tokens, so a template that writes its own BOS would get a second one).

The exact route sends every query waiting at one trie level as one batched request (``input_ids`` and
``token_ids_logprob`` as lists), cut into requests of at most ``MAX_BATCH_TOKENS`` prompt tokens (at 128K-token
contexts one level of a test set is otherwise hundreds of MB of JSON). Request fields are those of SGLang's
``GenerateReqInput`` and ``SamplingParams`` (0.5.23), which refuses unknown sampling fields.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from icrl_lib.errors import ServerRefused
from icrl_lib.serving.http import ServerClient
from icrl_lib.serving.nodewalk import NodeRequest, NodeWalkPredictor, scores_by_id
from icrl_lib.serving.sampled import NEUTRAL, GuidedChoicePredictor
from icrl_lib.serving.server import ServerRoute

MAX_BATCH_TOKENS = 1 << 20  # prompt tokens per request: ~7 MB of JSON


def batches(requests: Sequence[NodeRequest], limit: int = MAX_BATCH_TOKENS) -> list[list[int]]:
    """Indices of ``requests`` cut into consecutive groups of at most ``limit`` tokens (a longer one alone)."""
    groups: list[list[int]] = [[]]
    size = 0
    for i, (ids, children) in enumerate(requests):
        n = len(ids) + len(children)
        if groups[-1] and size + n > limit:
            groups.append([])
            size = 0
        groups[-1].append(i)
        size += n
    return groups


class SglangServer(ServerRoute):
    """What every SGLang route shares: its version and its tokenizer."""

    def identify(self, client: ServerClient) -> str:
        info = client.try_get("/server_info") or client.try_get("/get_server_info") or {}
        version = info.get("version")
        return f"SGLang {version}" if version else "SGLang (version not reported)"

    def tokenize(self, client: ServerClient, text: str) -> list[int]:
        answer = client.post("/tokenize", {"model": self.model, "prompt": text, "add_special_tokens": False})
        return client.read(answer, "tokens", "SGLang /tokenize")


class SglangScorer:
    """SGLang's ``/generate``: one request per trie level for the waiting queries (batched up to
    ``MAX_BATCH_TOKENS``), one new token each, the children's log-probabilities read from
    ``meta_info.output_token_ids_logprobs``. RadixAttention (on by default) serves the shared context."""

    what = "SGLang /generate"

    def __init__(self, client: ServerClient, limit: int = MAX_BATCH_TOKENS):
        self.client, self.limit = client, limit
        self.computed: int | None = 0

    @staticmethod
    def request(requests: Sequence[NodeRequest]) -> dict[str, Any]:
        """The body of one batched request (neutral sampling settings; the drawn token is not used)."""
        return {"input_ids": [list(ids) for ids, _ in requests],
                "token_ids_logprob": [list(children) for _, children in requests],
                "sampling_params": {"max_new_tokens": 1, "temperature": 1.0, **NEUTRAL},
                "return_logprob": True, "logprob_start_len": -1}

    def warm(self, ids: Sequence[int]) -> None:
        answer = self.client.post("/generate", {"input_ids": list(ids),
                                                "sampling_params": {"max_new_tokens": 1, "temperature": 1.0}})
        self._count(answer.get("meta_info") or {})

    def scores(self, requests: Sequence[NodeRequest]) -> list[list[float]]:
        out: list[list[float]] = []
        for group in batches(requests, self.limit):
            part = [requests[i] for i in group]
            answers = self.client.post("/generate", self.request(part))
            answers = answers if isinstance(answers, list) else [answers]
            if len(answers) != len(part):
                raise ServerRefused(f"{self.what} at {self.client.base_url} answered {len(answers)} results for "
                                    f"{len(part)} queries")
            for answer, (_, children) in zip(answers, part):
                meta = self.client.read(answer, "meta_info", self.what)
                self._count(meta)
                first = (meta.get("output_token_ids_logprobs") or [None])[0] or []
                try:
                    by_id = {int(entry[1]): float(entry[0]) for entry in first}
                except (IndexError, KeyError, TypeError, ValueError):
                    raise ServerRefused(f"{self.what} at {self.client.base_url}: meta_info.output_token_ids_logprobs "
                                        f"is not [[logprob, token id, text], ...] ({str(first)[:120]})") from None
                out.append(scores_by_id(by_id, children, "token_ids_logprob was not honoured"))
        return out

    def _count(self, meta: dict[str, Any]) -> None:
        if self.computed is not None and "cached_tokens" in meta and "prompt_tokens" in meta:
            self.computed += meta["prompt_tokens"] - meta["cached_tokens"]
        else:
            self.computed = None  # not reported: unknown, never guessed


class SglangRoute(SglangServer):
    """The exact route: the node walk on SGLang's log-probabilities (sampled on the client)."""

    detail = f"input_ids; token_ids_logprob, a level's queries batched up to {MAX_BATCH_TOKENS} tokens a request"

    def predictor(self, lm: Any = None) -> NodeWalkPredictor:
        return NodeWalkPredictor(self.plan.model.encode_batch, self.plan.trie, self.config.temperature,
                                 SglangScorer(self.client))


def choice_regex(labels: Sequence[str]) -> str:
    """A regular expression matching exactly `` <label>`` for each label (special characters escaped)."""
    return "(" + "|".join(re.sub(r"([.^$*+?()\[\]{}|\\/])", r"\\\1", " " + label) for label in labels) + ")"


class SglangChoicePredictor(GuidedChoicePredictor):
    """SGLang's ``/generate`` with ``input_ids``, a ``regex`` of the labels and a ``sampling_seed`` per query."""

    path = "/generate"
    what = "SGLang /generate"

    def request(self, ids: list[int], seed: int) -> dict[str, Any]:
        return {"input_ids": ids,
                "sampling_params": {"max_new_tokens": self.max_tokens, "temperature": self.temperature, **NEUTRAL,
                                    "sampling_seed": seed, "regex": choice_regex(self.labels)}}

    def text(self, answer: dict[str, Any]) -> str | None:
        reason = (answer.get("meta_info") or {}).get("finish_reason") or {}
        return self.client.read(answer, "text", self.what) if reason.get("type") in ("stop", None) else None

    def usage(self, answer: dict[str, Any]) -> tuple[int | None, int | None, int]:
        meta = answer.get("meta_info") or {}
        return meta.get("prompt_tokens"), meta.get("cached_tokens"), int(meta.get("completion_tokens") or 0)


class SglangChoiceRoute(SglangServer):
    """The approximate route: SGLang's regex-constrained sampling among the label strings (the server samples)."""

    detail = "input_ids; a regex of the labels; sampling_seed per query"

    def predictor(self, lm: Any = None) -> SglangChoicePredictor:
        return SglangChoicePredictor(self.client, self.model, self.plan.model.encode_batch, self.plan.trie.labels,
                                     self.config.temperature, self.config.server_concurrency or 64)
