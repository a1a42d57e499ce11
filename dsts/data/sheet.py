"""A contact sheet: one sample clip per class, a few frames each, with the class name and its cue."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from dsts.data.decode import read_video
from dsts.data.readers import read_attributes, read_diving48, read_vocab
from dsts.errors import DataError
from dsts.files import atomic_write


def contact_sheet(root: str | Path, out: str | Path, split: str = "train", frames: int = 8) -> Path:
    """Write a PNG with the first clip of each class in ``{root}/Diving48_V2_{split}.json``: ``frames``
    evenly spaced frames per row (first to last), titled with the class's vocab name and its cue
    (kind and attribute, when ``Diving48_attributes.json`` says). Returns ``out``."""

    table = read_diving48(root, split)
    vocab = read_vocab(root)
    attributes = read_attributes(root) or {}
    cue_of = {
        c.get("label"): c.get("cue_attribute") for c in attributes.get("classes", []) if isinstance(c, dict)
    }
    firsts = table.drop_duplicates("label").sort_values("label")
    if firsts.empty:
        raise DataError(f"{table.attrs['annotation']}: no clip to show")
    rows = len(firsts)
    fig, axes = plt.subplots(rows, frames, figsize=(1.0 * frames + 0.2, 1.08 * rows + 0.3), squeeze=False)
    for r, row in enumerate(firsts.itertuples(index=False)):
        end = None if pd.isna(row.end_frame) else int(row.end_frame)
        clip = read_video(str(row.path), int(row.start_frame), end)
        picks = np.linspace(0, len(clip) - 1, frames).round().astype(int)
        label = int(row.label)
        title = f"{label}: {row.video_id}"
        if vocab is not None and label < len(vocab):
            cue = vocab["cue"].iloc[label]
            title = f"{label}: {vocab['name'].iloc[label]}" + (
                "" if pd.isna(cue) else f"  [{cue}: {cue_of.get(label) or '?'}]"
            )
        for c, k in enumerate(picks):
            ax = axes[r][c]
            ax.imshow(clip[k], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r][0].text(
            0.0, 1.04, title, transform=axes[r][0].transAxes, fontsize=7.5, va="bottom", ha="left"
        )
    fig.subplots_adjust(
        left=0.01, right=0.99, top=1 - 0.3 / (1.08 * rows + 0.3), bottom=0.005, wspace=0.04, hspace=0.32
    )
    try:
        with atomic_write(out, "wb") as handle:
            fig.savefig(handle, format="png", dpi=72)
    finally:
        plt.close(fig)
    return Path(out)
