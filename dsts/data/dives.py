"""The classes of the generated fine-grained benchmark: synthetic dives described by attributes.

Classes are compositions of attributes, as in Diving48. Three *coarse* attributes (``board``: a thin
springboard or a platform on a tower; ``arc``: a short or a long flight; ``approach``: standing or
running take-off) put the classes into groups of two that share their appearance and motion. The
two classes of a group differ in exactly one *fine* attribute, the class's cue, which is spatial or
temporal:

- ``facing`` (spatial): the arms point toward the water or back toward the board, in the 3-5
  take-off frames only;
- ``position`` (spatial): straight, or piked at the hips for 4-5 frames around the apex only;
- ``rotation`` (temporal): the somersault turns clockwise (forward) or counter-clockwise (backward);
- ``somersaults`` (temporal): half a turn or a whole turn during the flight (an angular speed).

How a class looks is :mod:`dsts.data.render`; how the benchmark is written is
:mod:`dsts.data.generate`; docs/benchmark.md describes the whole.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dsts.errors import DataError

ATTRIBUTES: tuple[dict[str, Any], ...] = (
    {
        "name": "board",
        "values": ["3m", "10m"],
        "cue": None,
        "role": "coarse",
        "description": "a thin springboard that bounces, or a thick platform on a tower; the 10m dive "
        "falls further, so the tracking camera pans down faster",
    },
    {
        "name": "arc",
        "values": ["near", "far"],
        "cue": None,
        "role": "coarse",
        "description": "a short or a long flight away from the board: how far the camera pans sideways",
    },
    {
        "name": "approach",
        "values": ["stand", "run"],
        "cue": None,
        "role": "coarse",
        "description": "the diver stands at the edge, or walks along the board to it, in the take-off frames",
    },
    {
        "name": "facing",
        "values": ["front", "back"],
        "cue": "spatial",
        "role": "fine",
        "description": "at take-off short arms point toward the water (front) or toward the board (back); "
        "visible only in the 3-5 take-off frames",
    },
    {
        "name": "position",
        "values": ["STR", "PIKE"],
        "cue": "spatial",
        "role": "fine",
        "description": "a straight body, or legs piked about 60 degrees at the hips for 4-5 frames "
        "around the apex only",
    },
    {
        "name": "rotation",
        "values": ["forward", "backward"],
        "cue": "temporal",
        "role": "fine",
        "description": "the somersault turns clockwise (forward, head toward the water side first) or "
        "counter-clockwise; the body leaves the board at a random angle, so only the change of angle tells",
    },
    {
        "name": "somersaults",
        "values": ["05som", "10som"],
        "cue": "temporal",
        "role": "fine",
        "description": "half a turn or a whole turn during the flight: an angular speed, read over time",
    },
)
_ATTR = {a["name"]: a for a in ATTRIBUTES}
COARSE = ("board", "arc", "approach")
FINE = ("facing", "position", "rotation", "somersaults")
SPINS = {"05som": 0.5, "10som": 1.0}  # turns during the flight

# Diving48's take-off names: facing x rotation.
TAKEOFF = {
    ("front", "forward"): "Forward",
    ("back", "backward"): "Back",
    ("front", "backward"): "Reverse",
    ("back", "forward"): "Inward",
}

# One group per combination of the coarse attributes: (board, arc, approach, the fine attribute that
# varies inside the group, the fixed values of the other fine ones). The first four groups vary each
# fine attribute once; a running take-off has no facing cue (its arms always point ahead).
GROUPS: tuple[tuple[str, str, str, str, dict[str, str]], ...] = (
    ("3m", "near", "stand", "facing", {"position": "STR", "rotation": "forward", "somersaults": "10som"}),
    ("3m", "far", "stand", "rotation", {"facing": "back", "position": "PIKE", "somersaults": "05som"}),
    ("10m", "near", "stand", "somersaults", {"facing": "front", "position": "STR", "rotation": "backward"}),
    ("10m", "far", "stand", "position", {"facing": "back", "rotation": "forward", "somersaults": "10som"}),
    ("3m", "near", "run", "position", {"facing": "front", "rotation": "backward", "somersaults": "05som"}),
    ("3m", "far", "run", "somersaults", {"facing": "front", "position": "PIKE", "rotation": "forward"}),
    ("10m", "near", "run", "rotation", {"facing": "front", "position": "STR", "somersaults": "05som"}),
    ("10m", "far", "run", "position", {"facing": "front", "rotation": "backward", "somersaults": "10som"}),
)
PER_GROUP = 2
MAX_CLASSES = PER_GROUP * len(GROUPS)


@dataclass(frozen=True)
class ClassSpec:
    label: int
    group: int
    cue_attribute: str  # the fine attribute that tells this class from its group partner
    board: str
    arc: str
    approach: str
    facing: str
    position: str
    rotation: str
    somersaults: str

    @property
    def cue(self) -> str:
        """``"spatial"`` or ``"temporal"``: the kind of the cue attribute."""
        return str(_ATTR[self.cue_attribute]["cue"])

    @property
    def takeoff(self) -> str:
        return TAKEOFF[(self.facing, self.rotation)]

    @property
    def vocab(self) -> list[str]:
        """The class's attribute list, as in ``Diving48_vocab.json``."""
        return [self.takeoff, self.somersaults, self.position, self.board, self.arc, self.approach]

    @property
    def name(self) -> str:
        return " ".join(self.vocab)

    def attributes(self) -> dict[str, str]:
        return {a["name"]: getattr(self, a["name"]) for a in ATTRIBUTES}


def class_specs(num_classes: int = MAX_CLASSES) -> list[ClassSpec]:
    """The first ``num_classes`` classes (even, up to 16), two per group."""
    if num_classes < PER_GROUP or num_classes > MAX_CLASSES or num_classes % PER_GROUP:
        raise DataError(
            f"generate: classes must be even and in [{PER_GROUP}, {MAX_CLASSES}], got {num_classes}"
        )
    specs = []
    for g, (board, arc, approach, vary, fixed) in enumerate(GROUPS[: num_classes // PER_GROUP]):
        for value in _ATTR[vary]["values"]:
            fine = dict(fixed)
            fine[vary] = value
            specs.append(ClassSpec(len(specs), g, vary, board, arc, approach, **fine))
    return specs


def nearest_classes(specs: Sequence[ClassSpec]) -> dict[int, list[tuple[int, str]]]:
    """For each class, its nearest classes and the fine attribute each differs in: the classes with the
    same coarse attributes (its group) that differ from it in one fine attribute. With this design that
    is its group partner alone. (Classes of other groups differ in at least one coarse attribute, which
    is easy to see; some differ in nothing else.)"""
    out: dict[int, list[tuple[int, str]]] = {}
    for a in specs:
        out[a.label] = []
        for b in specs:
            if b.label == a.label or any(getattr(a, n) != getattr(b, n) for n in COARSE):
                continue
            diff = [n for n in FINE if getattr(a, n) != getattr(b, n)]
            if len(diff) == 1:
                out[a.label].append((b.label, diff[0]))
    return out


def attributes_document(specs: Sequence[ClassSpec]) -> dict[str, Any]:
    """What ``Diving48_attributes.json`` holds: each attribute's kind of cue and, per class, its
    attributes, its cue and its nearest classes."""
    near = nearest_classes(specs)
    return {
        "attributes": [dict(a) for a in ATTRIBUTES],
        "classes": [
            {
                "label": spec.label,
                "name": spec.name,
                "group": spec.group,
                "attributes": spec.attributes(),
                "cue_attribute": spec.cue_attribute,
                "cue": spec.cue,
                "nearest": [{"label": k, "differs_in": f} for k, f in near[spec.label]],
            }
            for spec in specs
        ],
    }
