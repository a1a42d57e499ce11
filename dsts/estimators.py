"""The two discrete estimators of DSTS: Gumbel-Softmax selection and Improved Semhash gates.

Noise is drawn from ``generator`` when one is given, else from the global CPU RNG (so that
``torch.manual_seed`` / ``torch.get_rng_state`` replay it on every device), and moved to the
logits' device. Low-precision logits (bf16/fp16, e.g. under autocast) are processed in float32:
that is where past NaN bugs came from.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

GateNoise = Literal["normal", "truncated"]


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; everything else is computed in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _draw_device(generator: torch.Generator | None) -> torch.device:
    return torch.device("cpu") if generator is None else generator.device


def uniform_noise(
    shape: tuple[int, ...],
    dtype: torch.dtype,
    device: torch.device | str,
    generator: torch.Generator | None = None,
) -> Tensor:
    """``U[0, 1)`` of ``shape``, drawn from ``generator`` (or the global CPU RNG), on ``device``."""
    u = torch.rand(shape, dtype=_work_dtype(dtype), device=_draw_device(generator), generator=generator)
    return u.to(device)


def gumbel_noise(
    shape: tuple[int, ...],
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
) -> Tensor:
    """Standard Gumbel noise ``-log(-log(u))``, finite everywhere.

    ``u`` is clamped into ``[tiny, 1 - eps]`` so that neither logarithm sees 0: the noise lies in
    about ``[-4.5, 88]`` in float32 and ``[-6.6, 708]`` in float64, never inf or NaN.
    """
    work = _work_dtype(dtype)
    info = torch.finfo(work)
    u = torch.rand(shape, dtype=work, device=_draw_device(generator), generator=generator)
    u = u.clamp(min=info.tiny, max=1.0 - info.eps)
    return (-torch.log(-torch.log(u))).to(device)


def gumbel_select(
    logits: Tensor,
    tau: float = 1.0,
    hard: bool = True,
    noise: bool = True,
    generator: torch.Generator | None = None,
    *,
    gumbels: Tensor | None = None,
) -> Tensor:
    """Gumbel-Softmax over the last axis of ``logits`` ``(B, N)``.

    Soft: ``softmax((logits + g) / tau)``; hard: the one-hot of its argmax with the soft sample's
    gradient (straight-through). Written ``y_hard + (y_soft - y_soft.detach())`` rather than
    ``y_hard - y_soft.detach() + y_soft``: the same gradient, and a forward that is exactly one-hot.
    ``noise=False`` uses ``g = 0`` (argmax of the logits when hard); ``gumbels`` passes a fixed
    noise sample instead of drawing one (tests and the DSTS layer's draw order use it).
    The maximum is subtracted (detached; softmax is shift-invariant, so value and gradient are
    unchanged) before dividing by ``tau``, so that extreme logits or temperatures cannot overflow.
    """
    if tau <= 0:
        raise ValueError(f"gumbel_select: tau must be > 0, got {tau}")
    work = _work_dtype(logits.dtype)
    z = logits.to(work)
    if gumbels is not None:
        z = z + gumbels.to(device=z.device, dtype=work)
    elif noise:
        z = z + gumbel_noise(tuple(z.shape), work, z.device, generator)
    z = z - z.detach().amax(dim=-1, keepdim=True)
    y_soft = torch.softmax(z / tau, dim=-1)
    if not hard:
        return y_soft
    index = z.detach().argmax(dim=-1, keepdim=True)
    y_hard = torch.zeros_like(y_soft).scatter_(-1, index, 1.0)
    return y_hard + (y_soft - y_soft.detach())


def saturating_sigmoid(x: Tensor) -> Tensor:
    """``clamp(1.2 * sigmoid(x) - 0.1, 0, 1)``: reaches exactly 0 and 1 at ``|x| >= log 11``."""
    return torch.clamp(1.2 * torch.sigmoid(x) - 0.1, 0.0, 1.0)


def semhash_noise(
    shape: tuple[int, ...],
    std: float,
    kind: GateNoise = "normal",
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
) -> Tensor:
    """Gate noise: ``N(0, std^2)``, or (tensor2tensor's form) the normal truncated at ``±2 std``."""
    work = _work_dtype(dtype)
    draw = _draw_device(generator)
    if kind == "normal":
        n = torch.randn(shape, dtype=work, device=draw, generator=generator)
    elif kind == "truncated":
        n = torch.empty(shape, dtype=work, device=draw)
        torch.nn.init.trunc_normal_(n, 0.0, 1.0, -2.0, 2.0, generator=generator)
    else:
        raise ValueError(f"semhash_noise: kind must be 'normal' or 'truncated', got {kind!r}")
    return (n * std).to(device)


def improved_semhash(
    logits: Tensor,
    training: bool,
    noise_std: float = 1.0,
    p_hard: float = 0.5,
    generator: torch.Generator | None = None,
    *,
    noise: GateNoise = "normal",
    noise_sample: Tensor | None = None,
    hard_mask: Tensor | None = None,
) -> Tensor:
    """Improved Semhash (Kaiser and Bengio 2018): gate logits -> decisions in ``[0, 1]``.

    Training: ``g_n = logits + noise``; soft ``saturating_sigmoid(g_n)``; hard ``1[g_n > 0]`` with
    the soft value's gradient (written ``hard + (soft - soft.detach())``, so a hard entry is exactly 0
    or 1); each element is hard with probability ``p_hard``. Draw order: the
    noise (``logits.shape``), then the hard/soft mask (``logits.shape``); ``noise_sample`` and
    ``hard_mask`` (bool, True = hard) replace the draws. Evaluation: exactly ``1[logits > 0]``.
    """
    if not training:
        return (logits > 0).to(logits.dtype)
    if not 0.0 <= p_hard <= 1.0:
        raise ValueError(f"improved_semhash: p_hard must be in [0, 1], got {p_hard}")
    work = _work_dtype(logits.dtype)
    shape = tuple(logits.shape)
    if noise_sample is None:
        noise_sample = semhash_noise(shape, noise_std, noise, work, logits.device, generator)
    if hard_mask is None:
        hard_mask = uniform_noise(shape, work, logits.device, generator) < p_hard
    g = logits.to(work) + noise_sample.to(device=logits.device, dtype=work)
    soft = saturating_sigmoid(g)
    hard = (g > 0).to(work)
    hard_st = hard + (soft - soft.detach())
    return torch.where(hard_mask.to(logits.device), hard_st, soft)
