"""PASCAL-DET: fine-tune a Faster R-CNN whose conv layers and fc6/fc7 come from the backbone; VOC07 mAP on test.

    net, info = resolve_backbone("random:small")                  # or models:/small-full@current
    result = run(net, info, Config(), device=torch.device("cpu"))  # the embedded world, ~5 min on 2 cores
    result.metrics["voc07_map"]                                    # 11-point mAP over 20 classes, in %
    run(net, info, Config(data="/data/VOCdevkit/VOC2007", iterations=40_000, batch_size=2), device=cuda)

Input: a `VOCdevkit/VOC2007` folder (default: the embedded world's): `ImageSets/Main/{trainval,test}.txt`,
`Annotations/<id>.xml`, `JPEGImages/<file>`. Trains on `trainval`, tests on `test`, both read once.
Output (`Result`): metrics `voc07_map` and `voc07_ap_<class>` (VOC07 11-point AP at IoU 0.5, difficult objects
ignored, %; NaN for a class with no non-difficult test object, left out of the mean), `voc07_coco_ap`,
`voc07_coco_ap50`, `voc07_coco_ap75` (pycocotools on the same detections, %), `train_images`, `test_images`;
figure `pr_curves.png` (per-class precision/recall); tables `voc07_ap.csv` (per class AP, objects, detections) and
`voc07_derived.csv` (the settings derived from the data: input scale, anchors, feature stride).
The metrics themselves live in `transfer.metrics` (pure accumulators).

The detector (`build_detector`), torchvision's Faster R-CNN machinery around the backbone's parts:
  - features: a copy of `backbone.trunk` without its last max-pool (the Fast R-CNN recipe: ROI pooling
    replaces pool5), so the feature stride is 8 for `small`, 16 for the AlexNets; ResNets keep layer4 (32);
  - ROI pooling: Fast R-CNN's RoIPool (max) to `backbone.roi_size` (6×6 AlexNets, 4×4 small; 7×7 for
    ResNets, whose head averages it); `roi_pool="align"` takes RoIAlign instead (torchvision's CPU backward
    of it made a `small` iteration on the embedded world ~20 % slower: 0.315 vs 0.262 s);
  - box head: a deep copy of `backbone.head()`: fc6 and fc7 start from the pre-trained weights (dropout
    included); ResNets' head has no parameters, so fc(`resnet_head_dim`)+ReLU is added after it, new;
  - predictor: new class scores (20 classes + background) and box deltas;
  - RPN: a new 3×3 conv head on the trunk; anchors of `aspect_ratios` and sizes from the training boxes
    (geometric, ≤ 2× apart, spanning the 5th-95th percentile of sqrt(w·h) at the input scale) unless set;
  - input scale: the shorter side resized to `min_size`; 0 = from the data: the paper's 600 px for photos
    (median shorter side of the training images >= 300 px, real VOC: 375), the images' own median shorter
    side for smaller ones (the embedded world's 160×128 scenes stay 128: their objects are drawn at the
    pre-training object scale, and upscaling costs CPU time as its square); `max_size` 0 = 1000/600 of it;
    pixels normalised as the backbone was pre-trained (`data.normalisation_for`).
Training: SGD with momentum, linear warm-up, lr ×0.1 after `lr_drop` of the iterations, horizontal flips;
`difficult` objects are left out of the training targets (kept as ground truth for the evaluation, where they
are ignored). A non-finite loss stops the run. Every test image is evaluated exactly once (asserted).
The caller's backbone is not modified (the detector holds copies).

Runtime and result on the default embedded world (400 trainval / 400 test scenes of 160×128), default config
(1000 iterations of 4 images, lr 0.02, RoIPool) on the 2-core development machine: 279-292 s in all (~0.26 s an
iteration); mAP (%) `random:small` 5.77, `small` pre-trained with the `world-long` recipe (val top-1 55.5 %)
14.01. With RoIAlign (`roi_pool="align"`): 388-413 s, 7.25 vs 16.49. Earlier, RoIAlign on a GPU: random 6.9,
`small` pre-trained by a plain GPU loop (3000 steps of 256, 86 % val top-1) 27.2; with 500 iterations 2.8 vs
14.0; upscaling the scenes to 192 px did not help (3.0 vs 11.5 at 500 iterations).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import torch
from pydantic import Field, PositiveFloat
from torch import Tensor, nn

from imagenet_transfer.config import Settings
from imagenet_transfer.engine import sgd_step
from imagenet_transfer.errors import UserError
from imagenet_transfer.transfer.common import Result, world_part
from imagenet_transfer.transfer.metrics import DetectionEvaluator, DetectionResult
from imagenet_transfer.transfer.voc import VOC_CLASSES, read_annotation, read_image_set

PAPER_MIN_SIZE = 600  # Fast R-CNN's input scale (shorter side) for VOC photos
PAPER_MAX_RATIO = 1000 / 600  # and its cap on the longer side
PHOTO_SIDE = 300  # images with a shorter median side than this are used at their own scale
RoiPool = Literal["max", "align"]
ROI_POOLS = get_args(RoiPool)


class Config(Settings):
    """The protocol's knobs; defaults fit the embedded world on 2 CPU cores (~5 min with `small`, see the header)."""

    data: str = ""  # VOCdevkit/VOC2007 folder (or a folder holding VOCdevkit/VOC2007); "" = the embedded world
    train_set: str = "trainval"
    test_set: str = "test"
    iterations: int = Field(1000, ge=0)
    batch_size: int = Field(4, ge=1)
    lr: float = Field(0.02, ge=0)
    momentum: float = Field(0.9, ge=0)
    weight_decay: float = Field(1e-4, ge=0)
    warmup: int = Field(50, ge=0)  # iterations of linear lr warm-up from lr/10
    lr_drop: float = Field(0.75, gt=0, le=1)  # lr ×0.1 after this fraction of the iterations
    flip: bool = True
    # shorter input side; 0 = from the data: 600 for photos, else the images' own (module docstring)
    min_size: int = Field(0, ge=0)
    max_size: int = Field(0, ge=0)  # longer side cap; 0 = round(1000/600 × min_size)
    anchor_sizes: tuple[PositiveFloat, ...] = ()  # anchor sides in input px; () = from the training boxes
    aspect_ratios: tuple[PositiveFloat, ...] = Field((0.5, 1.0, 2.0), min_length=1)
    rpn_pre_nms_train: int = Field(1000, ge=1)
    rpn_post_nms_train: int = Field(300, ge=1)
    rpn_pre_nms_test: int = Field(600, ge=1)
    rpn_post_nms_test: int = Field(300, ge=1)  # Faster R-CNN's 300 test proposals
    box_batch_size: int = Field(64, ge=1)  # sampled ROIs per image (Fast R-CNN's 64, 25 % foreground)
    roi_pool: RoiPool = "max"  # max: Fast R-CNN's RoIPool; align: RoIAlign (2x2 samples a bin, slower backward on CPU)
    resnet_head_dim: int = Field(512, ge=0)  # the fc added after a ResNet's parameter-free head
    # detections kept for evaluation (py-faster-rcnn's; lower never lowers AP but is slower)
    score_thresh: float = Field(0.05, ge=0)
    detections_per_image: int = Field(100, ge=1)
    eval_batch_size: int = Field(8, ge=1)
    workers: int = Field(0, ge=0)  # DataLoader workers decoding JPEGs
    seed: int = Field(0, ge=0)

    @classmethod
    def quick(cls, **overrides: Any) -> Config:
        """A few iterations on small batches: a smoke test of the whole path (seconds on the tiny world)."""
        return cls(
            **{
                **dict(
                    iterations=3,
                    batch_size=2,
                    warmup=1,
                    rpn_pre_nms_train=200,
                    rpn_post_nms_train=64,
                    rpn_pre_nms_test=200,
                    rpn_post_nms_test=64,
                    box_batch_size=32,
                ),
                **overrides,
            }
        )


# -- data --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Sample:
    image_id: str
    path: Path
    width: int
    height: int
    boxes: np.ndarray  # (N, 4) VOC boxes, 1-based inclusive, every object
    labels: np.ndarray  # (N,) indices into VOC_CLASSES
    difficult: np.ndarray  # (N,) bool


def find_voc2007(data: str | Path = "") -> Path:
    """The VOC2007 folder `data` names (itself, or its VOCdevkit/VOC2007 or VOC2007); "" = the embedded world's."""
    if not str(data):
        return world_part("voc2007")
    root = Path(data)
    for candidate in (root, root / "VOC2007", root / "VOCdevkit" / "VOC2007"):
        if (candidate / "Annotations").is_dir() and (candidate / "ImageSets" / "Main").is_dir():
            return candidate
    raise UserError(
        f"{root}: not a VOC2007 folder; expected VOCdevkit/VOC2007 with Annotations/, JPEGImages/ and "
        "ImageSets/Main/{trainval,test}.txt"
    )


def load_split(root: Path, image_set: str) -> list[Sample]:
    """The images of `ImageSets/Main/<image_set>.txt` with their objects; UserError naming what is missing."""
    listing = root / "ImageSets" / "Main" / f"{image_set}.txt"
    if not listing.is_file():
        have = sorted(p.stem for p in (root / "ImageSets" / "Main").glob("*.txt") if "_" not in p.stem)
        raise UserError(f"{listing}: image set {image_set!r} not found; expected one of {', '.join(have) or 'none'}")
    ids = read_image_set(listing)
    if not ids or not all(isinstance(i, str) for i in ids):
        raise UserError(f"{listing}: expected one image id per line, found {len(ids)} lines of other form")
    dupes = sorted({i for i in ids if ids.count(i) > 1}) if len(set(ids)) != len(ids) else []
    if dupes:
        raise UserError(f"{listing}: {len(dupes)} image id(s) listed more than once: {dupes[:5]}")
    missing_xml = [i for i in ids if not (root / "Annotations" / f"{i}.xml").is_file()]
    if missing_xml:
        raise UserError(
            f"{root / 'Annotations'}: {len(missing_xml)} of the {len(ids)} annotations of {image_set!r} "
            f"are missing, e.g. {', '.join(f'{i}.xml' for i in missing_xml[:5])}"
        )
    samples, missing_jpg = [], []
    for image_id in ids:
        xml = root / "Annotations" / f"{image_id}.xml"
        ann = read_annotation(xml)
        unknown = sorted({o.name for o in ann.objects} - set(VOC_CLASSES))
        if unknown:
            raise UserError(f"{xml}: unknown class(es) {unknown}; expected the 20 VOC classes")
        if ann.width <= 0 or ann.height <= 0:
            raise UserError(f"{xml}: missing or empty <size>; expected <width> and <height>")
        path = root / "JPEGImages" / ann.filename
        if not path.is_file():
            missing_jpg.append(path.name)
        boxes = np.array([o.box for o in ann.objects], float).reshape(-1, 4)
        bad = (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])
        if bad.any():
            raise UserError(f"{xml}: box {boxes[bad][0].tolist()} has xmax < xmin or ymax < ymin")
        samples.append(
            Sample(
                image_id,
                path,
                ann.width,
                ann.height,
                boxes,
                np.array([VOC_CLASSES.index(o.name) for o in ann.objects], int),
                np.array([o.difficult for o in ann.objects], bool),
            )
        )
    if missing_jpg:
        raise UserError(
            f"{root / 'JPEGImages'}: {len(missing_jpg)} of the {len(ids)} images of {image_set!r} are "
            f"missing, e.g. {', '.join(missing_jpg[:5])}"
        )
    return samples


def training_target(sample: Sample) -> dict[str, Tensor]:
    """torchvision target: non-difficult objects, boxes as continuous 0-based corners (VOC pixel i spans [i-1, i])."""
    keep = ~sample.difficult
    boxes = sample.boxes[keep].copy()
    boxes[:, :2] -= 1.0
    return {
        "boxes": torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.as_tensor(sample.labels[keep] + 1, dtype=torch.int64),
    }


def to_voc_boxes(boxes: Tensor) -> np.ndarray:
    """Detector output (continuous 0-based corners) → VOC boxes (1-based inclusive): the inverse of the above."""
    out = boxes.detach().cpu().double().numpy().reshape(-1, 4).copy()
    out[:, :2] += 1.0
    return out


class _Images(torch.utils.data.Dataset):
    def __init__(self, samples: Sequence[Sample]) -> None:
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[int, Tensor]:
        from torchvision.io import ImageReadMode, decode_image, read_file

        sample = self.samples[i]
        try:
            image = decode_image(read_file(str(sample.path)), mode=ImageReadMode.RGB)
        except RuntimeError as err:
            raise UserError(f"{sample.path}: cannot decode image ({err})") from None
        if tuple(image.shape[1:]) != (sample.height, sample.width):
            raise UserError(
                f"{sample.path}: image is {image.shape[2]}×{image.shape[1]} px but its annotation says "
                f"{sample.width}×{sample.height}"
            )
        return i, image


def _loader(samples: Sequence[Sample], batches: list[list[int]], workers: int) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(
        _Images(samples), batch_sampler=batches, num_workers=workers, collate_fn=_as_list
    )


def _as_list(items: list) -> list:
    return items


# -- model -------------------------------------------------------------------------------------------------
def input_scale(samples: Sequence[Sample], config: Config) -> tuple[int, int]:
    """(min_size, max_size) of the detector's input (see the module docstring)."""
    native = int(np.median([min(s.width, s.height) for s in samples]))
    min_size = config.min_size or (PAPER_MIN_SIZE if native >= PHOTO_SIDE else native)
    return min_size, config.max_size or round(PAPER_MAX_RATIO * min_size)


def anchor_sizes_for(samples: Sequence[Sample], min_size: int, max_size: int) -> tuple[float, ...]:
    """Anchor sides (input px) ≤ 2× apart spanning the 5th-95th percentile of the training boxes' sqrt(w·h)."""
    sides = []
    for s in samples:
        scale = min(min_size / min(s.width, s.height), max_size / max(s.width, s.height))
        b = s.boxes[~s.difficult]
        sides.extend(np.sqrt((b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)) * scale)
    if not sides:
        raise UserError("no non-difficult object in the training images; expected boxes to learn from")
    lo, hi = np.percentile(sides, [5, 95])
    n = max(1, math.ceil(math.log2(hi / lo)) + 1) if hi > lo else 1
    return tuple(round(float(lo * (hi / lo) ** (k / max(n - 1, 1))), 1) for k in range(n))


def _feature_trunk(backbone) -> tuple[nn.Module, int]:
    """A copy of the trunk without a trailing max-pool (pool5, which ROI pooling replaces); and its stride."""
    trunk = copy.deepcopy(backbone.trunk)
    if backbone.fc6 is not None and isinstance(trunk, nn.Sequential) and isinstance(trunk[-1], nn.MaxPool2d):
        trunk = trunk[:-1]
    with torch.no_grad():
        was = trunk.training
        side = max(backbone.resolution, 64)
        device = next(trunk.parameters()).device
        out = trunk.eval()(torch.zeros(1, 3, side, side, device=device))
        trunk.train(was)
    return trunk, 2 ** round(math.log2(side / out.shape[-1]))


class RoIPool(nn.Module):
    """Fast R-CNN's ROI max pooling on the trunk's one feature map, with the box_roi_pool interface of
    torchvision's RoIHeads (the map's scale is 1/stride, as MultiScaleRoIAlign infers it)."""

    def __init__(self, output_size: int, stride: int) -> None:
        super().__init__()
        self.output_size = (output_size, output_size)
        self.spatial_scale = 1.0 / stride

    def forward(self, features: dict[str, Tensor], proposals: list[Tensor], image_shapes) -> Tensor:
        from torchvision.ops import roi_pool

        return roi_pool(features["0"], proposals, self.output_size, self.spatial_scale)


def build_detector(backbone, config: Config, *, anchor_sizes: Sequence[float], min_size: int, max_size: int):
    """torchvision FasterRCNN from copies of the backbone's trunk and fc6/fc7 (see the module docstring)."""
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
    from torchvision.ops import MultiScaleRoIAlign

    from imagenet_transfer.data import NORMALISATION, normalisation_for

    trunk, stride = _feature_trunk(backbone)
    trunk.out_channels = backbone.trunk_channels
    head = copy.deepcopy(backbone.head())
    head_dim = backbone.head_dim
    roi_size = backbone.roi_size
    if backbone.fc6 is None:  # ResNets: parameter-free average; give the head a trainable layer
        head = nn.Sequential(*head, nn.Linear(backbone.trunk_channels, config.resnet_head_dim), nn.ReLU(inplace=True))
        head_dim, roi_size = config.resnet_head_dim, 7
    norm = NORMALISATION[normalisation_for(backbone.arch)]
    detector = FasterRCNN(
        trunk,
        min_size=min_size,
        max_size=max_size,
        image_mean=[m / 255 for m in norm["mean"]],
        image_std=[s / 255 for s in norm["std"]],
        rpn_anchor_generator=AnchorGenerator((tuple(float(a) for a in anchor_sizes),), (tuple(config.aspect_ratios),)),
        rpn_pre_nms_top_n_train=config.rpn_pre_nms_train,
        rpn_post_nms_top_n_train=config.rpn_post_nms_train,
        rpn_pre_nms_top_n_test=config.rpn_pre_nms_test,
        rpn_post_nms_top_n_test=config.rpn_post_nms_test,
        box_roi_pool=MultiScaleRoIAlign(["0"], output_size=roi_size, sampling_ratio=2),
        box_head=head,
        box_predictor=FastRCNNPredictor(head_dim, len(VOC_CLASSES) + 1),
        box_batch_size_per_image=config.box_batch_size,
        box_score_thresh=config.score_thresh,
        box_detections_per_img=config.detections_per_image,
    )
    if config.roi_pool == "max":  # FasterRCNN's constructor accepts only MultiScaleRoIAlign
        detector.roi_heads.box_roi_pool = RoIPool(roi_size, stride)
    detector.feature_stride = stride
    return detector


# -- train and evaluate ------------------------------------------------------------------------------------
def _lr_factor(config: Config):
    drop_at = round(config.lr_drop * config.iterations)

    def factor(step: int) -> float:
        warm = 0.1 + 0.9 * step / config.warmup if step < config.warmup else 1.0
        return warm * (0.1 if step >= drop_at else 1.0)

    return factor


def train(model, samples: Sequence[Sample], config: Config, *, device: torch.device, progress) -> list[float]:
    """`config.iterations` SGD steps on shuffled batches of `samples`; returns the loss of each step."""
    gen = torch.Generator().manual_seed(config.seed)
    order: list[int] = []
    while len(order) < config.iterations * config.batch_size:
        order += torch.randperm(len(samples), generator=gen).tolist()
    batches = [order[k * config.batch_size : (k + 1) * config.batch_size] for k in range(config.iterations)]
    flips = torch.rand(config.iterations, config.batch_size, generator=gen).lt(0.5).tolist()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_factor(config))
    model.train()
    losses: list[float] = []
    task = progress.add_task("voc07 train", total=config.iterations, status="")
    for step, items in enumerate(_loader(samples, batches, config.workers)):
        images, targets = [], []
        for (i, image), flip in zip(items, flips[step]):
            target = training_target(samples[i])
            image = image.to(device, torch.float32) / 255.0
            if flip and config.flip:
                image = image.flip(-1)
                width = float(image.shape[-1])
                target["boxes"] = torch.stack(
                    [
                        width - target["boxes"][:, 2],
                        target["boxes"][:, 1],
                        width - target["boxes"][:, 0],
                        target["boxes"][:, 3],
                    ],
                    1,
                )
            images.append(image)
            targets.append({k: v.to(device) for k, v in target.items()})
        loss_parts = model(images, targets)
        parts = ", ".join(f"{k} {float(v.detach()):.4g}" for k, v in loss_parts.items())
        losses.append(
            sgd_step(
                sum(loss_parts.values()), optimizer, scheduler, f"voc07_det iteration {step} ({parts}; lr {config.lr})"
            )
        )
        progress.update(task, advance=1, status=f"loss {np.mean(losses[-20:]):.3f}")
    return losses


@torch.no_grad()
def evaluate(model, samples: Sequence[Sample], config: Config, *, device: torch.device, progress) -> DetectionEvaluator:
    """Detections on every sample, accumulated with its ground truth (difficult objects included)."""
    evaluator = DetectionEvaluator(VOC_CLASSES)
    for s in samples:
        evaluator.add_ground_truth(s.image_id, s.boxes, s.labels, s.difficult)
    model.eval()
    size = config.eval_batch_size
    batches = [list(range(a, min(a + size, len(samples)))) for a in range(0, len(samples), size)]
    task = progress.add_task("voc07 test", total=len(samples), status="")
    for items in _loader(samples, batches, config.workers):
        outputs = model([image.to(device, torch.float32) / 255.0 for _, image in items])
        for (i, _), out in zip(items, outputs):
            evaluator.update(
                samples[i].image_id,
                to_voc_boxes(out["boxes"]),
                out["scores"].cpu().numpy(),
                out["labels"].cpu().numpy() - 1,
            )
        progress.update(task, advance=len(items))
    done = evaluator.images_with_detections
    if len(done) != len(samples) or set(done) != set(evaluator.images):
        raise RuntimeError(f"voc07_det: {len(done)} of {len(samples)} test images evaluated; every one must be, once")
    return evaluator


def run(backbone, info: dict, config: Config, *, device: torch.device | str = "cpu", progress: bool = True) -> Result:
    """Fine-tune a detector from `backbone` on the train set, evaluate it on the test set (module docstring)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    device = torch.device(device)
    root = find_voc2007(config.data)
    train_samples, test_samples = load_split(root, config.train_set), load_split(root, config.test_set)
    overlap = {s.image_id for s in train_samples} & {s.image_id for s in test_samples}
    if overlap:
        raise UserError(
            f"{root}: {len(overlap)} image(s) in both {config.train_set!r} and {config.test_set!r}, "
            f"e.g. {sorted(overlap)[:5]}"
        )
    min_size, max_size = input_scale(train_samples, config)
    anchors = config.anchor_sizes or anchor_sizes_for(train_samples, min_size, max_size)
    torch.manual_seed(config.seed)
    model = build_detector(backbone, config, anchor_sizes=anchors, min_size=min_size, max_size=max_size).to(device)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
    )
    start = time.monotonic()
    with Progress(*columns, disable=not progress) as bar:
        losses = train(model, train_samples, config, device=device, progress=bar)
        train_s = time.monotonic() - start
        evaluator = evaluate(model, test_samples, config, device=device, progress=bar)
    result = evaluator.accumulate()
    metrics = {k: 100 * v for k, v in result.summary("voc07").items()}
    metrics.update({k: 100 * v for k, v in evaluator.coco("voc07_coco").items()})
    metrics.update(train_images=float(len(train_samples)), test_images=float(len(test_samples)))
    derived = {
        "data": str(root),
        "backbone": info.get("uri", backbone.arch),
        "min_size": min_size,
        "max_size": max_size,
        "anchor_sizes": " ".join(map(str, anchors)),
        "feature_stride": model.feature_stride,
        "iterations": config.iterations,
        "final_loss": float(np.mean(losses[-20:])) if losses else float("nan"),
        "train_seconds": round(train_s, 1),
        "total_seconds": round(time.monotonic() - start, 1),
    }
    return Result(
        metrics=metrics,
        figures={"pr_curves.png": pr_figure(result)},
        tables={"voc07_ap.csv": ap_table(result), "voc07_derived.csv": _derived_table(derived)},
    )


# -- reporting ---------------------------------------------------------------------------------------------
def ap_table(result: DetectionResult):
    import pandas as pd

    rows = [
        {
            "class": c.name,
            "ap": 100 * c.ap,
            "objects": c.npos,
            "difficult": c.ndifficult,
            "detections": len(c.tp),
            "true_positives": int(c.tp.sum()),
            "ignored": c.ignored,
            "max_recall": float(c.recall[-1]) if len(c.tp) and c.npos else 0.0,
        }
        for c in result.classes
    ]
    rows.append(
        {
            "class": "mean",
            "ap": 100 * result.mean_ap,
            "objects": sum(c.npos for c in result.classes),
            "difficult": sum(c.ndifficult for c in result.classes),
            "detections": sum(len(c.tp) for c in result.classes),
            "true_positives": sum(int(c.tp.sum()) for c in result.classes),
            "ignored": sum(c.ignored for c in result.classes),
            "max_recall": float("nan"),
        }
    )
    return pd.DataFrame(rows)


def _derived_table(derived: dict[str, Any]):
    import pandas as pd

    return pd.DataFrame({"setting": list(derived), "value": [str(v) for v in derived.values()]})


def pr_figure(result: DetectionResult):
    """A 4×5 grid of per-class precision/recall curves with their VOC07 AP (a matplotlib Figure, no pyplot)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(15, 11), layout="constrained")
    axes = fig.subplots(4, 5, sharex=True, sharey=True)
    for ax, c in zip(axes.flat, result.classes):
        if c.npos and len(c.tp):
            ax.plot(np.concatenate([[0.0], c.recall]), np.concatenate([[c.precision[0]], c.precision]), lw=1.2)
        ap = "n/a" if np.isnan(c.ap) else f"{100 * c.ap:.1f}"
        ax.set_title(f"{c.name}: AP {ap} ({c.npos} obj)", fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("recall")
    for ax in axes[:, 0]:
        ax.set_ylabel("precision")
    fig.suptitle(f"VOC2007 test: precision/recall per class, mAP {100 * result.mean_ap:.1f} (11-point, IoU 0.5)")
    return fig


__all__ = [
    "Config",
    "Sample",
    "anchor_sizes_for",
    "ap_table",
    "build_detector",
    "evaluate",
    "find_voc2007",
    "input_scale",
    "load_split",
    "pr_figure",
    "run",
    "to_voc_boxes",
    "train",
    "training_target",
]
