"""build_model: the variants, the checks, split_parameters on the whole model, and the routing
properties that fixed the defaults of tau, the scoring kernels' scale and small3d's last block."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import dsts
from dsts.config import Config, ConfigError, DSTSConfig, ModelConfig, load_config
from dsts.errors import DSTSError
from dsts.layers import DEFAULT_ROUTING, DEFAULT_SCORE_INIT_STD, DEFAULT_TAU, DSTSLayer
from dsts.model import DSTSNet, build_model


def config(**dsts_kw) -> Config:
    cfg = Config()
    return dataclasses.replace(
        cfg, model=dataclasses.replace(cfg.model, dsts=dataclasses.replace(cfg.model.dsts, **dsts_kw))
    )


def test_the_config_defaults_are_the_module_defaults():
    d = DSTSConfig()
    assert (d.tau, d.routing, d.score_init_std) == (DEFAULT_TAU, DEFAULT_ROUTING, DEFAULT_SCORE_INIT_STD)
    params = load_config("params.yaml").model.dsts
    assert (params.tau, params.routing, params.score_init_std) == (d.tau, d.routing, d.score_init_std)


@pytest.mark.parametrize(
    "kw,layers,neurons",
    [({}, 2, 4), ({"num_neurons": 1}, 2, 1), ({"specialization": "3d"}, 2, 4), ({"enabled": False}, 0, 0)],
)
def test_build_model_variants_map_clips_to_logits(kw, layers, neurons):
    torch.manual_seed(0)
    model = build_model(config(**kw), num_classes=7)
    assert isinstance(model, DSTSNet) and isinstance(model.head, torch.nn.Linear)
    assert model.head.out_features == 7
    if layers == 0:
        assert model.dsts is None
    else:
        assert isinstance(model.dsts, dsts.DSTS) and len(model.dsts.layers) == layers
        assert all(layer.num_neurons == neurons for layer in model.dsts.layers)
    x = torch.randn(3, 3, 8, 56, 56)
    for training in (True, False):
        model.train(training)
        logits = model(x)
        assert logits.shape == (3, 7) and torch.isfinite(logits).all()
        if model.dsts is not None:
            assert model.dsts.last_selection.shape == (3, layers)


def test_build_model_takes_every_dsts_setting():
    model = build_model(
        config(
            routing="dense",
            tau=2.5,
            gate_noise_std=0.3,
            gate_noise="truncated",
            p_hard=0.7,
            score_init_std=0.01,
        ),
        num_classes=3,
    )
    layer = model.dsts.layers[0]
    assert (layer.routing, layer.tau, layer.gate_noise_std, layer.gate_noise, layer.p_hard) == (
        "dense",
        2.5,
        0.3,
        "truncated",
        0.7,
    )
    assert abs(layer.score_weight.std().item() - 0.01) < 0.001


def test_num_classes_comes_from_the_argument_or_the_config():
    cfg = config()
    with pytest.raises(ConfigError, match="data.num_classes"):
        build_model(cfg)
    with_classes = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, num_classes=5))
    assert build_model(with_classes).head.out_features == 5
    assert build_model(with_classes, num_classes=9).head.out_features == 9


def test_channels_must_match_the_backbone():
    cfg = config(channels=32)
    with pytest.raises(ConfigError, match="model.dsts.channels") as info:
        build_model(cfg, num_classes=4)
    assert "\n" not in str(info.value) and "64" in str(info.value)
    torchvision_cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, backbone="r3d_18"))
    with pytest.raises(ConfigError, match="512"):
        build_model(torchvision_cfg, num_classes=4)


def test_a_torchvision_backbone_model():
    cfg = config(channels=512, num_layers=1, num_neurons=2)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, backbone="r2plus1d_18"))
    model = build_model(cfg, num_classes=4).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 8, 32, 32)).shape == (1, 4)


def test_missing_pretrained_file_is_a_dsts_error(tmp_path):
    cfg = config()
    cfg = dataclasses.replace(cfg, model=ModelConfig(pretrained=str(tmp_path / "small3d.pt")))
    with pytest.raises(DSTSError, match="small3d.pt"):
        build_model(cfg, num_classes=4)


@pytest.mark.parametrize("kw", [{}, {"specialization": "3d"}, {"enabled": False}])
def test_split_parameters_on_the_model(kw):
    """Disjoint, together every trainable parameter; upstream is exactly the scoring kernels and
    gates of the DSTS layers."""
    model = build_model(config(**kw), num_classes=5)
    upstream, downstream = dsts.split_parameters(model)
    named = dict(model.named_parameters())
    assert set(upstream).isdisjoint(downstream)
    assert set(upstream) | set(downstream) == {n for n, p in named.items() if p.requires_grad}
    expected = {
        f"{prefix}.{attr}" if prefix else attr
        for prefix, module in model.named_modules()
        if isinstance(module, DSTSLayer)
        for attr in ("score_weight", "gate")
        if hasattr(module, attr)
    }
    assert set(upstream) == expected
    assert all(upstream[n] is named[n] and downstream.get(n) is None for n in expected)
    if kw.get("enabled", True):
        assert len(expected) == (2 if kw.get("specialization") == "3d" else 4)
    else:
        assert not upstream


def test_the_selection_is_not_saturated_at_initialisation():
    """On the CPU default shapes (small3d features of a normalized random clip, N = 4), the mean
    entropy of selection_probs at initialisation is well above a saturated one's, and every neuron
    gets samples from the hard Gumbel selection."""
    torch.manual_seed(0)
    model = build_model(config(), num_classes=10).train()
    with torch.no_grad():
        features = model.backbone(torch.randn(16, 3, 8, 56, 56))
        layer = model.dsts.layers[0]
        probs = layer.selection_probs(features)
        entropy = -(probs * probs.clamp_min(1e-30).log()).sum(-1).mean().item()
        assert entropy > 0.5 * math.log(4)
        model.dsts(features.repeat(8, 1, 1, 1, 1))
    assert len(model.dsts.last_selection[:, 0].unique()) == 4


def test_evaluation_routing_has_no_common_mode_at_initialisation():
    """With small3d's centred features, the first layer's spikes have a batch mean of zero for every
    neuron (``v_i = w_i . sum_p x`` and ``sum_p x`` is centred by BatchNorm), so the argmax (the
    evaluation routing) depends on the clip and spreads the clips over the neurons."""
    torch.manual_seed(1)
    model = build_model(config(), num_classes=10).train()
    with torch.no_grad():
        features = model.backbone(torch.randn(32, 3, 8, 56, 56)).double()
        v = model.dsts.layers[0].spikes(features)
    assert v.abs().max() > 10 * v.mean(0).abs().max()
    usage = torch.bincount(v.argmax(-1), minlength=4)
    assert (usage > 0).sum() >= 3


def test_default_adamw_steps_do_not_collapse_the_routing():
    """At the default AdamW learning rate for the upstream parameters, a few dozen steps on random
    clips leave selection_probs far from one-hot and the hard selection on
    several neurons in every layer."""
    from dsts.udl import split_parameters

    torch.manual_seed(0)
    cfg = config()
    model = build_model(cfg, num_classes=4).train()
    upstream, downstream = split_parameters(model)
    opts = [
        torch.optim.AdamW(upstream.values(), lr=cfg.train.upstream_lr, weight_decay=cfg.train.weight_decay),
        torch.optim.AdamW(downstream.values(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay),
    ]
    gen = torch.Generator().manual_seed(0)
    inputs: dict[int, torch.Tensor] = {}
    for j, layer in enumerate(model.dsts.layers):
        layer.register_forward_pre_hook(lambda m, args, j=j: inputs.__setitem__(j, args[0].detach()))
    for _ in range(20):
        x = torch.randn(8, 3, 8, 32, 32, generator=gen)
        y = torch.randint(0, 4, (8,), generator=gen)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        for opt in opts:
            opt.zero_grad()
        loss.backward()
        for opt in opts:
            opt.step()
    for j, layer in enumerate(model.dsts.layers):
        probs = layer.selection_probs(inputs[j])
        entropy = -(probs * probs.clamp_min(1e-30).log()).sum(-1).mean().item()
        # it sharpens (the router learns), but 20 steps on random labels do not make it one-hot; at
        # the 16-epoch study's lr of 3e-3 it falls to about a fifth of log N in these 20 steps
        assert entropy > 0.1 * math.log(4), j


@settings(max_examples=6, deadline=None)
@given(
    variant=st.sampled_from([{"enabled": False}, {}, {"specialization": "3d"}]),
    seed=st.integers(0, 2**16),
    training=st.booleans(),
)
def test_channels_last_is_a_layout_not_another_model(variant, seed, training):
    """The oracle is the same model in the default layout: ``train.channels_last`` must give the same
    initial weights, stored channels-last, and the same logits and parameter gradients up to the
    rounding of other kernels."""
    base = config(**variant)
    last = dataclasses.replace(base, train=dataclasses.replace(base.train, channels_last=True))
    a, b = build_model(base, num_classes=5, seed=seed), build_model(last, num_classes=5, seed=seed)
    for (name, wa), wb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(wa, wb), name
        if wa.dim() == 5:
            assert wb.is_contiguous(memory_format=torch.channels_last_3d) and not wb.is_contiguous(), name
    x = torch.randn(4, 3, 4, 16, 16, generator=torch.Generator().manual_seed(seed))
    y = torch.arange(4) % 5
    grads = []
    for model in (a, b):
        model.train(training)
        torch.manual_seed(seed)  # the same dropout masks (DSTS's draws have the model's own generator)
        logits = model(x)
        torch.nn.functional.cross_entropy(logits, y).backward()
        grads.append(
            (logits.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None})
        )
    (la, ga), (lb, gb) = grads
    torch.testing.assert_close(lb, la, rtol=1e-4, atol=1e-5)
    assert ga.keys() == gb.keys() and ga
    for name in ga:
        torch.testing.assert_close(gb[name], ga[name], rtol=1e-3, atol=1e-5, msg=name)
