"""SUN-CLS's options (see the package docstring); `Config.quick()` is the smoke-test variant."""

from __future__ import annotations

from typing import Annotated, Literal, get_args

from pydantic import AfterValidator, Field, NonNegativeFloat, PositiveInt

from imagenet_transfer.config import Settings
from imagenet_transfer.transfer.common import EvaluateOn
from imagenet_transfer.transfer.linear import L2_GRID

Protocol = Literal["linear", "finetune"]
PROTOCOLS = get_args(Protocol)
VectorLayer = Literal["pool5", "fc6", "fc7"]


def _distinct(partitions: tuple[int, ...]) -> tuple[int, ...]:
    if len(set(partitions)) != len(partitions):
        raise ValueError("expected distinct partition numbers, e.g. 1,2,3")
    return partitions


Partitions = Annotated[tuple[PositiveInt, ...], AfterValidator(_distinct)]  # SUN397's Training/Testing_NN.txt numbers


class Config(Settings):
    """SUN-CLS options; `quick()` is the smoke-test variant."""

    data: str = ""  # SUN397 root (SUN397/ and Partitions/); "" = the embedded world
    protocol: Protocol = "linear"  # linear | finetune
    partitions: Partitions = Field((1, 2, 3), min_length=1)
    val_fraction: float = Field(0.2, gt=0, lt=1)  # of each class's training images, for every choice (layer, L2, epoch)
    seed: int = 0
    evaluate_on: EvaluateOn = "test"  # test: the Testing lists | val: a part of the training lists, held out and scored
    # evaluate_on=val: of each class's training images, held out and scored
    eval_fraction: float = Field(0.25, gt=0, lt=1)
    # listed images absent on disk: tolerated (dropped) up to this fraction
    max_missing_fraction: float = Field(0.001, ge=0, le=1)
    batch_size: int = Field(64, ge=1)  # feature extraction and evaluation
    # decoding processes beside the forward pass (bench/features.py measures what they gain)
    workers: int = Field(1, ge=0)
    # linear
    layers: tuple[VectorLayer, ...] = ()  # () = every one of pool5, fc6, fc7 the backbone has
    l2_grid: tuple[NonNegativeFloat, ...] = Field(L2_GRID, min_length=1)
    max_iter: int = Field(100, ge=1)  # L-BFGS iterations per fit
    # finetune
    epochs: int = Field(12, ge=1)
    train_batch_size: int = Field(32, ge=1)
    lr: float = Field(0.01, gt=0)  # the new head
    trunk_lr: float = Field(0.001, ge=0)  # every pre-trained layer
    momentum: float = 0.9
    weight_decay: float = 5e-4

    @classmethod
    def real(cls, **changes) -> Config:
        """Real SUN397, the paper's protocol: fine-tuning, on all ten official partitions (mean ± std over them)."""
        return cls(**{"protocol": "finetune", "partitions": tuple(range(1, 11)), "workers": 4, **changes})

    @classmethod
    def quick(cls, **changes) -> Config:
        """A few seconds on the tiny world: two partitions, two L2 strengths, two epochs."""
        return cls(
            **{
                "partitions": (1, 2),
                "l2_grid": (1e-3, 1e-1),
                "max_iter": 30,
                "epochs": 2,
                "train_batch_size": 8,
                "batch_size": 32,
                "workers": 0,
                **changes,
            }
        )
