"""Every evaluator of the transfer benchmarks, with no model inside: pure functions and accumulators of
predictions and ground truth.

    ev = DetectionEvaluator(VOC_CLASSES)                          # voc07_det
    ev.add_ground_truth("000001", boxes, labels, difficult)       # every evaluated image, objects or not
    ev.update("000001", det_boxes, det_scores, det_labels)        # once per image, all its detections
    result = ev.accumulate()                                      # per-class PR curves and 11-point AP
    result.summary()        # {"voc07_map": 0.61, "voc07_ap_aeroplane": 0.7, ...}   (fractions in [0, 1])
    ev.coco()               # {"coco_ap": 0.35, "coco_ap50": 0.62, "coco_ap75": 0.33} via pycocotools
    ev.predictions(result)  # per-image boxes and matched detections: what `transfer.uncertainty` resamples

    aps = action_aps(scores, labels)        # voc12_action: (N, 10) → {action: AP}, VOC2012 action AP
    mean_ap(aps)                            # the mean of the defined APs
    mean_per_class_accuracy(pred, target)   # sun397: each class weighs the same
    top1_accuracy(pred, target)             # probe
    coarse_top1(pred, coarse_of_label, target_coarse)   # probe: predictions mapped to a coarse label set

All return fractions in [0, 1].

Detection boxes are VOC boxes: `(xmin, ymin, xmax, ymax)`, 1-based inclusive pixel coordinates, so a box's width is
`xmax - xmin + 1` (the devkit's "+1"). Labels are indices into `classes` or class names.

VOC07 AP, as the devkit's `VOCevaldet.m` (and `voc_eval.py` with `use_07_metric=True`) computes it:
  - per class, all detections of the class over all images, sorted by descending score; **ties keep the
    order in which the detections were given** (images in `update` order, then their order within the
    call): a stable sort, as Matlab's `sort` in `VOCevaldet.m` (and pycocotools' mergesort) does;
  - each detection is compared with every ground-truth box of its class in its image, difficult ones
    included; the one of highest IoU (the first on ties) is its candidate. IoU >= 0.5 (`VOCevaldet.m`'s
    `ovmax >= minoverlap`; `voc_eval.py` uses `>`): a difficult candidate makes the detection *ignored*
    (neither TP nor FP); a candidate already taken makes it a FP (a duplicate); otherwise a TP that takes
    the candidate. IoU < 0.5 (or no ground truth of the class in the image): a FP;
  - recall = TP / (non-difficult ground truth of the class), precision = TP / (TP + FP), after each
    non-ignored detection; AP = mean over t in {0, 0.1, ..., 1} of max(precision at recall >= t), 0 where
    no point reaches t. Thresholds are exactly k/10, so 3 of 10 objects found counts as reaching 0.3
    (`np.arange(0, 1.1, 0.1)` in `voc_eval.py` gives 0.30000000000000004 and would miss it);
  - a class with no non-difficult ground truth in the evaluated images (only difficult objects, or none)
    has no recall: its AP is **NaN** and it is left out of the mean (`voc07_map` is the mean over the
    classes with an AP; NaN if none has). A class with ground truth and no detections has AP 0.
  - images: every image evaluated must be registered with `add_ground_truth` (with no boxes if it has
    no objects: its detections are then all FPs). Detections on an image never registered are an error,
    as in the devkit ("unrecognized image"), unless `unknown_images="false_positive"`, which treats it as
    an image without objects. Registering an image twice, or calling `update` twice for one image, is an
    error: every image is counted exactly once.

COCO-style AP (`coco()`): the same boxes and detections through pycocotools' `COCOeval` (bbox):
AP = mean over IoU 0.50:0.05:0.95, AP50, AP75, at most 100 detections per image and class. A VOC box
becomes `[xmin - 1, ymin - 1, xmax - xmin + 1, ymax - ymin + 1]` (as in the public `pascal_*2007.json`).
Difficult objects become `iscrowd=1`, the only ignore flag `COCOeval` honours (it overwrites `ignore` with
`iscrowd`): a detection on a difficult object is ignored, as in VOC, but with COCO's crowd rule (IoU =
intersection / detection area, and several detections may fall on it). COCO's −1 ("no ground truth")
becomes NaN.

VOC2012 action AP (`average_precision`), as the action devkit's VOCevalaction + VOCap: rank by score, precision
made monotone (each precision replaced by the highest at any higher recall), area under that curve over all
recall steps, not VOC07's 11 points. One difference from the devkit: tied scores form one threshold (the devkit's
MATLAB sort breaks ties by input order, so its AP then depends on the order of the list). An action with no
positive has no AP (NaN); `mean_ap` leaves it out.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from imagenet_transfer.datasets.voc import VOC_ACTIONS

if TYPE_CHECKING:
    import pandas as pd

IOU_THRESHOLD = 0.5
RECALL_POINTS = np.arange(11) / 10  # exactly 0.0, 0.1, ..., 1.0


@dataclass(frozen=True)
class ClassPR:
    """One class's evaluation: the PR curve over its non-ignored detections (by descending score) and AP."""

    name: str
    ap: float  # VOC07 11-point AP in [0, 1]; NaN when npos == 0
    npos: int  # non-difficult ground-truth boxes
    ndifficult: int  # difficult ground-truth boxes
    scores: np.ndarray  # (D,) scores of the non-ignored detections, descending
    tp: np.ndarray  # (D,) bool: true positive (else false positive)
    recall: np.ndarray  # (D,) cumulative recall after each detection (NaN when npos == 0)
    precision: np.ndarray  # (D,) cumulative precision after each detection
    ignored: int  # detections matched to a difficult object
    images: tuple[str, ...] = ()  # (D,) the image of each non-ignored detection


@dataclass(frozen=True)
class DetectionResult:
    classes: tuple[ClassPR, ...]

    @property
    def mean_ap(self) -> float:
        aps = [c.ap for c in self.classes if not np.isnan(c.ap)]
        return float(np.mean(aps)) if aps else float("nan")

    def summary(self, prefix: str = "voc07") -> dict[str, float]:
        """`{prefix}_map` and `{prefix}_ap_<class>`, fractions in [0, 1] (NaN for classes without ground truth)."""
        out = {f"{prefix}_map": self.mean_ap}
        out.update({f"{prefix}_ap_{c.name}": c.ap for c in self.classes})
        return out


def voc_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one VOC box (1-based inclusive) with each of `boxes` (N, 4), areas with the devkit's +1."""
    iw = np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]) + 1.0
    ih = np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]) + 1.0
    inter = np.where((iw > 0) & (ih > 0), iw * ih, 0.0)
    area = (box[2] - box[0] + 1.0) * (box[3] - box[1] + 1.0)
    areas = (boxes[:, 2] - boxes[:, 0] + 1.0) * (boxes[:, 3] - boxes[:, 1] + 1.0)
    return inter / (area + areas - inter)


def voc07_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """11-point interpolated AP: mean over t = 0, 0.1, ..., 1 of max(precision[recall >= t]) (0 if none)."""
    recall, precision = np.asarray(recall, float), np.asarray(precision, float)
    points = [precision[recall >= t].max() if (recall >= t).any() else 0.0 for t in RECALL_POINTS]
    return float(np.sum(points) / len(RECALL_POINTS))


class DetectionEvaluator:
    """Accumulates ground truth and detections per image; `accumulate` computes VOC07 AP, `coco` COCO AP."""

    def __init__(
        self, classes: Sequence[str], *, iou_threshold: float = IOU_THRESHOLD, unknown_images: str = "error"
    ) -> None:
        if unknown_images not in ("error", "false_positive"):
            raise ValueError(f"unknown_images={unknown_images!r}; expected 'error' or 'false_positive'")
        self.classes = tuple(classes)
        self._index = {name: i for i, name in enumerate(self.classes)}
        self.iou_threshold = iou_threshold
        self.unknown_images = unknown_images
        self._gt: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}  # id -> boxes, labels, difficult
        self._dets: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}  # id -> boxes, scores, labels

    # -- input ------------------------------------------------------------------------------------
    def add_ground_truth(self, image_id: str, boxes, labels, difficult=None) -> None:
        """All objects of one image (none is fine: an image without objects)."""
        if image_id in self._gt:
            raise ValueError(f"ground truth of image {image_id!r} given twice; each image is evaluated once")
        boxes, labels = self._boxes(boxes, image_id), self._labels(labels, image_id)
        difficult = np.zeros(len(labels), bool) if difficult is None else np.asarray(difficult, bool).reshape(-1)
        if not len(boxes) == len(labels) == len(difficult):
            raise ValueError(
                f"image {image_id!r}: {len(boxes)} boxes, {len(labels)} labels, "
                f"{len(difficult)} difficult flags; expected one of each per object"
            )
        self._gt[image_id] = (boxes, labels, difficult)

    def update(self, image_id: str, boxes, scores, labels) -> None:
        """All detections of one image (none is fine); call once per image."""
        if image_id in self._dets:
            raise ValueError(f"detections of image {image_id!r} given twice; give all of an image's detections at once")
        boxes, labels = self._boxes(boxes, image_id), self._labels(labels, image_id)
        scores = np.asarray(scores, float).reshape(-1)
        if not len(boxes) == len(scores) == len(labels):
            raise ValueError(
                f"image {image_id!r}: {len(boxes)} boxes, {len(scores)} scores, {len(labels)} labels; "
                "expected one of each per detection"
            )
        if not np.isfinite(scores).all() or not np.isfinite(boxes).all():
            raise ValueError(f"image {image_id!r}: non-finite detection scores or boxes")
        self._dets[image_id] = (boxes, scores, labels)

    @property
    def images(self) -> list[str]:
        """Ids of the images with ground truth (the evaluated set), in the order they were added."""
        return list(self._gt)

    @property
    def images_with_detections(self) -> list[str]:
        """Ids of the images `update` was called for, in call order."""
        return list(self._dets)

    def _boxes(self, boxes, image_id: str) -> np.ndarray:
        boxes = np.asarray(boxes, float)
        if boxes.size == 0:
            return np.zeros((0, 4))
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise ValueError(f"image {image_id!r}: boxes of shape {boxes.shape}; expected (N, 4) corners")
        return boxes

    def _labels(self, labels, image_id: str) -> np.ndarray:
        labels = np.asarray(labels).reshape(-1)
        if labels.size and labels.dtype.kind in "UOS":
            unknown = sorted({str(n) for n in labels if str(n) not in self._index})
            if unknown:
                raise ValueError(
                    f"image {image_id!r}: unknown class(es) {unknown}; expected some of {', '.join(self.classes)}"
                )
            labels = np.array([self._index[str(n)] for n in labels])
        labels = labels.astype(int)
        if labels.size and (labels.min() < 0 or labels.max() >= len(self.classes)):
            raise ValueError(f"image {image_id!r}: label out of range 0..{len(self.classes) - 1}")
        return labels

    def _check_images(self) -> list[str]:
        unknown = [i for i in self._dets if i not in self._gt]
        if unknown and self.unknown_images == "error":
            raise ValueError(
                f"detections on {len(unknown)} image(s) without ground truth: {unknown[:5]}; register "
                "every evaluated image with add_ground_truth (no boxes for an empty image)"
            )
        return unknown

    # -- VOC07 ------------------------------------------------------------------------------------
    def accumulate(self) -> DetectionResult:
        self._check_images()
        return DetectionResult(tuple(self._evaluate_class(c) for c in range(len(self.classes))))

    def _evaluate_class(self, c: int) -> ClassPR:
        gt = {i: (b[lab == c], d[lab == c]) for i, (b, lab, d) in self._gt.items()}
        npos = int(sum((~d).sum() for _, d in gt.values()))
        ndifficult = int(sum(d.sum() for _, d in gt.values()))
        taken = {i: np.zeros(len(d), bool) for i, (_, d) in gt.items()}
        image_of, boxes, scores = [], [], []
        for i, (b, s, lab) in self._dets.items():
            keep = lab == c
            image_of += [i] * int(keep.sum())
            boxes.append(b[keep])
            scores.append(s[keep])
        boxes = np.concatenate(boxes) if boxes else np.zeros((0, 4))
        scores = np.concatenate(scores) if scores else np.zeros(0)
        order = np.argsort(-scores, kind="stable")  # ties: the order detections were given
        outcome = []  # per detection in order: 1 TP, 0 FP, -1 ignored
        for d in order:
            gboxes, gdiff = gt.get(image_of[d], (np.zeros((0, 4)), np.zeros(0, bool)))
            if len(gboxes):
                ious = voc_iou(boxes[d], gboxes)
                j = int(np.argmax(ious))
                if ious[j] >= self.iou_threshold:
                    if gdiff[j]:
                        outcome.append(-1)
                    elif not taken[image_of[d]][j]:
                        taken[image_of[d]][j] = True
                        outcome.append(1)
                    else:
                        outcome.append(0)  # duplicate detection
                    continue
            outcome.append(0)
        outcome = np.array(outcome, int)
        kept = outcome >= 0
        tp = outcome[kept] == 1
        ctp, cfp = np.cumsum(tp), np.cumsum(~tp)
        precision = ctp / np.maximum(ctp + cfp, 1)
        if npos == 0:
            recall, ap = np.full(len(tp), np.nan), float("nan")
        else:
            recall = ctp / npos
            ap = voc07_ap(recall, precision)
        return ClassPR(
            self.classes[c],
            ap,
            npos,
            ndifficult,
            scores[order][kept],
            tp,
            recall,
            precision,
            int((~kept).sum()),
            tuple(image_of[d] for d in order[kept]),
        )

    def predictions(self, result: DetectionResult | None = None) -> pd.DataFrame:
        """The per-image table `transfer.uncertainty` resamples (its detection kind): a row per non-difficult
        ground-truth box (`unit` image id, `cls` class index, `gt`=1, `score` and `tp` NaN), a row per detection
        the evaluation kept (`gt`=0, its `score`, `tp` 1 or 0), per class in the evaluation's ranking order,
        and a row with `cls`=-1 for each evaluated image with neither. `result`: this evaluator's
        `accumulate()`, computed here if not given."""
        import pandas as pd

        result = self.accumulate() if result is None else result
        boxes = [(i, labels[~difficult]) for i, (_, labels, difficult) in self._gt.items()]
        truth = pd.DataFrame(
            {
                "unit": [i for i, counted in boxes for _ in counted],
                "cls": np.concatenate([counted for _, counted in boxes] or [np.zeros(0)]).astype(np.int64),
                "gt": 1,
                "score": np.nan,
                "tp": np.nan,
            }
        )
        found = pd.DataFrame(
            {
                "unit": [i for pr in result.classes for i in pr.images],
                "cls": np.concatenate([np.full(len(pr.images), c) for c, pr in enumerate(result.classes)]),
                "gt": 0,
                "score": np.concatenate([pr.scores for pr in result.classes]).astype(float),
                "tp": np.concatenate([pr.tp for pr in result.classes]).astype(float),
            }
        )
        listed = set(truth["unit"]) | set(found["unit"])
        bare = [i for i in dict.fromkeys([*self._gt, *self._dets]) if i not in listed]
        empty = pd.DataFrame({"unit": bare, "cls": -1, "gt": 0, "score": np.nan, "tp": np.nan})
        table = pd.concat([truth, found, empty], ignore_index=True)
        return table.astype({"unit": object, "cls": np.int64, "gt": np.int64, "score": float, "tp": float})

    # -- COCO -------------------------------------------------------------------------------------
    def coco(self, prefix: str = "coco") -> dict[str, float]:
        """COCO-style `{prefix}_ap` (IoU .50:.95), `{prefix}_ap50`, `{prefix}_ap75` via pycocotools (fractions)."""
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        unknown = self._check_images()
        ids = {image_id: n for n, image_id in enumerate([*self._gt, *unknown], 1)}
        annotations = []
        for image_id, (boxes, labels, difficult) in self._gt.items():
            for box, label, diff in zip(boxes, labels, difficult):
                xywh = _coco_box(box)
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": ids[image_id],
                        "category_id": int(label) + 1,
                        "bbox": xywh,
                        "area": xywh[2] * xywh[3],
                        "iscrowd": int(diff),
                    }
                )
        results = [
            {"image_id": ids[image_id], "category_id": int(label) + 1, "bbox": _coco_box(box), "score": float(score)}
            for image_id, (boxes, scores, labels) in self._dets.items()
            for box, score, label in zip(boxes, scores, labels)
        ]
        keys = (f"{prefix}_ap", f"{prefix}_ap50", f"{prefix}_ap75")
        if not any(not a["iscrowd"] for a in annotations):
            return dict.fromkeys(keys, float("nan"))  # nothing to find
        if not results:
            return dict.fromkeys(keys, 0.0)  # loadRes cannot take an empty list
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
            gt = COCO()
            gt.dataset = {
                "images": [{"id": n} for n in ids.values()],
                "annotations": annotations,
                "categories": [{"id": n + 1, "name": name} for n, name in enumerate(self.classes)],
            }
            gt.createIndex()
            evaluation = COCOeval(gt, gt.loadRes(results), "bbox")
            evaluation.evaluate()
            evaluation.accumulate()
            evaluation.summarize()
        return {k: float("nan") if v < 0 else float(v) for k, v in zip(keys, evaluation.stats[:3])}


def _coco_box(box: np.ndarray) -> list[float]:
    """VOC (1-based inclusive corners) -> COCO [x, y, w, h] (0-based, continuous)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    return [x0 - 1.0, y0 - 1.0, x1 - x0 + 1.0, y1 - y0 + 1.0]


# -- VOC2012 action classification ---------------------------------------------------------------------------
def average_precision(scores: np.ndarray | list, labels: np.ndarray | list) -> float:
    """VOC2012 action AP (fraction in [0, 1]) of one action: a pure function of scores and labels.

    `labels`: 1 = positive, 0 or -1 = negative. Persons are ranked by decreasing score; precision and recall
    are taken after each distinct score (tied scores form one threshold, so the AP does not depend on the
    order of the input: the devkit's stable sort would break ties by list order instead); precision is made
    monotone from the right and integrated over every recall step (VOCap), as the VOC2012 devkit does, not
    VOC07's 11 points. No positive: NaN (recall undefined).
    """
    scores, labels = np.asarray(scores, dtype=np.float64).ravel(), np.asarray(labels).ravel()
    if scores.shape != labels.shape:
        raise ValueError(f"{scores.size} scores but {labels.size} labels")
    if not np.isfinite(scores).all():
        raise ValueError("scores must be finite")
    positive = labels > 0
    if not positive.any():
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    s, pos = scores[order], positive[order]
    last_of_tie = np.r_[s[1:] != s[:-1], True]  # evaluate only after the last person of each tied group
    tp = np.cumsum(pos)[last_of_tie]
    seen = np.flatnonzero(last_of_tie) + 1
    recall = np.r_[0.0, tp / positive.sum(), 1.0]
    precision = np.r_[0.0, tp / seen, 0.0]
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.flatnonzero(recall[1:] != recall[:-1]) + 1
    return float(np.sum((recall[steps] - recall[steps - 1]) * precision[steps]))


def action_aps(scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """{action: AP (fraction; NaN without positives)} for (N, 10) scores and labels (VOC_ACTIONS order)."""
    scores, labels = np.asarray(scores), np.asarray(labels)
    if scores.ndim != 2 or scores.shape[1] != len(VOC_ACTIONS) or scores.shape != labels.shape:
        raise ValueError(f"scores {scores.shape} and labels {labels.shape}: expected both (N, {len(VOC_ACTIONS)})")
    return {a: average_precision(scores[:, i], labels[:, i]) for i, a in enumerate(VOC_ACTIONS)}


def mean_ap(aps: dict[str, float]) -> float:
    """Mean of the defined APs (NaN ones, actions without positives, are left out); NaN when none is defined."""
    defined = [v for v in aps.values() if not math.isnan(v)]
    return float(np.mean(defined)) if defined else float("nan")


# -- classification ------------------------------------------------------------------------------------------
def top1_accuracy(predictions: np.ndarray, targets: np.ndarray) -> float:
    """Fraction of predictions equal to their target."""
    predictions, targets = _pair(predictions, targets)
    return float((predictions == targets).mean())


def mean_per_class_accuracy(predictions: np.ndarray, targets: np.ndarray) -> float:
    """Accuracy of each class that occurs among the targets, averaged over those classes (each class weighs
    the same however many samples it has)."""
    predictions, targets = _pair(predictions, targets)
    classes = np.unique(targets)
    return float(np.mean([(predictions[targets == c] == c).mean() for c in classes]))


def coarse_top1(predicted: np.ndarray, coarse_of_label: np.ndarray, target_coarse: np.ndarray) -> float:
    """Fraction of rows whose predicted output label maps (`coarse_of_label[label]`) to the target coarse label."""
    return top1_accuracy(np.asarray(coarse_of_label)[np.asarray(predicted)], np.asarray(target_coarse))


def _pair(predictions, targets) -> tuple[np.ndarray, np.ndarray]:
    predictions, targets = np.asarray(predictions), np.asarray(targets)
    if predictions.shape != targets.shape or predictions.ndim != 1 or not len(targets):
        raise ValueError(
            f"predictions {predictions.shape} and targets {targets.shape}: expected two equal, non-empty 1-d arrays"
        )
    return predictions, targets


__all__ = [
    "IOU_THRESHOLD",
    "ClassPR",
    "DetectionEvaluator",
    "DetectionResult",
    "action_aps",
    "average_precision",
    "coarse_top1",
    "mean_ap",
    "mean_per_class_accuracy",
    "top1_accuracy",
    "voc07_ap",
    "voc_iou",
]
