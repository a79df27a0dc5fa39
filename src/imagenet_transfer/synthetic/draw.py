"""Pixels: objects from `Traits`, the articulated person figure, backgrounds, clutter and nuisances.

Everything is drawn with Pillow on a canvas twice the output size and box-filtered down (cheap
anti-aliasing). Geometry is numpy: an object is a list of polygons in its own frame (body radius 1),
moved by one 2x3 transform (pose, flip, scale, position). Every random choice comes from the `rng`
passed in, so an image depends only on its own seed.
"""

from __future__ import annotations

import colorsys
import functools
import io
import math

import numpy as np
from PIL import Image, ImageDraw

from imagenet_transfer.synthetic.traits import FIGURE, TEXTURES, Traits

SS = 2  # supersampling factor
_THETA = np.linspace(0.0, 2 * math.pi, 36, endpoint=False)
_CIRCLE = np.stack([np.cos(_THETA[::3]), np.sin(_THETA[::3])], 1)  # 12-gon


# -- geometry -----------------------------------------------------------------------------------
def _profile(family: int, theta: np.ndarray) -> np.ndarray:
    c, s = np.abs(np.cos(theta)), np.abs(np.sin(theta))
    if family == 0:
        return np.ones_like(theta)
    if family == 1:
        return 0.85 / np.maximum(c, s)
    if family == 2:
        return 0.5 / np.cos(np.mod(theta + math.pi / 2, 2 * math.pi / 3) - math.pi / 3)
    if family == 3:
        return 1.0 / (c + s)
    if family == 4:
        return 0.72 + 0.3 * np.cos(5 * theta)
    return 1.0 + 0.22 * np.cos(2 * theta) - 0.18 * np.cos(3 * theta)


def _radius(tr: Traits, theta: np.ndarray) -> np.ndarray:
    r = _profile(tr.family, theta)
    f = tr.fourier
    for i, k in enumerate((2, 3, 4, 5)):
        r = r * (1 + f[2 * i] * np.cos(k * theta) + f[2 * i + 1] * np.sin(k * theta))
    return r


def _outline(tr: Traits, theta: np.ndarray) -> np.ndarray:
    r = _radius(tr, theta)
    a = math.sqrt(tr.aspect)
    return np.stack([r * np.cos(theta) * a, r * np.sin(theta) / a], 1)


def _rect(p0: np.ndarray, p1: np.ndarray, half_width: float) -> np.ndarray:
    d = p1 - p0
    n = np.array([-d[1], d[0]]) / (np.hypot(*d) + 1e-9) * half_width
    return np.stack([p0 + n, p1 + n, p1 - n, p0 - n])


@functools.lru_cache(maxsize=4096)
def object_shapes(tr: Traits) -> tuple[np.ndarray, list[np.ndarray], list[tuple[np.ndarray, bool]]]:
    """(body, parts, marks) polygons in the object frame; a mark is (polygon, is_hole)."""
    body = _outline(tr, _THETA)
    parts = []
    for p in tr.parts:
        base = _outline(tr, np.array([p.angle]))[0] * 0.92
        u = np.array([math.cos(p.angle), math.sin(p.angle)])
        v = np.array([-u[1], u[0]])
        if p.kind == 0:  # bar
            parts.append(_rect(base - 0.1 * u, base + p.length * u, p.width / 2))
        elif p.kind == 1:  # disc
            parts.append(base + u * p.length * 0.5 + _CIRCLE * p.length * 0.55)
        elif p.kind == 2:  # spike
            parts.append(np.stack([base + p.width * v, base + 1.3 * p.length * u, base - p.width * v]))
        else:  # fork
            for turn in (-0.45, 0.45):
                w = u * math.cos(turn) + v * math.sin(turn)
                parts.append(_rect(base, base + p.length * w, p.width / 3))
    kind, mx, my, size = tr.mark
    c = np.array([mx, my])
    if kind == 0:
        marks = [(c + _CIRCLE * size * 0.5, False)]
    elif kind == 1:
        marks = [(c + _CIRCLE * size * 0.6, False), (c + _CIRCLE * size * 0.3, True)]
    elif kind == 2:
        marks = [(_rect(c - [size * 0.7, 0], c + [size * 0.7, 0], size * 0.2), False)]
    elif kind == 3:
        marks = [
            (_rect(c - [size * 0.6, 0], c + [size * 0.6, 0], size * 0.15), False),
            (_rect(c - [0, size * 0.6], c + [0, size * 0.6], size * 0.15), False),
        ]
    else:
        marks = [
            (c + [-size * 0.4, 0] + _CIRCLE * size * 0.3, False),
            (c + [size * 0.4, 0] + _CIRCLE * size * 0.3, False),
        ]
    return body, parts, marks


def transform(angle: float, flip: bool, scale: float, cx: float, cy: float) -> np.ndarray:
    """2x3 matrix: flip horizontally, rotate, scale, then move to (cx, cy) (canvas pixels)."""
    c, s = math.cos(angle) * scale, math.sin(angle) * scale
    fx = -1.0 if flip else 1.0
    return np.array([[c * fx, -s, cx], [s * fx, c, cy]])


def apply(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts @ m[:, :2].T + m[:, 2]


def _poly(pts: np.ndarray) -> list[float]:
    return pts.ravel().tolist()


# -- colour and texture ---------------------------------------------------------------------------
def random_colour(rng: np.random.Generator, hue: float | None = None, spread: float = 0.12) -> np.ndarray:
    h = (rng.random() if hue is None else hue + rng.normal(0, spread)) % 1.0
    r, g, b = colorsys.hsv_to_rgb(h, rng.uniform(0.3, 0.85), rng.uniform(0.4, 0.92))
    return np.array([r, g, b]) * 255


def _texture(rng: np.random.Generator, kind: int, h: int, w: int, period: float) -> np.ndarray:
    """A [0, 1] pattern of shape (h, w)."""
    if kind == 0 or h == 0 or w == 0:
        return np.zeros((h, w), np.float32)
    y, x = np.arange(h, dtype=np.float32)[:, None], np.arange(w, dtype=np.float32)[None, :]
    a, phase = rng.uniform(0, math.pi), rng.uniform(0, 2 * math.pi)
    f = 2 * math.pi / max(period, 2.0)
    if kind == 1:
        return (np.sin(f * (x * math.cos(a) + y * math.sin(a)) + phase) > 0).astype(np.float32)
    if kind == 2:
        return ((np.sin(f * x + phase) * np.sin(f * y + phase)) > 0.5).astype(np.float32)
    if kind == 3:
        return ((np.sin(f * x + phase) * np.sin(f * y)) > 0).astype(np.float32)
    return rng.random((h, w), dtype=np.float32)


def fill_textured(
    canvas: Image.Image,
    pts: np.ndarray,
    colour: np.ndarray,
    kind: int,
    amount: float,
    period: float,
    rng: np.random.Generator,
) -> None:
    """Fill polygon `pts` with `colour` modulated by a texture pattern."""
    if kind == 0 or amount <= 0:
        ImageDraw.Draw(canvas).polygon(_poly(pts), fill=tuple(int(c) for c in colour))
        return
    x0, y0 = np.floor(pts.min(0)).astype(int)
    x1, y1 = np.ceil(pts.max(0)).astype(int) + 1
    x0, y0 = max(x0, 0), max(y0, 0)
    x1, y1 = min(x1, canvas.width), min(y1, canvas.height)
    if x1 <= x0 or y1 <= y0:
        return
    mask = Image.new("L", (x1 - x0, y1 - y0))
    ImageDraw.Draw(mask).polygon(_poly(pts - [x0, y0]), fill=255)
    pattern = _texture(rng, kind, y1 - y0, x1 - x0, period)
    rgb = colour[None, None, :] * (1.0 - amount * pattern[..., None])
    canvas.paste(Image.fromarray(rgb.clip(0, 255).astype(np.uint8)), (x0, y0), mask)


# -- objects --------------------------------------------------------------------------------------
def draw_object(
    canvas: Image.Image, tr: Traits, m: np.ndarray, rng: np.random.Generator, scale_px: float, pose: dict | None = None
) -> np.ndarray:
    """Draw one object (or a person figure) with transform `m`; returns its box (x0, y0, x1, y1) on the canvas."""
    if tr.family == FIGURE:
        return draw_figure(canvas, tr, m, rng, scale_px, pose or random_pose(rng))
    colour = random_colour(rng, tr.hue)
    texture = tr.texture if rng.random() < 0.5 else int(rng.integers(len(TEXTURES)))
    body, parts, marks = object_shapes(tr)
    draw = ImageDraw.Draw(canvas)
    part_colour = tuple(int(c) for c in (colour * rng.uniform(0.45, 0.8)).clip(0, 255))
    points = [apply(m, body)]
    for part in parts:
        pts = apply(m, part)
        points.append(pts)
        draw.polygon(_poly(pts), fill=part_colour)
    fill_textured(canvas, points[0], colour, texture, rng.uniform(0.15, 0.45), scale_px * rng.uniform(0.25, 0.6), rng)
    mark_colour = tuple(int(c) for c in (255 - colour * rng.uniform(0.6, 1.0)).clip(0, 255))
    for pts, hole in marks:
        fill = tuple(int(c) for c in colour) if hole else mark_colour
        draw.polygon(_poly(apply(m, pts)), fill=fill)
    allpts = np.concatenate(points)
    return np.concatenate([allpts.min(0), allpts.max(0)])


# -- the person figure ----------------------------------------------------------------------------
# Joint angles (radians): 0 points down, +pi/2 points forward (+x), pi points up. Each limb is
# (upper, lower); `lean` tilts the torso forward; `lift` raises the whole figure (jumping), `sit`
# bends the hips (riding, using a computer).
POSES = {
    "standing": dict(arm_b=(0.15, 0.1), arm_f=(-0.15, -0.1), leg_b=(0.05, 0.0), leg_f=(-0.05, 0.0), lean=0.0),
    "walking": dict(arm_b=(0.45, 0.6), arm_f=(-0.4, -0.2), leg_b=(0.35, 0.2), leg_f=(-0.35, -0.45), lean=0.05),
    "running": dict(arm_b=(1.0, 2.2), arm_f=(-0.9, 0.4), leg_b=(1.1, 0.1), leg_f=(-0.7, -1.6), lean=0.3),
    "jumping": dict(arm_b=(2.6, 2.9), arm_f=(-2.6, -2.9), leg_b=(0.9, -0.4), leg_f=(-0.9, 0.4), lean=0.0, lift=0.35),
    "phoning": dict(arm_b=(0.1, 0.05), arm_f=(0.35, 2.8), leg_b=(0.05, 0.0), leg_f=(-0.05, 0.0), lean=0.0),
    "takingphoto": dict(arm_b=(0.9, 2.6), arm_f=(0.7, 2.5), leg_b=(0.1, 0.0), leg_f=(-0.1, 0.0), lean=0.05),
    "reading": dict(arm_b=(0.5, 1.5), arm_f=(0.4, 1.4), leg_b=(0.05, 0.0), leg_f=(-0.05, 0.0), lean=0.2),
    "playinginstrument": dict(arm_b=(0.9, 1.9), arm_f=(0.2, 1.3), leg_b=(0.1, 0.0), leg_f=(-0.1, 0.0), lean=-0.05),
    "usingcomputer": dict(arm_b=(0.8, 1.5), arm_f=(0.7, 1.4), leg_b=(1.5, 0.0), leg_f=(1.4, 0.0), lean=0.1, sit=1),
    "ridingbike": dict(arm_b=(1.0, 1.3), arm_f=(0.9, 1.2), leg_b=(1.3, 0.2), leg_f=(0.9, -0.3), lean=0.35, sit=1),
    "ridinghorse": dict(arm_b=(0.8, 1.4), arm_f=(0.7, 1.3), leg_b=(0.7, 0.0), leg_f=(0.6, 0.0), lean=0.1, sit=1),
}


def random_pose(rng: np.random.Generator) -> dict:
    return POSES[("standing", "walking", "running")[int(rng.integers(3))]]


def _dir(a: float) -> np.ndarray:
    return np.array([math.sin(a), math.cos(a)])


def figure_joints(pose: dict, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Joint positions in the figure frame (height about 2: head top near y=-1, feet near y=+1)."""
    j = lambda: rng.normal(0, 0.12)  # noqa: E731
    lean = pose.get("lean", 0.0) + j() * 0.5
    hip = np.array([0.0, 0.1 - pose.get("lift", 0.0)])
    neck = hip + 0.65 * np.array([math.sin(lean), -math.cos(lean)])
    head = neck + 0.22 * np.array([math.sin(lean), -math.cos(lean)])
    out = {"hip": hip, "neck": neck, "head": head}
    for limb, root, (l1, l2) in (
        ("arm_b", neck, (0.32, 0.28)),
        ("arm_f", neck, (0.32, 0.28)),
        ("leg_b", hip, (0.45, 0.45)),
        ("leg_f", hip, (0.45, 0.45)),
    ):
        a1, a2 = pose[limb]
        mid = root + l1 * _dir(a1 + j())
        out[limb] = np.stack([root, mid, mid + l2 * _dir(a2 + j())])
    return out


def draw_figure(
    canvas: Image.Image,
    tr: Traits,
    m: np.ndarray,
    rng: np.random.Generator,
    scale_px: float,
    pose: dict,
    joints: dict | None = None,
) -> np.ndarray:
    """The person: head, torso, four limbs; hat = the class's first part, badge = its mark."""
    joints = joints or figure_joints(pose, rng)
    draw = ImageDraw.Draw(canvas)
    clothes = random_colour(rng, tr.hue)
    legs = tuple(int(c) for c in random_colour(rng))
    skin = tuple(int(c) for c in np.array([224, 172, 140]) * rng.uniform(0.45, 1.1))
    width = max(1, int(0.11 * tr.build * scale_px))
    pts = []
    for limb in ("arm_b", "leg_b", "leg_f", "arm_f"):
        if limb == "arm_f":
            shoulder = joints["neck"] * 0.8 + joints["hip"] * 0.2
            torso = np.stack(
                [
                    joints["neck"] + [-0.14, 0],
                    joints["neck"] + [0.14, 0],
                    joints["hip"] + [0.11, 0],
                    joints["hip"] + [-0.11, 0],
                ]
            )
            tp = apply(m, torso)
            pts.append(tp)
            fill_textured(canvas, tp, clothes, tr.texture, 0.3, scale_px * 0.15, rng)
            _kind, mx, my, size = tr.mark
            badge = shoulder + [mx * 0.3, 0.12 + my * 0.2] + _CIRCLE * size * 0.25
            draw.polygon(_poly(apply(m, badge)), fill=tuple(int(c) for c in 255 - clothes))
        limb_pts = apply(m, joints[limb])
        pts.append(limb_pts)
        colour = legs if limb.startswith("leg") else tuple(int(c) for c in clothes * 0.85)
        draw.line(_poly(limb_pts), fill=colour, width=width, joint="curve")
    head = apply(m, joints["head"] + _CIRCLE * 0.17)
    pts.append(head)
    draw.polygon(_poly(head), fill=skin)
    if tr.parts:  # hat
        p = tr.parts[0]
        top = joints["head"] + [0, -0.15]
        if p.kind in (0, 3):
            hat = _rect(top + [-0.2, 0], top + [0.2, 0], 0.05 + p.width * 0.2)
        elif p.kind == 1:
            hat = top + _CIRCLE * [0.17, 0.1]
        else:
            hat = np.stack([top + [-0.17, 0.03], top + [0, -0.15 - p.length * 0.2], top + [0.17, 0.03]])
        hp = apply(m, hat)
        pts.append(hp)
        draw.polygon(_poly(hp), fill=tuple(int(c) for c in clothes * 0.6))
    allpts = np.concatenate(pts)
    half = width / 2
    return np.concatenate([allpts.min(0) - half, allpts.max(0) + half])


# -- backgrounds, clutter, nuisances ----------------------------------------------------------------
def background(rng: np.random.Generator, w: int, h: int, layout: int | None = None) -> Image.Image:
    """A two-colour gradient (layout 0), or a horizon (1), wall/floor (2), or bands (3)."""
    a, b = random_colour(rng), random_colour(rng)
    layout = int(rng.integers(4)) if layout is None else layout
    if layout == 0:  # computed on an 8x8 grid, then stretched
        g = np.linspace(0, 1, 8, dtype=np.float32)
        t = g[:, None] * math.cos(rng.uniform(0, math.pi)) + g[None, :] * math.sin(rng.uniform(0, math.pi))
        t = (t - t.min()) / (np.ptp(t) + 1e-6)
    else:  # one column, stretched sideways
        y = np.linspace(0, 1, h, dtype=np.float32)[:, None]
        if layout in (1, 2):
            t = np.clip((y - rng.uniform(0.3, 0.7)) * (12 if layout == 1 else 40), 0, 1)
        else:
            t = (np.sin(y * rng.uniform(6, 14) + rng.uniform(0, 6)) > 0) * np.float32(0.7)
    arr = a * (1 - t[..., None]) + b * t[..., None]
    small = Image.fromarray(arr.astype(np.uint8))
    return small.resize((w, h), Image.BILINEAR if layout == 0 else Image.NEAREST)


def clutter(canvas: Image.Image, rng: np.random.Generator, count: int, size: float) -> None:
    """Random shapes (ellipses, bars, spikes) that share nothing with any class."""
    draw = ImageDraw.Draw(canvas)
    for _ in range(count):
        cx, cy = rng.uniform(0, canvas.width), rng.uniform(0, canvas.height)
        r = size * rng.uniform(0.4, 1.0)
        colour = tuple(int(c) for c in random_colour(rng))
        kind = rng.integers(3)
        if kind == 0:
            draw.ellipse([cx - r, cy - r * rng.uniform(0.3, 1), cx + r, cy + r * rng.uniform(0.3, 1)], fill=colour)
        elif kind == 1:
            a = rng.uniform(0, math.pi)
            d = np.array([math.cos(a), math.sin(a)]) * r
            draw.polygon(_poly(_rect(np.array([cx, cy]) - d, np.array([cx, cy]) + d, r * 0.15)), fill=colour)
        else:
            pts = np.array([cx, cy]) + rng.uniform(-r, r, (3, 2))
            draw.polygon(_poly(pts), fill=colour)


def occlude(canvas: Image.Image, rng: np.random.Generator, box: np.ndarray, fraction: float) -> np.ndarray:
    """Cover about `fraction` of `box` with a bar from one side; returns the bar (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = box
    colour = tuple(int(c) for c in random_colour(rng))
    if rng.random() < 0.5:
        cut = x0 + (x1 - x0) * fraction
        rect = [x0 - 2, y0 - 2, cut, y1 + 2] if rng.random() < 0.5 else [x1 - (cut - x0), y0 - 2, x1 + 2, y1 + 2]
    else:
        cut = y0 + (y1 - y0) * fraction
        rect = [x0 - 2, y0 - 2, x1 + 2, cut] if rng.random() < 0.5 else [x0 - 2, y1 - (cut - y0), x1 + 2, y1 + 2]
    ImageDraw.Draw(canvas).rectangle(rect, fill=colour)
    return np.array(rect, dtype=float)


@functools.lru_cache(maxsize=8)
def _ramps(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    return np.linspace(-1, 1, w, dtype=np.float32)[None, :], np.linspace(-1, 1, h, dtype=np.float32)[:, None]


def finish(canvas: Image.Image, rng: np.random.Generator, quality: int = 90) -> bytes:
    """Down-sample, apply lighting and sensor noise, encode as JPEG."""
    img = canvas.reduce(SS)
    arr = np.asarray(img, dtype=np.float32)
    gx, gy = _ramps(*arr.shape[:2])
    gain = rng.uniform(0.7, 1.2)
    a = rng.uniform(0, 2 * math.pi)
    ramp = gx * np.float32(math.cos(a)) + gy * np.float32(math.sin(a))
    light = np.float32(gain) * (1 + np.float32(rng.uniform(0, 0.2)) * ramp)
    arr = arr * light[..., None] + np.float32(rng.uniform(-20, 20))
    arr += rng.standard_normal(arr.shape, dtype=np.float32) * np.float32(rng.uniform(1, 6))
    out = io.BytesIO()
    Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(out, "JPEG", quality=quality)
    return out.getvalue()
