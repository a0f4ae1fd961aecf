"""Constrained label prediction: the model may only answer `` <label><end-of-turn>`` for a label of the task.

As in the paper (vLLM with a logits processor), decoding goes token by token: at each step only the tokens that
keep the output a prefix of some label's token sequence are allowed, and the next token is sampled from the
model's softmax (at the run's temperature) renormalised over those tokens; temperature 0 is greedy. The label
sequences form a trie, so the distribution over labels is exactly the product of those per-step choices.

Randomness: each query draws from its own generator seeded by ``(seed, stream, query index)`` where the runner
passes ``seed + step``. (The paper's code gave all test queries of a step one vLLM seed, so their sampling noise
was shared; here every query gets an independent draw.)

Two execution paths give the same distribution and, given the same draws, the same predictions:
- ``fast=True``: the shared context is encoded once (and reused across steps via :class:`PrefixCachePool`);
  queries are packed into one row on top of it, and each trie decision level is one batched forward (tokens the
  trie forces, such as the end-of-turn after a complete label, are never computed).
- ``fast=False``: every query recomputes its whole prompt, then decodes with its own cache (the reference).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from icrl_lib.engine.draws import Prediction, TokenCounter, choose_scored, query_rng
from icrl_lib.engine.kvcache import (
    PackedRow,
    PrefixCachePool,
    default_cache_budget,
    extend_cache,
    new_cache,
    packed_token_budget,
)
from icrl_lib.engine.models import LanguageModel
from icrl_lib.engine.split_tokens import PromptTokenizer, SharedIds, common_prefix_length
from icrl_lib.tasks.trie import LabelTrie


def choose_token(logits: torch.Tensor | None, allowed: tuple[int, ...], temperature: float, u: float
                 ) -> tuple[int, float]:
    """Pick one of ``allowed`` from ``logits`` (the whole vocabulary's) restricted to them; return (token, its
    log-probability). See :func:`~icrl_lib.engine.draws.choose_scored`."""
    if logits is None or len(allowed) == 1:
        return choose_scored(None, allowed, temperature, u)
    return choose_scored(logits[list(allowed)].double().cpu().numpy(), allowed, temperature, u)


class LabelPredictor:
    """Predicts labels for prompts with constrained decoding over ``labels``."""

    def __init__(self, lm: LanguageModel, trie: LabelTrie, temperature: float, fast: bool = True,
                 batch_size: int | None = None, cache_budget_tokens: int | None = None, max_cached_contexts: int = 9,
                 cascade: bool = True):
        """``cascade``: packed rows use cascade attention (:mod:`icrl_lib.engine.cascade`) where the model runs
        SDPA; False keeps the block-diagonal mask (the same predictions, for comparison)."""
        self.lm = lm
        self.cascade = cascade
        self.prompt_ids = PromptTokenizer(lm.tokenizer)  # heads of recent contexts, tokenized once
        self.trie = trie  # the run plan's (tasks.task.Task.label_trie)
        self.temperature = float(temperature)
        self.fast = fast
        self.batch_size = batch_size
        self.tokens = TokenCounter()
        self.pool = PrefixCachePool(lm, cache_budget_tokens or default_cache_budget(lm), max_cached_contexts)

    def cache_report(self) -> dict[str, int]:
        """KV cache held now and evictions since the last report (:meth:`PrefixCachePool.report`)."""
        return self.pool.report()

    def predict(self, prompts: Sequence[str], seed: int, stream: int = 0,
                context: str | None = None) -> list[Prediction]:
        """Sample one label per prompt. ``context`` (the prompt text without the query) marks the reusable prefix."""
        shared_with_context = None
        if len(prompts) == 1 and context is not None:  # a training query: its context's head is tokenized once
            ids, shared_with_context = self.prompt_ids.with_context(prompts[0], context)
            encoded = SharedIds([], [ids], False)
        else:  # a test set: its shared context is tokenized once
            encoded = self.prompt_ids.shared(prompts)
        self.tokens.prompt += encoded.total
        rngs = [query_rng(seed, stream, i) for i in range(len(prompts))]
        if not self.fast:
            return [self._predict_uncached(x, rng) for x, rng in zip(encoded.full(), rngs)]
        # Cache what every prompt shares (the context and the query's opening, e.g. "\n\nQuery:"); a lone prompt
        # (the training query) is cut back to the context, so its own text does not end up in the reusable cache.
        tails = encoded.tails
        if len(tails) == 1:
            ids = encoded.head + tails[0]
            shared = len(ids) - 1  # the query keeps at least one token of its own
            if shared_with_context is not None:
                shared = min(shared, shared_with_context)
            prefix, suffixes = ids[:shared], [ids[shared:]]
        else:
            common = min(len(t) for t in tails) - 1  # every query keeps at least one token of its own
            for t in tails[1:]:
                common = min(common, common_prefix_length(tails[0], t))
            prefix, suffixes = encoded.head + tails[0][:common], [t[common:] for t in tails]
        before = self.pool.stats.computed_tokens
        entry = self.pool.acquire(prefix)
        self.tokens.computed += self.pool.stats.computed_tokens - before
        out: list[Prediction] = []
        for chunk in self._chunks(suffixes, len(prefix)):
            rows = [s for s, _ in chunk]
            out.extend(self._decode_packed(entry.cache, len(prefix), rows, [rngs[i] for _, i in chunk]))
        return out

    def _chunks(self, suffixes: list[list[int]], prefix_len: int):
        """Split queries so that one packed forward stays within the token budget (or ``batch_size`` queries)."""
        limit = packed_token_budget(self.lm, prefix_len)
        chunk: list[tuple[list[int], int]] = []
        tokens = 0
        for i, suffix in enumerate(suffixes):
            full = len(chunk) >= self.batch_size if self.batch_size else tokens + len(suffix) > limit
            if chunk and full:
                yield chunk
                chunk, tokens = [], 0
            chunk.append((suffix, i))
            tokens += len(suffix)
        if chunk:
            yield chunk

    def _advance(self, node: tuple[int, ...], logits: torch.Tensor, rng: np.random.Generator
                 ) -> tuple[tuple[int, ...], float]:
        """Choose the next token at ``node``, then follow forced tokens (single child) without any forward.

        Returns the new node and the log-probability added. One uniform draw per trie level, forced or not.
        """
        token, logp = choose_token(logits, self.trie.children[node], self.temperature, rng.random())
        node += (token,)
        while node not in self.trie.leaves and len(self.trie.children[node]) == 1:
            node += (choose_token(None, self.trie.children[node], self.temperature, rng.random())[0],)
        return node, logp

    def _decode_packed(self, cache, prefix_len: int, suffixes: list[list[int]], rngs) -> list[Prediction]:
        """Decode a chunk of queries on the cached prefix: one packed forward per trie decision level.

        Tokens between two decisions (forced by the trie) go into the same forward; forced tokens after the last
        decision (e.g. the end-of-turn) are never computed.
        """
        row = PackedRow(prefix_len, cascade=self.cascade)
        tokens = [t for s in suffixes for t in s]
        owners = [i for i, s in enumerate(suffixes) for _ in s]
        ends = list(np.cumsum([len(s) for s in suffixes]) - 1)
        try:
            logits = row.forward(self.lm, cache, tokens, owners, ends)
            self.tokens.computed += len(tokens)
            nodes: list[tuple[int, ...]] = [() for _ in suffixes]
            logps = [0.0] * len(suffixes)
            active = list(range(len(suffixes)))
            while True:
                fed = {}
                for r, i in enumerate(active):
                    before = len(nodes[i])
                    nodes[i], lp = self._advance(nodes[i], logits[r], rngs[i])
                    logps[i] += lp
                    fed[i] = list(nodes[i][before:])
                active = [i for i in active if nodes[i] not in self.trie.leaves]
                if not active:
                    break
                step_tokens = [t for i in active for t in fed[i]]
                step_owners = [i for i in active for _ in fed[i]]
                last = list(np.cumsum([len(fed[i]) for i in active]) - 1)
                logits = row.forward(self.lm, cache, step_tokens, step_owners, last)
                self.tokens.computed += len(step_tokens)
                self.tokens.generated += len(step_tokens)
        finally:
            row.release(cache)
        return [Prediction(self.trie.labels[self.trie.leaves[n]], lp) for n, lp in zip(nodes, logps)]

    def _predict_uncached(self, ids: list[int], rng: np.random.Generator) -> Prediction:
        """Reference path: recompute the whole prompt, then decode token by token with a private cache."""
        cache = new_cache(self.lm)
        logits = extend_cache(self.lm, cache, ids)
        self.tokens.computed += len(ids)
        node: tuple[int, ...] = ()
        logp = 0.0
        while True:
            before = len(node)
            node, lp = self._advance(node, logits, rng)
            logp += lp
            if node in self.trie.leaves:
                return Prediction(self.trie.labels[self.trie.leaves[node]], logp)
            logits = extend_cache(self.lm, cache, node[before:])
            self.tokens.computed += len(node) - before
            self.tokens.generated += len(node) - before


def label_logprobs(lm: LanguageModel, trie: LabelTrie, ids: Sequence[int], temperature: float) -> dict[str, float]:
    """The law a prediction on the prompt ``ids`` is drawn from: every label's log-probability under constrained
    decoding at ``temperature`` (the product over the trie's levels of softmax(logits / T) renormalised over the
    allowed tokens, as :meth:`LabelPredictor._advance` draws). Temperature 0 is greedy: 0.0 for the label the
    argmax path reaches, -inf for the others.

    The prompt is encoded once; every label's tokens but the last are scored packed on top of it (one forward).
    """
    cache = new_cache(lm)
    first = extend_cache(lm, cache, ids)
    row = PackedRow(len(ids))
    tokens = [t for s in trie.sequences for t in s[:-1]]
    owners = [i for i, s in enumerate(trie.sequences) for _ in s[:-1]]
    logits = row.forward(lm, cache, tokens, owners, range(len(tokens))) if tokens else None
    out, start = {}, 0
    for label, seq in zip(trie.labels, trie.sequences):
        total = 0.0
        for depth, token in enumerate(seq):
            allowed = trie.children[seq[:depth]]
            if len(allowed) > 1:  # a forced token has probability 1 (no scores needed)
                scores = (first if depth == 0 else logits[start + depth - 1])[list(allowed)].double()
                if temperature == 0:
                    total += 0.0 if allowed[int(torch.argmax(scores))] == token else -math.inf
                else:
                    total += float(torch.log_softmax(scores / temperature, dim=0)[allowed.index(token)])
        start += len(seq) - 1
        out[label] = total
    return out
