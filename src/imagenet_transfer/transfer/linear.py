"""Linear classifiers on frozen features: pure functions of arrays.

    sel = select_l2(train_x, train_y, val_x, val_y, num_classes=24)       # L2 strength chosen on val
    clf = fit_linear(np.concatenate([train_x, val_x]), np.concatenate([train_y, val_y]), num_classes=24, l2=sel.l2)
    mean_per_class_accuracy(clf.predict(test_x), test_y)                  # SUN397's metric (`transfer.metrics`)

The classifier is multinomial logistic regression on standardised features (mean and standard deviation of the
training rows; constant dimensions, e.g. dead ReLUs, are left unscaled), fitted by full-batch L-BFGS in torch
with zero initialisation, so the convex problem gives the same answer on every run. The objective is
mean cross-entropy + l2/2 · ||W||² (bias not penalised). `select_l2` fits one classifier per strength of the
grid, strongest first with warm starts, and keeps the strength with the best validation score (ties go to the
stronger penalty). Small fits (N·D·C < SINGLE_THREAD_WORK, e.g. everything on the embedded world) run with one
torch thread, restored afterwards: their matrix products are too small to share, and on a busy machine the
hand-offs between threads cost more than they save. No function here reads files or knows about backbones.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from imagenet_transfer.transfer.metrics import mean_per_class_accuracy

L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1)
MAX_ITER = 100
SINGLE_THREAD_WORK = 1e9  # N·D·C below which a fit runs on one thread (thread hand-offs cost more than they save)


@dataclass(frozen=True)
class LinearClassifier:
    """x → argmax(((x - mean) / scale) · weightᵀ + bias)."""

    mean: np.ndarray  # (D,)
    scale: np.ndarray  # (D,)
    weight: np.ndarray  # (C, D)
    bias: np.ndarray  # (C,)
    l2: float

    def logits(self, x: np.ndarray) -> np.ndarray:
        z = (np.asarray(x, dtype=np.float32) - self.mean) / self.scale
        return z @ self.weight.T + self.bias

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.logits(x).argmax(axis=1)


def standardiser(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and scale of the rows of `x`; dimensions with (near) zero spread get scale 1."""
    x = np.asarray(x, dtype=np.float32)
    mean, std = x.mean(axis=0), x.std(axis=0)
    return mean, np.where(std > 1e-6, std, 1.0).astype(np.float32)


def fit_linear(
    x: np.ndarray,
    y: np.ndarray,
    *,
    num_classes: int,
    l2: float,
    max_iter: int = MAX_ITER,
    init: LinearClassifier | None = None,
) -> LinearClassifier:
    """Multinomial logistic regression of labels `y` (0..num_classes-1) on features `x` (see module docstring)."""
    x, y = np.asarray(x, dtype=np.float32), np.asarray(y, dtype=np.int64)
    if x.ndim != 2 or y.shape != (len(x),) or not len(x):
        raise ValueError(f"features {x.shape} and labels {y.shape}: expected (N, D) and (N,) with N > 0")
    if y.min() < 0 or y.max() >= num_classes:
        raise ValueError(f"labels span {y.min()}..{y.max()}: expected 0..{num_classes - 1}")
    mean, scale = (init.mean, init.scale) if init is not None else standardiser(x)
    z = torch.from_numpy((x - mean) / scale)
    target = torch.from_numpy(y.copy())
    layer = nn.Linear(z.shape[1], num_classes)
    with torch.no_grad():
        if init is not None:
            layer.weight.copy_(torch.from_numpy(init.weight))
            layer.bias.copy_(torch.from_numpy(init.bias))
        else:
            layer.weight.zero_()
            layer.bias.zero_()
    optimizer = torch.optim.LBFGS(
        layer.parameters(),
        lr=1.0,
        max_iter=max_iter,
        history_size=10,
        line_search_fn="strong_wolfe",
        tolerance_grad=1e-6,
        tolerance_change=1e-9,
    )
    criterion = nn.CrossEntropyLoss()

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = criterion(layer(z), target) + 0.5 * l2 * layer.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad(), _threads(1 if z.shape[0] * z.shape[1] * num_classes < SINGLE_THREAD_WORK else None):
        loss = optimizer.step(closure)
    if not torch.isfinite(loss):
        raise FloatingPointError(f"logistic regression (l2={l2}) diverged: loss {float(loss)}")
    return LinearClassifier(
        mean, scale, layer.weight.detach().numpy().copy(), layer.bias.detach().numpy().copy(), float(l2)
    )


@contextlib.contextmanager
def _threads(count: int | None):
    """Run the block with `count` torch threads (None: unchanged)."""
    before = torch.get_num_threads()
    if count is not None and count != before:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


@dataclass
class Selection:
    """The chosen L2 strength, its classifier (fitted on the training rows only) and every validation score."""

    l2: float
    classifier: LinearClassifier
    val_scores: dict[float, float] = field(default_factory=dict)

    @property
    def val_score(self) -> float:
        return self.val_scores[self.l2]


def select_l2(
    train_x: np.ndarray,
    train_y: np.ndarray,
    val_x: np.ndarray,
    val_y: np.ndarray,
    *,
    num_classes: int,
    l2_grid: Sequence[float] = L2_GRID,
    max_iter: int = MAX_ITER,
    score: Callable[[np.ndarray, np.ndarray], float] = mean_per_class_accuracy,
) -> Selection:
    """Fit one classifier per L2 strength on the training rows and keep the best by `score` on validation."""
    if not len(l2_grid) or any(not l2 >= 0 for l2 in l2_grid):
        raise ValueError(f"l2_grid {tuple(l2_grid)}: expected one or more non-negative strengths")
    best: Selection | None = None
    scores: dict[float, float] = {}
    previous = None
    for l2 in sorted(set(map(float, l2_grid)), reverse=True):
        clf = fit_linear(train_x, train_y, num_classes=num_classes, l2=l2, max_iter=max_iter, init=previous)
        scores[l2] = score(clf.predict(val_x), np.asarray(val_y))
        if best is None or scores[l2] > best.val_scores[best.l2]:
            best = Selection(l2, clf, scores)
        previous = clf
    assert best is not None
    best.val_scores = scores
    return best
