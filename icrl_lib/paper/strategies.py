"""Context strategies: which past episodes go into the prompt at each step (the paper's ten strategies).

A strategy sees the feedbacks SHOWN for all past episodes, in order (``None`` for ICL episodes), and returns a
:class:`Selection` of indices into that history. The random draws follow the paper's code call for call
(``numpy.random.default_rng(seed)`` fresh per step), so the same seeds give the paper's contexts.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

SAMPLING_METHODS = ("exact", "uniform")


@dataclass(frozen=True)
class Selection:
    """What a strategy chose for one step."""

    indices: tuple[int, ...]  # indices into the FULL history, chronological (sorted)
    context_index: int | None = None  # approximate: which of the K contexts
    context_lengths: tuple[int, ...] | None = None  # approximate: every context's length after this step's update


@dataclass(frozen=True)
class ApproxState:
    """The K growing contexts of an approximate strategy, carried from step to step by the caller."""

    contexts: tuple[tuple[int, ...], ...]  # K tuples of history indices
    log_probs: tuple[float, ...]  # log-probability of each context's keep/skip coin flips
    history_length: int = 0  # episodes already offered to the contexts; guards against skipped or repeated steps

    def __post_init__(self) -> None:
        if len(self.contexts) != len(self.log_probs):
            raise ValueError(f"state: {len(self.contexts)} contexts but {len(self.log_probs)} log_probs")


@dataclass(frozen=True)
class StrategySpec:
    """Declarative registry entry."""

    name: str
    kind: str  # "random" / "approximate"
    keep: str  # "all" / "positive" / "negative": which episodes are eligible, by shown feedback
    bias: str | None = None  # random only: "start" / "end" / "unbiased"


_SPECS = (
    StrategySpec("random_biased_end", "random", "all", "end"),
    StrategySpec("random_biased_start", "random", "all", "start"),
    StrategySpec("random_unbiased", "random", "all", "unbiased"),
    StrategySpec("random_biased_start_only_positive", "random", "positive", "start"),
    StrategySpec("random_biased_end_only_positive", "random", "positive", "end"),
    StrategySpec("random_biased_end_only_negative", "random", "negative", "end"),
    StrategySpec("random_unbiased_only_positive", "random", "positive", "unbiased"),
    StrategySpec("random_unbiased_only_negative", "random", "negative", "unbiased"),
    StrategySpec("approximate", "approximate", "all"),
    StrategySpec("approximate_only_positive", "approximate", "positive"),
)
STRATEGIES: Mapping[str, StrategySpec] = MappingProxyType({s.name: s for s in _SPECS})
STRATEGY_NAMES: tuple[str, ...] = tuple(STRATEGIES)


def _eligible(keep: str, feedback: int | None) -> bool:
    # The paper filters on the shown feedback with == 1 / == 0, so ICL episodes (None) are only kept by "all".
    if keep == "positive":
        return feedback == 1
    if keep == "negative":
        return feedback == 0
    return True


@dataclass(frozen=True)
class RandomStrategy:
    """Keep each eligible episode with probability ``p_keep``, then cut to ``max_examples`` by ``spec.bias``."""

    spec: StrategySpec
    max_examples: int
    p_keep: float

    def initial_state(self) -> None:
        """Random strategies are stateless."""
        return None

    def select(self, state: None, feedbacks: Sequence[int | None], seed: int) -> tuple[Selection, None]:
        """Draw this step's context; ``state`` is ignored and returned as None."""
        eligible = [i for i, f in enumerate(feedbacks) if _eligible(self.spec.keep, f)]
        rng = np.random.default_rng(seed)
        # Same call sequence as the paper: one coin per eligible episode, then a permutation of the kept ones
        # (drawn for every bias so the stream matches, although only "unbiased" uses it).
        flags = rng.binomial(1, self.p_keep, size=len(eligible))
        kept = rng.permutation(np.where(flags == 1)[0])
        m = self.max_examples
        if self.spec.bias == "start":
            chosen = np.sort(kept)[:m]
        elif self.spec.bias == "end":
            chosen = np.sort(kept)[-m:]
        else:  # a uniformly random subset of the kept ones, shown in chronological order
            chosen = np.sort(kept[:m])
        return Selection(indices=tuple(eligible[int(j)] for j in chosen)), None


@dataclass(frozen=True)
class ApproximateStrategy:
    """K contexts that grow by at most one episode per step (the newest), then one of them is sampled."""

    spec: StrategySpec
    max_examples: int
    p_keep: float
    max_contexts: int
    sampling: str

    def initial_state(self) -> ApproxState:
        """K empty contexts with log-probability 0."""
        return ApproxState(contexts=((),) * self.max_contexts, log_probs=(0.0,) * self.max_contexts)

    def select(
        self, state: ApproxState | None, feedbacks: Sequence[int | None], seed: int
    ) -> tuple[Selection, ApproxState]:
        """Offer the newest episode to every context, then sample a context; returns the updated state.

        Must be called once per step, in step order, with the history grown by one episode since the last call.
        """
        state = self.initial_state() if state is None else state
        k_contexts, n = self.max_contexts, len(feedbacks)
        if len(state.contexts) != k_contexts:
            raise ValueError(f"state: has {len(state.contexts)} contexts, strategy has max_contexts={k_contexts}")
        if n not in (state.history_length, state.history_length + 1):
            raise ValueError(
                f"feedbacks: history has {n} episodes but the state has seen {state.history_length}; "
                "call select once per step, in step order"
            )
        rng = np.random.default_rng(seed)
        contexts, log_probs = list(state.contexts), list(state.log_probs)
        if not any(_eligible(self.spec.keep, f) for f in feedbacks):
            # The paper draws a plain choice here even for "exact" (all log-probs are 0 anyway).
            index = int(rng.choice(range(k_contexts)))
        else:
            newest = n - 1
            # Only a NEW eligible episode is offered. The paper's only_positive code offered the last element of the
            # filtered list instead, so after a negative step it re-appended the previous positive episode
            # (duplicates) and drew coins; we append nothing and draw no coins.
            if n == state.history_length + 1 and _eligible(self.spec.keep, feedbacks[newest]):
                log_keep, log_skip = self._log_coin()
                for k in range(k_contexts):
                    if len(contexts[k]) >= self.max_examples:
                        continue  # full contexts are frozen: no coin, no log-prob change (as in the paper)
                    if rng.binomial(1, self.p_keep):
                        contexts[k] = contexts[k] + (newest,)
                        log_probs[k] = float(log_probs[k] + log_keep)
                    else:
                        log_probs[k] = float(log_probs[k] + log_skip)
            index = self._pick(rng, log_probs)
        new_state = ApproxState(tuple(contexts), tuple(log_probs), history_length=n)
        selection = Selection(
            indices=contexts[index], context_index=index, context_lengths=tuple(len(c) for c in contexts)
        )
        return selection, new_state

    def _log_coin(self) -> tuple[np.float64, np.float64]:
        # np.log (not math.log) to add exactly the paper's float64 values; log(0) = -inf only ever pairs with a
        # coin outcome of probability 0, so it never reaches a log-prob, but must not warn either.
        with np.errstate(divide="ignore"):
            return np.log(self.p_keep), np.log(1 - self.p_keep)

    def _pick(self, rng: np.random.Generator, log_probs: list[float]) -> int:
        if self.sampling == "uniform":
            return int(rng.choice(range(self.max_contexts)))
        lp = np.asarray(log_probs, dtype=np.float64)
        probs = np.exp(lp - np.logaddexp.reduce(lp))
        return int(rng.choice(range(self.max_contexts), p=probs))


def check_parameters(name: str, p_keep: float, max_contexts: int | None = None,
                     sampling: str | None = None) -> StrategySpec:
    """The one rule for a strategy's parameters (used by ``ExperimentConfig.validate`` and :func:`make_strategy`);
    returns the registry entry. ValueError names the config field and what is allowed."""
    spec = STRATEGIES.get(name) if isinstance(name, str) else None
    if spec is None:
        raise ValueError(f"context_strategy_name: unknown strategy {name!r}; allowed: {', '.join(STRATEGY_NAMES)}")
    if (isinstance(p_keep, bool) or not isinstance(p_keep, (int, float, np.floating, np.integer))
            or math.isnan(p_keep) or not 0 <= p_keep <= 1):
        raise ValueError(f"context_p_keep: must be a number in [0, 1], got {p_keep!r}")
    if spec.kind == "approximate":
        if isinstance(max_contexts, bool) or not isinstance(max_contexts, (int, np.integer)) or max_contexts < 1:
            raise ValueError(f"max_contexts: strategy {name!r} needs an integer max_contexts > 0, got {max_contexts!r}")
        if sampling not in SAMPLING_METHODS:
            raise ValueError(f"approximate_context_sampling_method: strategy {name!r} needs one of "
                             f"{', '.join(SAMPLING_METHODS)}, got {sampling!r}")
    elif sampling not in (None, *SAMPLING_METHODS):
        raise ValueError("approximate_context_sampling_method: allowed: "
                         f"{', '.join(SAMPLING_METHODS)}, got {sampling!r}")
    return spec


def make_strategy(
    name: str,
    *,
    max_examples: int,
    p_keep: float,
    max_contexts: int | None = None,
    sampling: str | None = None,
) -> RandomStrategy | ApproximateStrategy:
    """Build the strategy ``name`` (parameters checked by :func:`check_parameters`) for ``max_examples`` episodes."""
    spec = check_parameters(name, p_keep, max_contexts, sampling)
    if isinstance(max_examples, bool) or not isinstance(max_examples, (int, np.integer)) or max_examples < 1:
        raise ValueError(
            f"max_context_examples: a context strategy needs an integer >= 1 (0 = zero-shot uses no strategy), "
            f"got {max_examples!r}"
        )
    if spec.kind == "random":
        return RandomStrategy(spec, int(max_examples), float(p_keep))
    return ApproximateStrategy(spec, int(max_examples), float(p_keep), int(max_contexts), sampling)
