"""The study profiles: ``full.yaml`` names only existing params and variants, its overrides
become ``dvc exp run --set-param`` items that DVC's YAML reading turns back into the same values,
and a profile's value wins over an ablation file's where both set a key."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from dsts.config import deep_merge, flatten, load_config, parse_override, read_yaml
from pipeline.profile import set_params, shadowed, write_ablations

ROOT = Path(__file__).resolve().parents[2]

leaf = st.one_of(
    st.integers(-5, 5),
    st.booleans(),
    st.text("abc_", min_size=1, max_size=4),
    st.lists(
        st.one_of(st.integers(0, 9), st.lists(st.text("ab", min_size=1, max_size=3), max_size=2)), max_size=3
    ),
)
tree = st.recursive(
    leaf,
    lambda inner: st.dictionaries(st.text("xyz", min_size=1, max_size=3), inner, min_size=1),
    max_leaves=8,
)


@given(st.dictionaries(st.text("pq", min_size=1, max_size=3), tree, min_size=1))
def test_set_params_rebuild_the_profile_when_read_as_yaml(profile):
    rebuilt: dict = {}
    for item in set_params(profile):
        key, value = item.split("=", 1)
        *parents, last = key.split(".")
        node = rebuilt
        for name in parents:
            node = node.setdefault(name, {})
        node[last] = yaml.safe_load(value)
    assert rebuilt == profile


def leaves(tree: dict, prefix: str = "") -> list[str]:
    return [
        k
        for key, v in tree.items()
        for k in (leaves(v, f"{prefix}{key}.") if isinstance(v, dict) else [f"{prefix}{key}"])
    ]


names = st.sampled_from(["train", "data", "epochs", "step", "seed"])
config_tree = st.recursive(
    st.integers(0, 3), lambda inner: st.dictionaries(names, inner, min_size=1, max_size=3), max_leaves=6
)


@given(st.dictionaries(names, config_tree, max_size=3), st.dictionaries(names, config_tree, max_size=3))
def test_shadowed_lets_the_profile_win_on_the_ablation_files_own_keys(profile, ablation):
    merged = deep_merge(ablation, shadowed(profile, ablation))
    # the oracle, leaf by leaf: every leaf the ablation file has, with the profile's value where the
    # profile has the same leaf, and no other leaf
    mine, theirs = flatten(ablation), flatten(profile)
    assert flatten(merged) == {key: theirs.get(key, value) for key, value in mine.items()}


def test_write_ablations_copies_untouched_files_as_they_are(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    (source / "a.yaml").write_text("# long\ntrain:\n  epochs: 32\n  step_size: 22\nmodel:\n  x: 1\n")
    (source / "b.yaml").write_text("# kept, comment and all\nmodel:\n  x: 2\n")
    write_ablations(tmp_path / "out", {"train": {"epochs": 1, "lr": 0.5}, "model": {"y": 3}}, source)
    assert read_yaml(tmp_path / "out" / "a.yaml") == {
        "train": {"epochs": 1, "step_size": 22},
        "model": {"x": 1},
    }
    assert (tmp_path / "out" / "b.yaml").read_text() == (source / "b.yaml").read_text()


@pytest.mark.parametrize(
    "profile",
    [
        {},  # full.yaml as it is
        {"train": {"updates_per_step": 2}},  # a key that dsts_cm.yaml sets too (3)
    ],
    ids=["full", "shadowing"],
)
def test_the_profile_command_reaches_every_variant(tmp_path, profile):
    """The dvc command that runs a profile, applied to copies of the files as DVC would, must train
    every variant with the profile's values, a variant's own value for the same key included."""
    full = deep_merge(read_yaml(ROOT / "full.yaml"), profile)
    (tmp_path / "profile.yaml").write_text(yaml.safe_dump(full))
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.profile", str(tmp_path / "profile.yaml"), "--dry"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    files = {"params.yaml": read_yaml(ROOT / "params.yaml")}
    files |= {f"ablations/{f.name}": read_yaml(f) for f in (ROOT / "ablations").glob("*.yaml")}
    args = shlex.split(proc.stdout)
    for flag, item in zip(args, args[1:]):
        if flag == "--set-param":
            name, _, change = item.rpartition(":") if ".yaml:" in item else ("", "", item)
            files[name or "params.yaml"] = deep_merge(files[name or "params.yaml"], parse_override(change))
    for name, tree in files.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(yaml.safe_dump(tree))
    wanted = {k: v for k, v in flatten(full).items() if k.startswith("train.")}
    if profile:  # the case has a point only if a variant's own value differs from the profile's
        assert load_config(ROOT / "params.yaml", variant="dsts_cm").train.updates_per_step != 2
    for variant in full["variants"]:
        cfg = load_config(tmp_path / "params.yaml", variant=variant)
        assert {k: v for k, v in flatten(cfg.to_dict()).items() if k in wanted} == wanted, variant


def test_full_profile_overrides_existing_params_and_loads_every_variant():
    params, full = read_yaml(ROOT / "params.yaml"), read_yaml(ROOT / "full.yaml")
    assert set(leaves(full)) <= set(leaves(params)), "full.yaml names a param that params.yaml lacks"
    assert set(read_yaml(ROOT / "params.yaml")["variants"]) < set(full["variants"])
    merged = deep_merge(params, full)
    for variant in full["variants"]:
        load_config(merged, variant=variant, ablations_dir=ROOT / "ablations")
    for first, second in full["report"]["comparisons"]:
        assert first in full["variants"] and second in full["variants"]
