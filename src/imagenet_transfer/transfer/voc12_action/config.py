"""PASCAL-ACT-CLS's options (see the package docstring); `Config.quick()` is the smoke-test variant."""

from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import Field

from imagenet_transfer.config import Settings
from imagenet_transfer.transfer.common import EvaluateOn

Loss = Literal["softmax", "bce"]
LOSSES = get_args(Loss)


class Config(Settings):
    """Every knob of the benchmark; checked on creation (UserError naming the field and the valid values)."""

    data: str = ""  # a VOCdevkit/VOC2012 folder (or a folder holding VOCdevkit/VOC2012); "" = the embedded world
    context: bool = False  # add the whole image as a second stream (features concatenated)
    margin: float = Field(0.1, ge=0, le=2)  # the person box grows by this fraction of its width/height on each side
    # training: random shift/scale of the enlarged box, as a fraction of its side
    jitter: float = Field(0.1, ge=0, lt=0.5)
    loss: Loss = "softmax"  # softmax | bce (see the package docstring)
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
    def real(cls, **overrides) -> Config:
        """Real VOC2012 action, the paper's setting: the network fine-tuned on each given person box, no image
        context (PAPER.md: "person crop, optionally with image context"; the crop margin is not published)."""
        return cls(**{**dict(context=False, workers=4), **overrides})

    @classmethod
    def quick(cls, **overrides: Any) -> Config:
        """A few seconds on the tiny world: smoke tests."""
        return cls(**{**dict(epochs=2, batch_size=8, holdout=0.0), **overrides})
