"""The study profiles: ``full.yaml`` names only existing params and variants, and its overrides
become ``dvc exp run --set-param`` items that DVC's YAML reading turns back into the same values."""

from __future__ import annotations

from pathlib import Path

import yaml
from hypothesis import given
from hypothesis import strategies as st

from dsts.config import deep_merge, load_config, read_yaml
from pipeline.profile import set_params

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


def test_full_profile_overrides_existing_params_and_loads_every_variant():
    params, full = read_yaml(ROOT / "params.yaml"), read_yaml(ROOT / "full.yaml")
    assert set(leaves(full)) <= set(leaves(params)), "full.yaml names a param that params.yaml lacks"
    assert set(read_yaml(ROOT / "params.yaml")["variants"]) < set(full["variants"])
    merged = deep_merge(params, full)
    for variant in full["variants"]:
        load_config(merged, variant=variant, ablations_dir=ROOT / "ablations")
    for first, second in full["report"]["comparisons"]:
        assert first in full["variants"] and second in full["variants"]
