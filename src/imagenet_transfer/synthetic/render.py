"""One item of each part of the world: an ImageNet image, a VOC2007 scene, a VOC2012 action scene,
a SUN397 scene. Each function takes the shared `World` context and the item's own random generator and
returns JPEG bytes (plus the annotation of a VOC image).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from imagenet_transfer.datasets.voc import VOC_CLASSES
from imagenet_transfer.synthetic import draw
from imagenet_transfer.synthetic.plan import ACTION_PROPS, ACTIONS, TABLE, VOC_WEIGHTS
from imagenet_transfer.synthetic.traits import FIGURE, Traits


@dataclass
class World:
    """What every worker needs: traits of all synsets drawn, and the object pools."""

    seed: int
    resolution: int
    traits: dict[str, Traits]
    classes: list[str]  # the world's ILSVRC classes
    voc_pools: dict[str, list[str]]
    scenes: list[dict]
    voc_p: np.ndarray = field(init=False)

    def __post_init__(self):
        w = np.array([VOC_WEIGHTS[c] for c in VOC_CLASSES])
        self.voc_p = w / w.sum()

    @property
    def scene_size(self) -> tuple[int, int]:
        return round(2.5 * self.resolution), 2 * self.resolution


@dataclass
class Box:
    name: str
    box: tuple[int, int, int, int]  # VOC convention: 1-based, inclusive
    truncated: int
    difficult: int
    pose: str
    actions: dict[str, int] | None = None


# -- ImageNet --------------------------------------------------------------------------------------
def imagenet_image(world: World, wnid: str, rng: np.random.Generator) -> bytes:
    s = world.resolution * draw.SS
    canvas = draw.background(rng, s, s)
    draw.clutter(canvas, rng, int(rng.integers(1, 5)), s * 0.12)
    tr = world.traits[wnid]
    scale = s * rng.uniform(0.2, 0.3) * (0.8 if tr.family == FIGURE else 1.0)
    cx, cy = s * (0.5 + rng.uniform(-0.12, 0.12, 2))
    m = draw.transform(rng.normal(0, 0.35 if tr.family != FIGURE else 0.08), rng.random() < 0.5, scale, cx, cy)
    box = draw.draw_object(canvas, tr, m, rng, scale)
    if rng.random() < 0.2:
        draw.occlude(canvas, rng, box, rng.uniform(0.15, 0.4))
    return draw.finish(canvas, rng)


# -- scenes with boxes -----------------------------------------------------------------------------
def _to_voc(box: np.ndarray, w: int, h: int) -> tuple[tuple[int, int, int, int], int, float]:
    """Canvas box -> (1-based inclusive image box, truncated flag, visible fraction of the raw box)."""
    x0, y0, x1, y1 = box / draw.SS
    cx0, cy0, cx1, cy1 = max(x0, 0.0), max(y0, 0.0), min(x1, w - 1.0), min(y1, h - 1.0)
    raw = max(x1 - x0, 1e-6) * max(y1 - y0, 1e-6)
    visible = max(cx1 - cx0, 0) * max(cy1 - cy0, 0) / raw
    truncated = int(x0 < 0 or y0 < 0 or x1 > w - 1 or y1 > h - 1)
    vb = (math.floor(cx0) + 1, math.floor(cy0) + 1, math.ceil(cx1) + 1, math.ceil(cy1) + 1)
    return (vb[0], vb[1], min(vb[2], w), min(vb[3], h)), truncated, visible


def _covered(boxes: list[np.ndarray], i: int) -> float:
    """Largest fraction of box i covered by one box drawn after it."""
    x0, y0, x1, y1 = boxes[i]
    area = max((x1 - x0) * (y1 - y0), 1e-6)
    best = 0.0
    for b in boxes[i + 1 :]:
        iw, ih = min(x1, b[2]) - max(x0, b[0]), min(y1, b[3]) - max(y0, b[1])
        if iw > 0 and ih > 0:
            best = max(best, iw * ih / area)
    return best


def _annotate(names, boxes, poses, w, h, actions=None) -> list[Box]:
    out = []
    for i, (name, box, pose) in enumerate(zip(names, boxes, poses)):
        vb, truncated, visible = _to_voc(box, w, h)
        if visible < 0.35 or vb[2] - vb[0] < 2 or vb[3] - vb[1] < 2:
            continue  # mostly outside the frame: not annotated
        covered = _covered(boxes, i) if actions is None else 0.0
        small = min(vb[2] - vb[0], vb[3] - vb[1]) < max(4, 0.08 * h)
        out.append(Box(name, vb, truncated, int(small or covered > 0.5), pose, None if actions is None else actions[i]))
    return out


def voc_image(world: World, rng: np.random.Generator) -> tuple[bytes, list[Box]]:
    w, h = world.scene_size
    canvas = draw.background(rng, w * draw.SS, h * draw.SS)
    draw.clutter(canvas, rng, int(rng.integers(2, 7)), h * draw.SS * 0.1)
    n = int(rng.choice([1, 1, 2, 2, 2, 3, 3, 4, 5]))
    names, boxes, poses = [], [], []
    for _ in range(n):
        name = VOC_CLASSES[int(rng.choice(len(VOC_CLASSES), p=world.voc_p))]
        pool = world.voc_pools[name]
        tr = world.traits[pool[int(rng.integers(len(pool)))]]
        scale = h * draw.SS * rng.uniform(0.06, 0.28)
        cx, cy = rng.uniform(-0.05, 1.05) * w * draw.SS, rng.uniform(0.0, 1.0) * h * draw.SS
        flip = bool(rng.random() < 0.5)
        angle = rng.normal(0, 0.3 if tr.family != FIGURE else 0.05)
        pose = draw.POSES[list(draw.POSES)[int(rng.integers(len(draw.POSES)))]] if tr.family == FIGURE else None
        box = draw.draw_object(canvas, tr, draw.transform(angle, flip, scale, cx, cy), rng, scale, pose)
        names.append(name)
        boxes.append(box)
        poses.append(
            ("Left", "Right", "Frontal", "Unspecified")[int(flip) if rng.random() < 0.7 else 2 + int(rng.integers(2))]
        )
    if rng.random() < 0.2 and boxes:
        i = int(rng.integers(len(boxes)))
        boxes.append(draw.occlude(canvas, rng, boxes[i], rng.uniform(0.2, 0.7)))
        names.append(None)
        poses.append(None)
    objects = _annotate(names, boxes, poses, w, h)
    return draw.finish(canvas, rng), [o for o in objects if o.name is not None]


def _prop(
    world: World,
    canvas: Image.Image,
    rng,
    m: np.ndarray,
    at: np.ndarray,
    wnids: tuple[str, ...],
    k: float,
    scale: float,
    turn: float = 0.0,
) -> None:
    """Draw a prop from `wnids` centred at figure-frame point `at`, `k` times the figure scale."""
    tr = world.traits[wnids[int(rng.integers(len(wnids)))]]
    cx, cy = draw.apply(m, at[None])[0]
    flip = m[0, 0] * m[1, 1] - m[0, 1] * m[1, 0] < 0
    angle = math.atan2(m[1, 0], m[0, 0] * (-1 if flip else 1)) + turn
    draw.draw_object(canvas, tr, draw.transform(angle, flip, scale * k, cx, cy), rng, scale * k)


def action_image(world: World, rng: np.random.Generator, persons_of_class: list[str]) -> tuple[bytes, list[Box]]:
    w, h = world.scene_size
    canvas = draw.background(rng, w * draw.SS, h * draw.SS)
    draw.clutter(canvas, rng, int(rng.integers(2, 6)), h * draw.SS * 0.1)
    for _ in range(int(rng.integers(0, 3))):  # unrelated objects in the background
        tr = world.traits[world.classes[int(rng.integers(len(world.classes)))]]
        if tr.family == FIGURE:
            continue
        scale = h * draw.SS * rng.uniform(0.06, 0.14)
        m = draw.transform(
            rng.normal(0, 0.3), rng.random() < 0.5, scale, rng.uniform(0, w * draw.SS), rng.uniform(0, h * draw.SS)
        )
        draw.draw_object(canvas, tr, m, rng, scale)
    n = 2 if rng.random() < 0.3 else 1
    names, boxes, poses, actions = [], [], [], []
    for i in range(n):
        action = ACTIONS[int(rng.integers(len(ACTIONS)))]
        tr = world.traits[persons_of_class[int(rng.integers(len(persons_of_class)))]]
        scale = h * draw.SS * rng.uniform(0.17, 0.24)
        slot = (i + rng.uniform(0.3, 0.7)) / n
        cx = slot * w * draw.SS
        cy = h * draw.SS * rng.uniform(0.42, 0.52)
        flip = bool(rng.random() < 0.5)
        m = draw.transform(rng.normal(0, 0.04), flip, scale, cx, cy)
        pose = draw.POSES[action]
        joints = draw.figure_joints(pose, rng)
        hands = (joints["arm_b"][2] + joints["arm_f"][2]) / 2
        if action == "ridinghorse":
            _prop(world, canvas, rng, m, joints["hip"] + [0.05, 0.55], ACTION_PROPS[action], 0.8, scale)
        elif action == "ridingbike":
            _prop(world, canvas, rng, m, joints["hip"] + [0.1, 0.5], ACTION_PROPS[action], 0.6, scale)
        elif action == "usingcomputer":
            _prop(world, canvas, rng, m, joints["hip"] + [0.75, 0.35], (TABLE,), 0.45, scale)
        elif action == "jumping":
            shadow = np.array([0.0, 1.0]) + draw._CIRCLE * [0.35, 0.06]
            ImageDraw.Draw(canvas).polygon(draw._poly(draw.apply(m, shadow)), fill=(30, 30, 30))
        box = draw.draw_figure(canvas, tr, m, rng, scale, pose, joints)
        if action == "phoning":
            _prop(world, canvas, rng, m, joints["arm_f"][2], ACTION_PROPS[action], 0.12, scale, 1.2)
        elif action == "takingphoto":
            _prop(world, canvas, rng, m, hands, ACTION_PROPS[action], 0.14, scale)
        elif action == "reading":
            _prop(world, canvas, rng, m, hands, ACTION_PROPS[action], 0.2, scale, 0.3)
        elif action == "playinginstrument":
            _prop(
                world,
                canvas,
                rng,
                m,
                (joints["hip"] + joints["neck"]) / 2 + [0.12, 0.0],
                ACTION_PROPS[action],
                0.3,
                scale,
                0.8,
            )
        elif action == "usingcomputer":
            _prop(world, canvas, rng, m, hands + [0.15, -0.05], ACTION_PROPS[action], 0.2, scale)
        names.append("person")
        boxes.append(box)
        poses.append("Unspecified")
        actions.append({a: int(a == action) for a in ACTIONS})
    return draw.finish(canvas, rng), _annotate(names, boxes, poses, w, h, actions)


# -- SUN397 ----------------------------------------------------------------------------------------
def sun_image(world: World, scene: int, rng: np.random.Generator) -> bytes:
    """A scene: a background layout shared by all classes, and 2-4 objects mostly from the scene's groups.

    Objects are as large, relative to the scene's height, as ImageNet objects are to their image, and
    spread across the width, so that at a benchmark's input size (the whole scene resized to the
    backbone's resolution) each is as recognisable as in pre-training."""
    w, h = world.scene_size
    canvas = draw.background(rng, w * draw.SS, h * draw.SS)
    draw.clutter(canvas, rng, int(rng.integers(2, 6)), h * draw.SS * 0.1)
    recipe = world.scenes[scene]
    n = int(rng.integers(2, 5))
    for k, slot in enumerate(rng.permutation(n)):
        if rng.random() < 0.85:
            members = recipe["members"][(k + int(rng.integers(3))) % 3 if k else int(rng.integers(3))]
        else:
            other = world.scenes[int(rng.integers(len(world.scenes)))]  # objects of other scenes too
            members = other["members"][int(rng.integers(3))]
        tr = world.traits[members[int(rng.integers(len(members)))]]
        scale = h * draw.SS * rng.uniform(0.17, 0.27) * (0.8 if tr.family == FIGURE else 1.0)
        angle, flip = rng.normal(0, 0.3 if tr.family != FIGURE else 0.08), rng.random() < 0.5
        cx, cy = (slot + rng.uniform(0.3, 0.7)) / n * w * draw.SS, rng.uniform(0.3, 0.7) * h * draw.SS
        m = draw.transform(angle, flip, scale, cx, cy)
        draw.draw_object(canvas, tr, m, rng, scale)
    return draw.finish(canvas, rng)
