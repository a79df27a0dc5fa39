"""PASCAL-ACT-CLS's data: the persons with actions of VOC2012 action lists, their crops, and the splits.

root = voc2012_root("")                                   # "": the embedded world's VOC2012
train, scored = scored_persons(root, config)              # train and val, or two parts of train (evaluate_on=val)
PersonCrops(train, resolution=64, margin=0.1, context=False, train=True, jitter=0.1)[(0, seed)]
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.v2.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from imagenet_transfer.datasets.voc import VOC_ACTIONS, read_annotation, read_image_set
from imagenet_transfer.errors import UserError
from imagenet_transfer.transfer.common import world_part
from imagenet_transfer.transfer.voc12_action.config import Config

SPLITS = ("train", "val")


@dataclass(frozen=True)
class Person:
    """One sample: a person box with its action labels (VOC_ACTIONS order)."""

    image_id: str
    index: int  # 1-based object number in the XML: the second column of the action lists
    box: tuple[float, float, float, float]  # VOC: 1-based inclusive xmin, ymin, xmax, ymax
    labels: tuple[int, ...]  # 10 × {0, 1}
    image: Path


def voc2012_root(data: str | Path) -> Path:
    """The VOC2012 folder `data` names ("" = the embedded world's); UserError when it has no action lists."""
    root = world_part("voc2012") if str(data) == "" else Path(data).expanduser()
    for candidate in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (candidate / "ImageSets" / "Action").is_dir():
            return candidate
    raise UserError(
        f"{root}: no ImageSets/Action folder; expected a VOCdevkit/VOC2012 folder with "
        "ImageSets/Action/{train,val}.txt, Annotations/<id>.xml and JPEGImages/<id>.jpg"
    )


def read_persons(root: str | Path, split: str) -> list[Person]:
    """Every person with an `<actions>` element in the images of `ImageSets/Action/<split>.txt`.

    UserError when the list or an image is missing, when a listed image has no person with actions (names
    the file), and when a per-action list `<action>_<split>.txt` disagrees with the XML.
    """
    root = Path(root)
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    listing = root / "ImageSets" / "Action" / f"{split}.txt"
    if not listing.is_file():
        raise UserError(f"{listing} is missing; expected the VOC2012 action image list of the {split} split")
    ids = read_image_set(listing)
    if not ids or not all(isinstance(i, str) for i in ids):
        raise UserError(f"{listing}: expected one image id per line, got {len(ids)} rows (first: {ids[:1]})")
    persons, missing = [], []
    for image_id in ids:
        xml = root / "Annotations" / f"{image_id}.xml"
        if not xml.is_file():
            missing.append(str(xml))
            continue
        ann = read_annotation(xml)
        image = root / "JPEGImages" / ann.filename
        if not image.is_file():
            missing.append(str(image))
        mine = [(j, o) for j, o in enumerate(ann.objects, 1) if o.actions is not None]
        if not mine:
            raise UserError(
                f"{xml}: no object has an <actions> element, but the image is listed in {listing}; "
                "expected VOC2012 action annotations (person objects with <actions><jumping>0</jumping>"
                "…)"
            )
        for j, o in mine:
            if not (o.xmin <= o.xmax and o.ymin <= o.ymax):
                raise UserError(f"{xml}: object {j} has box {o.box}; expected xmin ≤ xmax and ymin ≤ ymax")
            labels = tuple(int(bool(o.actions.get(a, False))) for a in VOC_ACTIONS)
            persons.append(Person(image_id, j, tuple(float(v) for v in o.box), labels, image))
    if missing:
        raise UserError(
            f"{len(missing)} file(s) listed by {listing} are missing: {', '.join(missing[:10])}"
            f"{' …' if len(missing) > 10 else ''}; expected Annotations/<id>.xml and JPEGImages/<id>.jpg"
        )
    _check_action_lists(root, split, persons)
    return persons


def _check_action_lists(root: Path, split: str, persons: list[Person]) -> None:
    """The per-action lists, where present, must name exactly these persons with the XML's flags."""
    truth = {(p.image_id, p.index): p.labels for p in persons}
    for a, action in enumerate(VOC_ACTIONS):
        path = root / "ImageSets" / "Action" / f"{action}_{split}.txt"
        if not path.is_file():
            continue
        rows = read_image_set(path)
        listed = {(r[0], r[1]): r[2] for r in rows if isinstance(r, tuple) and len(r) == 3}
        if len(listed) != len(rows) or set(listed) != set(truth):
            extra, lacking = sorted(set(listed) - set(truth))[:5], sorted(set(truth) - set(listed))[:5]
            raise UserError(
                f"{path}: its (image, object) rows do not match the persons with actions in the XML "
                f"(listed but not in the XML: {extra}; in the XML but not listed: {lacking})"
            )
        wrong = [k for k, flag in listed.items() if flag != (1 if truth[k][a] else -1)]
        if wrong:
            raise UserError(
                f"{path}: {len(wrong)} flag(s) disagree with the XML <actions>, e.g. {wrong[:5]}; "
                "expected 1 where the action is marked 1, else -1"
            )


def person_window(
    box: tuple[float, float, float, float],
    width: int,
    height: int,
    margin: float,
    jitter: float = 0.0,
    rng: random.Random | None = None,
) -> tuple[int, int, int, int]:
    """(top, left, h, w) in 0-based pixels of a VOC box grown by `margin` per side (jittered with `rng`), clipped."""
    x0, y0, x1, y1 = box[0] - 1, box[1] - 1, box[2], box[3]  # 1-based inclusive → 0-based half-open
    bw, bh = x1 - x0, y1 - y0
    cx, cy, sw, sh = (x0 + x1) / 2, (y0 + y1) / 2, bw * (1 + 2 * margin), bh * (1 + 2 * margin)
    if rng is not None and jitter > 0:
        cx, cy = cx + rng.uniform(-jitter, jitter) * sw, cy + rng.uniform(-jitter, jitter) * sh
        sw, sh = sw * (1 + rng.uniform(-jitter, jitter)), sh * (1 + rng.uniform(-jitter, jitter))
    left, top = max(0, math.floor(cx - sw / 2)), max(0, math.floor(cy - sh / 2))
    right, bottom = min(width, math.ceil(cx + sw / 2)), min(height, math.ceil(cy + sh / 2))
    if right <= left:  # a box outside the image after jitter/clipping: keep at least one pixel
        left, right = min(left, width - 1), min(left, width - 1) + 1
    if bottom <= top:
        top, bottom = min(top, height - 1), min(top, height - 1) + 1
    return top, left, bottom - top, right - left


class PersonCrops(Dataset):
    """Person i as (uint8 S×3×R×R views: crop [, whole image], float labels, i); S = 2 with context.

    Keys are indices or `(index, sample_seed)` (what `data.EpochSampler` yields); training draws the jitter
    and the mirror (one for both views) from `random.Random(sample_seed)`.
    """

    def __init__(
        self, persons: list[Person], *, resolution: int, margin: float, context: bool, train: bool, jitter: float = 0.0
    ) -> None:
        self.persons, self.resolution, self.margin, self.context = persons, resolution, margin, context
        self.train, self.jitter = train, jitter
        self.labels = torch.tensor([p.labels for p in persons], dtype=torch.float32).reshape(-1, len(VOC_ACTIONS))

    def __len__(self) -> int:
        return len(self.persons)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Tensor, Tensor, int]:
        from imagenet_transfer.data import decode

        index, sample_seed = key if isinstance(key, tuple) else (key, key)
        p, res = self.persons[index], [self.resolution, self.resolution]
        try:
            image = decode(str(p.image))
        except (RuntimeError, OSError, ValueError) as err:
            raise UserError(f"{p.image}: cannot decode ({str(err).splitlines()[-1][-200:]}); expected a JPEG") from None
        rng = random.Random(sample_seed) if self.train else None
        top, left, h, w = person_window(p.box, image.shape[-1], image.shape[-2], self.margin, self.jitter, rng)
        views = [F.resized_crop(image, top, left, h, w, res, antialias=True)]
        if self.context:
            views.append(F.resize(image, res, antialias=True))
        out = torch.stack(views)
        if rng is not None and rng.random() < 0.5:
            out = F.horizontal_flip(out)
        return out.contiguous(), self.labels[index], index


def scored_persons(root: Path, config: Config) -> tuple[list[Person], list[Person]]:
    """(persons to train on, persons to score): train and val, or with `evaluate_on="val"` a split of the train
    images alone (the val split is not read)."""
    if config.evaluate_on == "val":
        return split_holdout(read_persons(root, "train"), config.eval_fraction, config.seed, stream=13)
    return read_persons(root, "train"), read_persons(root, "val")


def split_holdout(
    persons: list[Person], fraction: float, seed: int, stream: int = 12
) -> tuple[list[Person], list[Person]]:
    """Hold out `fraction` of the train images (all persons of an image on one side), drawn by `seed`."""
    if fraction <= 0:
        return persons, []
    ids = sorted({p.image_id for p in persons})
    held = set(np.random.default_rng([seed, stream]).permutation(ids)[: max(1, round(fraction * len(ids)))])
    return [p for p in persons if p.image_id not in held], [p for p in persons if p.image_id in held]
