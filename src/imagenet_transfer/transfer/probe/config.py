"""The E4 probes' options (see the package docstring); `Config.quick()` is the smoke-test variant."""

from __future__ import annotations

from typing import Annotated, Literal, get_args

from pydantic import AfterValidator, Field, NonNegativeFloat

from imagenet_transfer.config import Settings
from imagenet_transfer.transfer.linear import L2_GRID

Part = Literal["knn", "linear", "coarse"]
PARTS = get_args(Part)


def _coarse_level(level: str) -> str:
    method, _, count = level.rpartition("-")
    if method not in ("top-down", "bottom-up") or not count.isdigit():
        raise ValueError("expected METHOD-K, e.g. top-down-127 or bottom-up-79")
    return level


CoarseLevel = Annotated[str, AfterValidator(_coarse_level)]


class Config(Settings):
    """E4 probe options; `quick()` is the smoke-test variant."""

    data: str = ""  # ImageNet-style source (train/<wnid>/, val/); "" = the embedded world's imagenet/
    parts: tuple[Part, ...] = ()  # some of knn, linear, coarse; () = every one that applies
    layer: Literal["", "pool5", "fc6", "fc7"] = ""  # "" = fc7, or pool5 for a backbone without fc7
    k: int = Field(20, ge=1)
    train_per_class: int = Field(20, ge=0)  # training images per fine class (seeded sample); 0 = all
    val_per_class: int = Field(0, ge=0)  # val images per fine class; 0 = all
    val_fraction: float = Field(0.2, gt=0, lt=1)  # of the training sample, to choose the linear probe's L2
    l2_grid: tuple[NonNegativeFloat, ...] = Field(L2_GRID, min_length=1)
    max_iter: int = Field(100, ge=1)
    coarse_level: CoarseLevel = "top-down-127"  # METHOD-K, a label set of `taxonomy levels`
    batch_size: int = Field(64, ge=1)
    workers: int = Field(1, ge=0)  # decoding processes beside the forward pass
    seed: int = 0

    @classmethod
    def quick(cls, **changes) -> Config:
        """Seconds on the tiny world: few images per class, a small L2 grid."""
        return cls(
            **{
                "k": 5,
                "train_per_class": 8,
                "l2_grid": (1e-3, 1e-1),
                "max_iter": 30,
                "batch_size": 32,
                "workers": 0,
                **changes,
            }
        )
