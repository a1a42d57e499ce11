"""dsts.stats against oracles that do not use scipy: printed t tables and R outputs, closed-form t
distributions, hand-worked examples, loops over every sign pattern, Holm's published procedure,
a numpy quadrature of the noncentral t, and fixed-seed simulations of the test itself."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import dsts.stats as S

# ---------------------------------------------------------------------------------------------
# oracles

T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 9: 2.262, 10: 2.228, 30: 2.042}  # printed t table


def t_quantile_closed_form(p: float, df: int) -> float:
    """Exact quantiles of Student's t with 1, 2 and 4 degrees of freedom."""
    if df == 1:
        return math.tan(math.pi * (p - 0.5))
    if df == 2:
        return (2 * p - 1) / math.sqrt(2 * p * (1 - p))
    a = 4 * p * (1 - p)
    q = math.cos(math.acos(math.sqrt(a)) / 3) / math.sqrt(a)
    return math.copysign(2 * math.sqrt(q - 1), p - 0.5)


def two_sided_p_closed_form(t: float, df: int) -> float:
    """``P(|T| >= |t|)`` of Student's t with 1, 2 and 4 degrees of freedom."""
    x = abs(t)
    if df == 1:
        return 1 - 2 * math.atan(x) / math.pi
    if df == 2:
        return 1 - x / math.sqrt(2 + x * x)
    u = 1 + x * x / 4
    return 1 - 0.75 * x / math.sqrt(u) * (1 - x * x / (12 * u))


def power_by_quadrature(effect: float, n: int, critical: float) -> float:
    """``P(T' > critical)`` for ``T' = (Z + effect sqrt(n)) / sqrt(V / df)``, ``V ~ chi2(df)``:
    the normal tail integrated against the chi-square density, numpy and math only."""
    df = n - 1
    v = np.linspace(1e-9, 40.0 + 20.0 * df, 400_001)
    log_density = (df / 2 - 1) * np.log(v) - v / 2 - (df / 2) * math.log(2) - math.lgamma(df / 2)
    z = critical * np.sqrt(v / df) - effect * math.sqrt(n)
    tail = 0.5 * np.vectorize(math.erfc)(z / math.sqrt(2))
    return float(np.trapezoid(tail * np.exp(log_density), v))


def sign_flip_by_loop(d: list[int]) -> float:
    observed = abs(sum(d))
    hits = sum(
        abs(sum(s * x for s, x in zip(signs, d))) >= observed
        for signs in itertools.product((1, -1), repeat=len(d))
    )
    return hits / 2 ** len(d)


def holm_rejections(p: list[float], alpha: float) -> set[int]:
    """Holm's procedure as published: reject in increasing order while p_(k) <= alpha / (m - k + 1)."""
    rejected = set()
    for k, i in enumerate(sorted(range(len(p)), key=lambda i: p[i])):
        if p[i] > alpha / (len(p) - k):
            break
        rejected.add(i)
    return rejected


accuracies = st.floats(0, 1, allow_nan=False)
dyadic = st.integers(-4096, 4096).map(lambda i: i / 1024)  # exact sums and differences in float64
small_n = st.sampled_from([2, 3, 5])  # 1, 2 and 4 degrees of freedom: closed forms exist

# ---------------------------------------------------------------------------------------------
# mean, sd and t interval


@pytest.mark.parametrize("df", sorted(T975))
def test_interval_uses_the_printed_t_table(df):
    xs = [0.0] * df + [1.0]  # n = df + 1 values
    s = S.summarize(xs)
    se = np.std(xs, ddof=1) / math.sqrt(df + 1)
    assert round((s.ci_high - s.mean) / se, 3) == T975[df]
    assert s.mean - s.ci_low == pytest.approx(s.ci_high - s.mean, rel=1e-12)


@given(
    n=small_n, values=st.lists(accuracies, min_size=5, max_size=5), conf=st.sampled_from([0.9, 0.95, 0.99])
)
def test_summarize_against_numpy_and_closed_form_quantiles(n, values, conf):
    xs = values[:n]
    s = S.summarize(xs, conf)
    arr = np.array(xs)
    half = t_quantile_closed_form(0.5 + conf / 2, arr.size - 1) * arr.std(ddof=1) / math.sqrt(arr.size)
    assert s.n == arr.size
    assert s.mean == pytest.approx(arr.mean(), abs=1e-15)
    assert s.sd == pytest.approx(arr.std(ddof=1), rel=1e-12, abs=1e-15)
    assert s.ci_low == pytest.approx(arr.mean() - half, rel=1e-9, abs=1e-12)
    assert s.ci_high == pytest.approx(arr.mean() + half, rel=1e-9, abs=1e-12)


def test_summarize_small_and_constant_samples():
    one = S.summarize([0.4])
    assert (one.n, one.mean) == (1, 0.4)
    assert math.isnan(one.sd) and math.isnan(one.ci_low) and math.isnan(one.ci_high)
    none = S.summarize([])
    assert none.n == 0 and math.isnan(none.mean)
    assert S.summarize([0.3, math.nan, 0.5, math.inf]).n == 2  # non-finite values are left out
    same = S.summarize([0.1, 0.1, 0.1])  # a float mean of 0.1 three times is not 0.1
    assert (same.mean, same.sd, same.ci_low, same.ci_high) == (0.1, 0.0, 0.1, 0.1)


# ---------------------------------------------------------------------------------------------
# t-tests


def test_paired_t_test_worked_by_hand():
    # d = 0.02, 0.04, 0.06: mean 0.04, sd 0.02, t = 0.04 / (0.02 / sqrt 3) = 2 sqrt 3 on 2 df,
    # p = 1 - t / sqrt(2 + t^2) = 1 - sqrt(12 / 14) = 0.0742; CI 0.04 +- 4.303 * 0.02 / sqrt 3
    res = S.paired_test([0.52, 0.54, 0.66], [0.50, 0.50, 0.60])
    assert res.n == 3
    assert res.diff_mean == pytest.approx(0.04) and res.diff_sd == pytest.approx(0.02)
    assert res.t == pytest.approx(2 * math.sqrt(3))
    assert round(res.p_value, 4) == 0.0742
    assert round(res.ci_low, 4) == -0.0097 and round(res.ci_high, 4) == 0.0897
    assert res.p_sign_flip == 0.25  # only all-plus and all-minus reach |0.12|


def test_paired_t_test_on_the_sleep_data():
    # R: t.test(extra ~ group, data = sleep, paired = TRUE): t = -4.0621, df = 9, p-value = 0.002833,
    # 95 percent confidence interval -2.4598858 -0.7001142, mean difference -1.58
    group1 = [0.7, -1.6, -0.2, -1.2, -0.1, 3.4, 3.7, 0.8, 0.0, 2.0]
    group2 = [1.9, 0.8, 1.1, 0.1, -0.1, 4.4, 5.5, 1.6, 4.6, 3.4]
    res = S.paired_test(group1, group2)
    assert res.n == 10 and res.diff_mean == pytest.approx(-1.58)
    assert round(res.t, 4) == -4.0621
    assert round(res.p_value, 6) == 0.002833
    assert round(res.ci_low, 7) == -2.4598858 and round(res.ci_high, 7) == -0.7001142


@given(data=st.lists(st.tuples(accuracies, accuracies), min_size=2, max_size=5))
def test_paired_test_against_the_literal_formula(data):
    a, b = [x for x, _ in data], [y for _, y in data]
    d = np.array(a) - np.array(b)
    res = S.paired_test(a, b)
    assert 0.0 <= res.p_value <= 1.0
    assert res.diff_mean == pytest.approx(d.mean(), abs=1e-15)
    if d.size in (2, 3, 5) and d.std(ddof=1) > 1e-9:
        t = d.mean() / (d.std(ddof=1) / math.sqrt(d.size))
        assert res.t == pytest.approx(t, rel=1e-9)
        assert res.p_value == pytest.approx(two_sided_p_closed_form(t, d.size - 1), rel=1e-7, abs=1e-12)


@given(data=st.lists(st.tuples(accuracies, accuracies), min_size=0, max_size=8))
def test_paired_test_swap_symmetry(data):
    a, b = [x for x, _ in data], [y for _, y in data]
    ab, ba = S.paired_test(a, b), S.paired_test(b, a)
    assert ab.n == ba.n
    for x, y in ((ab.p_value, ba.p_value), (ab.p_sign_flip, ba.p_sign_flip), (ab.mdd, ba.mdd)):
        assert (math.isnan(x) and math.isnan(y)) or x == y
    assert (math.isnan(ab.diff_mean) and math.isnan(ba.diff_mean)) or ab.diff_mean == -ba.diff_mean
    if ab.n >= 2:
        assert ab.ci_low == pytest.approx(-ba.ci_high, abs=1e-15)


@given(data=st.lists(st.tuples(dyadic, dyadic, dyadic), min_size=1, max_size=8))
def test_a_shared_per_seed_offset_cancels(data):
    a, b = [x for x, _, _ in data], [y for _, y, _ in data]
    one = S.paired_test(a, b)
    two = S.paired_test([x + o for x, _, o in data], [y + o for _, y, o in data])
    for u, v in zip(vars(one).values(), vars(two).values()):
        assert (math.isnan(u) and math.isnan(v)) or u == v


@given(n=st.integers(2, 12), value=dyadic)
def test_equal_differences(n, value):
    res = S.paired_test([0.5 + value] * n, [0.5] * n)
    if value == 0.0:
        assert res.p_value == 1.0 and res.t == 0.0 and res.p_sign_flip == 1.0
    else:
        assert res.p_value == 0.0 and math.isinf(res.t)
        assert res.p_sign_flip == 2.0 ** (1 - n)
    assert res.ci_low == res.ci_high == res.diff_mean
    assert res.mdd == 0.0


def test_pairs_by_seed_and_needs_two_pairs():
    res = S.paired_test({0: 0.5, 1: 0.6, 2: 0.7, 5: 0.9}, {2: 0.6, 0: 0.45, 1: 0.58, 7: 0.1})
    assert res.n == 3 and res.diff_mean == pytest.approx((0.05 + 0.02 + 0.1) / 3)
    assert S.paired_test({0: 0.5, 1: math.nan}, {0: 0.4, 1: 0.3}).n == 1  # a NaN drops its pair
    one = S.paired_test({0: 0.5}, {0: 0.4})
    assert one.n == 1 and one.diff_mean == pytest.approx(0.1)
    assert math.isnan(one.p_value) and math.isnan(one.mdd) and math.isnan(one.ci_low)
    with pytest.raises(ValueError, match="equal lengths"):
        S.paired_test([0.1, 0.2], [0.3])


def test_one_sample_test_is_the_paired_test_of_differences():
    assert S.one_sample_test([0.25, 0.5, 1.0]) == S.paired_test([1.25, 2.5, 1.0], [1.0, 2.0, 0.0])


def test_null_rejection_rate_is_alpha():
    # 3 seeds, no true difference, a large per-seed offset shared by both variants
    rng = np.random.default_rng(12345)
    sims = 4000
    offset = rng.normal(0, 0.1, (sims, 3))
    a = 0.5 + offset + rng.normal(0, 0.02, (sims, 3))
    b = 0.5 + offset + rng.normal(0, 0.02, (sims, 3))
    rate = np.mean([S.paired_test(x.tolist(), y.tolist()).p_value < 0.05 for x, y in zip(a, b)])
    assert rate == pytest.approx(0.05, abs=0.012)  # 3.5 standard errors of 4000 draws


# ---------------------------------------------------------------------------------------------
# smallest detectable difference


def test_mdd_matches_r_power_t_test():
    # R: power.t.test(n = 3, sd = 1, power = 0.8, type = "one.sample") gives delta = 3.26
    assert round(S.min_detectable_difference(1.0, 3), 2) == 3.26
    assert S.min_detectable_difference(0.02, 3) == pytest.approx(0.02 * S.min_detectable_difference(1.0, 3))
    # the shifted central t, (4.303 + 1.061) / sqrt 3 = 3.097, is about 5% short at 3 seeds
    assert S.min_detectable_difference(1.0, 3) / ((4.303 + 1.061) / math.sqrt(3)) == pytest.approx(
        1.054, abs=1e-3
    )
    # R: power.t.test(delta = 1, sd = 1, power = 0.8, type = "one.sample") gives n = 9.937864;
    # G*Power, one-sample t, d = 1, n = 10, two-tailed 0.05: actual power 0.8030962
    assert S.t_test_power(1.0, 9.937864) == pytest.approx(0.8, abs=1e-6)
    assert round(S.t_test_power(1.0, 10), 7) == 0.8030962
    assert S.min_detectable_difference(1.0, 10) < 1.0 < S.min_detectable_difference(1.0, 9)


@pytest.mark.parametrize("n", [3, 5, 11, 31])
@pytest.mark.parametrize("effect", [0.0, 0.5, 1.5, 3.0])
def test_power_against_a_quadrature_of_the_noncentral_t(n, effect):
    critical = {3: 4.302652729749464, 5: 2.7764451051977987, 11: 2.2281388519649385, 31: 2.0422724563012373}[
        n
    ]
    assert S.t_test_power(effect, n) == pytest.approx(power_by_quadrature(effect, n, critical), abs=2e-6)


def test_rejection_rate_at_the_mdd_is_the_power():
    # the test as written out (t against the table value 4.303, df 2), simulated at delta = MDD
    rng = np.random.default_rng(2024)
    mdd = S.min_detectable_difference(1.0, 3)
    d = rng.normal(mdd, 1.0, (200_000, 3))
    t = d.mean(axis=1) / (d.std(axis=1, ddof=1) / math.sqrt(3))
    assert np.mean(np.abs(t) > 4.302652729749464) == pytest.approx(0.8, abs=0.005)  # 5.6 standard errors
    shifted = (4.302652729749464 + 1.0606601717798212) / math.sqrt(3)
    d = rng.normal(shifted, 1.0, (200_000, 3))
    t = d.mean(axis=1) / (d.std(axis=1, ddof=1) / math.sqrt(3))
    assert np.mean(np.abs(t) > 4.302652729749464) < 0.78  # the central-t shortcut falls short


def test_mdd_limits_and_monotonicity():
    values = [S.min_detectable_difference(0.02, n) for n in range(2, 30)]
    assert all(x > y for x, y in zip(values, values[1:]))  # more seeds, smaller detectable difference
    assert math.isnan(S.min_detectable_difference(0.02, 1)) and math.isnan(
        S.min_detectable_difference(math.nan, 5)
    )
    assert S.min_detectable_difference(0.0, 5) == 0.0
    assert S.min_detectable_difference(0.02, 5, alpha=0.01) > S.min_detectable_difference(0.02, 5)
    assert S.min_detectable_difference(0.02, 5, power=0.9) > S.min_detectable_difference(0.02, 5)
    assert S.min_detectable_difference(0.02, 5, power=0.01) == 0.0  # below alpha / 2: no difference needed


# ---------------------------------------------------------------------------------------------
# sign-flip and Holm


def test_sign_flip_by_enumeration():
    # +-1 +-2 +-3: the 8 sums are +-6, +-4, +-2, 0, 0; only +-6 reach |6|
    assert S.sign_flip_p([1.0, 2.0, 3.0]) == 2 / 8
    # +-1 +-1 +-2: sums +-4, +-2, +-2, 0, 0; |sum| >= 2 in 6 of 8
    assert S.sign_flip_p([1.0, -1.0, 2.0]) == 6 / 8


@given(d=st.lists(st.integers(-50, 50), min_size=1, max_size=9))
def test_sign_flip_is_exact(d):
    p = S.sign_flip_p([x / 64 for x in d])  # dyadic: every sum is exact
    assert p == sign_flip_by_loop(d)
    assert 2.0 ** (1 - len(d)) <= p <= 1.0  # s and -s always tie


def test_sign_flip_limits():
    assert math.isnan(S.sign_flip_p([]))
    assert math.isnan(S.sign_flip_p([0.1] * (S.SIGN_FLIP_MAX_N + 1)))
    assert S.sign_flip_p([0.1] * S.SIGN_FLIP_MAX_N) == 2.0 ** (1 - S.SIGN_FLIP_MAX_N)
    assert S.sign_flip_p([0.0, 0.0, 0.0]) == 1.0
    assert S.sign_flip_p([0.1, 0.2, -0.3]) == 1.0  # a sum of 0 up to rounding ties with every pattern


def test_holm_worked_example_and_nan():
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1: 0.02, 0.03, 0.06, 0.04 -> running max 0.06
    assert S.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    out = S.holm([0.02, math.nan, 0.04])  # NaN is not a comparison: m = 2
    assert out[0] == pytest.approx(0.04) and math.isnan(out[1]) and out[2] == pytest.approx(0.04)
    assert S.holm([0.6, 0.7]) == [1.0, 1.0] and S.holm([]) == []


@given(ps=st.lists(st.integers(0, 997).map(lambda i: i / 997), min_size=1, max_size=12))
def test_holm_against_the_published_procedure(ps):
    adj = S.holm(ps)
    for alpha in (0.01, 0.05, 0.1):
        assert {i for i, q in enumerate(adj) if q <= alpha} == holm_rejections(ps, alpha)
    for p, q in zip(ps, adj):
        assert p <= q <= 1.0
    for i, j in itertools.product(range(len(ps)), repeat=2):
        if ps[i] < ps[j]:
            assert adj[i] <= adj[j]
