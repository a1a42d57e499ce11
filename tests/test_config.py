"""The typed config: the override merge, every error case, and DVC's command-line booleans."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from dsts.config import (
    EVALUATE_KEYS,
    NEUTRAL_KEYS,
    TRAIN_KEYS,
    Config,
    ConfigError,
    deep_merge,
    load_config,
    parse_override,
    read_yaml,
    select,
)

ROOT = Path(__file__).resolve().parents[1]
PARAMS = ROOT / "params.yaml"


def base_params() -> dict:
    return yaml.safe_load(PARAMS.read_text())


def write_params(tmp_path: Path, tree: dict, ablations: dict[str, dict] | None = None) -> Path:
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tree))
    folder = tmp_path / "ablations"
    folder.mkdir(exist_ok=True)
    for name, override in (ablations or {}).items():
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(override))
    return tmp_path / "params.yaml"


def test_default_params_and_every_variant_load():
    tree = base_params()
    assert tree["variants"], "params.yaml lists the ablation variants"
    for variant in tree["variants"]:
        cfg = load_config(PARAMS, variant=variant)
        assert cfg.variant == variant
    assert load_config(PARAMS, variant="baseline").model.dsts.enabled is False
    assert load_config(PARAMS, variant="static").model.dsts.num_neurons == 1
    assert load_config(PARAMS, variant="dsts_3d").model.dsts.specialization == "3d"
    assert load_config(PARAMS, variant="dsts_udl").udl.enabled is True
    assert load_config(PARAMS, variant="dsts_udl_fo").udl.method == "first_order"
    assert load_config(PARAMS, variant="dsts_cm").train.updates_per_step > 1


def test_every_ablation_file_is_in_the_full_study():
    files = {p.stem for p in (ROOT / "ablations").glob("*.yaml")}
    assert set(read_yaml(ROOT / "full.yaml")["variants"]) == files
    assert set(base_params()["variants"]) <= files


def test_override_merge_keeps_siblings(tmp_path):
    tree = base_params()
    params = write_params(tmp_path, tree, {"v": {"model": {"dsts": {"num_neurons": 7}}}})
    tree["variants"] = ["v"]
    params.write_text(yaml.safe_dump(tree))
    cfg = load_config(params, variant="v")
    assert cfg.model.dsts.num_neurons == 7
    assert cfg.model.dsts.num_layers == tree["model"]["dsts"]["num_layers"]
    assert cfg.model.backbone == tree["model"]["backbone"]


def test_command_line_overrides_win_and_seed_is_set():
    cfg = load_config(PARAMS, variant="dsts", overrides=["train.epochs=3", "model.dsts.tau=2.5"], seed=4)
    assert (cfg.train.epochs, cfg.model.dsts.tau, cfg.train.seed) == (3, 2.5, 4)


@pytest.mark.parametrize(
    "text,expected", [("true", True), ("false", False), ("True", True), ("FALSE", False)]
)
def test_dvc_lowercase_booleans(text, expected):
    cfg = load_config(PARAMS, variant="dsts", overrides=[f"data.flip={text}", f"udl.enabled={text}"])
    assert cfg.data.flip is expected
    assert cfg.udl.enabled is expected


def test_string_booleans_in_yaml_are_accepted(tmp_path):
    tree = base_params()
    tree["data"]["flip"] = "false"
    assert load_config(write_params(tmp_path, tree)).data.flip is False


@pytest.mark.parametrize(
    "override,key",
    [
        ("model.dsts.num_layers=0", "model.dsts.num_layers"),
        ("model.dsts.num_neurons=0", "model.dsts.num_neurons"),
        ("model.dsts.tau=0", "model.dsts.tau"),
        ("model.dsts.tau=-1.5", "model.dsts.tau"),
        ("train.lr=0", "train.lr"),
        ("train.lr=-0.1", "train.lr"),
        ("model.backbone=resnet9000", "model.backbone"),
        ("model.dsts.routing=everywhere", "model.dsts.routing"),
        ("udl.method=magic", "udl.method"),
        ("train.epochs=two", "train.epochs"),
        ("train.epochs=2.5", "train.epochs"),
        ("model.dsts.enabled=maybe", "model.dsts.enabled"),
        ("train.bogus=1", "train.bogus"),
        ("model.dsts.bogus=1", "model.dsts.bogus"),
        ("bogus=1", "bogus"),
        ("data.crop=1000", "data.crop"),
        ("model.dsts=3", "model.dsts"),
    ],
)
def test_bad_values_name_the_dotted_key(override, key):
    with pytest.raises(ConfigError) as info:
        load_config(PARAMS, variant="dsts", overrides=[override])
    message = str(info.value)
    assert message.startswith(key + ":"), message
    assert "\n" not in message


def test_unknown_variant(tmp_path):
    with pytest.raises(ConfigError, match=r"^variant: unknown variant 'nope'"):
        load_config(PARAMS, variant="nope")
    tree = base_params()
    tree["variants"].append("ghost")  # listed, but no override file
    with pytest.raises(ConfigError, match=r"^variant: unknown variant 'ghost' \(no .*ghost.yaml\)"):
        load_config(write_params(tmp_path, tree), variant="ghost")


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "absent.yaml")
    bad = tmp_path / "params.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(bad)


def test_udl_needs_dsts():
    with pytest.raises(ConfigError, match=r"^udl.enabled"):
        load_config(PARAMS, variant="baseline", overrides=["udl.enabled=true"])


def test_train_hash_covers_the_training_settings_and_nothing_else():
    a = load_config(PARAMS, variant="dsts", seed=0)
    assert isinstance(a, Config) and a.flat()["model.dsts.num_layers"] == a.model.dsts.num_layers
    assert a.train_hash("cpu") == load_config(PARAMS, variant="dsts", seed=0).train_hash("cpu")
    changed = {
        "train.seed": 1,
        "train.lr": 0.5,
        "train.threads": 1,
        "train.portable": False,
        "train.bf16": True,
        "model.dsts.tau": 2.0,
        "udl.fd_eps": 0.5,
        "data.crop": 28,
        "data.generate.seed": 3,
    }
    for key, value in changed.items():
        other = load_config(
            PARAMS, variant="dsts", overrides=[f"{key}={value}"], seed=0 if key != "train.seed" else None
        )
        assert other.train_hash("cpu") != a.train_hash("cpu"), key
    neutral = {
        "eval.batch_size": 64,
        "eval.top_k": 3,
        "tracking.experiment": "x",
        "tracking.enabled": False,
        "data.num_workers": 2,
        "data.cache": False,
        "data.test_clips": 2,
        "data.test_crops": 3,
    }
    for key, value in neutral.items():
        other = load_config(PARAMS, variant="dsts", overrides=[f"{key}={value}"], seed=0)
        assert other.train_hash("cpu") == a.train_hash("cpu"), key
    assert a.train_hash("cuda") != a.train_hash("cpu")  # the resolved device type, not "auto"
    assert load_config(PARAMS, variant="static", seed=0).train_hash("cpu") != a.train_hash("cpu")


def test_every_setting_is_training_evaluation_or_neutral():
    flat = load_config(PARAMS, variant="dsts").flat()
    training, evaluation = select(flat, TRAIN_KEYS), select(flat, EVALUATE_KEYS)
    neutral = select(flat, NEUTRAL_KEYS)
    assert set(training) <= set(evaluation)
    assert not set(evaluation) & set(neutral)
    assert set(evaluation) | set(neutral) | {"variant"} == set(flat)


scalars = st.one_of(st.integers(-5, 5), st.booleans(), st.text("abc", max_size=3), st.none())
trees = st.recursive(
    scalars, lambda inner: st.dictionaries(st.sampled_from("abcd"), inner, max_size=3), max_leaves=8
)


@given(
    st.dictionaries(st.sampled_from("abcd"), trees, max_size=3),
    st.dictionaries(st.sampled_from("abcd"), trees, max_size=3),
)
def test_deep_merge_matches_a_literal_recursive_definition(base, override):
    def reference(b, o):
        out = dict(b)
        for k, v in o.items():
            out[k] = reference(b[k], v) if isinstance(v, dict) and isinstance(b.get(k), dict) else v
        return out

    try:
        merged = deep_merge(base, override)
    except ConfigError:
        # only when a mapping is replaced by a non-null scalar somewhere along the override
        return
    assert merged == reference(base, override)


@given(st.from_regex(r"[a-z]{1,5}(\.[a-z]{1,5}){0,2}", fullmatch=True), st.integers(-100, 100))
def test_parse_override_builds_the_nested_key(key, value):
    tree = parse_override(f"{key}={value}")
    node = tree
    for part in key.split("."):
        node = node[part]
    assert node == value


def test_stage_exits_2_with_one_line_for_a_bad_param(tmp_path):
    tree = base_params()
    tree["model"]["dsts"]["num_layers"] = 0
    params = write_params(tmp_path, tree)
    (tmp_path / "ablations").rmdir()
    (tmp_path / "ablations").symlink_to(ROOT / "ablations")
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.check_config", "--params", str(params), "--variant", "dsts"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "model.dsts.num_layers" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
