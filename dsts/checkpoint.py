"""Checkpoints and saved models: everything a run needs to resume bit for bit, and the trained model.

Both are plain dicts of tensors, numbers and strings, so that they load with
``torch.load(weights_only=True)``: no arbitrary pickle is ever executed. Both are written
atomically, and both carry the hash of the config they belong to: a file of another config is
refused with one line, never silently used or overwritten.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dsts.config import Config
from dsts.errors import DSTSError
from dsts.files import atomic_write
from dsts.model import build_model

FORMAT = 1


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` through :func:`dsts.files.atomic_write`: a kill never leaves half a file."""
    with atomic_write(path, "wb") as handle:
        torch.save(obj, handle)


def safe_load(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise DSTSError(f"{path}: no such checkpoint")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DSTSError(f"{path}: not a readable checkpoint ({first[:160]})") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise DSTSError(f"{path}: not a DSTS-Bench checkpoint (format {FORMAT})")
    return obj


def rng_state(generators: dict[str, torch.Generator] | None = None) -> dict[str, Any]:
    """Python, numpy and torch RNG states (and any named generators), in weights-only-safe types."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": version, "mt": torch.tensor(mt, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "generators": {name: g.get_state() for name, g in (generators or {}).items()},
    }
    return state


def set_rng_state(state: dict[str, Any], generators: dict[str, torch.Generator] | None = None) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["mt"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state(
        (npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["cached"])
    )
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for name, g in (generators or {}).items():
        if name in state["generators"]:
            g.set_state(state["generators"][name])


def _load_of(path: str | Path, cfg: Config, device_type: str | None, what: str, fix: str) -> dict[str, Any]:
    """The file's dict if it was made with ``cfg``'s training settings (:data:`dsts.config.TRAIN_KEYS`)
    on ``device_type`` (None: the device type the file records), else one clear error."""
    state = safe_load(path)
    want = cfg.train_hash(device_type or str(state.get("device_type", "cpu")))
    if state.get("config_hash") != want:
        raise DSTSError(
            f"{path}: {what} of another config (training settings {state.get('config_hash')}, "
            f"this run's are {want}); {fix}"
        )
    return state


def state_dict_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 over every entry's name, dtype, shape and bytes, in name order: equal digests mean
    byte-identical weights and buffers."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def load_checkpoint(path: str | Path, cfg: Config, device_type: str) -> dict[str, Any]:
    """A checkpoint of these training settings, or one clear error (nothing is overwritten)."""
    return _load_of(
        path, cfg, device_type, "checkpoint", "move it away or restore the params it was trained with"
    )


def save_model(
    path: str | Path,
    model: nn.Module,
    cfg: Config,
    num_classes: int,
    class_names: list[str],
    class_cues: list,
    history: list[dict[str, float]],
    device_type: str,
) -> None:
    """The trained model with what evaluation needs: its config, the device type it was trained on,
    classes and learning curves. Nothing that differs between two runs of the same config (no run
    id, no timing): the same seed gives the same bytes."""
    atomic_save(
        {
            "format": FORMAT,
            "config": cfg.to_dict(),
            "config_hash": cfg.train_hash(device_type),
            "device_type": device_type,
            "model": model.state_dict(),
            "num_classes": num_classes,
            "class_names": class_names,
            "class_cues": [c if isinstance(c, str) else "" for c in class_cues],
            "history": history,
        },
        path,
    )


def load_model(path: str | Path, cfg: Config, device: torch.device | None = None) -> tuple[nn.Module, dict]:
    """The trained model of ``cfg`` from ``path`` in evaluation mode; a model trained with other
    training settings is one clear error (evaluation settings may differ; so may the device)."""
    state = _load_of(path, cfg, None, "trained model", "rerun the train stage")
    model = build_model(cfg, num_classes=int(state["num_classes"]))
    model.load_state_dict(state["model"])
    model.to(device or torch.device("cpu")).eval()
    return model, state
