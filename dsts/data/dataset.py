"""The clip dataset and the loader factory.

``build_dataset(cfg, split, train)`` reads the annotation for ``cfg.data.dataset``, checks every label
and, when the dataset is indexed, every video: an unreadable one is a :class:`DataError`
(``on_bad_video: error``) or is counted, reported and left out (``skip``). With ``cache: true`` the
indexing decodes each clip once, resized to the training short side, and keeps the uint8 frames in
memory; forked loader workers share them, so later epochs never decode.

Randomness inside ``__getitem__`` (frame choice, crop, flip) comes from a generator seeded by
``(seed, epoch, index)`` only, never from global state: a seed gives the same batches with any number
of workers, and a run resumed at epoch ``k`` (``set_epoch(k)``) draws what the original drew.
"""

from __future__ import annotations

import logging
import os
import random
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from dsts.config import DataConfig
from dsts.data.decode import Video
from dsts.data.readers import entry_name, read_attributes, read_diving48, read_finegym, read_vocab
from dsts.data.sampling import SeededSampler, sample_indices
from dsts.data.transforms import resize_short_side, test_transform, train_transform
from dsts.errors import DataError
from dsts.seeding import mix_seed, stream_seed

log = logging.getLogger("dsts.data")
VAL_LIST = "Diving48_V2_val.json"
# streams of mix_seed: the validation hold-out and the shuffled control's permutations
VAL_STREAM, SHUFFLE_STREAM = 101, 102
# threads that decode while a dataset is indexed
INDEX_THREADS = max(1, min(4, os.cpu_count() or 1))


def item_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """The generator for item ``index`` in ``epoch``: a function of the three numbers only."""
    return torch.Generator().manual_seed(stream_seed(seed, "augment", epoch, index))


class VideoDataset(Dataset):
    """Items are ``(clip, label)``: training clips are ``(3, T, crop, crop)`` float32; test clips are
    ``(V, 3, T, crop, crop)`` with ``V = test_clips * test_crops`` views (clip-major)."""

    def __init__(
        self,
        table: pd.DataFrame,
        clips: DataConfig,
        *,
        train: bool,
        num_classes: int,
        class_names: Sequence[str],
        class_cues: Sequence[str | None],
        class_pairs: Sequence[tuple[str, int] | None] | None = None,
        seed: int = 0,
        frames: Sequence[np.ndarray] | None = None,
        skipped: Sequence[tuple[str, str]] = (),
    ) -> None:
        if frames is not None and len(frames) != len(table):
            raise ValueError("frames must hold one array per row of the table")
        self.table = table
        self.clips = clips  # sampling, sizes and views: num_frames, sampling, crop, test_clips, ...
        self.train = train
        self.num_classes = int(num_classes)
        self.class_names = list(class_names)
        self.class_cues = list(class_cues)
        # per class, (the fine attribute that tells it from its partner, the partner's label), or None
        self.class_pairs = list(class_pairs) if class_pairs is not None else [None] * self.num_classes
        self.seed = int(seed)
        self.epoch = 0
        self.skipped = list(skipped)
        self._frames = list(frames) if frames is not None else None
        # plain arrays: cheap to index and to copy into workers
        self._paths = table["path"].astype(str).tolist()
        # what names a clip wherever the data lies: its video and first frame
        self._clip_ids = [f"{v}@{s}" for v, s in zip(table["video_id"].astype(str), table["start_frame"])]
        self._labels = table["label"].to_numpy(dtype=np.int64)
        self._starts = table["start_frame"].to_numpy(dtype=np.int64)
        self._ends = [None if pd.isna(e) else int(e) for e in table["end_frame"]]
        self._where = [entry_name(table, key) for key in table.index]

    @property
    def clip_ids(self) -> list[str]:
        """Each item's name, ``<video_id>@<start_frame>``, in item order."""
        return list(self._clip_ids)

    @property
    def cached(self) -> bool:
        return self._frames is not None

    @property
    def views(self) -> int:
        return 1 if self.train else self.clips.test_clips * self.clips.test_crops

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self._paths)

    def label(self, index: int) -> int:
        return int(self._labels[index])

    def _indices(self, length: int, generator: torch.Generator | None, view: int) -> np.ndarray:
        c = self.clips
        return sample_indices(
            c.sampling, length, c.num_frames, self.train, generator, c.dense_stride, view, c.test_clips
        )

    def _views(self, length: int, generator: torch.Generator) -> list[np.ndarray]:
        if self.train:
            return [self._indices(length, generator, 0)]
        return [self._indices(length, None, c) for c in range(self.clips.test_clips)]

    def _clip_frames(self, index: int, generator: torch.Generator) -> list[torch.Tensor]:
        """uint8 ``(T, h, w, 3)`` frames for each temporal view, resized to the short side."""
        if self._frames is not None:
            frames = self._frames[index]
            return [torch.from_numpy(frames[idx]) for idx in self._views(len(frames), generator)]
        path = self._paths[index]
        with Video(path) as video:
            start, end = clip_range(
                video.num_frames, int(self._starts[index]), self._ends[index], path, self._where[index]
            )
            views = self._views(end - start, generator)
            wanted = np.unique(np.concatenate(views))
            decoded = video.read((start + wanted).tolist())
        lookup = {int(k): j for j, k in enumerate(wanted)}
        return [
            resize_short_side(torch.from_numpy(decoded[[lookup[int(k)] for k in idx]]), self.clips.resize)
            for idx in views
        ]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} is out of range for {len(self)} clips")
        generator = item_generator(self.seed, self.epoch, index)
        views = self._clip_frames(index, generator)
        if self.clips.shuffle_frames:  # the same permutation of this clip's frames, every time, anywhere
            order = torch.Generator().manual_seed(
                mix_seed(SHUFFLE_STREAM, zlib.crc32(self._clip_ids[index].encode()))
            )
            views = [v[torch.randperm(len(v), generator=order)] for v in views]
        label = int(self._labels[index])
        c = self.clips
        if self.train:
            return train_transform(views[0], c.resize, c.crop, c.flip, generator), label
        return torch.cat([test_transform(v, c.resize, c.crop, c.test_crops) for v in views]), label


def clip_range(num_frames: int, start: int, end: int | None, path: str, where: str) -> tuple[int, int]:
    """The clip's half-open frame range inside a video of ``num_frames`` frames: ``end`` (missing:
    the whole video) is clamped to the video, and ``start == end`` means the single frame ``start``."""
    if start >= num_frames:
        raise DataError(f"{path}: the video has {num_frames} frames but {where} starts at frame {start}")
    stop = num_frames if end is None else min(max(end, start + 1), num_frames)
    return start, stop


def _load_clip(path: str, start: int, end: int | None, resize: int, where: str) -> np.ndarray:
    with Video(path) as video:
        first, stop = clip_range(video.num_frames, start, end, path, where)
        frames = video.read_range(first, stop)
    return resize_short_side(torch.from_numpy(frames), resize).numpy()


def _check_clip(path: str, start: int, end: int | None, where: str) -> None:
    with Video(path) as video:
        first, _ = clip_range(video.num_frames, start, end, path, where)
        video.read([first])


def _list(cfg: Any, split: str) -> pd.DataFrame:
    """The annotation list of ``split`` as the data set ships it."""
    if cfg.dataset in ("generated", "diving48"):
        return read_diving48(cfg.root, split)
    if cfg.dataset == "finegym":
        name = {"train": cfg.finegym_train_list, "test": cfg.finegym_test_list}.get(split)
        if name is None:
            raise DataError(f"finegym: split must be train or test, got {split!r}")
        path = name if os.path.isabs(name) else os.path.join(cfg.root, name)
        return read_finegym(path, cfg.root)
    raise DataError(f"data.dataset: unknown dataset {cfg.dataset!r}")


def has_val_list(cfg: Any) -> bool:
    """Whether the data set has its own validation list (the generated benchmark does)."""
    return cfg.dataset in ("generated", "diving48") and os.path.isfile(os.path.join(cfg.root, VAL_LIST))


def has_validation(cfg: Any) -> bool:
    """Whether there is a validation split: a val list, or a share of train held out."""
    cfg = getattr(cfg, "data", cfg)
    return has_val_list(cfg) or cfg.val_fraction > 0


def held_out_count(n: int, fraction: float) -> int:
    """How many of a class's ``n`` training clips validation holds out: ``round(fraction * n)``, but at
    least one and never all of them, so a small class is still validated and still trained on; a class
    of one clip keeps it for training."""
    if fraction <= 0 or n < 2:
        return 0
    return min(n - 1, max(1, int(round(fraction * n))))


def held_out(table: pd.DataFrame, fraction: float) -> np.ndarray:
    """A boolean mask of the rows held out for validation: ``held_out_count(n, fraction)`` rows of each
    class of ``n``, chosen by a permutation seeded by the label alone, so every seed and variant
    shares it."""
    mask = np.zeros(len(table), dtype=bool)
    labels = table["label"].to_numpy()
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        order = torch.randperm(
            len(rows), generator=torch.Generator().manual_seed(mix_seed(VAL_STREAM, int(label)))
        )
        mask[rows[order[: held_out_count(len(rows), fraction)].numpy()]] = True
    return mask


def _annotation(cfg: Any, split: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(the split's table, the whole training list)``: val is the data set's own list, or the
    class-stratified share ``data.val_fraction`` of the training list, which train then leaves out."""
    if split not in ("train", "val", "test"):
        raise DataError(f"split must be train, val or test, got {split!r}")
    if split == "test":
        return _list(cfg, "test"), _list(cfg, "train")
    if has_val_list(cfg):
        return _list(cfg, split), _list(cfg, "train")
    full = _list(cfg, "train")
    if split == "train" and cfg.val_fraction == 0:
        return full, full
    if split == "val" and cfg.val_fraction == 0:
        raise DataError(f"{cfg.root}: no validation split (no {VAL_LIST}, and data.val_fraction is 0)")
    held = held_out(full, cfg.val_fraction)
    if split == "val" and not held.any():
        raise DataError(
            f"{cfg.root}: data.val_fraction {cfg.val_fraction} holds out no clip (every class has one);"
            " set it to 0 to train without validation"
        )
    part = full[held] if split == "val" else full[~held]
    part.attrs = dict(full.attrs)
    return part, full


def build_dataset(cfg: Any, split: str, train: bool, seed: int = 0) -> VideoDataset:
    """The dataset for ``split`` (``"train"``, ``"val"`` or ``"test"``) of ``cfg`` (a ``DataConfig``, or a
    whole ``Config``): ``train=True`` gives training augmentation and random segment sampling,
    ``False`` centre frames, centre crops and multi-view clips. ``seed`` is the base of the per-item
    seeds."""
    cfg = getattr(cfg, "data", cfg)
    table, full = _annotation(cfg, split)
    vocab = read_vocab(cfg.root) if cfg.dataset in ("generated", "diving48") else None
    if cfg.num_classes > 0:
        num_classes = cfg.num_classes
    elif vocab is not None:
        num_classes = len(vocab)
    else:
        num_classes = int(full["label"].max()) + 1 if len(full) else 0
    for key, label in zip(table.index, table["label"]):
        if label >= num_classes:
            raise DataError(
                f"{entry_name(table, key)}: label {label} is out of range (there are {num_classes} classes)"
            )
    names = [str(i) for i in range(num_classes)]
    cues: list[str | None] = [None] * num_classes
    if vocab is not None:
        for label, name, cue in zip(vocab["label"], vocab["name"], vocab["cue"]):
            if label < num_classes:
                names[label] = str(name)
                cues[label] = None if pd.isna(cue) else str(cue)

    pairs: list[tuple[str, int] | None] = [None] * num_classes
    attributes = read_attributes(cfg.root) if cfg.dataset in ("generated", "diving48") else None
    for entry in (attributes or {}).get("classes", []):
        nearest = entry.get("nearest") or []
        if entry.get("label", num_classes) < num_classes and len(nearest) == 1:
            pairs[entry["label"]] = (str(entry["cue_attribute"]), int(nearest[0]["label"]))

    rows = list(zip(table.index, table.itertuples(index=False)))

    def index_one(item: tuple[Any, Any]) -> np.ndarray | DataError | None:
        key, row = item
        where = entry_name(table, key)
        end = None if pd.isna(row.end_frame) else int(row.end_frame)
        try:
            if cfg.cache:
                return _load_clip(str(row.path), int(row.start_frame), end, cfg.resize, where)
            _check_clip(str(row.path), int(row.start_frame), end, where)
            return None
        except DataError as exc:
            return exc

    # PyAV decodes outside the GIL: a few threads index (and fill the cache) faster.
    with ThreadPoolExecutor(max_workers=INDEX_THREADS) as pool:
        results = list(pool.map(index_one, rows))
    keep, frames, skipped = [], [], []
    for (key, row), result in zip(rows, results):
        if isinstance(result, DataError):
            if cfg.on_bad_video == "error":
                raise DataError(f"{result} ({entry_name(table, key)})")
            skipped.append((str(row.path), str(result)))
            continue
        keep.append(key)
        if result is not None:
            frames.append(result)
    if skipped:
        log.warning(
            "skipped %d of %d videos in %s that could not be read; first: %s",
            len(skipped),
            len(table),
            table.attrs.get("annotation"),
            skipped[0][1],
        )
    if not keep:
        raise DataError(f"{table.attrs.get('annotation')}: no readable clip ({len(skipped)} skipped)")
    kept = table.loc[keep]
    kept.attrs = dict(table.attrs)
    return VideoDataset(
        kept,
        cfg,
        train=train,
        num_classes=num_classes,
        class_names=names,
        class_cues=cues,
        class_pairs=pairs,
        seed=seed,
        frames=frames if cfg.cache else None,
        skipped=skipped,
    )


def _worker_init(worker_id: int) -> None:
    """Seed the global generators of a worker from the loader's seed (items do not use them, but a
    user transform might) and keep one thread per worker."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)
    torch.set_num_threads(1)


def build_loader(
    dataset: Dataset,
    batch_size: int,
    sampler: Sampler | None = None,
    shuffle: bool = False,
    seed: int = 0,
    num_workers: int = 0,
    drop_last: bool = False,
    pin_memory: bool = False,
) -> DataLoader:
    """A ``DataLoader`` whose batches are a function of the seed and epoch, whatever ``num_workers``.

    ``shuffle`` uses a :class:`SeededSampler` of ``seed``; call :func:`set_epoch` on the loader
    before each epoch (it sets the sampler's and the dataset's epoch). Workers are not persistent,
    so each epoch's workers see the dataset's current epoch.
    """
    if sampler is not None and shuffle:
        raise ValueError("build_loader: give a sampler or shuffle, not both")
    if shuffle:
        sampler = SeededSampler(len(dataset), batch_size, seed)  # type: ignore[arg-type]
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        shuffle=False,
        num_workers=num_workers,
        drop_last=drop_last,
        pin_memory=pin_memory,
        worker_init_fn=_worker_init if num_workers > 0 else None,
        generator=torch.Generator().manual_seed(int(seed)),
        persistent_workers=False,
    )


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """Set the epoch of the loader's dataset and sampler (either may lack ``set_epoch``)."""
    for part in (loader.dataset, loader.sampler):
        if hasattr(part, "set_epoch"):
            part.set_epoch(epoch)
