"""Typed configuration: one dataclass per section of ``params.yaml``.

The library never opens ``params.yaml`` by itself: a stage script passes its path (or an already
parsed mapping) to :func:`load_config`, which applies the variant's override from
``ablations/<variant>.yaml`` and any ``key=value`` overrides, then validates every value.
Every problem is a :class:`ConfigError` whose one-line message names the dotted key.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from dsts.errors import ConfigError as ConfigError  # re-exported: dsts.config.ConfigError is public

# Where the prepare stage writes the generated benchmark (dvc.yaml's prepare output).
GENERATED_ROOT = "data/generated"
BACKBONES = ("small3d", "r3d_18", "mc3_18", "r2plus1d_18")
DATASETS = ("generated", "diving48", "finegym")


@dataclass
class GenerateConfig:
    """Size and seed of the generated fine-grained benchmark (``pipeline.prepare``)."""

    classes: int = 16  # even, 2 to 16: two classes per group of coarse attributes
    clips_per_class_train: int = 32
    clips_per_class_val: int = 24  # the validation split: model selection and monitoring
    clips_per_class_test: int = 48
    frames: int = 16
    size: int = 64
    seed: int = 0


@dataclass
class DataConfig:
    dataset: Literal["generated", "diving48", "finegym"] = "generated"
    root: str = GENERATED_ROOT
    # FineGym element lists, relative to ``root`` unless absolute.
    finegym_train_list: str = "gym99_train_element_v1.1.txt"
    finegym_test_list: str = "gym99_val_element.txt"
    num_classes: int = 0  # 0: infer from the annotation (vocab or largest label + 1)
    # Without a val list (Diving48, FineGym): a seeded class-stratified share of the training list
    # held out for validation; 0 trains on all of it (final runs) and monitors nothing.
    val_fraction: float = 0.1
    shuffle_frames: bool = False  # the `shuffled` control: a fixed permutation of each clip's frames
    num_frames: int = 8
    sampling: Literal["segment", "dense"] = "segment"
    dense_stride: int = 2
    resize: int = 64
    crop: int = 56
    flip: bool = False  # the generated benchmark's labels change under a flip; true for Diving48
    test_clips: int = 1
    test_crops: int = 1
    num_workers: int = 0
    cache: bool = True
    on_bad_video: Literal["error", "skip"] = "error"
    generate: GenerateConfig = field(default_factory=GenerateConfig)


@dataclass
class DSTSConfig:
    enabled: bool = True
    channels: int = 64
    num_layers: int = 2
    num_neurons: int = 4
    specialization: Literal["st", "3d"] = "st"
    routing: Literal["dense", "sparse"] = "sparse"  # docs/routing.md
    tau: float = 1.0  # the temperature of the dimensionless selection logits (docs/routing.md)
    gate_noise_std: float = 1.0
    gate_noise: Literal["normal", "truncated"] = "normal"
    p_hard: float = 0.5
    hard_warmup_epochs: int = 0
    score_init_std: float = 0.1  # std of the scoring kernels at init (selection not saturated)


@dataclass
class ModelConfig:
    backbone: Literal["small3d", "r3d_18", "mc3_18", "r2plus1d_18"] = "small3d"
    pretrained: str | None = None  # a local weights file; nothing is downloaded
    dropout: float = 0.5
    dsts: DSTSConfig = field(default_factory=DSTSConfig)


@dataclass
class TrainConfig:
    epochs: int = 6
    batch_size: int = 16
    optimizer: Literal["sgd", "adamw"] = "adamw"
    lr: float = 2e-3
    upstream_lr: float = 2e-3
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    warmup_epochs: float = 0.0
    step_size: int = 10
    gamma: float = 0.1
    grad_clip: float = 0.0  # 0 disables clipping
    updates_per_step: int = 1  # > 1 only for the compute-matched control
    seed: int = 0
    device: str = "auto"
    bf16: bool = False
    channels_last: bool = False
    # Validate after every val_interval-th epoch and after each epoch that the convergence check
    # reads, the last quarter (dsts.report.verdicts.late_quarter_start), the last epoch among them:
    # a larger validation split at the cost of a sparser curve before that quarter.
    val_interval: int = 1
    # Before each validation, and so before the model is saved, replace BatchNorm's running statistics
    # by the epoch's training clips' under its final weights (dsts.engine.recompute_bn_statistics):
    # validation and test then read the model, not the lag of an exponential average (docs/study.md).
    precise_bn: bool = False
    cudnn_benchmark: bool = False
    portable: bool = True  # pin the kernels' instruction set and the threads (dsts/portable.py)
    threads: int = 2  # intra-op threads; part of what makes two runs byte-identical


@dataclass
class UDLConfig:
    """Upstream-Downstream Learning (docs/method.md, section 7). ``inner_lr`` is step 1's ``alpha``.

    ``scope``: ``"dsts"`` holds the backbone fixed in the simulated and meta steps (it is still
    trained in step 3); ``"all"`` simulates every downstream parameter. ``"dsts"`` is the default
    because it costs far less per iteration, in time and memory (docs/udl.md). ``method``:
    ``"autograd"`` is exact; ``"finite_difference"`` (DARTS) is offered for comparison only, since
    the ReLU and clamp kinks make a difference of gradients jump (docs/udl.md).
    """

    enabled: bool = False
    inner_lr: float = 0.01
    method: Literal["autograd", "finite_difference", "first_order"] = "autograd"
    fd_eps: float = 0.01
    scope: Literal["all", "dsts"] = "dsts"


@dataclass
class EvalConfig:
    batch_size: int = 32
    top_k: int = 5


@dataclass
class TrackingConfig:
    enabled: bool = True
    experiment: str = ""  # empty: one experiment per dataset, named after it
    system_metrics: bool = False  # MLflow's CPU, memory and disk metrics of each run


@dataclass
class Config:
    variant: str = "dsts"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    udl: UDLConfig = field(default_factory=UDLConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        """The resolved config as ``{"model.dsts.tau": 1.0, ...}``."""
        return flatten(self.to_dict())

    def train_settings(self, device_type: str) -> dict[str, Any]:
        """The settings that decide the trained weights (:data:`TRAIN_KEYS`), with ``train.device``
        resolved to the device type that runs them (``"cpu"`` or ``"cuda"``)."""
        out = select(self.flat(), TRAIN_KEYS)
        out["train.device"] = device_type
        out["variant"] = self.variant
        return out

    def train_hash(self, device_type: str) -> str:
        """A stable hash of :meth:`train_settings`: what a checkpoint and a trained model must match.
        A change of an evaluation or tracking setting leaves it as it is."""
        blob = json.dumps(self.train_settings(device_type), sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


# Sections of params.yaml that belong to the pipeline, not to one run's config.
PIPELINE_KEYS = ("variants", "seeds", "report")

# What changes the trained weights: the train stage depends on exactly these params (dvc.yaml,
# checked by tests/pipeline/test_dvc_graph.py) and a checkpoint's hash covers exactly these. A name
# covers a setting or a whole section.
TRAIN_KEYS: tuple[str, ...] = (
    "data.dataset",
    "data.root",
    "data.finegym_train_list",
    "data.num_classes",
    "data.val_fraction",
    "data.shuffle_frames",
    "data.num_frames",
    "data.sampling",
    "data.dense_stride",
    "data.resize",
    "data.crop",
    "data.flip",
    "data.on_bad_video",
    "data.generate",
    "model",
    "train",
    "udl",
)
# What evaluation adds: the test list, the test views and the evaluation settings.
EVALUATE_KEYS: tuple[str, ...] = (
    *TRAIN_KEYS,
    "data.finegym_test_list",
    "data.test_clips",
    "data.test_crops",
    "eval",
)
# What changes no number at all: how fast data loads and where results are logged.
NEUTRAL_KEYS: tuple[str, ...] = ("data.num_workers", "data.cache", "tracking")


def select(flat: dict[str, Any], keys: typing.Iterable[str]) -> dict[str, Any]:
    """The entries of a flat config that ``keys`` name (a key, or a section and everything below)."""
    keys = tuple(keys)
    return {k: v for k, v in flat.items() if any(k == key or k.startswith(key + ".") for key in keys)}


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def deep_merge(base: dict[str, Any], override: dict[str, Any], where: str = "") -> dict[str, Any]:
    """Override ``base`` with ``override``, recursing into mappings."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        dotted = f"{where}{key}"
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value, dotted + ".")
        elif isinstance(merged.get(key), dict) and value is not None:
            raise ConfigError(f"{dotted}: expected a mapping, got {value!r}")
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def parse_override(text: str) -> dict[str, Any]:
    """``"model.dsts.tau=2"`` -> ``{"model": {"dsts": {"tau": 2}}}``; values are YAML, so the
    lowercase ``true``/``false`` that DVC writes on a command line become booleans."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected KEY=VALUE")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    tree: dict[str, Any] = {}
    node = tree
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return tree


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it (ints widen to floats)."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(str, choices))}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ConfigError(f"{key}: expected a boolean, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads "1e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported type {_type_name(tp)}")


def _build(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            raise ConfigError(f"{prefix}{key}: unknown key")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        key = f"{prefix}{f.name}"
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            kwargs[f.name] = _build(tp, data[f.name], key + ".")
        else:
            kwargs[f.name] = _coerce(data[f.name], tp, key)
    return cls(**kwargs)


# Values that have the right type but cannot work: (dotted key, test, what it must be).
RULES: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
    ("model.dsts.num_layers", lambda v: v >= 1, ">= 1"),
    ("model.dsts.num_neurons", lambda v: v >= 1, ">= 1"),
    ("model.dsts.channels", lambda v: v >= 1, ">= 1"),
    ("model.dsts.tau", lambda v: v > 0, "> 0"),
    ("model.dsts.gate_noise_std", lambda v: v >= 0, ">= 0"),
    ("model.dsts.p_hard", lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("model.dsts.score_init_std", lambda v: v >= 0, ">= 0"),
    ("model.dsts.hard_warmup_epochs", lambda v: v >= 0, ">= 0"),
    ("model.dropout", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("train.epochs", lambda v: v >= 1, ">= 1"),
    ("train.batch_size", lambda v: v >= 1, ">= 1"),
    ("train.lr", lambda v: v > 0, "> 0"),
    ("train.upstream_lr", lambda v: v > 0, "> 0"),
    ("train.momentum", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("train.weight_decay", lambda v: v >= 0, ">= 0"),
    ("train.warmup_epochs", lambda v: v >= 0, ">= 0"),
    ("train.step_size", lambda v: v >= 1, ">= 1"),
    ("train.gamma", lambda v: 0 < v <= 1, "in (0, 1]"),
    ("train.grad_clip", lambda v: v >= 0, ">= 0"),
    ("train.updates_per_step", lambda v: v >= 1, ">= 1"),
    ("train.seed", lambda v: v >= 0, ">= 0"),
    ("train.threads", lambda v: v >= 1, ">= 1"),
    ("train.val_interval", lambda v: v >= 1, ">= 1"),
    ("train.device", lambda v: v in ("auto", "cpu") or v.startswith("cuda"), "auto, cpu or cuda[:N]"),
    ("udl.inner_lr", lambda v: v >= 0, ">= 0"),
    ("udl.fd_eps", lambda v: v > 0, "> 0"),
    ("data.num_classes", lambda v: v >= 0, ">= 0"),
    ("data.num_frames", lambda v: v >= 1, ">= 1"),
    ("data.val_fraction", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("data.dense_stride", lambda v: v >= 1, ">= 1"),
    ("data.resize", lambda v: v >= 1, ">= 1"),
    ("data.test_clips", lambda v: v >= 1, ">= 1"),
    ("data.test_crops", lambda v: v in (1, 3), "1 or 3"),
    ("data.num_workers", lambda v: v >= 0, ">= 0"),
    ("data.generate.clips_per_class_train", lambda v: v >= 1, ">= 1"),
    ("data.generate.clips_per_class_test", lambda v: v >= 1, ">= 1"),
    ("data.generate.clips_per_class_val", lambda v: v >= 0, ">= 0"),
    ("data.generate.classes", lambda v: 2 <= v <= 16 and v % 2 == 0, "even and in [2, 16]"),
    ("data.generate.frames", lambda v: v >= 8, ">= 8"),
    ("data.generate.size", lambda v: v >= 16 and v % 2 == 0, "even and >= 16"),
    ("data.generate.seed", lambda v: v >= 0, ">= 0"),
    ("eval.batch_size", lambda v: v >= 1, ">= 1"),
    ("eval.top_k", lambda v: v >= 1, ">= 1"),
)


def _check(cfg: Config) -> None:
    """Apply :data:`RULES`, then the rules that relate two keys."""
    flat = cfg.flat()
    for key, ok, want in RULES:
        if not ok(flat[key]):
            raise ConfigError(f"{key}: {flat[key]!r} is impossible (must be {want})")
    if not 1 <= cfg.data.crop <= cfg.data.resize:
        raise ConfigError(f"data.crop: {cfg.data.crop!r} is impossible (must be in [1, data.resize])")
    if cfg.train.portable and cfg.train.cudnn_benchmark:
        raise ConfigError(
            "train.cudnn_benchmark: true picks kernels by timing, which train.portable: true forbids "
            "(set train.portable: false to autotune)"
        )
    if cfg.udl.enabled and not cfg.model.dsts.enabled:
        raise ConfigError("udl.enabled: true needs model.dsts.enabled: true (UDL trains DSTS decisions)")


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{where}: invalid YAML") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def build_config(tree: dict[str, Any]) -> Config:
    """Validate a (merged) mapping into a :class:`Config`."""
    tree = {k: v for k, v in tree.items() if k not in PIPELINE_KEYS}
    cfg = _build(Config, tree, "")
    _check(cfg)
    return cfg


def load_config(
    params: str | Path | dict[str, Any] = "params.yaml",
    variant: str | None = None,
    ablations_dir: str | Path | None = None,
    overrides: typing.Sequence[str] = (),
    seed: int | None = None,
) -> Config:
    """``params.yaml`` + ``ablations/<variant>.yaml`` + ``KEY=VALUE`` overrides -> :class:`Config`.

    ``variant`` must have an override file; it need not be in the params' ``variants`` (the study's
    list: the default study runs five of the eight, full.yaml all). ``seed`` sets ``train.seed``.
    """
    if isinstance(params, dict):
        tree = copy.deepcopy(params)
        base_dir = Path(".")
    else:
        tree = read_yaml(params)
        base_dir = Path(params).parent
    if variant is not None:
        folder = Path(ablations_dir) if ablations_dir is not None else base_dir / "ablations"
        file = folder / f"{variant}.yaml"
        if not file.is_file():
            raise ConfigError(f"variant: unknown variant {variant!r} (no {file})")
        override = read_yaml(file)
        if "variant" in override:
            raise ConfigError(f"{file}: variant: set by the file name, not inside the file")
        tree = deep_merge(tree, override)
        tree["variant"] = variant
    for text in overrides:
        tree = deep_merge(tree, parse_override(text))
    if seed is not None:
        tree = deep_merge(tree, {"train": {"seed": seed}})
    return build_config(tree)
