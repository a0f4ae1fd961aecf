"""The paper's sampling law, without torch: per-query generators and the constrained draw of one trie level.

Every backend draws with these (the local one on its logits, the server routes on the scores or seeds a server
returns), so a prediction is the same function of the scores wherever the model runs; a server route imports no
torch. ``Prediction`` and ``TokenCounter`` are what every predictor returns and counts.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np


def query_rng(seed: int, stream: int, index: int) -> np.random.Generator:
    """Independent generator per (seed + step, stream, query index); stream 0 = training query, 1 = test set."""
    return np.random.default_rng([seed & 0xFFFFFFFFFFFFFFFF, stream, index])


def choose_scored(scores, allowed: tuple[int, ...], temperature: float, u: float) -> tuple[int, float]:
    """Pick one of ``allowed`` given ``scores[i]`` = the logit (or any shift of it, e.g. a log-probability) of
    ``allowed[i]``: softmax(scores / T) renormalised over ``allowed``; return (token, its log-probability).

    ``scores``: anything numpy reads as a vector (a CPU tensor, a list). ``u`` is a uniform draw in [0, 1) (always
    consumed, so every execution path stays in step). A single allowed token is forced (probability 1): no scores
    are needed, so callers skip the forward that would compute them.
    """
    if len(allowed) == 1:
        return allowed[0], 0.0
    values = np.asarray(scores, dtype=np.float64)
    if temperature == 0:
        return allowed[int(np.argmax(values))], 0.0  # ties -> lowest token id, as allowed is sorted
    z = values / temperature
    shifted = z - z.max()
    logp = shifted - np.log(np.exp(shifted).sum())
    cdf = np.cumsum(np.exp(logp))
    index = min(int(np.searchsorted(cdf, u * cdf[-1], side="right")), len(allowed) - 1)
    return allowed[index], float(logp[index])


@dataclass(frozen=True)
class Prediction:
    """One constrained prediction: the label and its log-probability under the constrained distribution."""

    label: str
    logprob: float | None  # None: the backend samples on the server and does not say


@dataclass
class TokenCounter:
    """Tokens the prompts contain vs tokens the model actually ran (prefill + fed-back label tokens)."""

    prompt: int = 0
    computed: int = 0
    generated: int = 0  # label tokens fed back while decoding (part of computed)
    known: bool = True  # False: the model runs on a server that does not report its cache (computed is None)

    def take(self) -> dict[str, int | None]:
        """Return the counts so far and reset them (the runner records them per step)."""
        out = {"prompt": self.prompt, "computed": self.computed if self.known else None,
               "generated": self.generated}
        self.prompt = self.computed = self.generated = 0
        return out


class Predictor(Protocol):
    """What every backend's predictor offers the run loop (``engine.generation.LabelPredictor`` and the routes of
    :mod:`icrl_lib.serving`)."""

    tokens: TokenCounter

    def predict(self, prompts: Sequence, seed: int, stream: int = 0,
                context: str | None = None) -> list[Prediction]:
        """One label per prompt (a rendered prompt, or a message list where the predictor's ``chat`` is true)."""

    def cache_report(self) -> dict[str, int]:
        """The KV cache held for the run (entries, tokens, evictions since the last report)."""
