"""Checkpoints and saved models: RNG state round trip, atomic writes, one-line errors, weights only,
and the refusal of a file of another config."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from dsts.checkpoint import (
    FORMAT,
    atomic_save,
    load_checkpoint,
    load_model,
    rng_state,
    safe_load,
    save_model,
    set_rng_state,
    state_dict_digest,
)
from dsts.config import load_config
from dsts.errors import DSTSError
from dsts.model import build_model


def test_rng_state_round_trip(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    g = torch.Generator().manual_seed(4)
    atomic_save({"format": FORMAT, "rng": rng_state({"g": g})}, tmp_path / "s.pt")
    expected = (random.random(), np.random.rand(), torch.rand(3), torch.rand(2, generator=g))
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    g.manual_seed(9)
    set_rng_state(safe_load(tmp_path / "s.pt")["rng"], {"g": g})
    got = (random.random(), np.random.rand(), torch.rand(3), torch.rand(2, generator=g))
    assert got[0] == expected[0] and got[1] == expected[1]
    assert torch.equal(got[2], expected[2]) and torch.equal(got[3], expected[3])


def test_atomic_save_leaves_no_temp_and_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "c.pt"
    atomic_save({"format": FORMAT, "x": 1}, path)

    class Boom:
        def __reduce__(self):
            raise RuntimeError("cannot pickle")

    with pytest.raises(RuntimeError, match="cannot pickle"):
        atomic_save({"format": FORMAT, "x": Boom()}, path)
    assert safe_load(path)["x"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_bad_checkpoints_are_one_line_errors(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(DSTSError, match="not a readable checkpoint"):
        safe_load(garbage)
    with pytest.raises(DSTSError, match="no such checkpoint"):
        safe_load(tmp_path / "absent.pt")
    cfg = load_config("params.yaml", variant="dsts", seed=0)
    other = load_config("params.yaml", variant="dsts", seed=1)
    atomic_save({"format": FORMAT, "config_hash": other.train_hash("cpu")}, tmp_path / "other.pt")
    with pytest.raises(DSTSError, match="checkpoint of another config") as info:
        load_checkpoint(tmp_path / "other.pt", cfg, "cpu")
    assert "\n" not in str(info.value)


def test_weights_only_refuses_arbitrary_pickle(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("executed",))

    torch.save({"format": FORMAT, "payload": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(DSTSError):
        safe_load(tmp_path / "evil.pt")


def test_saved_model_round_trip_and_refusal(tmp_path):
    cfg = load_config("params.yaml", variant="dsts", seed=0)
    torch.manual_seed(0)
    model = build_model(cfg, num_classes=3)
    with torch.no_grad():
        model.head.bias.add_(1.5)  # not what a fresh build gives
    history = [{"epoch": 1.0, "test/top1": 0.5}]
    save_model(
        tmp_path / "model.pt", model, cfg, 3, ["a", "b", "c"], ["spatial", None, "temporal"], history, "cuda"
    )
    loaded, saved = load_model(tmp_path / "model.pt", cfg)
    assert not loaded.training
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert saved["class_names"] == ["a", "b", "c"] and saved["class_cues"] == ["spatial", "", "temporal"]
    assert saved["history"] == history and "run_id" not in saved  # nothing that differs between runs
    other = load_config("params.yaml", variant="dsts", seed=1)
    with pytest.raises(DSTSError, match="trained model of another config") as info:
        load_model(tmp_path / "model.pt", other)
    assert "\n" not in str(info.value)
    # evaluation settings may change, and a model trained on a GPU evaluates on the CPU
    evaluation = load_config("params.yaml", variant="dsts", seed=0, overrides=["eval.batch_size=7"])
    assert load_model(tmp_path / "model.pt", evaluation)[1]["device_type"] == "cuda"


def test_state_dict_digest_sees_every_bit_name_dtype_and_shape():
    state = {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(3), "e": torch.zeros(0)}
    digest = state_dict_digest(state)
    assert digest == state_dict_digest(dict(reversed(list(state.items()))))  # order of entries
    flipped = dict(state, w=torch.tensor([1.0, 2.0]).view(torch.int32).add(1).view(torch.float32))
    renamed = {"v" if k == "w" else k: v for k, v in state.items()}
    retyped = dict(state, n=torch.tensor(3, dtype=torch.int32))
    reshaped = dict(state, w=state["w"].view(2, 1))
    assert len({digest, *(state_dict_digest(s) for s in (flipped, renamed, retyped, reshaped))}) == 5
