"""Exact sampling from a server's log-probabilities: the client walks the label trie and draws every choice itself.

At each trie node with two or more children the server scores exactly those children (their logits, or any shift
of them such as log-probabilities); the client renormalises at the run's temperature and draws with the toolkit's
own per-query generator (:func:`~icrl_lib.engine.generation.query_rng`, one uniform per trie level, forced levels
included). Given the same scores the predictions, and the label log-probabilities, are those of the local backend.
All queries waiting at one level are scored in one round of concurrent requests; the server batches them and its
prefix cache serves the shared context.
"""
from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import torch

from icrl_lib.engine.generation import Prediction, TokenCounter, choose_scored, query_rng
from icrl_lib.engine.kvcache import common_prefix_length
from icrl_lib.errors import ServerError
from icrl_lib.serving.http import ServerClient
from icrl_lib.serving.sampled import server_cache_report
from icrl_lib.tasks.trie import LabelTrie

WARM_MIN_TOKENS = 64  # a shorter shared prefix costs less than the extra round trip
NodeRequest = tuple[Sequence[int], tuple[int, ...]]  # (prompt + label tokens so far, the node's children)


class NodeScorer(Protocol):
    """Scores of a trie node's children after a token sequence."""

    computed: int | None  # tokens the server computed so far (its cache counters), None if it does not say

    def scores(self, requests: Sequence[NodeRequest]) -> list[torch.Tensor]:
        """One float tensor per request: the score of each child, in the order given."""

    def warm(self, ids: Sequence[int]) -> None:
        """Have the server compute (and cache) ``ids``, the prefix every query of a batch shares."""


class NodeWalkPredictor:
    """Label prediction by walking the trie on a :class:`NodeScorer` (the client samples)."""

    def __init__(self, encode_batch, trie: LabelTrie, temperature: float, scorer: NodeScorer):
        self.encode_batch, self.trie, self.temperature, self.scorer = encode_batch, trie, float(temperature), scorer
        self.tokens = TokenCounter(known=scorer.computed is not None)
        self._computed_seen = scorer.computed or 0

    def predict(self, prompts: Sequence[str], seed: int, stream: int = 0,
                context: str | None = None) -> list[Prediction]:
        """One label per prompt; the same draws as the local backend's (``context`` is not needed here)."""
        ids = self.encode_batch(prompts)
        self.tokens.prompt += sum(len(x) for x in ids)
        if len(ids) > 1:  # a test set: its shared context is computed once, then served from the prefix cache
            shared = min(common_prefix_length(ids[0], x) for x in ids[1:])
            if shared >= WARM_MIN_TOKENS:
                self.scorer.warm(ids[0][:shared])
        rngs = [query_rng(seed, stream, i) for i in range(len(ids))]
        children, leaves = self.trie.children, self.trie.leaves
        nodes: list[tuple[int, ...]] = [() for _ in ids]
        logps = [0.0] * len(ids)
        waiting = list(range(len(ids)))
        while waiting:
            for i in waiting:  # forced tokens need no scores, but each level still consumes its draw
                while nodes[i] not in leaves and len(children[nodes[i]]) == 1:
                    nodes[i] += (choose_scored(None, children[nodes[i]], self.temperature, rngs[i].random())[0],)
            waiting = [i for i in waiting if nodes[i] not in leaves]
            if not waiting:
                break
            scores = self.scorer.scores([(list(ids[i]) + list(nodes[i]), children[nodes[i]]) for i in waiting])
            for i, s in zip(waiting, scores):
                token, logp = choose_scored(s, children[nodes[i]], self.temperature, rngs[i].random())
                nodes[i] += (token,)
                logps[i] += logp
                self.tokens.generated += 1
        if self.scorer.computed is None:  # the server stopped saying (or never said): unknown from here on
            self.tokens.known = False
        elif self.tokens.known:
            self.tokens.computed += self.scorer.computed - self._computed_seen
            self._computed_seen = self.scorer.computed
        return [Prediction(self.trie.labels[leaves[n]], lp) for n, lp in zip(nodes, logps)]

    def cache_report(self) -> dict[str, int]:
        return server_cache_report()


class VllmScorer:
    """vLLM's OpenAI-compatible ``/v1/completions``: one token with ``allowed_token_ids`` = the children and
    ``logprobs`` = their number. Needs ``--logprobs-mode processed_logprobs`` (log-probabilities after the
    allowed-token mask; raw ones list the whole vocabulary's top tokens, which need not include the children)."""

    def __init__(self, client: ServerClient, model: str, concurrency: int = 64):
        self.client, self.model, self.concurrency = client, model, concurrency
        self.computed: int | None = 0

    def request(self, ids: Sequence[int], allowed: tuple[int, ...]) -> dict[str, Any]:
        """The request body for one node (neutral sampling settings: only the allowed-token mask applies)."""
        return {"model": self.model, "prompt": list(ids), "max_tokens": 1, "temperature": 1.0, "top_p": 1.0,
                "top_k": -1, "min_p": 0.0, "presence_penalty": 0.0, "frequency_penalty": 0.0,
                "repetition_penalty": 1.0, "allowed_token_ids": list(allowed), "logprobs": len(allowed),
                "return_tokens_as_token_ids": True, "skip_special_tokens": False}

    def warm(self, ids: Sequence[int]) -> None:
        body = {**self.request(ids, ()), "logprobs": None}
        del body["allowed_token_ids"]
        self._count(self.client.post("/v1/completions", body))

    def scores(self, requests: Sequence[NodeRequest]) -> list[torch.Tensor]:
        with ThreadPoolExecutor(min(self.concurrency, len(requests))) as pool:
            answers = list(pool.map(lambda r: self.client.post("/v1/completions", self.request(*r)), requests))
        return [self._parse(answer, allowed) for answer, (_, allowed) in zip(answers, requests)]

    def _count(self, answer: dict[str, Any]) -> None:
        cached = ((answer.get("usage") or {}).get("prompt_tokens_details") or {}).get("cached_tokens")
        if cached is None or self.computed is None:
            self.computed = None  # the server does not report its cache: tokens computed are unknown, not guessed
        else:
            self.computed += answer["usage"]["prompt_tokens"] - cached

    def _parse(self, answer: dict[str, Any], allowed: tuple[int, ...]) -> torch.Tensor:
        self._count(answer)
        top = answer["choices"][0]["logprobs"]["top_logprobs"][0]
        by_id = {int(key.split(":", 1)[1]): value for key, value in top.items() if key.startswith("token_id:")}
        missing = [t for t in allowed if t not in by_id]
        if missing:
            raise ServerError(f"vLLM returned no log-probability for allowed tokens {missing[:5]}: start it with "
                              f"--logprobs-mode processed_logprobs (log-probabilities after the allowed-token mask)")
        return torch.tensor([by_id[t] for t in allowed], dtype=torch.float64)


class SglangScorer:
    """SGLang's native ``/generate``: one request per trie level for every waiting query (``input_ids`` and
    ``token_ids_logprob`` as lists, one entry per query), one new token each, the children's log-probabilities read
    from ``meta_info.output_token_ids_logprobs``. RadixAttention (on by default) serves the shared context."""

    def __init__(self, client: ServerClient):
        self.client = client
        self.computed: int | None = 0

    @staticmethod
    def request(requests: Sequence[NodeRequest]) -> dict[str, Any]:
        """The body of one batched request (neutral sampling settings; the drawn token is not used)."""
        return {"input_ids": [list(ids) for ids, _ in requests],
                "token_ids_logprob": [list(children) for _, children in requests],
                "sampling_params": {"max_new_tokens": 1, "temperature": 1.0, "top_p": 1.0, "top_k": -1,
                                    "min_p": 0.0, "repetition_penalty": 1.0, "presence_penalty": 0.0,
                                    "frequency_penalty": 0.0},
                "return_logprob": True, "logprob_start_len": -1}

    def warm(self, ids: Sequence[int]) -> None:
        body = {**self.request([(ids, ())]), "return_logprob": False}
        del body["token_ids_logprob"]
        answer = self.client.post("/generate", body)
        self._count(((answer[0] if isinstance(answer, list) else answer).get("meta_info")) or {})

    def scores(self, requests: Sequence[NodeRequest]) -> list[torch.Tensor]:
        answers = self.client.post("/generate", self.request(requests))
        answers = answers if isinstance(answers, list) else [answers]
        if len(answers) != len(requests):
            raise ServerError(f"SGLang answered {len(answers)} results for {len(requests)} queries")
        return [self._parse(answer, children) for answer, (_, children) in zip(answers, requests)]

    def _count(self, meta: dict[str, Any]) -> None:
        if self.computed is not None and "cached_tokens" in meta and "prompt_tokens" in meta:
            self.computed += meta["prompt_tokens"] - meta["cached_tokens"]
        else:
            self.computed = None  # not reported: unknown, never guessed

    def _parse(self, answer: dict[str, Any], children: tuple[int, ...]) -> torch.Tensor:
        meta = answer.get("meta_info") or {}
        self._count(meta)
        first = (meta.get("output_token_ids_logprobs") or [None])[0] or []
        by_id = {int(entry[1]): float(entry[0]) for entry in first}
        missing = [t for t in children if t not in by_id]
        if missing:
            raise ServerError(f"SGLang returned no log-probability for tokens {missing[:5]} (token_ids_logprob)")
        return torch.tensor([by_id[t] for t in children], dtype=torch.float64)
