"""Seed statistics of the ablation report, on ``scipy.stats``.

- Over seeds: mean, sample standard deviation (``ddof=1``) and the t interval
  ``mean +- t_{(1+c)/2, n-1} sd / sqrt(n)``.
- Paired by seed (variant minus reference) or one-sample against 0: the two-sided t-test
  ``t = mean(d) / (sd(d) / sqrt(n))`` on ``n - 1`` degrees of freedom, the exact sign-flip
  permutation p-value and the smallest detectable difference (MDD).
- Holm's step-down adjustment over the comparisons against one reference (scipy has no Holm).

The MDD is the true mean difference at which the two-sided test at level ``alpha`` with ``n``
pairs rejects with probability ``power``, from the noncentral t distribution: the power is
``P(T' > t_{1-alpha/2, n-1})`` with ``T' ~ t(n-1, sqrt(n) delta / sd)``, the rejections in the
wrong tail left out, as R's ``power.t.test(type = "paired", strict = FALSE)`` computes it. The
shifted central t ``(t_{1-alpha/2} + t_{power}) sd / sqrt(n)`` understates it at few seeds.

Degenerate cases are defined: with fewer than 2 values no interval or test is made (NaN); with all
differences equal the p-value is 1 when they are 0 and 0 otherwise. Non-finite values are left out.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import optimize, stats

__all__ = [
    "ALPHA",
    "CONFIDENCE",
    "POWER",
    "SIGN_FLIP_MAX_N",
    "PairedTest",
    "Summary",
    "holm",
    "min_detectable_difference",
    "one_sample_test",
    "paired_test",
    "sign_flip_p",
    "summarize",
    "t_test_power",
]

ALPHA = 0.05
POWER = 0.8
CONFIDENCE = 0.95
SIGN_FLIP_MAX_N = 16  # 2^16 sign patterns; beyond that the exact permutation p-value is omitted


@dataclass(frozen=True)
class Summary:
    """Mean, sample standard deviation and t interval of one quantity over seeds."""

    n: int
    mean: float
    sd: float
    ci_low: float
    ci_high: float


@dataclass(frozen=True)
class PairedTest:
    """A t-test of differences against 0, with its interval, sign-flip p-value and MDD."""

    n: int
    diff_mean: float
    diff_sd: float
    ci_low: float
    ci_high: float
    t: float
    p_value: float
    p_sign_flip: float
    mdd: float


def finite(values: Iterable[Any]) -> np.ndarray:
    """The finite values as a float64 array."""
    x = np.array([float(v) for v in values], dtype=np.float64)
    return x[np.isfinite(x)]


def summarize(values: Iterable[float], confidence: float = CONFIDENCE) -> Summary:
    """Over the finite ``values``: ``n``, mean, sd and the t interval (NaN where n < 2)."""
    x = finite(values)
    n = x.size
    if n == 0:
        return Summary(0, math.nan, math.nan, math.nan, math.nan)
    if x.min() == x.max():  # exactly 0 sd: a float mean of equal values can miss them by an ulp
        mean, sd = float(x[0]), 0.0
    else:
        mean, sd = float(x.mean()), float(x.std(ddof=1))
    if n < 2:
        return Summary(1, mean, math.nan, math.nan, math.nan)
    half = float(stats.t.ppf(0.5 + confidence / 2.0, n - 1)) * sd / math.sqrt(n)
    return Summary(n, mean, sd, mean - half, mean + half)


def t_test_power(effect: float, n: float, alpha: float = ALPHA) -> float:
    """Power of the two-sided one-sample (or paired) t-test at level ``alpha`` with ``n`` values when
    the true mean is ``effect`` standard deviations away from 0 (rejections in the far tail only)."""
    df = n - 1
    critical = stats.t.isf(alpha / 2.0, df)
    return float(stats.nct.sf(critical, df, effect * math.sqrt(n)))


@functools.lru_cache(maxsize=256)
def _detectable_effect(n: int, alpha: float, power: float) -> float:
    """The effect (in standard deviations) at which :func:`t_test_power` reaches ``power``; cached,
    since a report asks it for the same ``n`` once per comparison."""
    if power <= alpha / 2.0:  # the test rejects that often with no difference at all
        return 0.0

    def gap(effect: float) -> float:
        return t_test_power(effect, n, alpha) - power

    high = 1.0
    while gap(high) < 0.0:
        high *= 2.0
    return float(optimize.brentq(gap, 0.0, high, xtol=1e-12, rtol=1e-12))


def min_detectable_difference(sd_diff: float, n: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """The true mean difference that the two-sided t-test at level ``alpha`` with ``n`` pairs detects
    with probability ``power``, at a spread ``sd_diff`` of the differences; NaN for n < 2."""
    if n < 2 or not math.isfinite(sd_diff):
        return math.nan
    return _detectable_effect(int(n), float(alpha), float(power)) * sd_diff


def sign_flip_p(diffs: Iterable[float]) -> float:
    """Exact two-sided sign-flip p-value of ``mean(d) = 0``: the share of the ``2^n`` sign patterns
    whose ``|sum(s d)|`` reaches the observed ``|sum(d)|``. Since ``s`` and ``-s`` always tie it
    cannot go below ``2^(1-n)``; NaN for n = 0 or n > ``SIGN_FLIP_MAX_N``."""
    d = finite(diffs)
    n = d.size
    if n == 0 or n > SIGN_FLIP_MAX_N:
        return math.nan
    signs = np.array(list(itertools.product((1.0, -1.0), repeat=n)))
    observed = abs(math.fsum(d.tolist()))
    tol = 1e-12 * max(float(np.abs(d).sum()), 1e-300)  # sums equal up to rounding count as ties
    return float(np.count_nonzero(np.abs(signs @ d) >= observed - tol)) / signs.shape[0]


def one_sample_test(
    diffs: Iterable[float], alpha: float = ALPHA, power: float = POWER, confidence: float = CONFIDENCE
) -> PairedTest:
    """Two-sided t-test of ``mean(diffs) = 0`` over the finite ``diffs``."""
    d = finite(diffs)
    s = summarize(d, confidence)
    flip = sign_flip_p(d)
    if s.n < 2:
        return PairedTest(s.n, s.mean, s.sd, math.nan, math.nan, math.nan, math.nan, flip, math.nan)
    if s.sd == 0.0:
        t = 0.0 if s.mean == 0.0 else math.copysign(math.inf, s.mean)
        p = 1.0 if s.mean == 0.0 else 0.0
    else:
        t = s.mean / (s.sd / math.sqrt(s.n))
        p = min(1.0, 2.0 * float(stats.t.sf(abs(t), s.n - 1)))
    mdd = min_detectable_difference(s.sd, s.n, alpha, power)
    return PairedTest(s.n, s.mean, s.sd, s.ci_low, s.ci_high, t, p, flip, mdd)


def paired_test(
    a: Mapping[Any, float] | Sequence[float],
    b: Mapping[Any, float] | Sequence[float],
    alpha: float = ALPHA,
    power: float = POWER,
    confidence: float = CONFIDENCE,
) -> PairedTest:
    """Paired test of ``a - b``. Mappings pair by key (the seed), keeping the keys where both values
    are finite; sequences pair by position and must have equal lengths."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        keys = sorted(k for k in a if k in b)
        xs = np.array([float(a[k]) for k in keys])
        ys = np.array([float(b[k]) for k in keys])
    else:
        xs, ys = np.array(a, dtype=np.float64), np.array(b, dtype=np.float64)
        if xs.shape != ys.shape:
            raise ValueError(f"paired_test: {xs.size} values against {ys.size}: pairs need equal lengths")
    both = np.isfinite(xs) & np.isfinite(ys)
    return one_sample_test(xs[both] - ys[both], alpha, power, confidence)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values; NaN entries stay NaN and do not count as comparisons."""
    p = np.array(p_values, dtype=np.float64)
    tested = np.flatnonzero(np.isfinite(p))
    order = tested[np.argsort(p[tested], kind="stable")]
    m = order.size
    out = np.full(p.shape, np.nan)
    out[order] = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    return out.tolist()
