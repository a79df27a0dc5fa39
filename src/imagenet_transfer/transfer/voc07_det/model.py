"""PASCAL-DET's model: torchvision's Faster R-CNN around copies of the backbone's trunk and fc6/fc7, and the
settings derived from the training data (input scale, anchor sizes). See the package docstring.

    min_size, max_size = input_scale(train_samples, config)
    anchors = config.anchor_sizes or anchor_sizes_for(train_samples, min_size, max_size)
    detector = build_detector(backbone, config, anchor_sizes=anchors, min_size=min_size, max_size=max_size)
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from imagenet_transfer.datasets.voc import VOC_CLASSES
from imagenet_transfer.errors import UserError
from imagenet_transfer.transfer.voc07_det.config import Config
from imagenet_transfer.transfer.voc07_det.data import Sample

PAPER_MIN_SIZE = 600  # Fast R-CNN's input scale (shorter side) for VOC photos
PAPER_MAX_RATIO = 1000 / 600  # and its cap on the longer side
PHOTO_SIDE = 300  # images with a shorter median side than this are used at their own scale


def input_scale(samples: Sequence[Sample], config: Config) -> tuple[int, int]:
    """(min_size, max_size) of the detector's input (see the package docstring)."""
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
    """torchvision FasterRCNN from copies of the backbone's trunk and fc6/fc7 (see the package docstring)."""
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
