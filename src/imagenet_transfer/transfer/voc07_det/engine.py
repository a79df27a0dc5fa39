"""PASCAL-DET's training and evaluation, and `run`: fine-tune the detector on the train set, score the test set.

losses = train(detector, train_samples, config, device=device, progress=bar)
evaluator = evaluate(detector, test_samples, config, device=device, progress=bar)   # DetectionEvaluator
result = run(backbone, info, config, device="cpu")                                 # both, as a Result
result.predictions["voc07_map"]     # per test image: boxes and matched detections (transfer.uncertainty)
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch

from imagenet_transfer.datasets.voc import VOC_CLASSES
from imagenet_transfer.engine import sgd_step
from imagenet_transfer.errors import UserError
from imagenet_transfer.progress import progress_bar
from imagenet_transfer.transfer.common import Result
from imagenet_transfer.transfer.metrics import DetectionEvaluator
from imagenet_transfer.transfer.voc07_det.config import Config
from imagenet_transfer.transfer.voc07_det.data import (
    Sample,
    find_voc2007,
    image_loader,
    load_split,
    to_voc_boxes,
    training_target,
)
from imagenet_transfer.transfer.voc07_det.figures import ap_table, derived_table, pr_figure
from imagenet_transfer.transfer.voc07_det.model import anchor_sizes_for, build_detector, input_scale


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
    for step, items in enumerate(image_loader(samples, batches, config.workers)):
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
    for items in image_loader(samples, batches, config.workers):
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
    """Fine-tune a detector from `backbone` on the train set, evaluate it on the test set (package docstring)."""
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
    start = time.monotonic()
    with progress_bar(status=True, enabled=progress) as bar:
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
        tables={"voc07_ap.csv": ap_table(result), "voc07_derived.csv": derived_table(derived)},
        predictions={"voc07_map": evaluator.predictions(result)},
    )
