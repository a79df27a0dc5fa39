"""The training and evaluation steps of pre-training: no MLflow, no files, no config parsing.

stats = train_steps(model, batches, optimizer, scheduler, on_step=...)   # mean loss, images, seconds
metrics = evaluate(model, loader, coarse_of_label, coarse_of_target)    # {"val_top1": ..., ...}
scores = topk_accuracy(logits, targets, ks=(1, 5))                       # pure function
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import Tensor, nn


class NonFiniteLoss(FloatingPointError):
    """The loss became NaN or infinite: training stops instead of wasting the remaining budget."""


def sgd_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scheduler, where: str) -> float:
    """One optimiser step on `loss` (stopping on a non-finite one, `where` says which); returns its value.

    Shared by pre-training and every fine-tuning benchmark."""
    value = float(loss.detach())
    if not math.isfinite(value):
        raise NonFiniteLoss(f"{where}: loss is {value}; lower the learning rate")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    scheduler.step()
    return value


def autocast(device: torch.device):
    """bf16 autocast on CUDA; full precision elsewhere."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


@dataclass
class StepStats:
    loss_sum: float = 0.0
    steps: int = 0
    images: int = 0
    seconds: float = 0.0

    @property
    def loss(self) -> float:
        return self.loss_sum / max(self.steps, 1)

    @property
    def images_per_second(self) -> float:
        return self.images / max(self.seconds, 1e-9)


def train_steps(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    *,
    device: torch.device,
    max_steps: int,
    seed: int | None = None,
    rank: int = 0,
    first_step: int = 0,
    on_step: Callable[[int, float], None] | None = None,
) -> StepStats:
    """Run at most `max_steps` SGD steps over `batches`; `on_step(images, loss)` after each one.

    With `seed`, the random state of step `first_step + i` (dropout) is reseeded from (seed, step, rank) (each
    DDP process draws its own masks for its share of the batch), so a run resumed at any step draws exactly
    what an uninterrupted one would.
    """
    model.train()
    criterion = nn.CrossEntropyLoss()
    stats = StepStats()
    start = time.perf_counter()
    for images, targets in batches:
        if stats.steps >= max_steps:
            break
        if seed is not None:
            torch.manual_seed(seed * 1_000_003 + first_step + stats.steps + rank * 0x9E3779B9)
        with autocast(device):
            loss = criterion(model(images), targets)
        value = sgd_step(loss, optimizer, scheduler, f"pre-training step {first_step + stats.steps}")
        stats.loss_sum += value
        stats.steps += 1
        stats.images += len(targets)
        if on_step is not None:
            on_step(len(targets), value)
    stats.seconds = time.perf_counter() - start
    return stats


def topk_accuracy(logits: Tensor, targets: Tensor, ks: Iterable[int] = (1, 5)) -> dict[int, float]:
    """Fraction of rows whose target is among the k highest logits (k capped at the class count)."""
    ks = tuple(ks)
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
    hits = top == targets[:, None]
    return {k: float(hits[:, :k].any(dim=1).float().mean()) for k in ks}


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    *,
    device: torch.device,
    coarse_of_label: Tensor | None = None,
) -> dict[str, float]:
    """Top-1/top-5 on the subset's labels and top-1 at a coarse WordNet level.

    `coarse_of_label[l]` is the coarse label of subset label `l`; a prediction counts as coarse-correct
    when its coarse label equals the target's. Every image is counted once.
    """
    model.eval()
    logits, targets = [], []
    for images, labels in batches:
        with autocast(device):
            logits.append(model(images).float().cpu())
        targets.append(labels.cpu())
    if not logits:
        return {}
    logits, targets = torch.cat(logits), torch.cat(targets)
    scores = topk_accuracy(logits, targets, (1, 5))
    metrics = {"val_top1": scores[1], "val_top5": scores[5], "val_images": float(len(targets))}
    if coarse_of_label is not None:
        predicted = coarse_of_label[logits.argmax(dim=1)]
        metrics["val_top1_coarse"] = float((predicted == coarse_of_label[targets]).float().mean())
    return metrics
