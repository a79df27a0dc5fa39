"""PASCAL-ACT-CLS: classify the action of each given person box of VOC2012 action by fine-tuning a backbone.

    from imagenet_transfer.transfer.common import resolve_backbone
    from imagenet_transfer.transfer import voc12_action
    net, info = resolve_backbone("random:small")                       # or models:/small-full@current
    result = voc12_action.run(net, info, voc12_action.Config(), device="cpu")
    result.metrics["voc12_action_map"]                                  # mean AP over the 10 actions, %

Input: a `VOCdevkit/VOC2012` folder (`Config.data`; "" = the embedded world's): `ImageSets/Action/{train,val}.txt`
(image ids), `<action>_{train,val}.txt` (`<id> <object> <flag>`, checked against the XML when present),
`Annotations/<id>.xml` (person objects with an `<actions>` element), `JPEGImages/<id>.jpg`.
Output (`Result`): metrics `voc12_action_map` and `voc12_action_ap_<action>` (%, val), `train_persons`,
`val_persons`, `train_loss`, `train_seconds` (+ `holdout_map`, `best_epoch` with `Config.holdout`); figure
`action_ap.png`; tables `voc12_action_ap.csv` (AP and positives per action) and `voc12_action_val_scores.csv`
(every val person's 10 scores and labels, to re-check the AP with another implementation).
Default config, default embedded world (319 train / 334 val persons), random `small` (64 px), one thread on a
shared 2-core machine: ~110 s, val mAP ~57 (chance ~10); `context=True`: ~165 s, mAP ~45 (the world's context is
clutter and the other person, so it does not help there).

Protocol (PAPER.md, the paper's): every person with an `<actions>` element in the listed images is one sample;
its box (enlarged by `margin` of its side on each side, clipped to the image) is warped to the backbone's
resolution; with `context` the whole image, warped likewise, goes through the same trunk as a second stream and
the two feature vectors are concatenated. Network: the backbone's trunk + fc6/fc7 (pool5 for the ResNets, which
have no fc layers) + a new linear head; SGD with momentum, the head's lr `head_lr_mult` times the backbone's,
cosine decay, augmentation = mirror (crop and context flipped together) + box jitter. Trained on `train`;
scored once on `val` (the real VOC2012 test labels are not public; the paper reported val). Nothing is
selected on val: with `holdout` > 0 a fraction of the train images is held out and the epoch with the best
held-out mAP is kept (early stopping), otherwise the last epoch is. With `evaluate_on="val"` (what a budget study
optimises) the val split is never read: `eval_fraction` of the train images (all persons of an image on one side)
is held out, the rest trains, and the held-out persons are the ones scored (`val_persons` counts them).

Loss (`Config.loss`): "softmax" (default): an 11-way softmax, the 10 actions + "none of them" (persons whose
only action is VOC's "other"), the target spread evenly over a person's positive actions (real VOC2012 has a
few persons with several); scores are the 10 action probabilities. Chosen because nearly every person does
exactly one action, and because it trained better: random `small`, 20 epochs on the default world, val mAP
56 (softmax) vs 33 ("bce", summed over actions) vs 20 (BCE averaged over the 10 outputs). "bce", one sigmoid
per action, is the multi-label alternative that matches the devkit's one-binary-task-per-action view.

Metric (`average_precision`, a pure function): the VOC2012 action devkit's AP (VOCevalaction + VOCap): rank by
score, precision made monotone (each precision replaced by the highest at any higher recall), area under that
curve over all recall steps, not VOC07's 11 points. Differences from the devkit, both documented in the
function: tied scores form one threshold (the devkit's MATLAB sort breaks ties by input order, so its AP then
depends on the order of the list); an action with no positive among the val persons has no AP (NaN): it is left
out of `voc12_action_map` and of the metrics, and shown as such in the table and figure.
"""

from __future__ import annotations

import copy
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import pandas as pd
import torch
import torchvision.transforms.v2.functional as F
from pydantic import Field
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from imagenet_transfer.config import Settings
from imagenet_transfer.errors import UserError
from imagenet_transfer.transfer.common import Result, world_part
from imagenet_transfer.transfer.voc import VOC_ACTIONS, read_annotation, read_image_set

Loss = Literal["softmax", "bce"]
LOSSES = get_args(Loss)
SPLITS = ("train", "val")
EvaluateOn = Literal["test", "val"]
EVALUATE_ON = get_args(EvaluateOn)


class Config(Settings):
    """Every knob of the benchmark; checked on creation (UserError naming the field and the valid values)."""

    data: str = ""  # a VOCdevkit/VOC2012 folder (or a folder holding VOCdevkit/VOC2012); "" = the embedded world
    context: bool = False  # add the whole image as a second stream (features concatenated)
    margin: float = Field(0.1, ge=0, le=2)  # the person box grows by this fraction of its width/height on each side
    # training: random shift/scale of the enlarged box, as a fraction of its side
    jitter: float = Field(0.1, ge=0, lt=0.5)
    loss: Loss = "softmax"  # softmax | bce (see the module docstring)
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(32, ge=2)
    lr: float = Field(0.01, gt=0)  # backbone (trunk, fc6, fc7)
    head_lr_mult: float = Field(10.0, gt=0)  # the new head's lr = lr × this
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    # fraction of train images held out for early stopping; 0 = keep the last epoch
    holdout: float = Field(0.0, ge=0, lt=0.5)
    # test: score the val split (the benchmark's test) | val: score held-out train images
    evaluate_on: EvaluateOn = "test"
    # evaluate_on=val: fraction of the train images held out and scored
    eval_fraction: float = Field(0.25, gt=0, lt=0.5)
    seed: int = 0
    workers: int = Field(0, ge=0)  # DataLoader worker processes (decoding is cheap on the embedded world)

    @classmethod
    def quick(cls, **overrides: Any) -> Config:
        """A few seconds on the tiny world: smoke tests."""
        return cls(**{**dict(epochs=2, batch_size=8, holdout=0.0), **overrides})


# -- dataset ---------------------------------------------------------------------------------------------
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


# -- metric ----------------------------------------------------------------------------------------------
def average_precision(scores: np.ndarray | list, labels: np.ndarray | list) -> float:
    """VOC2012 action AP (fraction in [0, 1]) of one action: a pure function of scores and labels.

    `labels`: 1 = positive, 0 or -1 = negative. Persons are ranked by decreasing score; precision and recall
    are taken after each distinct score (tied scores form one threshold, so the AP does not depend on the
    order of the input: the devkit's stable sort would break ties by list order instead); precision is made
    monotone from the right and integrated over every recall step (VOCap), as the VOC2012 devkit does, not
    VOC07's 11 points. No positive: NaN (recall undefined).
    """
    scores, labels = np.asarray(scores, dtype=np.float64).ravel(), np.asarray(labels).ravel()
    if scores.shape != labels.shape:
        raise ValueError(f"{scores.size} scores but {labels.size} labels")
    if not np.isfinite(scores).all():
        raise ValueError("scores must be finite")
    positive = labels > 0
    if not positive.any():
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    s, pos = scores[order], positive[order]
    last_of_tie = np.r_[s[1:] != s[:-1], True]  # evaluate only after the last person of each tied group
    tp = np.cumsum(pos)[last_of_tie]
    seen = np.flatnonzero(last_of_tie) + 1
    recall = np.r_[0.0, tp / positive.sum(), 1.0]
    precision = np.r_[0.0, tp / seen, 0.0]
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.flatnonzero(recall[1:] != recall[:-1]) + 1
    return float(np.sum((recall[steps] - recall[steps - 1]) * precision[steps]))


def action_aps(scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """{action: AP (fraction; NaN without positives)} for (N, 10) scores and labels."""
    scores, labels = np.asarray(scores), np.asarray(labels)
    if scores.ndim != 2 or scores.shape[1] != len(VOC_ACTIONS) or scores.shape != labels.shape:
        raise ValueError(f"scores {scores.shape} and labels {labels.shape}: expected both (N, {len(VOC_ACTIONS)})")
    return {a: average_precision(scores[:, i], labels[:, i]) for i, a in enumerate(VOC_ACTIONS)}


def mean_ap(aps: dict[str, float]) -> float:
    """Mean of the defined APs (NaN ones, actions without positives, are left out); NaN when none is defined."""
    defined = [v for v in aps.values() if not math.isnan(v)]
    return float(np.mean(defined)) if defined else float("nan")


# -- model -----------------------------------------------------------------------------------------------
class ActionNet(nn.Module):
    """Backbone trunk + fc6/fc7 (pool5 for ResNets), shared by the views, + a new linear head on their concatenation."""

    def __init__(self, backbone: nn.Module, *, views: int, outputs: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.layer = "fc7" if "fc7" in backbone.feature_layers else "pool5"
        self.feature_dim = backbone.feature_dims()[self.layer]
        self.head = nn.Linear(self.feature_dim * views, outputs)
        nn.init.normal_(self.head.weight, 0.0, 0.01)
        nn.init.zeros_(self.head.bias)

    def finetuned_parameters(self) -> list[nn.Parameter]:
        """The backbone's parameters the forward pass uses (its old classifier is left out)."""
        skip = {id(p) for m in (self.backbone.classifier, self.backbone.pre_classifier) for p in m.parameters()}
        return [p for p in self.backbone.parameters() if id(p) not in skip]

    def forward(self, views: Tensor) -> Tensor:  # (N, S, 3, R, R) normalised → (N, outputs)
        n, s = views.shape[:2]
        feats = self.backbone.features(views.flatten(0, 1), (self.layer,))[self.layer]
        return self.head(feats.reshape(n, s * feats.shape[1]))


def _scores(logits: Tensor, loss: str) -> Tensor:
    return torch.sigmoid(logits) if loss == "bce" else torch.softmax(logits, dim=1)[:, : len(VOC_ACTIONS)]


def _loss(logits: Tensor, labels: Tensor, loss: str) -> Tensor:
    if loss == "bce":
        # summed over the actions, averaged over persons: the mean over all N×10 entries would divide the
        # gradient by 10 compared with softmax CE (and trained a random `small` to 20 mAP instead of ~55)
        return nn.functional.binary_cross_entropy_with_logits(logits, labels, reduction="sum") / len(labels)
    none = (labels.sum(1, keepdim=True) == 0).float()  # the 11th class: no listed action (VOC's "other")
    target = torch.cat([labels, none], 1)
    return nn.functional.cross_entropy(logits, target / target.sum(1, keepdim=True))


# -- run -------------------------------------------------------------------------------------------------
def run(
    backbone: nn.Module,
    info: dict[str, Any],
    config: Config,
    *,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> Result:
    """Fine-tune a copy of `backbone` on the train persons, score every val person once, return the metrics."""
    from imagenet_transfer.data import EpochSampler, normalisation_for, normalise
    from imagenet_transfer.engine import autocast, sgd_step

    if not isinstance(config, Config):
        raise UserError(f"voc12_action.run: config is a {type(config).__name__}; expected voc12_action.Config")
    device = torch.device(device)
    root = voc2012_root(config.data)
    train_all, val = scored_persons(root, config)
    for split, persons in (("train", train_all), ("val", val)):
        if not any(any(p.labels) for p in persons):
            raise UserError(
                f"{root}: none of the {len(persons)} {split} persons does any of the actions "
                f"{', '.join(VOC_ACTIONS)}; expected <actions> with some flags set to 1"
            )
    train, holdout = _split_holdout(train_all, config.holdout, config.seed)
    if len(train) < config.batch_size:
        raise UserError(
            f"{len(train)} train persons cannot fill one batch of {config.batch_size}; "
            "expected a smaller batch_size (or a smaller holdout)"
        )
    res, views = backbone.resolution, 2 if config.context else 1
    norm = normalisation_for(backbone.arch)
    crops = dict(resolution=res, margin=config.margin, context=config.context)
    train_set = PersonCrops(train, train=True, jitter=config.jitter, **crops)

    torch.manual_seed(config.seed)
    model = ActionNet(copy.deepcopy(backbone), views=views, outputs=len(VOC_ACTIONS) + (config.loss == "softmax")).to(
        device
    )
    optimizer = torch.optim.SGD(
        [
            {"params": model.finetuned_parameters(), "lr": config.lr},
            {"params": model.head.parameters(), "lr": config.lr * config.head_lr_mult},
        ],
        momentum=config.momentum,
        weight_decay=config.weight_decay,
    )
    sampler = EpochSampler(len(train_set), batch_size=config.batch_size, seed=config.seed, shuffle=True, drop_last=True)
    steps_per_epoch = sampler.batches_per_epoch()
    total = steps_per_epoch * config.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / total)))
    loader = DataLoader(
        train_set,
        batch_size=config.batch_size,
        sampler=sampler,
        num_workers=config.workers,
        drop_last=True,
        pin_memory=device.type == "cuda",
    )

    best: tuple[float, int, dict] | None = None
    losses: list[float] = []
    start = time.perf_counter()
    with _progress(progress) as bar:
        task = bar.add_task(f"voc12 action: fine-tune ({len(train)} persons)", total=total)
        for epoch in range(config.epochs):
            sampler.set_epoch(epoch)
            model.train()
            epoch_loss = []
            for images, labels, _ in loader:
                images = normalise(images.to(device, non_blocking=True).flatten(0, 1), norm).unflatten(0, (-1, views))
                with autocast(device):
                    loss = _loss(model(images).float(), labels.to(device), config.loss)
                value = sgd_step(loss, optimizer, scheduler, f"voc12 action, epoch {epoch}")
                epoch_loss.append(value)
                bar.update(
                    task, advance=1, description=f"voc12 action: epoch {epoch + 1}/{config.epochs} loss {value:.3f}"
                )
            losses.append(float(np.mean(epoch_loss)))
            if holdout:
                held = mean_ap(action_aps(*_predict(model, holdout, config, crops, norm, device)))
                if best is None or held > best[0] or math.isnan(best[0]):
                    best = (held, epoch + 1, copy.deepcopy(model.state_dict()))
        train_seconds = time.perf_counter() - start
        if best is not None:
            model.load_state_dict(best[2])
        bar.update(task, description=f"voc12 action: scoring {len(val)} val persons")
        scores, labels = _predict(model, val, config, crops, norm, device)

    aps = action_aps(scores, labels)
    metrics = {"voc12_action_map": 100 * mean_ap(aps)}
    metrics.update({f"voc12_action_ap_{a}": 100 * v for a, v in aps.items() if not math.isnan(v)})
    metrics.update(
        train_persons=float(len(train)), val_persons=float(len(val)), train_loss=losses[-1], train_seconds=train_seconds
    )
    if best is not None:
        metrics.update(holdout_map=100 * best[0], holdout_persons=float(len(holdout)), best_epoch=float(best[1]))
    train_pos = np.array([p.labels for p in train]).sum(0)
    table = pd.DataFrame(
        {
            "action": list(VOC_ACTIONS),
            "ap": [100 * aps[a] for a in VOC_ACTIONS],
            "val_positives": labels.sum(0).astype(int),
            "train_positives": train_pos.astype(int),
        }
    )
    per_person = pd.DataFrame({"image_id": [p.image_id for p in val], "object": [p.index for p in val]})
    for i, a in enumerate(VOC_ACTIONS):
        per_person[f"score_{a}"], per_person[f"label_{a}"] = scores[:, i], labels[:, i].astype(int)
    return Result(
        metrics=metrics,
        figures={"action_ap.png": _figure(table, metrics["voc12_action_map"], info)},
        tables={"voc12_action_ap.csv": table, "voc12_action_val_scores.csv": per_person},
    )


def scored_persons(root: Path, config: Config) -> tuple[list[Person], list[Person]]:
    """(persons to train on, persons to score): train and val, or with `evaluate_on="val"` a split of the train
    images alone (the val split is not read)."""
    if config.evaluate_on == "val":
        return _split_holdout(read_persons(root, "train"), config.eval_fraction, config.seed, stream=13)
    return read_persons(root, "train"), read_persons(root, "val")


def _split_holdout(
    persons: list[Person], fraction: float, seed: int, stream: int = 12
) -> tuple[list[Person], list[Person]]:
    """Hold out `fraction` of the train images (all persons of an image on one side), drawn by `seed`."""
    if fraction <= 0:
        return persons, []
    ids = sorted({p.image_id for p in persons})
    held = set(np.random.default_rng([seed, stream]).permutation(ids)[: max(1, round(fraction * len(ids)))])
    return [p for p in persons if p.image_id not in held], [p for p in persons if p.image_id in held]


@torch.no_grad()
def _predict(
    model: ActionNet, persons: list[Person], config: Config, crops: dict, norm: str, device: torch.device
) -> tuple[np.ndarray, np.ndarray]:
    """(N, 10) scores and labels of `persons`, in their order; every person scored exactly once (asserted)."""
    from imagenet_transfer.data import normalise
    from imagenet_transfer.engine import autocast

    dataset = PersonCrops(persons, train=False, **crops)
    loader = DataLoader(dataset, batch_size=2 * config.batch_size, shuffle=False, num_workers=config.workers)
    scores = np.full((len(persons), len(VOC_ACTIONS)), np.nan)
    times_scored = np.zeros(len(persons), dtype=int)
    model.eval()
    for images, _, index in loader:
        images = normalise(images.to(device).flatten(0, 1), norm).unflatten(0, (len(index), -1))
        with autocast(device):
            scores[index.numpy()] = _scores(model(images).float(), config.loss).cpu().numpy()
        np.add.at(times_scored, index.numpy(), 1)
    if (times_scored != 1).any() or not np.isfinite(scores).all():
        wrong = np.flatnonzero(times_scored != 1)[:5]
        raise RuntimeError(
            f"{int((times_scored != 1).sum())} of {len(persons)} persons were not scored exactly once "
            f"(e.g. {[(persons[i].image_id, persons[i].index, int(times_scored[i])) for i in wrong]}) "
            f"or got non-finite scores"
        )
    return scores, dataset.labels.numpy().copy()


def _progress(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), disable=not enabled
    )


def _figure(table: pd.DataFrame, map_: float, info: dict[str, Any]):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 3.6), layout="constrained")
    ax = fig.add_subplot()
    ap = table["ap"].to_numpy(dtype=float)
    x = np.arange(len(table))
    ax.bar(x, np.nan_to_num(ap), color="tab:blue")
    for i, v in enumerate(ap):
        ax.text(
            i,
            (0 if math.isnan(v) else v) + 1,
            "no positives" if math.isnan(v) else f"{v:.0f}",
            ha="center",
            va="bottom",
            fontsize=7,
            rotation=90 if math.isnan(v) else 0,
        )
    if not math.isnan(map_):
        ax.axhline(map_, color="tab:red", lw=1, ls="--", label=f"mAP {map_:.1f}")
        ax.legend(loc="upper right", fontsize=8)
    ax.set_xticks(x, table["action"], rotation=35, ha="right", fontsize=8)
    ax.set_ylim(0, 105)
    ax.set_ylabel("AP on val (%)")
    ax.set_title(f"VOC2012 action, {info.get('uri', 'backbone')}", fontsize=9)
    return fig


__all__ = [
    "EVALUATE_ON",
    "LOSSES",
    "ActionNet",
    "Config",
    "Person",
    "PersonCrops",
    "action_aps",
    "average_precision",
    "mean_ap",
    "person_window",
    "read_persons",
    "run",
    "scored_persons",
    "voc2012_root",
]
