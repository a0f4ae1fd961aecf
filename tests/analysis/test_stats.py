"""The intervals behind every verdict: hand-computed values, no false certainty, honest coverage, and the
three-valued verdict for each kind of claim."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from icrl_lib.analysis import stats


def test_an_accuracy_on_one_seed_is_agresti_coull_over_the_queries():
    estimate = stats.accuracy_interval(0.35, 60)
    centre = (21 + 2) / 64
    half = scipy_stats.t.ppf(0.975, 59) * math.sqrt(centre * (1 - centre) / 64)
    assert (estimate.low, estimate.high) == (pytest.approx(centre - half), pytest.approx(centre + half))
    assert estimate.n_seeds == 1 and estimate.mde > 0


def test_equal_seeds_are_no_more_certain_than_one():
    """The issue's false certainty: two seeds at 0% gave [0, 0]; now the test queries still count."""
    one, two = stats.accuracy_interval(0.0, 3), stats.accuracy_interval(0.0, 3, [0.0, 0.0])
    assert two.high == one.high > 0.5 and two.low == 0


def test_a_paired_difference_of_identical_arms_is_not_a_point():
    zeros = np.zeros(60)
    estimate = stats.paired_difference({100: zeros}, {100: zeros})
    # Agresti-Min: half a query in each cell -> variance (1/62) / 62 around 0
    half = scipy_stats.t.ppf(0.975, 59) * math.sqrt(1 / 62) / math.sqrt(62)
    assert estimate.effect == 0 and (estimate.low, estimate.high) == (pytest.approx(-half), pytest.approx(half))


def test_a_paired_difference_by_hand():
    a = {1: [1, 1, 1, 0, 0, 0, 1, 0], 2: [1, 1, 0, 0, 1, 0, 1, 1]}
    b = {1: [1, 0, 0, 0, 0, 0, 1, 0], 2: [0, 1, 0, 0, 0, 0, 1, 0]}
    d = np.array([np.subtract(a[s], b[s]) for s in (1, 2)], float)
    per_query = d.mean(axis=0)
    centre = per_query.sum() / 10
    v_query = ((np.square(per_query).sum() + 1) / 10 - centre ** 2) / 10
    v_seed = np.var(d.mean(axis=1), ddof=1) / 2
    df = (v_query + v_seed) ** 2 / (v_query ** 2 / 7 + v_seed ** 2 / 1)
    half = scipy_stats.t.ppf(0.975, df) * math.sqrt(v_query + v_seed)
    estimate = stats.paired_difference(a, b)
    assert estimate.effect == pytest.approx(d.mean()) and estimate.n_seeds == 2 and estimate.n_queries == 8
    assert (estimate.low, estimate.high) == (pytest.approx(centre - half), pytest.approx(centre + half))


def test_arms_without_common_seeds_are_paired_over_queries_only():
    estimate = stats.paired_difference({1: [1, 1, 0, 0]}, {2: [1, 0, 0, 0]})
    assert estimate.method == "paired over queries, seeds unpaired" and estimate.effect == pytest.approx(0.25)


def test_the_unpaired_difference_is_agresti_caffo():
    estimate = stats.unpaired_difference([(0.036, 500)], [(0.030, 500)])
    pa, pb = (18 + 1) / 502, (15 + 1) / 502
    va, vb = pa * (1 - pa) / 502, pb * (1 - pb) / 502
    half = scipy_stats.t.ppf(0.975, (va + vb) ** 2 / (va ** 2 / 499 + vb ** 2 / 499)) * math.sqrt(va + vb)
    assert (estimate.low, estimate.high) == (pytest.approx(pa - pb - half), pytest.approx(pa - pb + half))
    assert estimate.effect == pytest.approx(0.006)


@pytest.mark.parametrize("pair", ["paired", "unpaired"])
def test_intervals_cover_the_true_difference_about_95_percent_of_the_time(pair):
    """400 simulated comparisons of two arms on 100 shared queries, true rates 0.35 and 0.30."""
    rng = np.random.default_rng(0)
    covered = 0
    for _ in range(400):
        hard = rng.random(100)  # query difficulty shared by both arms: the reason to pair
        a = (hard < 0.35).astype(float)
        b = ((hard < 0.30) ^ (rng.random(100) < 0.1)).astype(float)  # mostly the same queries, some noise
        truth = 0.35 - (0.30 * 0.9 + 0.70 * 0.1)
        e = stats.paired_difference({1: a}, {1: b}) if pair == "paired" else \
            stats.unpaired_difference([(a.mean(), 100)], [(b.mean(), 100)])
        covered += e.low <= truth <= e.high
    assert 0.93 <= covered / 400 <= 1.0


def test_correlations_compare_in_fisher_z_with_moved_intervals():
    estimate = stats.correlation_difference([(0.981, 21)], [(0.956, 21)])
    assert estimate.low < 0 < estimate.high  # the paper's 14B CLINIC150 cell: too close to tell
    strong = stats.correlation_difference([(0.95, 11)], [(-0.77, 11)])
    assert strong.low > 0
    few = stats.correlation_difference([(0.95, 4)], [(-0.77, 4)])
    assert math.isnan(few.low) and "test points" in few.method


@pytest.mark.parametrize("kind,threshold,interval,expected", [
    ("greater", 0, (0.01, 0.2), stats.SUPPORTED), ("greater", 0, (-0.2, -0.01), stats.CONTRADICTED),
    ("greater", 0, (-0.1, 0.1), stats.INCONCLUSIVE), ("greater", 0, (0.0, 0.0), stats.INCONCLUSIVE),
    ("less", 0.05, (-0.1, 0.04), stats.SUPPORTED), ("less", 0.05, (0.06, 0.2), stats.CONTRADICTED),
    ("less", 0.05, (-0.1, 0.07), stats.INCONCLUSIVE),
    ("greater", -0.05, (-0.04, 0.1), stats.SUPPORTED), ("greater", -0.05, (-0.2, -0.06), stats.CONTRADICTED),
    ("within", 0.05, (-0.04, 0.04), stats.SUPPORTED), ("within", 0.05, (-0.06, 0.04), stats.INCONCLUSIVE),
    ("within", 0.05, (0.06, 0.2), stats.CONTRADICTED), ("within", 0.05, (-0.2, -0.06), stats.CONTRADICTED),
    ("greater", 0, (math.nan, math.nan), stats.INCONCLUSIVE),
])
def test_verdicts_read_the_interval_of_the_difference(kind, threshold, interval, expected):
    assert stats.verdict(*interval, kind, threshold) == expected


def test_bonferroni_level_and_bad_kind():
    assert stats.adjusted_level(5) == pytest.approx(0.99) and stats.adjusted_level(0) == 0.95
    with pytest.raises(ValueError, match="kind: 'above'; allowed: greater, less, within"):
        stats.verdict(0, 1, "above")
