"""PASCAL-DET: fine-tune a Faster R-CNN whose conv layers and fc6/fc7 come from the backbone; VOC07 mAP on test.

    imagenet-transfer transfer run voc07_det --backbone models:/small-full@current
    imagenet-transfer transfer run voc07_det --backbone random:small --set data=/data/VOCdevkit/VOC2007 \\
        --set iterations=40000 --set batch_size=2
    mlflow run . -e transfer_voc07_det --env-manager local -P backbone=models:/small-full@current

    from imagenet_transfer.transfer import voc07_det
    result = voc07_det.run(net, info, voc07_det.Config(), device="cpu")   # net, info = common.resolve_backbone(...)
    result.metrics["voc07_map"]                                          # 11-point mAP over 20 classes, in %

Input: a `VOCdevkit/VOC2007` folder (`Config.data`; "" = the embedded world's): `ImageSets/Main/{trainval,test}.txt`,
`Annotations/<id>.xml`, `JPEGImages/<file>`. Trains on `trainval`, tests on `test`, both read once.
Output (`Result`): metrics `voc07_map` and `voc07_ap_<class>` (VOC07 11-point AP at IoU 0.5, difficult objects
ignored, %; NaN for a class with no non-difficult test object, left out of the mean), `voc07_coco_ap`,
`voc07_coco_ap50`, `voc07_coco_ap75` (pycocotools on the same detections, %), `train_images`, `test_images`;
figure `pr_curves.png` (per-class precision/recall); tables `voc07_ap.csv` (per class AP, objects, detections) and
`voc07_derived.csv` (the settings derived from the data: input scale, anchors, feature stride).
The metrics are `transfer.metrics.DetectionEvaluator` (a pure accumulator).

The detector (`model.build_detector`), torchvision's Faster R-CNN machinery around the backbone's parts:
  - features: a copy of `backbone.trunk` without its last max-pool (the Fast R-CNN recipe: ROI pooling
    replaces pool5), so the feature stride is 8 for `small`, 16 for the AlexNets; ResNets keep layer4 (32);
  - ROI pooling: Fast R-CNN's RoIPool (max) to `backbone.roi_size` (6×6 AlexNets, 4×4 small; 7×7 for
    ResNets, whose head averages it); `roi_pool="align"` takes RoIAlign instead (its CPU backward is slower);
  - box head: a deep copy of `backbone.head()`: fc6 and fc7 start from the pre-trained weights (dropout
    included); ResNets' head has no parameters, so fc(`resnet_head_dim`)+ReLU is added after it, new;
  - predictor: new class scores (20 classes + background) and box deltas;
  - RPN: a new 3×3 conv head on the trunk; anchors of `aspect_ratios` and sizes from the training boxes
    (geometric, ≤ 2× apart, spanning the 5th-95th percentile of sqrt(w·h) at the input scale) unless set;
  - input scale: the shorter side resized to `min_size`; 0 = from the data: the paper's 600 px for photos
    (median shorter side of the training images >= 300 px, real VOC: 375), the images' own median shorter
    side for smaller ones (the embedded world's 160×128 scenes stay 128: their objects are drawn at the
    pre-training object scale, and upscaling costs CPU time as its square); `max_size` 0 = 1000/600 of it;
    pixels normalised as the backbone was pre-trained (`data.normalisation_for`).
Training (`engine.train`): SGD with momentum, linear warm-up, lr ×0.1 after `lr_drop` of the iterations,
horizontal flips; `difficult` objects are left out of the training targets (kept as ground truth for the
evaluation, where they are ignored). A non-finite loss stops the run. Every test image is evaluated exactly once
(asserted). The caller's backbone is not modified (the detector holds copies).

Files: `config.py` (Config), `data.py` (VOC2007 samples, targets, image loader), `model.py` (the detector and
the settings derived from the data), `engine.py` (train, evaluate, run), `figures.py` (PR curves, tables).
Runtimes and results on the embedded world: bench/README.md.
"""

from imagenet_transfer.transfer.voc07_det.config import Config
from imagenet_transfer.transfer.voc07_det.engine import run

__all__ = ["Config", "run"]
