"""The generated fine-grained benchmark: synthetic dives written in Diving48's own on-disk format.

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

The body leaves the board at a random angle (a phase nuisance), so the angle in any one frame is
uniform whatever the class: rotation and somersaults can be read only from how the angle changes
over time, never from one frame. Nuisances: random textured backgrounds and clutter (which the
tracking camera pans across), moving water, sensor noise, brightness flicker, camera lag and shake,
variation in phase (take-off length, spin start), speed (flight length, a non-uniform spin), scale
and colour, and distractors (a bird, a spinning flag). The diver always travels to the right, as
seen from a fixed camera side, so a horizontal flip changes ``facing`` and ``rotation``: train
with ``data.flip: false``.

Every clip is rendered from its own seed and libx264 runs single-threaded, so a seed gives the same
bytes whatever the number of processes.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from dsts.errors import DataError

VOCAB_FILE = "Diving48_vocab.json"
ATTRIBUTES_FILE = "Diving48_attributes.json"
FPS = 16
CRF = 18
# Nuisance levels, chosen so that the baseline learns the fine cues only in part (docs/benchmark.md).
NUISANCE: dict[str, Any] = {
    "clutter": 0.3,  # density of static clutter (pillars, windows) in the background
    "texture": 0.5,  # amplitude of the background texture
    "bird": 0.7,  # probability of a bird flying through
    "flag": 0.6,  # probability of a spinning flag
    "noise": (2.0, 6.0),  # sensor noise sd, in grey levels
    "jitter": 1,  # largest camera shake, in pixels
}

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
        "description": "at take-off the arms point toward the water (front) or toward the board (back); "
        "visible only in the 3-5 take-off frames",
    },
    {
        "name": "position",
        "values": ["STR", "PIKE"],
        "cue": "spatial",
        "role": "fine",
        "description": "a straight body, or legs piked about 115 degrees at the hips for 4-5 frames "
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


# --------------------------------------------------------------------------------------------
# rendering


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    i = int(h * 6) % 6
    f = h * 6 - math.floor(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return np.array([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i], dtype=np.float32)


def _lum(c: np.ndarray) -> float:
    return float(0.299 * c[..., 0].mean() + 0.587 * c[..., 1].mean() + 0.114 * c[..., 2].mean())


def _capsule(img: np.ndarray, p0: Sequence[float], p1: Sequence[float], r: float, colour: np.ndarray) -> None:
    """Blend an anti-aliased thick segment from p0 to p1 ((x, y) in pixels, radius r) into ``img``."""
    hgt, wid = img.shape[:2]
    x_lo = max(int(math.floor(min(p0[0], p1[0]) - r - 1)), 0)
    x_hi = min(int(math.ceil(max(p0[0], p1[0]) + r + 2)), wid)
    y_lo = max(int(math.floor(min(p0[1], p1[1]) - r - 1)), 0)
    y_hi = min(int(math.ceil(max(p0[1], p1[1]) + r + 2)), hgt)
    if x_lo >= x_hi or y_lo >= y_hi:
        return
    ys, xs = np.mgrid[y_lo:y_hi, x_lo:x_hi].astype(np.float32)
    dx, dy = p1[0] - p0[0], p1[1] - p0[1]
    n2 = dx * dx + dy * dy
    t = np.clip(((xs - p0[0]) * dx + (ys - p0[1]) * dy) / n2, 0.0, 1.0) if n2 > 1e-9 else 0.0
    d = np.hypot(xs - (p0[0] + t * dx), ys - (p0[1] + t * dy))
    alpha = np.clip(r + 0.5 - d, 0.0, 1.0)[..., None]
    region = img[y_lo:y_hi, x_lo:x_hi]
    region *= 1 - alpha
    region += alpha * colour


def _rect(img: np.ndarray, x0: float, y0: float, x1: float, y1: float, colour: np.ndarray) -> None:
    hgt, wid = img.shape[:2]
    xa, xb = max(int(round(x0)), 0), min(int(round(x1)), wid)
    ya, yb = max(int(round(y0)), 0), min(int(round(y1)), hgt)
    if xa < xb and ya < yb:
        img[ya:yb, xa:xb] = colour


def _backdrop(rng: np.random.Generator, hgt: int, wid: int, s: float) -> np.ndarray:
    """A random static world behind the dive: a gradient, a texture and clutter (pillars, windows)."""
    yy, xx = np.mgrid[0:hgt, 0:wid].astype(np.float32) / (64 * s)
    top = _hsv(rng.random(), rng.uniform(0.1, 0.6), rng.uniform(0.15, 0.5))
    bottom = _hsv(rng.random(), rng.uniform(0.1, 0.6), rng.uniform(0.15, 0.5))
    frac = (yy / max(yy.max(), 1e-6))[..., None]
    img = top * (1 - frac) + bottom * frac
    tex = np.zeros((hgt, wid), np.float32)
    for _ in range(4):
        fx, fy = rng.uniform(1, 5, 2)
        amp = NUISANCE["texture"] * rng.uniform(0.02, 0.06)
        tex += amp * np.sin(2 * math.pi * (fx * xx + fy * yy) + rng.uniform(0, 2 * math.pi))
    img = img + tex[..., None]
    count = rng.poisson(NUISANCE["clutter"] * 5 * hgt * wid / (64 * s) ** 2)
    for _ in range(int(count)):
        w, h = rng.uniform(0.03, 0.15) * 64 * s, rng.uniform(0.05, 0.4) * 64 * s
        x, y = rng.uniform(-w, wid), rng.uniform(-h, hgt)
        _rect(img, x, y, x + w, y + h, _hsv(rng.random(), rng.uniform(0, 0.6), rng.uniform(0.1, 0.6)))
    return img.astype(np.float32)


def render_clip(spec: ClassSpec, seed: Sequence[int], frames: int = 16, size: int = 64) -> np.ndarray:
    """One clip of class ``spec``: ``(frames, size, size, 3)`` uint8, a pure function of the arguments.

    World coordinates are pixels (of a 64-pixel frame, scaled), y down; the board's edge is at x = 0
    on its top surface y = 0 and the diver travels along +x. A camera tracks the diver with some lag
    and shake.
    """
    rng = np.random.default_rng(np.random.SeedSequence(list(seed)))
    s = size / 64.0
    half = size / 2

    body = rng.uniform(26.0, 30.0) * s  # body length
    thick = rng.uniform(1.8, 2.2) * s  # limb radius
    head_r = 3.2 * s
    reach = {"near": 10.0, "far": 40.0}[spec.arc] * rng.uniform(0.85, 1.15) * s
    lift = {"near": 8.0, "far": 14.0}[spec.arc] * rng.uniform(0.85, 1.15) * s
    drop = {"3m": 50.0, "10m": 110.0}[spec.board] * rng.uniform(0.9, 1.1) * s
    springboard = spec.board == "3m"
    running = spec.approach == "run"

    # timeline: take-off, flight, splash (phase and speed vary)
    unit = frames / 16.0
    takeoff = max(1, int(round(rng.integers(3, 6) * unit)))
    flight = max(3, min(int(round(rng.integers(9, 12) * unit)), frames - takeoff - 1))
    theta0 = rng.uniform(0, 2 * math.pi)  # the body's angle when it leaves the board
    spin = 2 * math.pi * SPINS[spec.somersaults]
    sense = 1 if spec.rotation == "forward" else -1  # +1: clockwise on screen
    wobble = rng.uniform(-0.25, 0.25)  # non-uniform angular speed
    pike_centre = 0.5 + rng.uniform(-0.08, 0.08)
    pike_half = 2.1 / flight  # 4-5 frames
    pike_side = 1 if rng.random() < 0.5 else -1
    arms = 1 if spec.facing == "front" else -1  # +1: toward the water
    lag = rng.uniform(0.0, 0.08)
    stride = rng.uniform(2.5, 3.5) * s  # walking speed of a running approach, per frame

    hip0 = np.array([-2.0 * s, -0.5 * body])  # the hip at the edge, before the flight
    water_y = drop

    def com(u: float) -> np.ndarray:
        u0 = float(np.clip(u, 0.0, 1.0))
        x = hip0[0] * (1 - u0) + reach * u0
        y = hip0[1] + (water_y - hip0[1]) * u0 * u0 - 4 * lift * u0 * (1 - u0)
        return np.array([x, y])

    def standing_hip(t: int) -> np.ndarray:
        back = (takeoff - 1 - t) * stride if running else 0.0
        bob = (t % 2) * 1.2 * s if (springboard and not running) else 0.0
        return hip0 + np.array([-back, bob])

    shake = NUISANCE["jitter"]
    jitter = np.clip(np.cumsum(rng.integers(-1, 2, size=(frames, 2)), axis=0), -shake, shake) * s
    cams = np.empty((frames, 2))
    for t in range(frames):
        if t < takeoff:
            cams[t] = standing_hip(t) + np.array([0.0, 0.12 * body])
        elif t < takeoff + flight:
            cams[t] = com((t - takeoff + 0.5) / flight - lag)
        else:
            cams[t] = com(1.0) + np.array([0.0, -0.2 * size])
        cams[t] += jitter[t]
    cams = np.round(cams)

    pad = 4
    x_lo, y_lo = cams.min(0) - half - pad
    x_hi, y_hi = cams.max(0) + half + pad
    world = _backdrop(rng, int(y_hi - y_lo), int(x_hi - x_lo), s)
    origin = np.array([x_lo, y_lo])  # the world position of world[0, 0]

    water = _hsv(rng.uniform(0.45, 0.65), rng.uniform(0.3, 0.8), rng.uniform(0.3, 0.7))
    wave_phase, wave_speed = rng.uniform(0, 2 * math.pi), rng.uniform(-0.8, 0.8)
    board_c = _hsv(
        rng.random(), rng.uniform(0, 0.2), rng.uniform(0.75, 0.95) if springboard else rng.uniform(0.35, 0.6)
    )
    diver_c = _hsv(rng.uniform(0.02, 0.1), rng.uniform(0.2, 0.55), rng.uniform(0.85, 1.0))  # skin

    bird = rng.random() < NUISANCE["bird"]
    bird_p = cams[rng.integers(frames)] + rng.uniform(-0.45, 0.45, 2) * size
    bird_v = rng.uniform(-3.0, 3.0, 2) * s * np.array([1.0, 0.4])
    bird_c = _hsv(rng.random(), rng.uniform(0, 0.5), rng.uniform(0.0, 1.0))
    flag = rng.random() < NUISANCE["flag"]
    flag_p = cams[rng.integers(frames)] + rng.uniform(-0.4, 0.4, 2) * size
    flag_w = rng.choice([-1, 1]) * rng.uniform(0.5, 3.0) * 2 * math.pi / frames
    flag_a = rng.uniform(0, 2 * math.pi)
    flag_c = _hsv(rng.random(), rng.uniform(0.2, 0.9), rng.uniform(0.3, 1.0))

    noise_sd = rng.uniform(*NUISANCE["noise"]) / 255.0
    flicker = 1 + rng.uniform(-0.04, 0.04, frames)
    out = np.empty((frames, size, size, 3), np.uint8)
    rows = np.arange(size, dtype=np.float32)
    for t in range(frames):
        corner = cams[t] - half  # the world position of the frame's top-left pixel
        ox, oy = int(corner[0] - origin[0]), int(corner[1] - origin[1])
        img = world[oy : oy + size, ox : ox + size].copy()

        def at(p: Sequence[float], corner: np.ndarray = corner) -> tuple[float, float]:
            return float(p[0] - corner[0]), float(p[1] - corner[1])

        line = water_y - corner[1]  # the water line in the frame
        if line < size:
            top = max(int(math.ceil(line)), 0)
            shade = 1 + 0.1 * np.sin(0.8 * rows[top:] / s + wave_phase + wave_speed * t)
            img[top:] = water * shade[:, None, None]
        far_end = -3.0 * size
        if springboard:  # a thin plank whose tip dips with the diver
            dip = standing_hip(t)[1] - hip0[1] if t < takeoff else 0.0
            _capsule(img, at((far_end, 1.0 * s)), at((0.0, 1.0 * s + dip)), 1.1 * s, board_c)
        else:  # a thick concrete block on a tower that reaches the water
            a, b = at((far_end, 0.0)), at((0.0, 12.0 * s))
            _rect(img, a[0], a[1], b[0], b[1], board_c)
            a, b = at((-24.0 * s, 12.0 * s)), at((-8.0 * s, water_y))
            _rect(img, a[0], a[1], b[0], b[1], board_c * 0.8)
        if flag:
            ang = flag_a + flag_w * t
            tip = flag_p + 6 * s * np.array([math.sin(ang), -math.cos(ang)])
            _capsule(img, at(flag_p), at(tip), 0.8 * s, flag_c)
        if bird:
            bp = bird_p + bird_v * t
            _capsule(img, at(bp - [1.8 * s, 0]), at(bp + [1.8 * s, 0]), 1.0 * s, bird_c)

        if t < takeoff:  # upright at (or walking to) the edge
            hip = standing_hip(t)
            shoulder = hip - np.array([0.0, 0.4 * body])
            head = hip - np.array([0.0, 0.4 * body + head_r + 0.5 * s])
            if running:  # legs in stride
                swing = (1 if t % 2 else -1) * 0.3
                for side in (swing, -swing):
                    _capsule(
                        img,
                        at(hip),
                        at(hip + 0.5 * body * np.array([math.sin(side), math.cos(side)])),
                        thick,
                        diver_c,
                    )
            else:
                _capsule(img, at(hip + np.array([0.0, 0.5 * body])), at(hip), thick, diver_c)
            _capsule(img, at(hip), at(shoulder), thick, diver_c)
            ang = math.radians(10)
            hand = shoulder + 0.45 * body * np.array([arms * math.cos(ang), -math.sin(ang)])
            _capsule(img, at(shoulder), at(hand), thick, diver_c)
            _capsule(img, at(head), at(head), head_r, diver_c)
        elif t < takeoff + flight:
            u = (t - takeoff + 0.5) / flight
            hip = com(u)
            theta = theta0 + sense * spin * (u + wobble * math.sin(2 * math.pi * u) / (2 * math.pi))
            up = np.array([math.sin(theta), -math.cos(theta)])
            legs = theta + math.pi
            if spec.position == "PIKE" and abs(u - pike_centre) <= pike_half:
                legs -= pike_side * math.radians(115)
            feet = hip + 0.5 * body * np.array([math.sin(legs), -math.cos(legs)])
            _capsule(img, at(hip), at(hip + 0.4 * body * up), thick, diver_c)
            _capsule(img, at(hip), at(feet), thick, diver_c)
            head = hip + (0.4 * body + head_r + 0.5 * s) * up
            _capsule(img, at(head), at(head), head_r, diver_c)
        else:  # the splash, the same for every class
            k = t - takeoff - flight
            height = max(0.0, 12.0 - 3.0 * k) * s
            if height > 0:
                entry = com(1.0)
                foam = np.array([0.92, 0.95, 1.0], np.float32)
                _capsule(
                    img, at((entry[0], water_y - height)), at((entry[0], water_y)), (3.0 + 0.6 * k) * s, foam
                )
        img = img * flicker[t] + rng.normal(0.0, noise_sd, img.shape).astype(np.float32)
        out[t] = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return out


# --------------------------------------------------------------------------------------------
# writing


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
    import av

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
    split_id = {"train": 0, "test": 1}[split]
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
) -> dict[str, Any]:
    """Write the benchmark into ``root``: ``rgb/*.mp4``, ``Diving48_V2_{train,test}.json``,
    ``Diving48_vocab.json`` and ``Diving48_attributes.json``; return a summary.
    The bytes depend on the arguments only, not on ``jobs`` (parallel processes)."""
    if size < 16 or size % 2:
        raise DataError(f"generate: size must be even and >= 16, got {size}")
    if frames < 8:
        raise DataError(f"generate: frames must be >= 8, got {frames}")
    if clips_per_class_train < 1 or clips_per_class_test < 1:
        raise DataError("generate: clips per class must be >= 1")
    specs = class_specs(classes)
    root = Path(root)
    (root / "rgb").mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    work = []
    counts = {}
    for split, per_class in (("train", clips_per_class_train), ("test", clips_per_class_test)):
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
        "test": counts["test"],
        "frames": frames,
        "size": size,
        "seconds": time.perf_counter() - started,
    }


def default_jobs() -> int:
    return max(1, min(4, os.cpu_count() or 1))
