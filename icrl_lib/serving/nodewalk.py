"""Exact sampling from a server's log-probabilities: the client walks the label trie and draws every choice itself.

At each trie node with two or more children the server scores exactly those children (their logits, or any shift
of them such as log-probabilities); the client renormalises at the run's temperature and draws with the toolkit's
own per-query generator (:func:`~icrl_lib.engine.draws.query_rng`, one uniform per trie level, forced levels
included). Given the same scores the predictions, and the label log-probabilities, are those of the local backend.
All queries waiting at one level are scored in one round of requests; the server batches them and its prefix cache
serves the shared context. No torch here: a server route runs without it.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from icrl_lib.engine.draws import Prediction, TokenCounter, choose_scored, query_rng
from icrl_lib.engine.split_tokens import common_prefix_length
from icrl_lib.errors import ServerRefused
from icrl_lib.tasks.trie import LabelTrie

WARM_MIN_TOKENS = 64  # a shorter shared prefix costs less than the extra round trip
NodeRequest = tuple[Sequence[int], tuple[int, ...]]  # (prompt + label tokens so far, the node's children)


def server_cache_report() -> dict[str, int]:
    """A server backend's line in the steps log: the KV cache lives on the server, nothing is held here."""
    return {"entries": 0, "tokens": 0, "evictions": 0}


class NodeScorer(Protocol):
    """Scores of a trie node's children after a token sequence."""

    computed: int | None  # tokens the server computed so far (its cache counters), None if it does not say

    def scores(self, requests: Sequence[NodeRequest]) -> list[Sequence[float]]:
        """One vector per request: the score of each child, in the order given."""

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


class MissingScores(ServerRefused):
    """The server answered, but without the log-probability of some children."""


def scores_by_id(by_id: dict[int, float], children: Sequence[int], missing_hint: str) -> list[float]:
    """The children's scores from a server's ``{token id: log-probability}``; a child the server left out is one
    line naming what to change (``missing_hint``)."""
    missing = [t for t in children if t not in by_id]
    if missing:
        raise MissingScores(f"the server returned no log-probability for tokens {missing[:5]}: {missing_hint}")
    return [by_id[t] for t in children]
