"""Uncertainty of accuracies and of differences between arms, and the three-valued verdict drawn from it.

Every interval here combines the two sources of noise in an ICRL measurement: which test queries were drawn (the
*query* component) and which training seed was run (the *seed* component: contexts, sampling, training order).

* One arm's accuracy over S seeds on n test queries (:func:`accuracy_interval`): an Agresti-Coull term over the n
  queries (two successes and two failures added, so 0/n never gives a zero-width interval) plus the variance of the
  S seed accuracies / S, with Welch-Satterthwaite degrees of freedom. Conservative: the seed-to-seed variance
  already holds some query noise. With one seed it is close to the Wilson interval.
* Two arms tested on the same queries (:func:`paired_difference`, the family checks: every arm and seed shares one
  test set): per-query differences, averaged over the seeds both arms ran, with the Agresti-Min adjustment (half a
  query added to each cell of the 2x2 table) for the query component, plus the variance of the per-seed differences.
* Two arms on different queries, e.g. the paper's own published numbers (:func:`unpaired_difference`): the
  Agresti-Caffo interval (one success and one failure added to each arm) plus each arm's seed variance.
* Quantities of a whole run whose parts are not independent (:func:`seed_difference`): the Spearman rho of a
  learning curve (neighbouring test points share most of their context) and the top-label share of the last training
  predictions (consecutive predictions share their context). The run is the unit: per-seed values, paired by seed
  where both arms ran it, a t-interval over seeds (S - 1 degrees of freedom). A seed's variance is never taken below
  what the run's own points would give if they were independent (1 / (k - 1) for a rho over k points; p(1 - p) / w
  for a share of w predictions), so seeds that happen to agree never give a zero-width interval. One seed: no
  interval. (:func:`correlation_difference` keeps the Fisher-z interval for the paper's own single runs, where there is
  nothing to resample; it treats test points as independent, so it is narrower than the truth.)

:func:`verdict` turns the interval of a difference into supported / contradicted / inconclusive for a claim
``difference > threshold``, ``difference < threshold`` or ``|difference| <= margin`` (equivalence, as TOST: only an
interval wholly inside the margin supports it). :func:`adjusted_level` is the Bonferroni level for m verdicts that
are combined into one statement.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

LEVEL = 0.95
POWER = 0.80  # the minimum detectable effect is the true difference found with this probability at LEVEL
MIN_RHO_POINTS = 8  # fewer test points make a Spearman rho too coarse to compare (the check says inconclusive)
SUPPORTED, CONTRADICTED, INCONCLUSIVE = "supported", "contradicted", "inconclusive"
KINDS = ("greater", "less", "within")


@dataclass(frozen=True)
class Estimate:
    """A difference (or one value) with its interval at ``level``: what every verdict and table cell shows."""

    effect: float  # the observed value (mean over seeds and queries)
    low: float
    high: float
    level: float
    n_queries: int  # test queries per seed (0: not a query-level quantity)
    n_seeds: int  # seeds in the estimate (paired seeds for a paired difference)
    mde: float  # minimum detectable effect: the smallest true difference found with POWER at this level
    method: str  # how the interval was made, in words

    def as_dict(self) -> dict[str, float | int | str]:
        """The fields as a flat row (tables)."""
        return {"effect": self.effect, "low": self.low, "high": self.high, "level": self.level,
                "n_queries": self.n_queries, "n_seeds": self.n_seeds, "mde": self.mde, "interval": self.method}


NAN_ESTIMATE = Estimate(math.nan, math.nan, math.nan, LEVEL, 0, 0, math.nan, "no data")


def _t(level: float, df: float) -> float:
    from scipy import stats

    return float(stats.t.ppf(0.5 + level / 2, df)) if math.isfinite(df) else float(stats.norm.ppf(0.5 + level / 2))


def _t_power(df: float) -> float:
    from scipy import stats

    return float(stats.t.ppf(POWER, df)) if math.isfinite(df) else float(stats.norm.ppf(POWER))


def _combine(parts: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """Total variance of independent components (variance, degrees of freedom) and its Welch-Satterthwaite df."""
    parts = [(v, df) for v, df in parts if v > 0]
    total = sum(v for v, _ in parts)
    if total == 0:
        return 0.0, math.inf
    denominator = sum(v * v / df for v, df in parts if math.isfinite(df) and df > 0)
    return total, (total * total / denominator if denominator > 0 else math.inf)


def _estimate(effect: float, center: float, variance: float, df: float, level: float, n_queries: int, n_seeds: int,
              method: str, bounds: tuple[float, float]) -> Estimate:
    se = math.sqrt(variance)
    half = _t(level, df) * se
    low, high = max(bounds[0], center - half), min(bounds[1], center + half)
    mde = (_t(level, df) + _t_power(df)) * se
    return Estimate(float(effect), float(low), float(high), level, n_queries, n_seeds, float(mde), method)


def _seed_part(values: Sequence[float]) -> tuple[float, float]:
    """Variance of the mean of per-seed values and its df (0 with one seed: it cannot be estimated)."""
    if len(values) < 2:
        return 0.0, math.inf
    return float(np.var(values, ddof=1)) / len(values), len(values) - 1


def accuracy_interval(mean: float, queries: int, seed_values: Sequence[float] = (), level: float = LEVEL) -> Estimate:
    """Interval of an accuracy ``mean`` over ``len(seed_values)`` seeds (or one) on ``queries`` test queries."""
    if queries <= 0 or mean is None or math.isnan(mean):
        return NAN_ESTIMATE
    seeds = max(1, len(seed_values))
    center = (mean * queries + 2) / (queries + 4)
    query = (center * (1 - center) / (queries + 4), queries - 1 if queries > 1 else math.inf)
    variance, df = _combine([query, _seed_part(seed_values)])
    return _estimate(mean, center, variance, df, level, queries, seeds, "Agresti-Coull over queries + seeds",
                     (0.0, 1.0))


def _agresti_min(per_query: np.ndarray) -> tuple[float, float]:
    """(centre, variance of the mean) of per-query differences with half a query added to each cell of the 2x2
    table (Agresti-Min): pseudo-differences +1 and -1 (weight 1/2 each) and 0 (weight 1), so arms that agree on every
    query still get an interval of nonzero width."""
    n = per_query.size
    centre = per_query.sum() / (n + 2)
    second = (np.square(per_query).sum() + 1) / (n + 2)
    return float(centre), max(second - centre * centre, 0.0) / (n + 2)


def paired_difference(a: Mapping[int, Sequence[float]], b: Mapping[int, Sequence[float]], level: float = LEVEL,
                      shared_queries: bool = True) -> Estimate:
    """A minus B when both were tested on the same queries (vectors of 0/1 per seed, same query order per seed).

    ``shared_queries``: every seed tested the same queries (the families' one test set), so per-query differences
    are averaged over the seeds; otherwise each seed's queries are its own and their variances are averaged. Seeds
    present in both arms are paired; with none in common, each arm is averaged over its own seeds per query (shared
    queries only) and both seed variances are added."""
    common = sorted(set(a) & set(b))
    if common:
        diff = [np.asarray(a[s], float) - np.asarray(b[s], float) for s in common]
        seed_part = _seed_part([d.mean() for d in diff])
        seeds = len(common)
        method = "paired over queries and seeds"
        if shared_queries:
            centre, v_query = _agresti_min(np.mean(diff, axis=0))
        else:  # independent query sets: the mean of S per-seed means
            parts = [_agresti_min(d) for d in diff]
            centre = float(np.mean([c for c, _ in parts]))
            v_query = sum(v for _, v in parts) / seeds ** 2
            method = "paired over each seed's queries and seeds"
        n = min(d.size for d in diff)
        effect = float(np.mean([d.mean() for d in diff]))
    else:
        if not a or not b or not shared_queries:
            return NAN_ESTIMATE
        arm_a = np.array([np.asarray(v, float) for v in a.values()])
        arm_b = np.array([np.asarray(v, float) for v in b.values()])
        per_query = arm_a.mean(axis=0) - arm_b.mean(axis=0)
        va, dfa = _seed_part(arm_a.mean(axis=1).tolist())
        vb, dfb = _seed_part(arm_b.mean(axis=1).tolist())
        seed_part = _combine([(va, dfa), (vb, dfb)])
        seeds = min(len(a), len(b))
        method = "paired over queries, seeds unpaired"
        centre, v_query = _agresti_min(per_query)
        n = per_query.size
        effect = float(per_query.mean())
    if n == 0:
        return NAN_ESTIMATE
    variance, df = _combine([(v_query, n - 1 if n > 1 else math.inf), seed_part])
    return _estimate(effect, centre, variance, df, level, n, seeds, method, (-1.0, 1.0))


def unpaired_difference(a: Sequence[tuple[float, int]], b: Sequence[tuple[float, int]],
                        level: float = LEVEL) -> Estimate:
    """A minus B for arms measured on different queries: per seed (accuracy, test queries) of each arm."""
    if not a or not b:
        return NAN_ESTIMATE
    parts, centers, means = [], [], []
    for arm in (a, b):
        accuracies = [acc for acc, _ in arm]
        adjusted = [(acc * n + 1) / (n + 2) for acc, n in arm]  # Agresti-Caffo: one success, one failure added
        query = sum(p * (1 - p) / (n + 2) for p, (_, n) in zip(adjusted, arm)) / len(arm) ** 2
        parts += [(query, min(n for _, n in arm) - 1 or math.inf), _seed_part(accuracies)]
        centers.append(float(np.mean(adjusted)))
        means.append(float(np.mean(accuracies)))
    variance, df = _combine(parts)
    return _estimate(means[0] - means[1], centers[0] - centers[1], variance, df, level,
                     min(n for _, n in (*a, *b)), min(len(a), len(b)), "unpaired (Agresti-Caffo) + seeds",
                     (-1.0, 1.0))


def _rho_interval(values: Sequence[tuple[float, int]], level: float) -> tuple[float, float, float]:
    """(mean rho, low, high) of one arm from per-seed (rho, test points), in Fisher z."""
    z = [math.atanh(max(-0.999, min(0.999, rho))) for rho, _ in values]
    query = (sum(1.06 / (k - 3) for _, k in values) / len(values) ** 2, math.inf)
    variance, df = _combine([query, _seed_part(z)])
    half = _t(level, df) * math.sqrt(variance)
    center = float(np.mean(z))
    return math.tanh(center), math.tanh(center - half), math.tanh(center + half)


def correlation_interval(values: Sequence[tuple[float, int]], level: float = LEVEL) -> Estimate:
    """Mean Spearman rho of an arm's runs from per-seed (rho, test points), with its interval (Fisher z); NaN bounds
    when a run has fewer than 4 test points."""
    values = [(r, k) for r, k in values if r is not None and not math.isnan(r)]
    if not values:
        return NAN_ESTIMATE
    mean = float(np.mean([r for r, _ in values]))
    if min(k for _, k in values) < 4:
        return Estimate(mean, math.nan, math.nan, level, min(k for _, k in values), len(values), math.nan,
                        "needs >= 4 test points")
    _, low, high = _rho_interval(values, level)
    return Estimate(mean, low, high, level, min(k for _, k in values), len(values), math.nan, "Fisher z + seeds")


def correlation_difference(a: Sequence[tuple[float, int]], b: Sequence[tuple[float, int]],
                           level: float = LEVEL, min_points: int = MIN_RHO_POINTS) -> Estimate:
    """Spearman rho of arm A minus arm B from per-seed (rho, test points); NaN when any run has fewer than
    ``min_points`` test points or no rho (a flat curve)."""
    runs = [*a, *b]
    if not a or not b or any(k < min_points or rho is None or math.isnan(rho) for rho, k in runs):
        return Estimate(math.nan, math.nan, math.nan, level, min((k for _, k in runs), default=0),
                        min(len(a), len(b)), math.nan, f"needs >= {min_points} test points per run and a rho")
    ra, la, ua = _rho_interval(a, level)
    rb, lb, ub = _rho_interval(b, level)
    effect = float(np.mean([r for r, _ in a]) - np.mean([r for r, _ in b]))
    d = ra - rb  # Zou's MOVER on the back-transformed intervals
    low = d - math.sqrt((ra - la) ** 2 + (ub - rb) ** 2)
    high = d + math.sqrt((ua - ra) ** 2 + (rb - lb) ** 2)
    z = _t(level, math.inf)
    mde = (z + _t_power(math.inf)) / z * (high - low) / 2
    return Estimate(effect, max(-2.0, low), min(2.0, high), level, min(k for _, k in runs), min(len(a), len(b)),
                    mde, "Fisher z per arm + seeds, MOVER")


def seed_difference(a: Sequence[tuple[int, float, float]], b: Sequence[tuple[int, float, float]],
                    level: float = LEVEL, n_points: int = 0, bounds: tuple[float, float] = (-1.0, 1.0)) -> Estimate:
    """A minus B for a per-run quantity, the run as the unit: each arm's runs as (seed, value, floor variance).

    Paired over the seeds both arms ran (a t-interval of the per-seed differences), else unpaired (Welch); a seed's
    variance is at least the mean floor variance of its runs (see the module docstring). NaN bounds below 2 seeds."""
    a = [(s, v, f) for s, v, f in a if v is not None and not math.isnan(v)]
    b = [(s, v, f) for s, v, f in b if v is not None and not math.isnan(v)]
    if not a or not b:
        return NAN_ESTIMATE
    by_b = {s: (v, f) for s, v, f in b}
    common = [(v - by_b[s][0], f + by_b[s][1]) for s, v, f in a if s in by_b]
    if common:
        diffs = np.array([d for d, _ in common])
        effect, seeds = float(diffs.mean()), len(common)
        if seeds < 2:
            return Estimate(effect, math.nan, math.nan, level, n_points, seeds, math.nan, "one seed: no interval")
        spread = max(float(np.var(diffs, ddof=1)), float(np.mean([f for _, f in common])))
        variance, df, method = spread / seeds, seeds - 1, "t over paired seeds (the run as the unit)"
    else:
        parts = []
        for arm in (a, b):
            values = np.array([v for _, v, _ in arm])
            if len(values) < 2:
                return Estimate(float(np.mean([v for _, v, _ in a]) - np.mean([v for _, v, _ in b])), math.nan,
                                math.nan, level, n_points, 1, math.nan, "one seed: no interval")
            parts.append((max(float(np.var(values, ddof=1)), float(np.mean([f for _, _, f in arm]))) / len(values),
                          len(values) - 1))
        variance, df = _combine(parts)
        effect = float(np.mean([v for _, v, _ in a]) - np.mean([v for _, v, _ in b]))
        seeds, method = min(len(a), len(b)), "Welch t over seeds (the run as the unit)"
    return _estimate(effect, effect, variance, df, level, n_points, seeds, method, bounds)


def rho_floor(points: int) -> float:
    """The variance of a Spearman rho over ``points`` independent points under no correlation: a seed's least."""
    return 1.0 / max(1, points - 1)


def share_floor(share: float, trials: int) -> float:
    """The binomial variance of a share of ``trials`` independent predictions (two of each added): a seed's least."""
    p = (share * trials + 2) / (trials + 4)
    return p * (1 - p) / (trials + 4)


def verdict(low: float, high: float, kind: str, threshold: float = 0.0) -> str:
    """supported / contradicted / inconclusive for a claim about a difference with interval [low, high].

    ``greater``: difference > threshold; ``less``: difference < threshold; ``within``: |difference| <= threshold
    (an equivalence claim: supported only when the whole interval lies inside +-threshold)."""
    if kind not in KINDS:
        raise ValueError(f"kind: {kind!r}; allowed: {', '.join(KINDS)}")
    if low is None or high is None or math.isnan(low) or math.isnan(high):
        return INCONCLUSIVE
    if kind == "greater":
        return SUPPORTED if low > threshold else CONTRADICTED if high < threshold else INCONCLUSIVE
    if kind == "less":
        return SUPPORTED if high < threshold else CONTRADICTED if low > threshold else INCONCLUSIVE
    if -threshold <= low and high <= threshold:
        return SUPPORTED
    return CONTRADICTED if low > threshold or high < -threshold else INCONCLUSIVE


def adjusted_level(m: int, level: float = LEVEL) -> float:
    """Bonferroni: the per-verdict level that keeps ``m`` combined verdicts at ``level`` family-wise."""
    return 1 - (1 - level) / max(1, m)
