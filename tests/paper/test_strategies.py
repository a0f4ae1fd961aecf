"""Context strategies select exactly the indices their definitions give.

Expected indices were computed once by hand with a few independent lines of numpy (the paper's draw order:
binomial coins over the eligible episodes, permutation of the kept ones, then the start/end/unbiased cut; for
approximate: per-context coins for the newest episode, then the context pick) and are written out as literals.
"""
from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np
import pytest

from icrl_lib.paper.strategies import STRATEGIES, STRATEGY_NAMES, ApproxState, Selection, make_strategy

# Shown feedbacks of 12 past episodes: positives at 0 2 3 6 8 9 10, negatives at 1 4 5 7 11.
FEEDBACKS = (1, 0, 1, 1, 0, 0, 1, 0, 1, 1, 1, 0)
SEED, P_KEEP, MAX = 107, 0.8, 3
# With seed 107 and p 0.8 the kept episodes are: all -> 0 1 2 3 4 5 6 8 10 11, positive -> 0 2 3 6 8 9 10,
# negative -> 1 4 5 7 11; all exceed MAX, so the start / end / unbiased cuts differ.
RANDOM_EXPECTED = {
    "random_biased_start": (0, 1, 2),
    "random_biased_end": (8, 10, 11),
    "random_unbiased": (0, 2, 8),
    "random_biased_start_only_positive": (0, 2, 3),
    "random_biased_end_only_positive": (8, 9, 10),
    "random_unbiased_only_positive": (2, 6, 10),
    "random_biased_end_only_negative": (5, 7, 11),
    "random_unbiased_only_negative": (1, 5, 7),
}


def _reference_random(name: str, feedbacks, seed: int, p: float, m: int) -> tuple[int, ...]:
    """Independent re-statement of the paper's random context generators."""
    keep = "positive" if "only_positive" in name else "negative" if "only_negative" in name else "all"
    idx = [i for i, f in enumerate(feedbacks) if keep == "all" or f == (1 if keep == "positive" else 0)]
    rng = np.random.default_rng(seed)
    perm = rng.permutation(np.where(rng.binomial(1, p, size=len(idx)) == 1)[0])
    cut = np.sort(perm)[:m] if "start" in name else np.sort(perm)[-m:] if "end" in name else np.sort(perm[:m])
    return tuple(idx[j] for j in cut)


def test_registry_has_the_papers_ten_names():
    assert STRATEGY_NAMES == (
        "random_biased_end", "random_biased_start", "random_unbiased", "random_biased_start_only_positive",
        "random_biased_end_only_positive", "random_biased_end_only_negative", "random_unbiased_only_positive",
        "random_unbiased_only_negative", "approximate", "approximate_only_positive",
    )
    with pytest.raises(TypeError):
        STRATEGIES["x"] = STRATEGIES["approximate"]  # type: ignore[index]


@pytest.mark.parametrize("name", sorted(RANDOM_EXPECTED))
def test_random_strategies_select_the_defined_indices(name):
    strategy = make_strategy(name, max_examples=MAX, p_keep=P_KEEP)
    assert strategy.initial_state() is None
    selection, state = strategy.select(None, FEEDBACKS, SEED)
    assert state is None
    assert selection == Selection(indices=RANDOM_EXPECTED[name])
    assert selection.indices == _reference_random(name, FEEDBACKS, SEED, P_KEEP, MAX)
    assert all(type(i) is int for i in selection.indices)  # plain ints: JSON-serialisable in the step log


def test_random_strategies_across_seeds_match_the_reference():
    for name in RANDOM_EXPECTED:
        strategy = make_strategy(name, max_examples=4, p_keep=0.3)
        for seed in range(100, 140):
            assert strategy.select(None, FEEDBACKS, seed)[0].indices == _reference_random(name, FEEDBACKS, seed, 0.3, 4)


def test_random_edge_cases():
    naive = make_strategy("random_biased_end", max_examples=3, p_keep=1.0)  # the paper's naive ICRL
    assert naive.select(None, FEEDBACKS, 1)[0].indices == (9, 10, 11)
    assert make_strategy("random_unbiased", max_examples=3, p_keep=0.0).select(None, FEEDBACKS, 1)[0].indices == ()
    assert make_strategy("random_unbiased", max_examples=3, p_keep=0.5).select(None, (), 1)[0].indices == ()
    # ICL history (feedback None): "all" keeps everything; the feedback filters keep nothing.
    icl = (None,) * 12
    assert make_strategy("random_biased_start", max_examples=MAX, p_keep=P_KEEP).select(None, icl, SEED)[0].indices \
        == (0, 1, 2)
    assert make_strategy("random_unbiased_only_positive", max_examples=3, p_keep=1.0).select(None, icl, 1)[0].indices \
        == ()


# Approximate, K=3 contexts of at most 3 episodes, p_keep 0.5, seed 200 + step, history FEEDBACKS[:step].
# Rows: (context_index, selected indices, every context's length) for steps 0..12.
APPROX_EXPECTED = {
    ("approximate", "uniform"): [
        (0, (), (0, 0, 0)), (2, (), (1, 1, 0)), (0, (0,), (1, 1, 1)), (1, (0,), (2, 1, 1)),
        (1, (0, 3), (3, 2, 2)), (1, (0, 3, 4), (3, 3, 2)), (2, (1, 3, 5), (3, 3, 3)), (0, (0, 2, 3), (3, 3, 3)),
        (2, (1, 3, 5), (3, 3, 3)), (2, (1, 3, 5), (3, 3, 3)), (0, (0, 2, 3), (3, 3, 3)), (0, (0, 2, 3), (3, 3, 3)),
        (0, (0, 2, 3), (3, 3, 3)),
    ],
    ("approximate", "exact"): [
        (0, (), (0, 0, 0)), (1, (0,), (1, 1, 0)), (2, (1,), (1, 1, 1)), (0, (0, 2), (2, 1, 1)),
        (0, (0, 2, 3), (3, 2, 2)), (2, (1, 3), (3, 3, 2)), (0, (0, 2, 3), (3, 3, 3)), (0, (0, 2, 3), (3, 3, 3)),
        (2, (1, 3, 5), (3, 3, 3)), (0, (0, 2, 3), (3, 3, 3)), (1, (0, 3, 4), (3, 3, 3)), (0, (0, 2, 3), (3, 3, 3)),
        (1, (0, 3, 4), (3, 3, 3)),
    ],
    ("approximate_only_positive", "uniform"): [
        (0, (), (0, 0, 0)), (2, (), (1, 1, 0)), (0, (0,), (1, 1, 0)), (1, (0,), (2, 1, 0)),
        (1, (0, 3), (3, 2, 1)), (1, (0, 3), (3, 2, 1)), (1, (0, 3), (3, 2, 1)), (2, (3,), (3, 2, 1)),
        (2, (3,), (3, 2, 1)), (1, (0, 3), (3, 2, 2)), (1, (0, 3, 9), (3, 3, 3)), (0, (0, 2, 3), (3, 3, 3)),
        (0, (0, 2, 3), (3, 3, 3)),
    ],
    ("approximate_only_positive", "exact"): [
        (0, (), (0, 0, 0)), (1, (0,), (1, 1, 0)), (1, (0,), (1, 1, 0)), (0, (0, 2), (2, 1, 0)),
        (0, (0, 2, 3), (3, 2, 1)), (2, (3,), (3, 2, 1)), (2, (3,), (3, 2, 1)), (2, (3,), (3, 2, 1)),
        (2, (3,), (3, 2, 1)), (1, (0, 3), (3, 2, 2)), (0, (0, 2, 3), (3, 3, 3)), (0, (0, 2, 3), (3, 3, 3)),
        (0, (0, 2, 3), (3, 3, 3)),
    ],
}
# Final contexts and the number of coins each context drew (log_probs = coins * log(0.5)).
APPROX_FINAL = {
    "approximate": (((0, 2, 3), (0, 3, 4), (1, 3, 5)), (4, 5, 6)),
    "approximate_only_positive": (((0, 2, 3), (0, 3, 9), (3, 8, 9)), (3, 6, 6)),
}


def _run_steps(name: str, sampling: str):
    strategy = make_strategy(name, max_examples=3, p_keep=0.5, max_contexts=3, sampling=sampling)
    state = strategy.initial_state()
    selections, states = [], [state]
    for step in range(len(FEEDBACKS) + 1):
        selection, state = strategy.select(state, FEEDBACKS[:step], 200 + step)
        selections.append(selection)
        states.append(state)
    return strategy, selections, states


@pytest.mark.parametrize("name,sampling", sorted(APPROX_EXPECTED))
def test_approximate_over_a_sequence_of_steps(name, sampling):
    _, selections, states = _run_steps(name, sampling)
    got = [(s.context_index, s.indices, s.context_lengths) for s in selections]
    assert got == APPROX_EXPECTED[(name, sampling)]
    contexts, coins = APPROX_FINAL[name]
    assert states[-1].contexts == contexts
    assert states[-1].log_probs == pytest.approx(tuple(c * math.log(0.5) for c in coins))
    for before, after in zip(states, states[1:]):
        for old, new in zip(before.contexts, after.contexts):
            assert len(new) <= 3  # never more than max_examples
            assert new[: len(old)] == old  # contexts only grow: each is a prefix-extension of its previous self
            assert len(new) - len(old) <= 1
    if name == "approximate_only_positive":
        assert all(FEEDBACKS[i] == 1 for c in contexts for i in c)


def test_earlier_results_are_never_changed_by_later_steps():
    strategy, selections, states = _run_steps("approximate", "exact")
    first_selection, first_state = selections[3], states[4]
    snapshot = (first_selection.indices, first_selection.context_lengths, first_state.contexts, first_state.log_probs)
    strategy.select(states[-1], FEEDBACKS + (1,), 999)
    assert (first_selection.indices, first_selection.context_lengths, first_state.contexts,
            first_state.log_probs) == snapshot
    with pytest.raises(dataclasses.FrozenInstanceError):
        first_selection.indices = ()  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        first_state.contexts = ()  # type: ignore[misc]
    assert isinstance(first_state.contexts, tuple) and all(isinstance(c, tuple) for c in first_state.contexts)


@pytest.mark.parametrize("sampling", ["uniform", "exact"])
def test_negative_newest_episode_appends_nothing_and_draws_no_coins(sampling):
    # The paper's only_positive generator offered the last element of the positive-filtered history, so after a
    # negative step it re-appended the previous positive episode (a duplicate) and drew coins. We append nothing,
    # draw no coins, and only pick a context.
    strategy = make_strategy("approximate_only_positive", max_examples=3, p_keep=0.5, max_contexts=3, sampling=sampling)
    _, state = strategy.select(strategy.initial_state(), (), 200)
    _, state = strategy.select(state, (1,), 201)
    selection, after = strategy.select(state, (1, 0), 202)
    assert (after.contexts, after.log_probs) == (state.contexts, state.log_probs)
    rng = np.random.default_rng(202)  # the pick is the first and only draw
    lp = np.asarray(state.log_probs)
    expected = rng.choice(3) if sampling == "uniform" else rng.choice(3, p=np.exp(lp - np.logaddexp.reduce(lp)))
    assert selection.context_index == int(expected)
    assert selection.indices == state.contexts[selection.context_index]


def test_approximate_offers_negative_episodes_when_keeping_all():
    strategy = make_strategy("approximate", max_examples=5, p_keep=1.0, max_contexts=2, sampling="exact")
    state = strategy.initial_state()
    for step in range(4):
        selection, state = strategy.select(state, FEEDBACKS[:step], step)
    assert state.contexts == ((0, 1, 2), (0, 1, 2)) and selection.indices == (0, 1, 2)


def test_extreme_p_keep_draws_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for p in (0.0, 1.0):
            strategy = make_strategy("approximate", max_examples=2, p_keep=p, max_contexts=2, sampling="exact")
            state = strategy.initial_state()
            for step in range(5):
                selection, state = strategy.select(state, FEEDBACKS[:step], step)
            assert selection.context_lengths == ((0, 0) if p == 0 else (2, 2))
            assert all(math.isfinite(x) for x in state.log_probs)


def test_approximate_state_misuse_is_rejected():
    strategy = make_strategy("approximate", max_examples=3, p_keep=0.5, max_contexts=3, sampling="uniform")
    _, state = strategy.select(strategy.initial_state(), (), 0)
    with pytest.raises(ValueError, match="feedbacks"):  # a skipped step would silently lose an episode
        strategy.select(state, (1, 1), 1)
    with pytest.raises(ValueError, match="state"):
        strategy.select(ApproxState(((),), (0.0,)), (), 0)
    with pytest.raises(ValueError, match="state"):
        ApproxState(((), ()), (0.0,))


def test_replaying_the_same_steps_reproduces_the_same_contexts():
    first = _run_steps("approximate_only_positive", "exact")[1]
    again = _run_steps("approximate_only_positive", "exact")[1]
    assert first == again


@pytest.mark.parametrize(
    "kwargs,param",
    [
        (dict(name="random_unbaised"), "context_strategy_name"),
        (dict(p_keep=-0.1), "context_p_keep"),
        (dict(p_keep=1.5), "context_p_keep"),
        (dict(p_keep=float("nan")), "context_p_keep"),
        (dict(max_examples=0), "max_context_examples"),
        (dict(max_examples=2.5), "max_context_examples"),
        (dict(name="approximate", sampling="uniform"), "max_contexts"),
        (dict(name="approximate", max_contexts=0, sampling="uniform"), "max_contexts"),
        (dict(name="approximate_only_positive", max_contexts=-1, sampling="exact"), "max_contexts"),
        (dict(name="approximate", max_contexts=2), "approximate_context_sampling_method"),
        (dict(name="approximate", max_contexts=2, sampling="greedy"), "approximate_context_sampling_method"),
    ],
)
def test_bad_values_raise_naming_the_parameter(kwargs, param):
    args = dict(name="random_unbiased", max_examples=3, p_keep=0.5, max_contexts=None, sampling=None) | kwargs
    name = args.pop("name")
    with pytest.raises(ValueError, match=param) as info:
        make_strategy(name, **args)
    if param == "context_strategy_name":
        assert all(n in str(info.value) for n in STRATEGY_NAMES)
    if param == "approximate_context_sampling_method":
        assert "uniform" in str(info.value) and "exact" in str(info.value)


def test_random_strategies_ignore_approximate_only_parameters():
    strategy = make_strategy("random_unbiased", max_examples=3, p_keep=0.5, max_contexts=None, sampling=None)
    assert strategy.select(None, FEEDBACKS, 1)[0].context_index is None
