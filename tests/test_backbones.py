"""Backbones: shapes, local weight files (never a download), light imports."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dsts.backbones import BACKBONE_CHANNELS, Small3D, VideoResNetTrunk, build_backbone, load_weights
from dsts.errors import DSTSError


@settings(max_examples=10)
@given(st.integers(1, 2), st.integers(1, 9), st.integers(8, 40), st.integers(8, 40))
def test_small3d_downsamples_time_by_2_and_space_by_8(b, t, h, w):
    model = Small3D().eval()
    with torch.no_grad():
        y = model(torch.randn(b, 3, t, h, w))
    assert y.shape == (b, 64, math.ceil(t / 2), math.ceil(h / 8), math.ceil(w / 8))


def test_small3d_ends_at_batchnorm_with_centred_channels():
    """The last block has no ReLU: in training mode each output channel is exactly BatchNorm's
    output (batch mean 0, biased variance 1 with the initial affine), so it takes both signs, and
    the clips' pooled features have no common mode across the batch."""
    torch.manual_seed(0)
    model = Small3D().train()
    y = model(torch.randn(4, 3, 4, 24, 24)).detach().double()
    var, mean = torch.var_mean(y, dim=(0, 2, 3, 4), unbiased=False)
    torch.testing.assert_close(mean, torch.zeros_like(mean), rtol=0, atol=1e-5)
    torch.testing.assert_close(var, torch.ones_like(var), rtol=1e-3, atol=1e-3)
    assert (y < 0).any() and (y > 0).any()
    pooled = y.sum(dim=(2, 3, 4))
    torch.testing.assert_close(pooled.mean(0), torch.zeros(64, dtype=torch.float64), rtol=0, atol=1e-3)
    assert isinstance(model[-1][-1], torch.nn.Identity)
    assert all(any(isinstance(m, torch.nn.ReLU) for m in block) for block in list(model)[:-1])


def test_small3d_default_shape():
    with torch.no_grad():
        y = build_backbone("small3d").eval()(torch.randn(2, 3, 8, 56, 56))
    assert y.shape == (2, 64, 4, 7, 7)


@pytest.mark.parametrize("name,frames", [("r3d_18", 1), ("mc3_18", 8), ("r2plus1d_18", 1)])
def test_torchvision_trunks_stop_before_pooling(name, frames):
    """Space /16 for all three; time /8 for r3d_18 and r2plus1d_18, kept by mc3_18 (its layers 2-4
    are 2D convs, stride (1, 2, 2))."""
    trunk = build_backbone(name).eval()
    assert isinstance(trunk, VideoResNetTrunk)
    assert not any(n.startswith(("fc", "avgpool")) for n, _ in trunk.named_modules() if n)
    with torch.no_grad():
        y = trunk(torch.randn(1, 3, 8, 32, 32))
    assert y.shape == (1, BACKBONE_CHANNELS[name], frames, 2, 2)


def test_torchvision_trunk_has_the_classifier_weights_minus_fc():
    from torchvision.models.video import mc3_18

    full = mc3_18(weights=None)
    trunk = VideoResNetTrunk("mc3_18")
    expected = {k for k in full.state_dict() if not k.startswith("fc.")}
    assert set(trunk.body.state_dict()) == expected
    assert set(trunk.state_dict()) - {f"body.{k}" for k in expected} == {
        f"norm.{k}" for k in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    }


def test_a_torchvision_classifier_state_dict_loads_from_a_local_file(tmp_path):
    from torchvision.models.video import mc3_18

    torch.manual_seed(0)
    full = mc3_18(weights=None, num_classes=400)
    path = tmp_path / "mc3_18_kinetics.pth"
    torch.save(full.state_dict(), path)
    trunk = build_backbone("mc3_18", str(path))
    for key, value in trunk.body.state_dict().items():
        assert torch.equal(value, full.state_dict()[key]), key


def test_small3d_weights_round_trip(tmp_path):
    torch.manual_seed(1)
    source = Small3D()
    path = tmp_path / "small3d.pt"
    torch.save({"state_dict": source.state_dict()}, path)  # a wrapped checkpoint works too
    loaded = build_backbone("small3d", path)
    x = torch.randn(1, 3, 4, 16, 16)
    assert torch.equal(source.eval()(x), loaded.eval()(x))


def test_a_missing_weights_file_is_one_line_naming_it(tmp_path):
    missing = tmp_path / "r3d_18-kinetics400.pth"
    with pytest.raises(DSTSError) as info:
        build_backbone("r3d_18", str(missing))
    message = str(info.value)
    assert "\n" not in message and str(missing) in message and "not found" in message


def test_a_weights_file_that_does_not_fit_is_one_line(tmp_path):
    path = tmp_path / "wrong.pt"
    torch.save({"conv.weight": torch.zeros(3)}, path)
    with pytest.raises(DSTSError, match="does not match") as info:
        load_weights(Small3D(), path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)
    wrong_shape = {k: torch.zeros(1) for k in Small3D().state_dict()}
    torch.save(wrong_shape, path)
    with pytest.raises(DSTSError, match="shape"):
        load_weights(Small3D(), path)
    path.write_text("not a checkpoint")
    with pytest.raises(DSTSError, match="not a readable"):
        load_weights(Small3D(), path)


def test_unknown_backbone():
    with pytest.raises(DSTSError, match="unknown backbone"):
        build_backbone("resnet50")


def test_the_model_code_imports_without_heavy_dependencies():
    """dsts.relaxed and the model code need only torch and pyyaml; torchvision only when asked for."""
    code = (
        "import sys, dsts\n"
        "from dsts import DSTS, DSTSLayer, relaxed, build_model\n"
        "import dsts.estimators, dsts.layers, dsts.module, dsts.backbones, dsts.model\n"
        "heavy = [m for m in ('pandas', 'av', 'mlflow', 'torchvision') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
