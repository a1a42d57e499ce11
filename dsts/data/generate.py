"""Writing the generated fine-grained benchmark in Diving48's own on-disk format.

``rgb/<vid_name>.mp4``, ``Diving48_V2_{train,test}.json``, ``Diving48_vocab.json`` and
``Diving48_attributes.json`` (which cue, spatial or temporal, separates each class; see
:mod:`dsts.data.dives`). Every clip is rendered from its own seed (:mod:`dsts.data.render`) and
libx264 runs single-threaded, so a seed gives the same bytes whatever the number of processes.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

from dsts.data.dives import MAX_CLASSES, ClassSpec, attributes_document, class_specs
from dsts.data.render import render_clip
from dsts.errors import DataError

VOCAB_FILE = "Diving48_vocab.json"
ATTRIBUTES_FILE = "Diving48_attributes.json"
MARKER_FILE = "generated.json"  # what was generated; marks a folder the prepare stage may replace
FPS = 16
CRF = 18


def rgb_to_yuv420p(frame: np.ndarray) -> np.ndarray:
    """An RGB uint8 frame ``(H, W, 3)`` (even H and W) as planar yuv420p ``(3 H / 2, W)``: BT.601,
    limited range, chroma averaged over 2x2 blocks. Done here, in float64 numpy, rather than by
    swscale inside the encoder, whose output was seen to vary from run to run."""
    h, w, _ = frame.shape
    rgb = frame.astype(np.float64)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    y = 16.0 + 0.256788 * r + 0.504129 * g + 0.097906 * b
    u = 128.0 - 0.148223 * r - 0.290993 * g + 0.439216 * b
    v = 128.0 + 0.439216 * r - 0.367788 * g - 0.071427 * b
    u = u.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))
    v = v.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))

    def q(x: np.ndarray) -> np.ndarray:
        return np.clip(np.floor(x + 0.5), 0, 255).astype(np.uint8)

    return np.concatenate([q(y), q(u).reshape(h // 4, w), q(v).reshape(h // 4, w)], axis=0)


def encode_mp4(frames: np.ndarray, path: str | Path, fps: int = FPS, crf: int = CRF) -> None:
    """``(T, H, W, 3)`` uint8 -> an H.264 (libx264, yuv420p) mp4 whose bytes are a function of the
    frames: the colour conversion is ours, the timestamps are set, libx264 runs single-threaded and
    without its lookahead."""
    _, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise DataError(f"{path}: yuv420p needs an even frame size, got {w}x{h}")
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        # Single-threaded, and without the lookahead (no B-frames, no macroblock tree): on frames this
        # small, libx264's lookahead was seen to give different bytes for the same input.
        stream.options = {
            "crf": str(crf),
            "preset": "medium",
            "threads": "1",
            "x264-params": "rc-lookahead=0:bframes=0:mbtree=0",
        }
        for index, frame in enumerate(frames):
            picture = av.VideoFrame.from_ndarray(rgb_to_yuv420p(frame), format="yuv420p")
            picture.pts = index  # unset timestamps made libx264's output vary from run to run
            picture.time_base = Fraction(1, fps)
            for packet in stream.encode(picture):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _write_clip(job: tuple[str, tuple[int, ...], int, int, ClassSpec]) -> None:
    path, seed, frames, size, spec = job
    encode_mp4(render_clip(spec, seed, frames, size), path)


def split_entries(
    split: str, specs: Sequence[ClassSpec], per_class: int, seed: int
) -> list[tuple[str, ClassSpec, tuple[int, ...]]]:
    """(vid_name, class, clip seed) for every clip of a split, in a seeded random order."""
    split_id = {"train": 0, "test": 1, "val": 2}[split]
    clips = [(spec, (seed, split_id, spec.label, k)) for spec in specs for k in range(per_class)]
    order = np.random.default_rng([seed, split_id]).permutation(len(clips))
    return [(f"synth{seed}_{split}_{i:05d}", clips[j][0], clips[j][1]) for i, j in enumerate(order)]


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=1) + "\n")


def generate_benchmark(
    root: str | Path,
    classes: int = MAX_CLASSES,
    clips_per_class_train: int = 24,
    clips_per_class_test: int = 8,
    frames: int = 16,
    size: int = 64,
    seed: int = 0,
    jobs: int = 1,
    clips_per_class_val: int = 0,
) -> dict[str, Any]:
    """Write the benchmark into ``root``: ``rgb/*.mp4``, ``Diving48_V2_{train,val,test}.json`` (no val
    list when ``clips_per_class_val`` is 0), ``Diving48_vocab.json`` and ``Diving48_attributes.json``;
    return a summary. Each split's clips have their own seeds, so the train and test clips do not
    depend on the size of the val split. The bytes depend on the arguments only, not on ``jobs``."""
    if size < 16 or size % 2:
        raise DataError(f"generate: size must be even and >= 16, got {size}")
    if frames < 8:
        raise DataError(f"generate: frames must be >= 8, got {frames}")
    if clips_per_class_train < 1 or clips_per_class_test < 1 or clips_per_class_val < 0:
        raise DataError("generate: clips per class must be >= 1 (train, test) and >= 0 (val)")
    specs = class_specs(classes)
    root = Path(root)
    (root / "rgb").mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    work = []
    counts = {}
    splits = (("train", clips_per_class_train), ("val", clips_per_class_val), ("test", clips_per_class_test))
    for split, per_class in (s for s in splits if s[1] > 0):
        entries = split_entries(split, specs, per_class, seed)
        counts[split] = len(entries)
        listing = [
            {"vid_name": name, "label": spec.label, "start_frame": 0, "end_frame": frames}
            for name, spec, _ in entries
        ]
        _write_json(root / f"Diving48_V2_{split}.json", listing)
        work += [
            (str(root / "rgb" / f"{name}.mp4"), cseed, frames, size, spec) for name, spec, cseed in entries
        ]
    _write_json(root / VOCAB_FILE, [spec.vocab for spec in specs])
    _write_json(root / ATTRIBUTES_FILE, attributes_document(specs))
    settings = {"classes": classes, "frames": frames, "size": size, "seed": seed}
    _write_json(root / MARKER_FILE, {**settings, **counts})
    if jobs > 1:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            list(pool.map(_write_clip, work, chunksize=16))
    else:
        for job in work:
            _write_clip(job)
    return {
        "root": str(root),
        "classes": len(specs),
        "train": counts["train"],
        "val": counts.get("val", 0),
        "test": counts["test"],
        "frames": frames,
        "size": size,
        "seconds": time.perf_counter() - started,
    }


def default_jobs() -> int:
    return max(1, min(4, os.cpu_count() or 1))
