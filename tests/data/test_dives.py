"""The classes of the generated benchmark: two per group of coarse attributes, one fine cue apart."""

from __future__ import annotations

from collections import Counter

import pytest

from dsts.data import DataError
from dsts.data.dives import ATTRIBUTES, COARSE, FINE, MAX_CLASSES, class_specs, nearest_classes

KIND = {a["name"]: a["cue"] for a in ATTRIBUTES}


def test_class_design():
    specs = class_specs(MAX_CLASSES)
    assert [s.label for s in specs] == list(range(16))
    assert len({s.name for s in specs}) == 16
    assert Counter(s.cue for s in specs) == {"spatial": 8, "temporal": 8}
    near = nearest_classes(specs)
    for s in specs:
        partner = [t for t in specs if t.group == s.group and t.label != s.label]
        assert len(partner) == 1
        # the group shares every coarse attribute and differs in the cue attribute alone
        assert all(getattr(s, a) == getattr(partner[0], a) for a in COARSE)
        assert [a for a in FINE if getattr(s, a) != getattr(partner[0], a)] == [s.cue_attribute]
        assert near[s.label] == [(partner[0].label, s.cue_attribute)]
        assert s.cue == KIND[s.cue_attribute]
    # every coarse combination is one group, shared by its two classes only
    assert len({tuple(getattr(s, a) for a in COARSE) for s in specs}) == 8


def test_smaller_class_counts_stay_balanced():
    specs = class_specs(8)
    assert sorted(s.cue_attribute for s in specs[::2]) == sorted(FINE)
    assert Counter(s.cue for s in class_specs(4)) == {"spatial": 2, "temporal": 2}
    for bad in (0, 3, 18):
        with pytest.raises(DataError, match="classes must be even"):
            class_specs(bad)
