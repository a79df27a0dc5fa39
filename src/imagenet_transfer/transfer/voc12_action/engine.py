"""PASCAL-ACT-CLS's fine-tuning and scoring, and `run` (see the package docstring).

result = run(backbone, info, Config(), device="cpu")       # fine-tune on train, score val once
scores, labels = predict(model, persons, config, crops, norm, device)   # (N, 10) each, in persons' order
predictions_table(persons, scores, labels)                 # per person, for transfer.uncertainty
"""

from __future__ import annotations

import copy
import math
import time
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

from imagenet_transfer.datasets.voc import VOC_ACTIONS
from imagenet_transfer.errors import UserError
from imagenet_transfer.progress import progress_bar
from imagenet_transfer.transfer.common import Result
from imagenet_transfer.transfer.finetune import cosine_schedule, head_sgd, train_epochs
from imagenet_transfer.transfer.metrics import action_aps, mean_ap
from imagenet_transfer.transfer.voc12_action.config import Config
from imagenet_transfer.transfer.voc12_action.data import (
    Person,
    PersonCrops,
    scored_persons,
    split_holdout,
    voc2012_root,
)
from imagenet_transfer.transfer.voc12_action.figures import ap_figure, ap_table, scores_table
from imagenet_transfer.transfer.voc12_action.model import ActionNet, action_loss, action_scores


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
    train, holdout = split_holdout(train_all, config.holdout, config.seed)
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
    optimizer = head_sgd(
        model.finetuned_parameters(),
        model.head.parameters(),
        lr=config.lr,
        head_lr=config.lr * config.head_lr_mult,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
    )
    sampler = EpochSampler(len(train_set), batch_size=config.batch_size, seed=config.seed, shuffle=True, drop_last=True)
    total = sampler.batches_per_epoch() * config.epochs
    scheduler = cosine_schedule(optimizer, total)
    loader = DataLoader(
        train_set,
        batch_size=config.batch_size,
        sampler=sampler,
        num_workers=config.workers,
        drop_last=True,
        pin_memory=device.type == "cuda",
    )

    with progress_bar(enabled=progress) as bar:
        task = bar.add_task(f"voc12 action: fine-tune ({len(train)} persons)", total=total)

        def train_one_epoch(epoch: int) -> float:
            sampler.set_epoch(epoch)
            model.train()
            epoch_loss = []
            for images, labels, _ in loader:
                images = normalise(images.to(device, non_blocking=True).flatten(0, 1), norm).unflatten(0, (-1, views))
                with autocast(device):
                    loss = action_loss(model(images).float(), labels.to(device), config.loss)
                value = sgd_step(loss, optimizer, scheduler, f"voc12 action, epoch {epoch}")
                epoch_loss.append(value)
                bar.update(
                    task, advance=1, description=f"voc12 action: epoch {epoch + 1}/{config.epochs} loss {value:.3f}"
                )
            return float(np.mean(epoch_loss))

        def holdout_map() -> float:
            return mean_ap(action_aps(*predict(model, holdout, config, crops, norm, device)))

        start = time.perf_counter()
        history = train_epochs(model, config.epochs, train_one_epoch, holdout_map if holdout else None)
        train_seconds = time.perf_counter() - start
        best = history.best
        if best is not None:
            best.restore(model)
        bar.update(task, description=f"voc12 action: scoring {len(val)} val persons")
        scores, labels = predict(model, val, config, crops, norm, device)

    aps = action_aps(scores, labels)
    metrics = {"voc12_action_map": 100 * mean_ap(aps)}
    metrics.update({f"voc12_action_ap_{a}": 100 * v for a, v in aps.items() if not math.isnan(v)})
    metrics.update(
        train_persons=float(len(train)),
        val_persons=float(len(val)),
        train_loss=history.losses[-1],
        train_seconds=train_seconds,
    )
    if best is not None:
        metrics.update(holdout_map=100 * best.score, holdout_persons=float(len(holdout)), best_epoch=float(best.epoch))
    table = ap_table(aps, labels, train)
    return Result(
        metrics=metrics,
        figures={"action_ap.png": ap_figure(table, metrics["voc12_action_map"], info)},
        tables={"voc12_action_ap.csv": table, "voc12_action_val_scores.csv": scores_table(val, scores, labels)},
        predictions={"voc12_action_map": predictions_table(val, scores, labels)},
    )


def predictions_table(persons: list[Person], scores: np.ndarray, labels: np.ndarray) -> pd.DataFrame:
    """The multilabel table `transfer.uncertainty` resamples: one row per scored person, `unit`
    ("<image id>/<object number>"), `target_<action>` (0/1) and `score_<action>` for every action."""
    columns: dict[str, Any] = {"unit": [f"{p.image_id}/{p.index}" for p in persons]}
    for i, action in enumerate(VOC_ACTIONS):
        columns[f"target_{action}"] = (labels[:, i] > 0).astype(np.int64)
        columns[f"score_{action}"] = scores[:, i].astype(np.float64)
    return pd.DataFrame(columns)


@torch.no_grad()
def predict(
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
            scores[index.numpy()] = action_scores(model(images).float(), config.loss).cpu().numpy()
        np.add.at(times_scored, index.numpy(), 1)
    if (times_scored != 1).any() or not np.isfinite(scores).all():
        wrong = np.flatnonzero(times_scored != 1)[:5]
        raise RuntimeError(
            f"{int((times_scored != 1).sum())} of {len(persons)} persons were not scored exactly once "
            f"(e.g. {[(persons[i].image_id, persons[i].index, int(times_scored[i])) for i in wrong]}) "
            f"or got non-finite scores"
        )
    return scores, dataset.labels.numpy().copy()
