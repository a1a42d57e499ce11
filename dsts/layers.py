"""One DSTS layer: ``N`` specialized neurons, a spike per neuron, one active neuron per sample.

Parameters of the ``N`` neurons are stacked along a first axis (docs/method.md, section 2), so that the
dense path (every neuron on every sample) and the sparse path (samples grouped by neuron) read the
same tensors. Parameters are read as attributes inside ``forward`` so that
``torch.func.functional_call`` can substitute them; running statistics are updated in place on the
buffer tensors, never rebound, so a caller that passes cloned buffers keeps the real ones untouched.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dsts.estimators import GateNoise, gumbel_noise, gumbel_select, improved_semhash, saturating_sigmoid

Specialization = Literal["st", "3d"]
Routing = Literal["dense", "sparse"]

# Chosen by measurement (validation accuracy and training time on the default study): docs/routing.md.
DEFAULT_ROUTING: Routing = "sparse"
DEFAULT_TAU = 1.0
DEFAULT_SCORE_INIT_STD = 0.1

BN_EPS = 1e-5
# delta of the selection logits' scale: far below |s(x)|^2 / |x|^2, which is about 1 or more
SCALE_FLOOR = 1e-6
BN_MOMENTUM = 0.1

# BatchNorm statistics: from the routed samples (training, and evaluation routing while the
# statistics are recomputed), from the whole batch (relaxed training), or the running ones (evaluation).
_StatsMode = Literal["routed", "batch", "running"]


def _check_choice(name: str, value: object, choices: tuple[object, ...]) -> None:
    if value not in choices:
        raise ValueError(f"DSTSLayer: {name} must be one of {', '.join(map(str, choices))}, got {value!r}")


def _temporal_conv(x: Tensor, weight: Tensor, groups: int) -> Tensor:
    """The ``(3, 1, 1)`` conv with padding ``(1, 0, 0)`` as a ``(3, 1)`` conv2d over ``(T, H*W)``:
    the same arithmetic, without conv3d's slow path for grouped convolutions on the CPU."""
    b, c, t, h, w = x.shape
    out = F.conv2d(
        x.reshape(b, c, t, h * w), weight.reshape(*weight.shape[:3], 1), padding=(1, 0), groups=groups
    )
    return out.view(b, -1, t, h, w)


def _full_precision(z: Tensor) -> Tensor:
    """BatchNorm statistics in float32 at least (autocast hands the convs' outputs over in bf16)."""
    return z.float() if z.dtype in (torch.float16, torch.bfloat16) else z


class DSTSLayer(nn.Module):
    """``N`` specialized neurons over ``C`` channels; maps ``(B, C, T, H, W)`` to the same shape.

    Per sample: spikes ``v = spikes(x)``; selection ``h`` over the dimensionless selection logits
    (:meth:`selection_logits`: ``v`` over a scale common to the sample's neurons, over ``tau``; a
    hard Gumbel-Softmax at temperature 1 with straight-through gradient in training, so the choice
    samples :meth:`selection_probs`; their argmax, that of ``v``, in evaluation; their softmax in
    relaxed mode; docs/method.md, section 2.2). The active
    neuron ``a`` gates each channel to its spatial (``b = 0``) or temporal (``b = 1``) operator by
    Improved Semhash, then ``ReLU(BN(S(X_S))) + ReLU(BN(T(X_T)))`` and the fusion conv; the output
    is ``h_a * f_a(x)``.

    ``routing="dense"`` computes every neuron on every sample and returns ``sum_i h_i f_i(x)``
    (exact straight-through gradient to every spike); ``"sparse"`` computes only ``f_a`` with the
    samples grouped by neuron (the same forward; spikes get gradient only through ``h_a``).

    Randomness (training, not relaxed), in this order whatever the routing: Gumbel noise
    ``(B, N)``, then (``"st"`` only) Semhash noise ``(B, N, C)`` and hard/soft mask ``(B, N, C)``,
    from ``generator`` (the argument, else ``self.generator``, else the global CPU RNG).
    """

    def __init__(
        self,
        channels: int,
        num_neurons: int,
        specialization: Specialization = "st",
        routing: Routing = DEFAULT_ROUTING,
        tau: float = DEFAULT_TAU,
        gate_noise_std: float = 1.0,
        gate_noise: GateNoise = "normal",
        p_hard: float = 0.5,
        score_init_std: float = DEFAULT_SCORE_INIT_STD,
    ) -> None:
        super().__init__()
        if channels < 1 or num_neurons < 1:
            raise ValueError(
                f"DSTSLayer: channels and num_neurons must be >= 1, got {channels}, {num_neurons}"
            )
        _check_choice("specialization", specialization, ("st", "3d"))
        _check_choice("routing", routing, ("dense", "sparse"))
        _check_choice("gate_noise", gate_noise, ("normal", "truncated"))
        if tau <= 0:
            raise ValueError(f"DSTSLayer: tau must be > 0, got {tau}")
        if gate_noise_std < 0:
            raise ValueError(f"DSTSLayer: gate_noise_std must be >= 0, got {gate_noise_std}")
        if score_init_std < 0:
            raise ValueError(f"DSTSLayer: score_init_std must be >= 0, got {score_init_std}")
        self.channels = channels
        self.num_neurons = num_neurons
        self.specialization: Specialization = specialization
        self.routing: Routing = routing
        self.tau = float(tau)
        self.gate_noise_std = float(gate_noise_std)
        self.gate_noise: GateNoise = gate_noise
        self.set_p_hard(p_hard)
        self.score_init_std = float(score_init_std)
        self.relaxed = False
        self.generator: torch.Generator | None = None
        self.last_selection: Tensor | None = None
        self.last_gates: Tensor | None = None
        self.last_probs: Tensor | None = None  # training: softmax of the selection logits (detached)
        # while the statistics are recomputed: per BatchNorm, the count-weighted sums of the routed
        # means and unbiased variances, and the samples per neuron (start_recompute)
        self._recompute: dict[str, Tensor] | None = None

        n, c = num_neurons, channels
        self.score_weight = nn.Parameter(torch.empty(n, c, c))
        if specialization == "st":
            self.gate = nn.Parameter(torch.empty(n, c))
            self.spatial_weight = nn.Parameter(torch.empty(n, c, c, 1, 3, 3))
            self.temporal_weight = nn.Parameter(torch.empty(n, c, c, 3, 1, 1))
            self._bn_names: tuple[str, ...] = ("bn_spatial", "bn_temporal")
        else:
            self.conv3d_weight = nn.Parameter(torch.empty(n, c, c, 3, 3, 3))
            self._bn_names = ("bn",)
        for bn in self._bn_names:
            self.register_parameter(f"{bn}_weight", nn.Parameter(torch.empty(n, c)))
            self.register_parameter(f"{bn}_bias", nn.Parameter(torch.empty(n, c)))
            self.register_buffer(f"{bn}_mean", torch.zeros(n, c))
            self.register_buffer(f"{bn}_var", torch.ones(n, c))
        # Training batches in which each neuron got at least one sample (its BN statistics moved).
        self.register_buffer("bn_num_batches_tracked", torch.zeros(n, dtype=torch.long))
        self.fusion_weight = nn.Parameter(torch.empty(n, c, c))
        self.fusion_bias = nn.Parameter(torch.empty(n, c))
        self.reset_parameters()

    def set_p_hard(self, value: float) -> None:
        """The share of Semhash entries that take the hard value (the trainer's warm-up sets it)."""
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"DSTSLayer: p_hard must be in [0, 1], got {value}")
        self.p_hard = float(value)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Operators as ``nn.Conv3d`` would initialise them; scoring kernels ``N(0, score_init_std^2)``
        (the selection logits do not depend on their scale, only the size of an optimizer's step
        relative to them does); gates ``N(0, 0.1^2)``
        (an unbiased random spatial/temporal split in evaluation); BatchNorm ``(1, 0)``."""
        self.score_weight.normal_(0.0, self.score_init_std)
        ops = ("spatial_weight", "temporal_weight") if self.specialization == "st" else ("conv3d_weight",)
        for name in (*ops, "fusion_weight"):
            weight = getattr(self, name)
            for i in range(self.num_neurons):
                nn.init.kaiming_uniform_(weight[i].view(self.channels, self.channels, -1), a=math.sqrt(5))
        bound = 1.0 / math.sqrt(self.channels)
        self.fusion_bias.uniform_(-bound, bound)
        if self.specialization == "st":
            self.gate.normal_(0.0, 0.1)
        for bn in self._bn_names:
            getattr(self, f"{bn}_weight").fill_(1.0)
            getattr(self, f"{bn}_bias").zero_()
            getattr(self, f"{bn}_mean").zero_()
            getattr(self, f"{bn}_var").fill_(1.0)
        self.bn_num_batches_tracked.zero_()

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, num_neurons={self.num_neurons}, specialization={self.specialization!r}, "
            f"routing={self.routing!r}, tau={self.tau}, p_hard={self.p_hard}"
        )

    # ----------------------------------------------------------------------------------- spikes
    def _synapse(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(s(x) (B, C), w (N, C))``: the input summed over its positions and each scoring kernel
        summed over its output channels, in float32 at least and outside autocast (a sum of
        ``T*H*W`` terms is not for bf16)."""
        work = torch.float64 if x.dtype == torch.float64 else torch.float32
        with torch.autocast(x.device.type, enabled=False):
            return x.to(work).sum(dim=(2, 3, 4)), self.score_weight.to(work).sum(dim=1)

    def spikes(self, x: Tensor) -> Tensor:
        """``v (B, N)``: the sum of every element of ``m_i(x)``, by the exact identity
        ``v_i = (sum_o m_i[o]) . (sum_p x[:, :, p])`` (a dot product instead of a conv per neuron)."""
        pooled, kernels = self._synapse(x)
        with torch.autocast(x.device.type, enabled=False):
            return pooled @ kernels.t()

    def selection_logits(self, x: Tensor) -> Tensor:
        """``(B, N)``: the spikes over a positive scale common to a sample's neurons, and over ``tau``
        (docs/method.md, section 2.2): ``v_i sqrt(C) / (nu(x) rms_i |w_i| tau)`` with
        ``nu(x)^2 = |s(x)|^2 + delta |x|^2``. The scale makes the logits dimensionless (free of the
        clip size, the channel count and the scale of the features and kernels), so one ``tau`` means
        the same on every backbone; being common to the neurons, it leaves the argmax, the neuron
        evaluation selects, that of the spikes. ``delta`` keeps the scale away from zero when the
        position sum cancels, so the logits stay smooth."""
        pooled, kernels = self._synapse(x)
        work = pooled.dtype
        with torch.autocast(x.device.type, enabled=False):
            v = pooled @ kernels.t()
            tiny = torch.finfo(work).tiny
            energy = x.to(work).square().sum(dim=(1, 2, 3, 4)).unsqueeze(1)
            nu = (pooled.square().sum(dim=1, keepdim=True) + SCALE_FLOOR * energy + tiny).sqrt()
            kernel_rms = (kernels.square().sum(dim=1).mean() + tiny).sqrt()
            return v * math.sqrt(self.channels) / (nu * kernel_rms * self.tau)

    def selection_probs(self, x: Tensor) -> Tensor:
        """``(B, N)``: the distribution the hard choice samples in training, ``softmax`` of the
        selection logits, before any Gumbel noise is drawn (no random number is drawn here). Its
        argmax is the neuron evaluation selects."""
        return torch.softmax(self.selection_logits(x), dim=-1)

    # ---------------------------------------------------------------------------------- forward
    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        if x.dim() != 5 or x.shape[1] != self.channels:
            raise ValueError(f"DSTSLayer: expected (B, {self.channels}, T, H, W), got {tuple(x.shape)}")
        gen = generator if generator is not None else self.generator
        batch, n = x.shape[0], self.num_neurons
        logits = self.selection_logits(x)
        gates: Tensor | None = None  # (B, N, C) decisions, per sample and neuron
        self.last_probs = None
        if self.relaxed:
            h = gumbel_select(logits, 1.0, hard=False, noise=False)  # softmax of the logits
            selection = h.detach().argmax(dim=-1)
            if self.specialization == "st":
                gates = saturating_sigmoid(self.gate).unsqueeze(0).expand(batch, n, self.channels)
            out = self._dense(x, h, gates, selection, "batch" if self.training else "running")
        else:
            if self.training:  # the hard choice samples softmax(logits)
                noise = gumbel_noise((batch, n), logits.dtype, logits.device, gen)
                h = gumbel_select(logits, 1.0, hard=True, gumbels=noise)
                self.last_probs = torch.softmax(logits.detach(), dim=-1)  # for the routing statistics
            else:
                h = gumbel_select(logits, 1.0, hard=True, noise=False)  # the argmax
            selection = h.detach().argmax(dim=-1)
            if self.specialization == "st":
                logits = self.gate.unsqueeze(0).expand(batch, n, self.channels)
                gates = improved_semhash(
                    logits, self.training, self.gate_noise_std, self.p_hard, gen, noise=self.gate_noise
                )
            mode: _StatsMode = "routed" if self.training or self._recompute is not None else "running"
            if self.routing == "dense":
                out = self._dense(x, h, gates, selection, mode)
            else:
                out = self._sparse(x, h, gates, selection, mode)
        self.last_selection = selection
        self.last_gates = (
            None if gates is None else gates.detach()[torch.arange(batch, device=x.device), selection]
        )
        return out

    # ------------------------------------------------------------------------------ one neuron
    def _neuron(
        self,
        i: int,
        x: Tensor,
        gates: Tensor | None,
        stats: list[tuple[Tensor, Tensor]] | None,
        routed: Tensor | None = None,
    ) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
        """``f_i`` on ``x`` with decisions ``gates (B, C)``.

        BatchNorm statistics: ``stats`` gives ``(mean, var)`` per BatchNorm of the neuron; when it
        is None they are the batch's own (biased) statistics, over the rows ``routed`` only when
        given (every row is still normalised with them). Returns the output and, when the batch's
        statistics were used, their detached ``(mean, biased var)`` for the running update.
        """
        moments: list[tuple[Tensor, Tensor]] = []
        shape = (1, -1, 1, 1, 1)

        def norm(z: Tensor, k: int) -> Tensor:
            z = _full_precision(z)
            bn = self._bn_names[k]
            weight, bias = getattr(self, f"{bn}_weight")[i], getattr(self, f"{bn}_bias")[i]
            if stats is None:
                sub = z if routed is None else z.index_select(0, routed)
                var, mean = torch.var_mean(sub, dim=(0, 2, 3, 4), unbiased=False)
                moments.append((mean.detach(), var.detach()))
            else:
                mean, var = stats[k]
            scale = weight * torch.rsqrt(var + BN_EPS)
            return (z - mean.view(shape)) * scale.view(shape) + bias.view(shape)

        if self.specialization == "st":
            assert gates is not None
            b = gates.to(x.dtype).view(*gates.shape, 1, 1, 1)
            z_s = F.conv3d(x * (1.0 - b), self.spatial_weight[i], padding=(0, 1, 1))
            z_t = _temporal_conv(x * b, self.temporal_weight[i], groups=1)
            z = F.relu(norm(z_s, 0)) + F.relu(norm(z_t, 1))
        else:
            z = F.relu(norm(F.conv3d(x, self.conv3d_weight[i], padding=1), 0))
        c = self.channels
        out = F.conv3d(z, self.fusion_weight[i].view(c, c, 1, 1, 1), self.fusion_bias[i])
        return out, moments

    def _running(self, i: int) -> list[tuple[Tensor, Tensor]]:
        return [(getattr(self, f"{bn}_mean")[i], getattr(self, f"{bn}_var")[i]) for bn in self._bn_names]

    # ------------------------------------------------------------------------------- routings
    def _dense(
        self, x: Tensor, h: Tensor, gates: Tensor | None, selection: Tensor, mode: _StatsMode
    ) -> Tensor:
        """Every neuron on every sample, ``sum_i h_i f_i(x)``. ``"routed"``: neuron ``i``'s BatchNorm
        statistics come from its routed samples only (a function of those samples alone), and every
        sample is normalised with them; a neuron without samples uses its running statistics."""
        batch, c = x.shape[:2]
        out = torch.zeros_like(x, dtype=torch.promote_types(x.dtype, h.dtype))
        counts = torch.bincount(selection, minlength=self.num_neurons)
        counts_list = counts.tolist()
        snapshot = self._snapshot() if mode == "routed" else []
        # Per BatchNorm, the routed statistics of every neuron (zeros where it got no sample).
        moments = [
            (x.new_zeros(self.num_neurons, c), x.new_zeros(self.num_neurons, c)) for _ in self._bn_names
        ]
        for i in range(self.num_neurons):
            g = None if gates is None else gates[:, i]
            if mode == "running":
                f, _ = self._neuron(i, x, g, self._running(i))
            elif mode == "batch":
                f, _ = self._neuron(i, x, g, None)
            elif counts_list[i] == 0:
                f, _ = self._neuron(i, x, g, [(mean[i], var[i]) for mean, var in snapshot])
            else:
                routed = (selection == i).nonzero().squeeze(1)
                f, own = self._neuron(i, x, g, None, routed)
                for (mean, var), (m_i, v_i) in zip(moments, own, strict=True):
                    mean[i], var[i] = m_i, v_i
            out = out + h[:, i].to(out.dtype).view(batch, 1, 1, 1, 1) * f
        if mode == "routed":
            self._update_running(moments, counts, math.prod(x.shape[2:]))
        return out

    def _sparse(
        self, x: Tensor, h: Tensor, gates: Tensor | None, selection: Tensor, mode: _StatsMode
    ) -> Tensor:
        """Only the active neuron per sample, ``h_a f_a(x)``, as one batched kernel with per-sample
        weights: each sample's operator weights are gathered from its neuron, the convs run as one
        grouped conv (``groups = B``), the fusion as one ``bmm``, and each neuron's BatchNorm
        statistics are segment sums over its samples (``index_add``): the same FLOPs as looping over
        neurons with the samples grouped by neuron, in far fewer operations.
        """
        batch, c = x.shape[:2]
        spatial = tuple(x.shape[2:])
        positions = math.prod(spatial)
        rows = torch.arange(batch, device=x.device)
        counts = torch.bincount(selection, minlength=self.num_neurons)
        moments: list[tuple[Tensor, Tensor]] = []

        def conv(inp: Tensor, weights: Tensor, padding: tuple[int, int, int]) -> Tensor:
            w = weights.index_select(0, selection)  # (B, C, C, kt, kh, kw)
            out = F.conv3d(
                inp.reshape(1, batch * c, *spatial), w.flatten(0, 1), padding=padding, groups=batch
            )
            return out.view(batch, c, *spatial)

        def norm(z: Tensor, bn: str) -> Tensor:
            z = _full_precision(z)
            weight = getattr(self, f"{bn}_weight").index_select(0, selection)
            bias = getattr(self, f"{bn}_bias").index_select(0, selection)
            if mode == "running":
                mean = getattr(self, f"{bn}_mean").index_select(0, selection)
                var = getattr(self, f"{bn}_var").index_select(0, selection)
                centred = z - mean[..., None, None, None]
            else:  # statistics of each neuron's own samples, differentiable through them
                elements = (counts * positions).clamp(min=1).to(z.dtype).unsqueeze(1)  # (N, 1)
                sums = z.new_zeros(self.num_neurons, c).index_add(0, selection, z.sum(dim=(2, 3, 4)))
                neuron_mean = sums / elements
                centred = z - neuron_mean.index_select(0, selection)[..., None, None, None]
                squares = z.new_zeros(self.num_neurons, c).index_add(
                    0, selection, centred.square().sum(dim=(2, 3, 4))
                )
                neuron_var = squares / elements
                var = neuron_var.index_select(0, selection)
                moments.append((neuron_mean.detach(), neuron_var.detach()))
            scale = weight * torch.rsqrt(var + BN_EPS)
            return centred * scale[..., None, None, None] + bias[..., None, None, None]

        if self.specialization == "st":
            assert gates is not None
            b = gates[rows, selection].to(x.dtype).view(batch, c, 1, 1, 1)
            z_s = conv(x * (1.0 - b), self.spatial_weight, (0, 1, 1))
            z_t = _temporal_conv(
                (x * b).reshape(1, batch * c, *spatial),
                self.temporal_weight.index_select(0, selection).flatten(0, 1),
                batch,
            ).view(batch, c, *spatial)
            z = F.relu(norm(z_s, "bn_spatial")) + F.relu(norm(z_t, "bn_temporal"))
        else:
            z = F.relu(norm(conv(x, self.conv3d_weight, (1, 1, 1)), "bn"))
        fusion = self.fusion_weight.index_select(0, selection)  # (B, C, C)
        bias = self.fusion_bias.index_select(0, selection).unsqueeze(-1)
        out = torch.baddbmm(bias, fusion, z.reshape(batch, c, positions)).view(batch, c, *spatial)
        if mode == "routed":
            self._update_running(moments, counts, positions)
        return out * h[rows, selection].to(out.dtype).view(batch, 1, 1, 1, 1)

    # ------------------------------------------------------------------------- running stats
    def _snapshot(self) -> list[tuple[Tensor, Tensor]]:
        """Copies of the running statistics, so that the graph never holds the buffers that are
        then updated in place."""
        return [
            (getattr(self, f"{bn}_mean").detach().clone(), getattr(self, f"{bn}_var").detach().clone())
            for bn in self._bn_names
        ]

    @torch.no_grad()
    def _update_running(self, moments: list[tuple[Tensor, Tensor]], counts: Tensor, positions: int) -> None:
        """In place on the buffers: ``running = (1 - m) running + m * batch`` (unbiased variance) for
        the neurons that got samples; the others are left exactly as they were. ``moments`` holds
        ``(mean, biased var)`` of shape ``(N, C)`` per BatchNorm, ``counts`` the samples per neuron.
        While the statistics are recomputed the batch's moments are accumulated instead."""
        elements = (counts * positions).to(torch.float64).unsqueeze(1)
        correction = elements / (elements - 1).clamp(min=1)
        if self._recompute is not None:
            weight = counts.to(torch.float64).unsqueeze(1)
            for bn, (mean, var) in zip(self._bn_names, moments, strict=True):
                self._recompute[f"{bn}_mean"] += weight * mean.to(torch.float64)
                self._recompute[f"{bn}_var"] += weight * var.to(torch.float64) * correction
            self._recompute["count"] += counts.to(torch.float64)
            return
        has = (counts > 0).unsqueeze(1)
        for bn, (mean, var) in zip(self._bn_names, moments, strict=True):
            running_mean, running_var = getattr(self, f"{bn}_mean"), getattr(self, f"{bn}_var")
            unbiased = var * correction.to(var.dtype)
            new_mean = running_mean * (1.0 - BN_MOMENTUM) + mean.to(running_mean.dtype) * BN_MOMENTUM
            new_var = running_var * (1.0 - BN_MOMENTUM) + unbiased.to(running_var.dtype) * BN_MOMENTUM
            running_mean.copy_(torch.where(has, new_mean, running_mean))
            running_var.copy_(torch.where(has, new_var, running_var))
        self.bn_num_batches_tracked.add_(has.squeeze(1).long())

    # -------------------------------------------------------------- recomputed statistics
    def start_recompute(self) -> None:
        """Begin recomputing the running statistics ("precise BatchNorm"): until
        :meth:`finish_recompute`, an evaluation-mode forward routes as in evaluation (the argmax
        neuron, deterministic gates, no draw from any generator) but normalises each neuron's samples
        with their own statistics, as training does, and accumulates those statistics. The buffers
        are untouched until :meth:`finish_recompute`."""
        if self.relaxed:
            raise ValueError("DSTSLayer: the relaxed mode keeps no running statistics to recompute")
        self._recompute = {
            name: torch.zeros_like(getattr(self, name), dtype=torch.float64) for name in self._stat_names()
        }
        self._recompute["count"] = torch.zeros_like(self.bn_num_batches_tracked, dtype=torch.float64)

    @torch.no_grad()
    def finish_recompute(self, apply: bool = True) -> None:
        """Set each neuron's running statistics to those of its routed samples over every batch since
        :meth:`start_recompute`: the mean, and the unbiased within-batch variance that training
        normalises with, each weighted by the neuron's samples in the batch. A neuron that got no
        sample keeps its statistics. ``apply=False`` discards what was accumulated."""
        acc, self._recompute = self._recompute, None
        if acc is None:
            raise RuntimeError("DSTSLayer: finish_recompute without start_recompute")
        if not apply:
            return
        count = acc["count"].unsqueeze(1)
        for name in self._stat_names():
            buffer = getattr(self, name)
            pooled = (acc[name] / count.clamp(min=1)).to(buffer.dtype)
            buffer.copy_(torch.where(count > 0, pooled, buffer))

    def _stat_names(self) -> list[str]:
        """The running-statistic buffers: ``<bn>_mean`` and ``<bn>_var`` per BatchNorm."""
        return [f"{bn}_{stat}" for bn in self._bn_names for stat in ("mean", "var")]
