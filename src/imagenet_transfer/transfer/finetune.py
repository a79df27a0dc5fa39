"""The fine-tuning pieces the benchmarks share: SGD with a faster new head, a cosine schedule, and the epoch loop
that keeps the weights of the best epoch on validation.

    optimizer = head_sgd(trunk, head, lr=1e-3, head_lr=1e-2, momentum=0.9, weight_decay=5e-4)
    scheduler = cosine_schedule(optimizer, total_steps=epochs * steps_per_epoch)
    history = train_epochs(net, epochs, train_one_epoch, validate)        # losses, val scores, best epoch
    history.best.restore(net)                                             # the weights of history.best.epoch

Used by `voc12_action` and `sun397` (finetune protocol); `voc07_det` has its own warm-up and step schedule.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn


def head_sgd(
    backbone: Iterable[nn.Parameter],
    head: Iterable[nn.Parameter],
    *,
    lr: float,
    head_lr: float,
    momentum: float,
    weight_decay: float,
) -> torch.optim.SGD:
    """SGD with momentum over two groups: the pre-trained parameters at `lr`, the new head at `head_lr`."""
    return torch.optim.SGD(
        [{"params": backbone, "lr": lr}, {"params": head, "lr": head_lr}],
        momentum=momentum,
        weight_decay=weight_decay,
    )


def cosine_schedule(optimizer: torch.optim.Optimizer, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Each group's lr × 0.5 (1 + cos(π · step / total_steps)): from its base lr at step 0 down to 0 at the last
    step, no warm-up; call `step()` once per optimiser step."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / total_steps)))


@dataclass
class BestEpoch:
    """The epoch (1-based) with the highest validation score so far, and a deep copy of its weights. The earliest
    epoch wins among equal scores; a NaN score (nothing to score) is replaced by the next epoch's."""

    score: float = math.nan
    epoch: int = 0
    state: dict | None = None

    def update(self, score: float, epoch: int, model: nn.Module) -> bool:
        """Keep `model`'s weights if `score` beats the best so far; returns whether it did."""
        if self.state is None or score > self.score or math.isnan(self.score):
            self.score, self.epoch, self.state = score, epoch, copy.deepcopy(model.state_dict())
            return True
        return False

    def restore(self, model: nn.Module) -> None:
        model.load_state_dict(self.state)


@dataclass
class History:
    losses: list[float]  # mean training loss of each epoch
    scores: list[float]  # validation score after each epoch (empty without validation)
    best: BestEpoch | None  # None without validation


def train_epochs(
    model: nn.Module,
    epochs: int,
    train_one_epoch: Callable[[int], float],
    validate: Callable[[], float] | None = None,
    on_epoch: Callable[[int, float, float | None], None] | None = None,
) -> History:
    """`train_one_epoch(epoch)` (0-based; returns the epoch's mean loss) `epochs` times. After each epoch,
    `validate()` scores the model and the best epoch's weights are kept (not restored: call `best.restore`),
    then `on_epoch(epoch, loss, score)` reports it (1-based epoch; score None without `validate`)."""
    history = History([], [], BestEpoch() if validate is not None else None)
    for epoch in range(epochs):
        loss = train_one_epoch(epoch)
        history.losses.append(loss)
        score = None
        if validate is not None:
            score = validate()
            history.scores.append(score)
            history.best.update(score, epoch + 1, model)
        if on_epoch is not None:
            on_epoch(epoch + 1, loss, score)
    return history
