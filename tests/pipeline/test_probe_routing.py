"""One default temperature carries across backbones, and no common mode collapses the routing:
at initialisation, on generated clips of several classes, in training mode, with N = 4 and L = 2."""

from __future__ import annotations

import pytest

from dsts.layers import DEFAULT_TAU
from pipeline.probe_routing import generated_clips, probe


@pytest.fixture(scope="module")
def clips():
    return generated_clips(32)


@pytest.mark.parametrize(
    ("backbone", "seed"),
    [("small3d", 0), ("small3d", 1), pytest.param("r2plus1d_18", 0, marks=pytest.mark.slow)],
)
def test_the_default_tau_neither_saturates_nor_tosses_a_coin_and_nothing_collapses(clips, backbone, seed):
    layers = probe(backbone, clips, DEFAULT_TAU, seed)
    for j, layer in enumerate(layers):
        assert 0.5 <= layer["entropy"] <= 0.99, (j, layer)
    assert layers[0]["max_share"] <= 0.9, layers[0]
