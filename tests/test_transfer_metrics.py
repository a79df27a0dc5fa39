"""VOC07 11-point AP and the pycocotools bridge on hand-made boxes, every number computed by hand.

    .venv/bin/python -m pytest tests/test_transfer_metrics.py -q      # ~2 s

11-point AP = (1/11) * sum over t in 0, .1, ..., 1 of max(precision at recall >= t), 0 where no point reaches t.
"""

import math

import numpy as np
import pytest

from imagenet_transfer.transfer.metrics import DetectionEvaluator, voc07_ap, voc_iou

A, B, C = (10, 20, 30)
CLASSES = ("cat", "dog", "cow")


def box(x: int, y: int, size: int = 10) -> list[int]:
    """A size×size VOC box (1-based inclusive) whose top-left pixel is (x, y)."""
    return [x, y, x + size - 1, y + size - 1]


def evaluator(**gt) -> DetectionEvaluator:
    """gt: image id -> list of (box, class name, difficult)."""
    ev = DetectionEvaluator(CLASSES)
    for image, objects in gt.items():
        ev.add_ground_truth(image, [o[0] for o in objects], [o[1] for o in objects], [o[2] for o in objects])
    return ev


def det(ev: DetectionEvaluator, image: str, *dets) -> None:
    """dets: (box, score, class name)."""
    ev.update(image, [d[0] for d in dets], [d[1] for d in dets], [d[2] for d in dets])


# -- IoU and the 11-point rule --------------------------------------------------------------------------
def test_iou_uses_inclusive_pixels():
    gt = np.array([[1, 1, 2, 2]], float)  # 2×2 = 4 pixels
    assert voc_iou(np.array([2, 2, 3, 3.0]), gt)[0] == pytest.approx(1 / 7)  # 1 shared pixel of 4 + 4 - 1
    assert voc_iou(np.array([1, 1, 2, 3.0]), gt)[0] == pytest.approx(4 / 6)  # 2×3 box holds the 2×2 one
    assert voc_iou(np.array([3, 3, 4, 4.0]), gt)[0] == 0.0  # touching corners, no shared pixel
    assert voc_iou(np.array([1, 1, 2, 2.0]), gt)[0] == 1.0


def test_eleven_point_ap_rule():
    # recall 0.5 at precision 1, then recall 1 at precision 0.5: t = 0..0.5 -> 1 (6 points), t = .6..1 -> .5 (5)
    assert voc07_ap([0.5, 1.0], [1.0, 0.5]) == pytest.approx((6 + 2.5) / 11)
    assert voc07_ap([], []) == 0.0
    # interpolation: precision at t is the best precision at any recall >= t
    assert voc07_ap([0.2, 0.2, 0.4], [1.0, 0.5, 0.66]) == pytest.approx((3 * 1 + 2 * 0.66) / 11)


# -- VOC07 on hand-made cases --------------------------------------------------------------------------
def test_perfect_detections_give_ap_one():
    ev = evaluator(a=[(box(1, 1), "cat", False)], b=[(box(5, 5), "cat", False), (box(40, 40), "dog", False)])
    det(ev, "a", (box(1, 1), 0.9, "cat"))
    det(ev, "b", (box(5, 5), 0.8, "cat"), (box(40, 40), 0.7, "dog"))
    res = ev.accumulate()
    assert [c.ap for c in res.classes[:2]] == [1.0, 1.0] and math.isnan(res.classes[2].ap)  # no cow anywhere
    summary = res.summary()
    assert math.isnan(summary.pop("voc07_ap_cow"))  # no cow anywhere: no AP, and left out of the mean below
    assert summary == {"voc07_map": 1.0, "voc07_ap_cat": 1.0, "voc07_ap_dog": 1.0}


def test_duplicates_misses_and_false_positives():
    # 3 cats: a1, a2 in "a", b1 in "b". Detections by score:
    #   .9 on a1 TP (rec 1/3, prec 1) | .8 on a1 again: duplicate FP (1/3, 1/2) | .7 in "b" far off: FP (1/3, 1/3)
    #   .6 on b1 TP (2/3, 2/4). a2 never found.
    # t = 0, .1, .2, .3 -> 1 (4 points); t = .4, .5, .6 -> .5 (3 points); t = .7 .. 1 -> 0. AP = 5.5 / 11 = 0.5
    ev = evaluator(a=[(box(1, 1), "cat", False), (box(21, 21), "cat", False)], b=[(box(1, 1), "cat", False)])
    det(ev, "a", (box(1, 1), 0.9, "cat"), (box(2, 1), 0.8, "cat"))  # second: IoU 90/110 with a1
    det(ev, "b", (box(50, 50), 0.7, "cat"), (box(1, 1), 0.6, "cat"))
    cat = ev.accumulate().classes[0]
    assert cat.ap == pytest.approx(0.5)
    assert cat.tp.tolist() == [True, False, False, True] and cat.npos == 3 and cat.ignored == 0
    np.testing.assert_allclose(cat.recall, [1 / 3, 1 / 3, 1 / 3, 2 / 3])
    np.testing.assert_allclose(cat.precision, [1, 1 / 2, 1 / 3, 2 / 4])
    np.testing.assert_allclose(cat.scores, [0.9, 0.8, 0.7, 0.6])


def test_difficult_objects_are_ignored():
    # as above, plus image "c" with a difficult cat that a top-scoring detection finds (ignored: neither TP nor FP,
    # not counted in npos) and a difficult cat nobody finds (no effect). AP stays 0.5.
    ev = evaluator(
        a=[(box(1, 1), "cat", False), (box(21, 21), "cat", False)],
        b=[(box(1, 1), "cat", False)],
        c=[(box(1, 1), "cat", True), (box(30, 30), "cat", True)],
    )
    det(ev, "a", (box(1, 1), 0.9, "cat"), (box(2, 1), 0.8, "cat"))
    det(ev, "b", (box(50, 50), 0.7, "cat"), (box(1, 1), 0.6, "cat"))
    det(ev, "c", (box(1, 1), 0.95, "cat"), (box(1, 1), 0.94, "cat"))  # a difficult object may be hit repeatedly
    cat = ev.accumulate().classes[0]
    assert (cat.ap, cat.npos, cat.ndifficult, cat.ignored) == (pytest.approx(0.5), 3, 2, 2)
    assert cat.tp.tolist() == [True, False, False, True]


def test_best_overlap_difficult_wins_over_a_plain_object():
    # devkit rule: the candidate is the highest-IoU object, difficult or not. The detection is exactly on the
    # difficult cat (IoU 1) and IoU 100/120 with the plain one -> ignored; the plain cat is missed: AP 0.
    ev = evaluator(a=[(box(1, 1), "cat", True), ([1, 1, 10, 12], "cat", False)])
    det(ev, "a", (box(1, 1), 0.9, "cat"))
    cat = ev.accumulate().classes[0]
    assert (cat.ap, cat.ignored, len(cat.tp)) == (0.0, 1, 0)


def test_iou_threshold_is_inclusive():
    # GT 10×10 = 100 px. [1,1,10,20]: 200 px holding it -> IoU exactly 100/200 = 0.5 -> TP (VOCevaldet's >=).
    # [1,1,10,21]: 100/210 < 0.5 -> FP.
    ev = evaluator(a=[(box(1, 1), "cat", False)], b=[(box(1, 1), "cat", False)])
    det(ev, "a", ([1, 1, 10, 20], 0.9, "cat"))
    det(ev, "b", ([1, 1, 10, 21], 0.8, "cat"))
    cat = ev.accumulate().classes[0]
    assert cat.tp.tolist() == [True, False]
    # points (rec .5, prec 1), (.5, .5): t = 0 .. .5 -> 1 (6 points) -> AP 6/11
    assert cat.ap == pytest.approx(6 / 11)


def test_ties_keep_the_order_detections_were_given():
    # one cat in "a"; "e" has no objects. Two detections with the same score 0.9: one TP (on "a"), one FP (on "e").
    # TP first: points (1, 1), (1, .5) -> AP 1.   FP first: (0, 0), (1, .5) -> AP 0.5 (every t: best precision .5)
    def ap(order):
        ev = evaluator(a=[(box(1, 1), "cat", False)], e=[])
        for image in order:
            det(ev, image, (box(1, 1), 0.9, "cat"))
        return ev.accumulate().classes[0].ap

    assert ap(["a", "e"]) == 1.0
    assert ap(["e", "a"]) == pytest.approx(0.5)
    # within one image: the order inside the update call (TP then a duplicate, both 0.5) -> (1, 1), (1, .5) -> AP 1
    ev = evaluator(a=[(box(1, 1), "cat", False)])
    det(ev, "a", (box(1, 1), 0.5, "cat"), (box(2, 1), 0.5, "cat"))
    assert ev.accumulate().classes[0].tp.tolist() == [True, False]


def test_no_detections_give_ap_zero():
    ev = evaluator(a=[(box(1, 1), "cat", False)], b=[(box(1, 1), "dog", False)])
    det(ev, "b", (box(1, 1), 0.9, "dog"))  # "a" gets no update at all
    res = ev.accumulate()
    assert res.classes[0].ap == 0.0 and len(res.classes[0].tp) == 0
    assert res.mean_ap == pytest.approx(0.5)  # (cat 0 + dog 1) / 2; cow has no ground truth: left out


def test_class_with_only_difficult_objects_is_nan_and_left_out_of_the_mean():
    ev = evaluator(a=[(box(1, 1), "cat", False), (box(30, 30), "dog", True)])
    det(ev, "a", (box(1, 1), 0.9, "cat"), (box(30, 30), 0.8, "dog"), (box(60, 60), 0.7, "dog"))
    res = ev.accumulate()
    dog = res.classes[1]
    assert math.isnan(dog.ap) and dog.npos == 0 and dog.ignored == 1 and np.isnan(dog.recall).all()
    assert res.mean_ap == 1.0  # cat only
    ev = evaluator(a=[(box(1, 1), "cat", True)])
    assert math.isnan(ev.accumulate().mean_ap)  # no class has an AP


def test_images_without_objects_and_unknown_images():
    # one cat in "a" found at .5; a .9 detection on "e", an image without objects: (0, 0), (1, .5) -> AP 0.5
    ev = evaluator(a=[(box(1, 1), "cat", False)], e=[])
    det(ev, "e", (box(1, 1), 0.9, "cat"))
    det(ev, "a", (box(1, 1), 0.5, "cat"))
    assert ev.accumulate().classes[0].ap == pytest.approx(0.5)
    # the same detection on "x", never registered: an error by default (the devkit's "unrecognized image") ...
    ev = evaluator(a=[(box(1, 1), "cat", False)])
    det(ev, "x", (box(1, 1), 0.9, "cat"))
    det(ev, "a", (box(1, 1), 0.5, "cat"))
    with pytest.raises(ValueError, match=r"without ground truth: \['x'\]"):
        ev.accumulate()
    # ... or, when asked, an image without objects: same AP 0.5
    ev2 = DetectionEvaluator(CLASSES, unknown_images="false_positive")
    ev2.add_ground_truth("a", [box(1, 1)], ["cat"])
    det(ev2, "x", (box(1, 1), 0.9, "cat"))
    det(ev2, "a", (box(1, 1), 0.5, "cat"))
    assert ev2.accumulate().classes[0].ap == pytest.approx(0.5)


def test_recall_three_tenths_reaches_the_point_three_threshold():
    # 10 cats, 3 found with no FP: recall .1, .2, .3 at precision 1 -> t = 0, .1, .2, .3 -> AP 4/11
    # (np.arange(0, 1.1, .1)[3] is 0.30000000000000004 > 3/10 and would give 3/11)
    ev = evaluator(a=[(box(1 + 20 * k, 1), "cat", False) for k in range(10)])
    det(ev, "a", *[(box(1 + 20 * k, 1), 0.9 - k / 10, "cat") for k in range(3)])
    assert ev.accumulate().classes[0].ap == pytest.approx(4 / 11)


def test_each_image_counted_once_and_bad_input():
    ev = evaluator(a=[(box(1, 1), "cat", False)])
    with pytest.raises(ValueError, match="given twice"):
        ev.add_ground_truth("a", [], [])
    det(ev, "a")
    with pytest.raises(ValueError, match="given twice"):
        det(ev, "a")
    with pytest.raises(ValueError, match="unknown class"):
        ev.add_ground_truth("b", [box(1, 1)], ["horse"])
    with pytest.raises(ValueError, match="expected one of each"):
        ev.update("c", [box(1, 1)], [0.5, 0.4], [0])
    with pytest.raises(ValueError, match="non-finite"):
        ev.update("d", [box(1, 1)], [float("nan")], [0])
    assert ev.images == ["a"] and ev.images_with_detections == ["a"]


def test_integer_labels_index_the_classes():
    ev = DetectionEvaluator(CLASSES)
    ev.add_ground_truth("a", np.array([box(1, 1)]), np.array([2]), np.array([False]))
    ev.update("a", np.array([box(1, 1)]), np.array([0.3]), np.array([2]))
    assert ev.accumulate().summary()["voc07_ap_cow"] == 1.0


# -- pycocotools bridge -------------------------------------------------------------------------------------
def test_coco_perfect_detections():
    ev = evaluator(a=[(box(1, 1), "cat", False), (box(30, 30, 20), "dog", False)], b=[(box(5, 5), "cat", False)])
    det(ev, "a", (box(1, 1), 0.9, "cat"), (box(30, 30, 20), 0.8, "dog"))
    det(ev, "b", (box(5, 5), 0.7, "cat"))
    assert ev.coco() == {"coco_ap": 1.0, "coco_ap50": 1.0, "coco_ap75": 1.0}


def test_coco_half_recall_and_difficult_as_crowd():
    # cat in "a" found exactly, cat in "b" missed: precision 1 up to recall .5 at every IoU threshold; COCO's
    # 101 recall points 0, .01, .., .5 -> 51 of 101 at precision 1: AP = AP50 = AP75 = 51/101.
    ev = evaluator(a=[(box(1, 1), "cat", False)], b=[(box(1, 1), "cat", False)], c=[(box(1, 1), "cat", True)])
    det(ev, "a", (box(1, 1), 0.9, "cat"))
    det(ev, "c", (box(1, 1), 0.95, "cat"))  # on a difficult (crowd) object: ignored, not a FP
    out = ev.coco()
    assert out == pytest.approx({"coco_ap": 51 / 101, "coco_ap50": 51 / 101, "coco_ap75": 51 / 101})


def test_coco_no_detections_and_shifted_boxes():
    ev = evaluator(a=[(box(1, 1), "cat", False)])
    assert ev.coco() == {"coco_ap": 0.0, "coco_ap50": 0.0, "coco_ap75": 0.0}
    # a box 10×10 shifted by one pixel: IoU 90/110 = .818 -> found at IoU .50 .. .80 (7 of 10 thresholds)
    det(ev, "a", (box(2, 1), 0.9, "cat"))
    out = ev.coco()
    assert out == pytest.approx({"coco_ap": 0.7, "coco_ap50": 1.0, "coco_ap75": 1.0})
