"""PASCAL-DET's options (see the package docstring); `Config.quick()` is the smoke-test variant."""

from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import Field, PositiveFloat

from imagenet_transfer.config import Settings

RoiPool = Literal["max", "align"]
ROI_POOLS = get_args(RoiPool)


class Config(Settings):
    """The protocol's knobs; the defaults fit the embedded world on a few CPU cores."""

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
    # shorter input side; 0 = from the data: 600 for photos, else the images' own (package docstring)
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
    def real(cls, **overrides: Any) -> Config:
        """Real VOC2007 with an AlexNet-sized backbone: py-faster-rcnn's end-to-end recipe for ZF on PASCAL VOC.

        From rbgirshick/py-faster-rcnn: `models/pascal_voc/ZF/faster_rcnn_end2end/solver.prototxt` (base_lr 0.001,
        step policy, gamma 0.1, stepsize 50000, momentum 0.9, weight_decay 0.0005),
        `experiments/scripts/faster_rcnn_end2end.sh` (70000 iterations on voc_2007_trainval),
        `experiments/cfgs/faster_rcnn_end2end.yml` and `lib/fast_rcnn/config.py` (one image a batch, shorter side
        600 capped at 1000, flipped images, 128 ROIs an image, RPN 12000/2000 proposals before/after NMS in
        training and 6000/300 at test, anchors 128/256/512 at ratios 0.5/1/2, test threshold 0.05 and 100
        detections an image). ZF's train.prototxt learns every layer (lr_mult 1 from conv1 on), so nothing is
        frozen here either."""
        return cls(
            **{
                **dict(
                    iterations=70_000,
                    batch_size=1,
                    lr=0.001,
                    momentum=0.9,
                    weight_decay=5e-4,
                    warmup=0,
                    lr_drop=50_000 / 70_000,
                    flip=True,
                    min_size=600,
                    max_size=1000,
                    anchor_sizes=(128.0, 256.0, 512.0),
                    aspect_ratios=(0.5, 1.0, 2.0),
                    rpn_pre_nms_train=12_000,
                    rpn_post_nms_train=2000,
                    rpn_pre_nms_test=6000,
                    rpn_post_nms_test=300,
                    box_batch_size=128,
                    score_thresh=0.05,
                    detections_per_image=100,
                    workers=4,
                ),
                **overrides,
            }
        )

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
