"""Gumbel-Softmax selection and Improved Semhash, against finite differences, the literal formulas
and statistical bounds that a wrong implementation cannot pass by luck."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from dsts.estimators import (
    gumbel_noise,
    gumbel_select,
    improved_semhash,
    saturating_sigmoid,
    semhash_noise,
    uniform_noise,
)
from tests.helpers import expensive

# Two-sided normal quantile for a per-class failure probability of 1e-8: with at most 10 classes
# per test, a correct implementation fails a bound with probability < 1e-7.
Z_BOUND = 5.73


def _logits(b: int, n: int, scale: float, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn(b, n, generator=torch.Generator().manual_seed(seed), dtype=dtype) * scale


shapes = st.tuples(st.integers(1, 6), st.integers(1, 8))
seeds = st.integers(0, 2**31 - 1)
taus = st.floats(0.05, 20.0)


# ----------------------------------------------------------------------------------- gumbel


@given(shapes, seeds, taus, st.floats(0.0, 50.0))
def test_gumbel_hard_forward_is_one_hot_of_the_noisy_argmax(shape, seed, tau, scale):
    logits = _logits(*shape, scale, seed, torch.float32)
    gumbels = gumbel_noise(shape, generator=torch.Generator().manual_seed(seed + 1))
    y = gumbel_select(logits, tau, hard=True, gumbels=gumbels)
    assert set(y.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(y.sum(-1), torch.ones(shape[0]))
    assert torch.equal(y.argmax(-1), (logits + gumbels).argmax(-1))


@given(shapes, seeds, taus)
def test_gumbel_noise_false_is_the_plain_softmax_and_argmax(shape, seed, tau):
    logits = _logits(*shape, 3.0, seed)
    soft = gumbel_select(logits, tau, hard=False, noise=False)
    torch.testing.assert_close(soft, torch.softmax(logits / tau, -1), rtol=1e-12, atol=1e-15)
    hard = gumbel_select(logits, tau, hard=True, noise=False)
    assert torch.equal(hard.argmax(-1), logits.argmax(-1))


@pytest.mark.parametrize(
    "logits,tau",
    [
        ([0.0, 0.5, -1.0, 2.0, 0.1], 1.0),
        ([0.0, 0.5, -1.0, 2.0, 0.1], 0.3),
        ([0.0, 0.5, -1.0, 2.0, 0.1], 4.0),
        ([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0], 1.0),
        ([3.0, -3.0, 0.0], 2.0),
    ],
)
def test_gumbel_max_frequencies_follow_softmax_of_the_logits(logits, tau):
    """The hard sample is distributed as softmax(logits), whatever tau (the Gumbel-max property)."""
    draws = 200_000
    probs = torch.softmax(torch.tensor(logits, dtype=torch.float64), -1)
    batch = torch.tensor(logits).expand(draws, -1)
    y = gumbel_select(batch, tau, hard=True, generator=torch.Generator().manual_seed(1234))
    freq = y.sum(0).double() / draws
    bound = Z_BOUND * torch.sqrt(probs * (1 - probs) / draws)
    assert torch.all((freq - probs).abs() <= bound), (freq, probs)
    # The bound has power: it rejects softmax(logits / t) for a temperature t != 1, the
    # distribution an estimator that scaled before sampling would give (here t = tau, or 2).
    other = torch.softmax(torch.tensor(logits, dtype=torch.float64) / (tau if tau != 1.0 else 2.0), -1)
    if (other - probs).abs().max() > 1e-3:
        assert torch.any((other - probs).abs() > 2 * bound)


@settings(max_examples=expensive())
@given(shapes, seeds, taus)
def test_gumbel_hard_backward_equals_soft_backward_with_the_noise_fixed(shape, seed, tau):
    logits = _logits(*shape, 2.0, seed).requires_grad_()
    gumbels = gumbel_noise(shape, torch.float64, generator=torch.Generator().manual_seed(seed + 7))
    weights = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed + 9))
    (g_hard,) = torch.autograd.grad(
        (gumbel_select(logits, tau, True, gumbels=gumbels) * weights).sum(), logits
    )
    (g_soft,) = torch.autograd.grad(
        (gumbel_select(logits, tau, False, gumbels=gumbels) * weights).sum(), logits
    )
    torch.testing.assert_close(g_hard, g_soft, rtol=1e-12, atol=1e-14)


@settings(max_examples=expensive())
@given(shapes, seeds, taus)
def test_gumbel_soft_path_matches_central_finite_differences(shape, seed, tau):
    logits = _logits(*shape, 2.0, seed).requires_grad_()
    gumbels = gumbel_noise(shape, torch.float64, generator=torch.Generator().manual_seed(seed + 3))
    assert torch.autograd.gradcheck(
        lambda z: gumbel_select(z, tau, hard=False, gumbels=gumbels),
        (logits,),
        eps=1e-6,
        atol=1e-7,
        rtol=1e-5,
    )


@given(
    st.lists(
        st.floats(-3e38, 3e38, allow_nan=False, allow_infinity=False).map(
            lambda v: float(torch.tensor(v, dtype=torch.float32))
        ),
        min_size=1,
        max_size=6,
    ),
    st.floats(1e-6, 1e6),
    st.booleans(),
    seeds,
)
def test_gumbel_is_finite_for_extreme_logits_and_temperatures(values, tau, hard, seed):
    logits = torch.tensor([values, values[::-1]], dtype=torch.float32, requires_grad=True)
    y = gumbel_select(logits, tau, hard=hard, generator=torch.Generator().manual_seed(seed))
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y.sum(-1), torch.ones(2), rtol=1e-5, atol=1e-5)
    (y * torch.arange(len(values), dtype=torch.float32)).sum().backward()
    assert torch.isfinite(logits.grad).all()


def test_gumbel_is_finite_in_bf16_autocast():
    logits = (torch.randn(64, 8) * 1e3).bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = gumbel_select(logits, 0.5, hard=True, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(y).all() and torch.equal(y.sum(-1), torch.ones(64))
    y[:, 0].sum().backward()
    assert torch.isfinite(logits.grad.float()).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_gumbel_noise_never_takes_log_of_zero(monkeypatch, dtype):
    """The uniform draw's extremes (0, and the largest value below 1) still give finite noise."""
    real_rand = torch.rand
    for fill in (0.0, 1.0 - torch.finfo(torch.float32).eps / 2, 1.0):
        monkeypatch.setattr(torch, "rand", lambda *a, _f=fill, **k: real_rand(*a, **k).fill_(_f))
        g = gumbel_noise((4, 3), dtype)
        assert torch.isfinite(g).all(), (fill, g)
    monkeypatch.setattr(torch, "rand", real_rand)
    g = gumbel_noise((1_000_000,), dtype, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(g).all()
    # the standard Gumbel's mean is Euler's constant, its variance pi^2 / 6
    assert abs(g.mean().item() - 0.5772156649) < 6 * math.sqrt(math.pi**2 / 6 / 1e6)


def test_gumbel_draws_come_from_the_generator_or_the_global_rng():
    logits = torch.zeros(8, 5)
    a = gumbel_select(logits, generator=torch.Generator().manual_seed(3), hard=False)
    b = gumbel_select(logits, generator=torch.Generator().manual_seed(3), hard=False)
    assert torch.equal(a, b)
    state = torch.get_rng_state()
    c = gumbel_select(logits, hard=False)
    torch.set_rng_state(state)
    d = gumbel_select(logits, hard=False)
    assert torch.equal(c, d) and not torch.equal(a, c)
    state = torch.get_rng_state()
    gumbel_select(logits, generator=torch.Generator().manual_seed(3))
    assert torch.equal(torch.get_rng_state(), state)  # a generator leaves the global RNG alone


def test_gumbel_rejects_a_non_positive_temperature():
    with pytest.raises(ValueError, match="tau"):
        gumbel_select(torch.zeros(2, 3), tau=0.0)


# ---------------------------------------------------------------------------------- semhash


@given(st.lists(st.floats(-1e30, 1e30, allow_nan=False), min_size=1, max_size=12), st.booleans())
def test_saturating_sigmoid_is_the_literal_formula(values, double):
    x = torch.tensor(values, dtype=torch.float64 if double else torch.float32)
    expected = torch.tensor(
        [min(1.0, max(0.0, 1.2 / (1.0 + math.exp(-max(-700.0, v))) - 0.1)) for v in values]
    )
    torch.testing.assert_close(saturating_sigmoid(x), expected.to(x.dtype), rtol=1e-6, atol=1e-6)


@given(st.lists(st.floats(-10, 10, allow_nan=False) | st.sampled_from([0.0, -0.0]), min_size=1, max_size=20))
def test_semhash_in_evaluation_is_exactly_the_sign_bit(values):
    logits = torch.tensor(values, dtype=torch.float64)
    state = torch.get_rng_state()
    b = improved_semhash(logits, training=False, noise_std=1.0, p_hard=0.5)
    assert torch.equal(torch.get_rng_state(), state)  # no draw
    assert b.dtype == logits.dtype
    assert torch.equal(b, torch.tensor([1.0 if v > 0 else 0.0 for v in values], dtype=torch.float64))


@given(st.integers(1, 6), st.integers(1, 10), seeds, st.floats(0.0, 3.0), st.floats(0.0, 1.0))
def test_semhash_in_training_mixes_exact_hard_bits_and_soft_values(rows, cols, seed, std, p_hard):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, cols, generator=gen, dtype=torch.float64) * 3
    noise = torch.randn(rows, cols, generator=gen, dtype=torch.float64) * std
    mask = torch.rand(rows, cols, generator=gen) < p_hard
    b = improved_semhash(logits, True, std, p_hard, noise_sample=noise, hard_mask=mask)
    noisy = logits + noise
    assert torch.all((b >= 0) & (b <= 1))
    # hard entries are exactly the positive-sign bit of the noisy logit, soft ones the saturating sigmoid
    assert torch.equal(b[mask], (noisy[mask] > 0).double())
    torch.testing.assert_close(b[~mask], saturating_sigmoid(noisy[~mask]), rtol=1e-14, atol=1e-15)
    drawn = improved_semhash(logits, True, std, p_hard, generator=gen)
    assert torch.all((drawn >= 0) & (drawn <= 1))


@settings(max_examples=expensive())
@given(st.integers(1, 5), st.integers(1, 8), seeds, st.floats(0.0, 2.0), st.floats(0.0, 1.0))
def test_semhash_gradient_is_the_saturating_sigmoid_derivative_at_the_noisy_logit(
    rows, cols, seed, std, p_hard
):
    gen = torch.Generator().manual_seed(seed)
    logits = (torch.randn(rows, cols, generator=gen, dtype=torch.float64) * 3).requires_grad_()
    noise = torch.randn(rows, cols, generator=gen, dtype=torch.float64) * std
    mask = torch.rand(rows, cols, generator=gen) < p_hard
    noisy = (logits + noise).detach()
    kink = math.log(11.0)  # where the clamp starts: the derivative jumps there
    assume(torch.all((noisy.abs() - kink).abs() > 1e-4))
    b = improved_semhash(logits, True, std, p_hard, noise_sample=noise, hard_mask=mask)
    weights = torch.randn(rows, cols, generator=gen, dtype=torch.float64)
    (grad,) = torch.autograd.grad((b * weights).sum(), logits)
    eps = 1e-6
    fd = (saturating_sigmoid(noisy + eps) - saturating_sigmoid(noisy - eps)) / (2 * eps)
    torch.testing.assert_close(grad, fd * weights, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("p_hard", [0.0, 0.1, 0.5, 0.9, 1.0])
def test_semhash_hard_share_matches_p_hard(p_hard):
    """With no noise and a logit whose soft value is not 0 or 1, the hard entries are exactly the
    entries equal to 1; their share must be p_hard within a binomial bound."""
    draws = 200_000
    logits = torch.full((draws,), 0.5)
    b = improved_semhash(
        logits, True, noise_std=0.0, p_hard=p_hard, generator=torch.Generator().manual_seed(7)
    )
    soft = saturating_sigmoid(torch.tensor(0.5)).item()
    assert 0.1 < soft < 0.9
    assert torch.all((b == 1.0) | (b == soft))
    share = (b == 1.0).double().mean().item()
    bound = Z_BOUND * math.sqrt(p_hard * (1 - p_hard) / draws)
    assert abs(share - p_hard) <= bound
    assert bound < 0.007  # tight enough to tell p_hard from the neighbouring values tested


def test_semhash_noise_kinds_and_scale():
    gen = torch.Generator().manual_seed(0)
    normal = semhash_noise((200_000,), 0.5, "normal", generator=gen)
    truncated = semhash_noise((200_000,), 0.5, "truncated", generator=gen)
    assert abs(normal.std().item() - 0.5) < 0.005
    assert truncated.abs().max().item() <= 1.0  # truncated at two standard deviations
    # std of a standard normal truncated at +-2 is 0.8796
    assert abs(truncated.std().item() - 0.5 * 0.8796) < 0.005
    with pytest.raises(ValueError, match="kind"):
        semhash_noise((3,), 1.0, "uniform")  # type: ignore[arg-type]


def test_semhash_draw_order_is_noise_then_mask():
    logits = torch.randn(3, 4, 5)
    b = improved_semhash(logits, True, 0.7, 0.5, generator=torch.Generator().manual_seed(11))
    gen = torch.Generator().manual_seed(11)
    noise = semhash_noise((3, 4, 5), 0.7, generator=gen)
    mask = uniform_noise((3, 4, 5), torch.float32, "cpu", gen) < 0.5
    assert torch.equal(b, improved_semhash(logits, True, 0.7, 0.5, noise_sample=noise, hard_mask=mask))


def test_semhash_rejects_an_impossible_p_hard():
    with pytest.raises(ValueError, match="p_hard"):
        improved_semhash(torch.zeros(3), True, p_hard=1.5)
