"""Rendering one synthetic dive: a pure function of the class and a seed.

The body leaves the board at a random angle (a phase nuisance), so the angle in any one frame is
uniform whatever the class: rotation and somersaults can be read only from how the angle changes
over time, never from one frame. Nuisances: random textured backgrounds and clutter (which the
tracking camera pans across), moving water, sensor noise, brightness flicker, camera lag and shake,
variation in phase (take-off length, spin start), speed (flight length, a non-uniform spin), scale
and colour, and distractors (a bird, a spinning flag). The diver always travels to the right, as
seen from a fixed camera side, so a horizontal flip changes ``facing`` and ``rotation``: train
with ``data.flip: false``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from dsts.data.dives import SPINS, ClassSpec

# Nuisance levels and cue strengths, chosen so that a converged plain 3D CNN learns the fine cues
# only in part: about 80% top-1 at 8 frames of 32x32 (the calibration table: docs/benchmark.md).
NUISANCE: dict[str, Any] = {
    "clutter": 0.5,  # density of static clutter (pillars, windows) in the background
    "texture": 0.5,  # amplitude of the background texture
    "bird": 0.9,  # probability of a bird flying through
    "flag": 0.9,  # probability of a spinning flag
    "noise": (8.0, 24.0),  # sensor noise sd, in grey levels
    "jitter": 2,  # largest camera shake, in pixels
}
# How far the two classes of a pair differ.
CUE: dict[str, float] = {
    "arm": 0.15,  # facing: arm length at take-off, in body lengths
    "pike": 60.0,  # position: the pike's hip angle, in degrees
    "wobble": 0.8,  # rotation and somersaults: the largest non-uniformity of the angular speed
}


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
    wobble = rng.uniform(-CUE["wobble"], CUE["wobble"])  # non-uniform angular speed
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
            hand = shoulder + CUE["arm"] * body * np.array([arms * math.cos(ang), -math.sin(ang)])
            _capsule(img, at(shoulder), at(hand), thick, diver_c)
            _capsule(img, at(head), at(head), head_r, diver_c)
        elif t < takeoff + flight:
            u = (t - takeoff + 0.5) / flight
            hip = com(u)
            theta = theta0 + sense * spin * (u + wobble * math.sin(2 * math.pi * u) / (2 * math.pi))
            up = np.array([math.sin(theta), -math.cos(theta)])
            legs = theta + math.pi
            if spec.position == "PIKE" and abs(u - pike_centre) <= pike_half:
                legs -= pike_side * math.radians(CUE["pike"])
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
