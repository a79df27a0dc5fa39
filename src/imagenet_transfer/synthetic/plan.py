"""What a world holds before any pixel is drawn: size presets, the chosen classes, object pools, scenes.

Everything here is a pure function of (seed, size preset, options) and the taxonomy table.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass

from imagenet_transfer.datasets.voc import VOC_ACTIONS, VOC_CLASSES
from imagenet_transfer.errors import UserError
from imagenet_transfer.taxonomy import PASCAL_SYNSETS, Taxonomy

ACTIONS = VOC_ACTIONS
RESOLUTION_RANGE = (24, 512)
PARTITIONS_RANGE = (1, 10)


@dataclass(frozen=True)
class WorldSize:
    classes: int  # ILSVRC classes in the pre-training source
    groups: int  # coarse groups (top-down 127-class labels) they are drawn from
    train: int  # train images per class
    val: int  # val images per class
    resolution: int  # ImageNet-part image side (px); scene images are 2.5R x 2R
    voc_images: int  # VOC2007 images (half trainval, half test)
    action_images: int  # VOC2012 action images (half train, half val)
    scenes: int  # SUN397 classes
    scene_images: int  # images per scene class (each partition: half train, half test; real SUN397: 50 + 50)
    partitions: int  # SUN397 partitions written


SIZES: dict[str, WorldSize] = {
    "tiny": WorldSize(
        classes=40,
        groups=10,
        train=24,
        val=6,
        resolution=32,
        voc_images=48,
        action_images=40,
        scenes=6,
        scene_images=10,
        partitions=3,
    ),
    "default": WorldSize(
        classes=200,
        groups=40,
        train=240,
        val=20,
        resolution=64,
        voc_images=800,
        action_images=500,
        scenes=24,
        scene_images=100,
        partitions=10,
    ),
    "large": WorldSize(
        classes=500,
        groups=90,
        train=600,
        val=50,
        resolution=96,
        voc_images=3000,
        action_images=2000,
        scenes=40,
        scene_images=100,
        partitions=10,
    ),
}

# Real SUN397 class names (Partitions/ClassName.txt), nested ones included; a world uses the first N.
SCENE_NAMES = (
    "/k/kitchen",
    "/d/desert/sand",
    "/w/windmill",
    "/a/auditorium",
    "/b/baseball_field",
    "/h/highway",
    "/l/laundromat",
    "/w/waterfall/block",
    "/a/abbey",
    "/b/bakery/shop",
    "/b/bedroom",
    "/b/boathouse",
    "/c/campsite",
    "/c/classroom",
    "/c/coast",
    "/c/corridor",
    "/d/dining_room",
    "/f/forest_path",
    "/g/garage/indoor",
    "/g/greenhouse/indoor",
    "/h/harbor",
    "/l/living_room",
    "/l/library/indoor",
    "/m/market/outdoor",
    "/m/mountain",
    "/o/office",
    "/p/pasture",
    "/p/playground",
    "/r/restaurant",
    "/r/river",
    "/s/shoe_shop",
    "/s/stable",
    "/s/street",
    "/t/toyshop",
    "/t/train_station/platform",
    "/v/veterinarians_office",
    "/w/wine_cellar/barrel_storage",
    "/z/zoo",
    "/a/aquarium",
    "/b/bus_interior",
)

# Objects held or ridden by a person doing an action (ILSVRC wnids; drawn by the trait machinery).
ACTION_PROPS = {
    "phoning": ("n02992529",),  # cellular telephone
    "takingphoto": ("n04069434", "n03976467"),  # reflex camera, Polaroid camera
    "reading": ("n06596364",),  # comic book
    "playinginstrument": ("n02676566", "n04536866", "n02787622"),  # acoustic guitar, violin, banjo
    "usingcomputer": ("n03642806", "n03180011", "n03782006"),  # laptop, desktop computer, monitor
    "ridingbike": ("n03792782", "n02835271"),  # mountain bike, bicycle-built-for-two
    "ridinghorse": ("n02389026",),  # sorrel
}
TABLE = "n03201208"  # dining table, under the computer
# How often each VOC category appears (persons dominate, as in the real VOC2007).
VOC_WEIGHTS = {
    c: (6.0 if c == "person" else 2.0 if c in ("car", "chair", "dog", "bird", "cat") else 1.0) for c in VOC_CLASSES
}


def check_options(size: str, resolution: int | None, partitions: int | None, seed: int) -> tuple[WorldSize, dict]:
    """Validate the options; return the preset and the resolved options recorded in world.json."""
    if size not in SIZES:
        raise UserError(f"unknown world size {size!r}; expected one of: {', '.join(SIZES)}")
    preset = SIZES[size]
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise UserError(f"seed {seed!r} is not valid; expected an integer >= 0")
    res = preset.resolution if resolution is None else resolution
    lo, hi = RESOLUTION_RANGE
    if not isinstance(res, int) or not lo <= res <= hi:
        raise UserError(f"resolution {res!r} is out of range; expected an integer from {lo} to {hi} (pixels)")
    parts = preset.partitions if partitions is None else partitions
    lo, hi = PARTITIONS_RANGE
    if not isinstance(parts, int) or not lo <= parts <= hi:
        raise UserError(f"partitions {parts!r} is out of range; expected an integer from {lo} to {hi}")
    options = {"size": size, "seed": seed, "resolution": res, "partitions": parts, "preset": asdict(preset)}
    return preset, options


def choose_classes(tax: Taxonomy, preset: WorldSize, seed: int) -> list[str]:
    """ILSVRC classes that span the tree: several per coarse group, PASCAL-overlap classes included.

    Coarse groups are the labels of the top-down 127-class set. The largest half of the groups is
    always taken, the rest drawn at random; each group gets classes in proportion to the square
    root of its size (at least 2), and its PASCAL-overlap classes get their fair share.
    """
    rng = random.Random(f"classes/{seed}")
    label = tax.labels("top-down", 127)
    members: dict[str, list[str]] = {}
    for w in tax.classes:
        members.setdefault(label[w], []).append(w)
    ranked = sorted((g for g in members if len(members[g]) >= 2), key=lambda g: (-len(members[g]), g))
    n_groups = min(preset.groups, len(ranked))
    keep = ranked[: n_groups // 2]
    groups = keep + rng.sample(ranked[n_groups // 2 :], n_groups - len(keep))
    weights = {g: math.sqrt(len(members[g])) for g in groups}
    total = sum(weights.values())
    quota = {g: min(len(members[g]), max(2, int(preset.classes * weights[g] / total))) for g in groups}
    order = sorted(groups, key=lambda g: (-weights[g], g))
    while sum(quota.values()) < preset.classes and any(quota[g] < len(members[g]) for g in groups):
        for g in order:
            if sum(quota.values()) < preset.classes and quota[g] < len(members[g]):
                quota[g] += 1
    while sum(quota.values()) > preset.classes:
        g = max(order, key=lambda g: quota[g])
        quota[g] -= 1
    pascal = {w for ws in tax.pascal_overlap().values() for w in ws}
    chosen = []
    for g in sorted(groups):
        inside = [w for w in members[g] if w in pascal]
        outside = [w for w in members[g] if w not in pascal]
        n_in = min(len(inside), math.ceil(quota[g] * len(inside) / len(members[g])))
        picked = rng.sample(inside, n_in) + rng.sample(outside, min(len(outside), quota[g] - n_in))
        chosen += picked
    return sorted(chosen)


def voc_pools(tax: Taxonomy) -> dict[str, list[str]]:
    """PASCAL category -> the synsets whose traits its objects borrow (ILSVRC classes below it, or itself)."""
    overlap = tax.pascal_overlap()
    return {c: overlap[c] or [PASCAL_SYNSETS[c]] for c in VOC_CLASSES}


def scene_recipes(tax: Taxonomy, count: int, seed: int, classes: list[str]) -> list[dict]:
    """Each scene class: a real SUN397 name and three object groups that characterise it.

    Groups are top-down 127-class labels of the world's own classes (the kinds of objects pre-training
    teaches) with at least three ILSVRC classes; a scene's objects are drawn from every ILSVRC class of
    its groups (mostly classes pre-training never shows: the same kinds, other species). Two scenes
    share at most one group, so a scene is told apart by WHICH objects co-occur, not by any single one.
    """
    rng = random.Random(f"scenes/{seed}")
    label = tax.labels("top-down", 127)
    members: dict[str, list[str]] = {}
    for w in tax.classes:
        members.setdefault(label[w], []).append(w)
    taught = {label[w] for w in classes}
    pool = sorted(g for g, ws in members.items() if len(ws) >= 3 and g in taught)
    recipes: list[dict] = []
    for name in SCENE_NAMES[:count]:
        for _ in range(1000):
            trio = sorted(rng.sample(pool, 3))
            if all(len(set(trio) & set(r["groups"])) <= 1 for r in recipes):
                break
        recipes.append({"name": name, "groups": trio, "members": [sorted(members[g]) for g in trio]})
    return recipes
