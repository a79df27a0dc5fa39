"""PASCAL-DET (`transfer.voc07_det`): data reading, the detector's initialisation, bad input, and the whole
run on the tiny world with `Config.quick()`.

    .venv/bin/python -m pytest tests/test_voc07_det.py -q      # ~20 s on 2 cores
"""

import itertools
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import realdata
from torchvision.ops import MultiScaleRoIAlign

from imagenet_transfer.datasets.voc import VOC_CLASSES
from imagenet_transfer.errors import UserError
from imagenet_transfer.transfer.common import resolve_backbone
from imagenet_transfer.transfer.uncertainty import score
from imagenet_transfer.transfer.voc07_det import Config, run
from imagenet_transfer.transfer.voc07_det.data import (
    Sample,
    _Images,
    find_voc2007,
    load_split,
    to_voc_boxes,
    training_target,
)
from imagenet_transfer.transfer.voc07_det.model import RoIPool, anchor_sizes_for, build_detector, input_scale


@pytest.fixture(scope="module")
def voc_copy(tiny_world, tmp_path_factory) -> Path:
    """A writable copy of the tiny world's VOC2007 folder, for breaking it."""
    return Path(shutil.copytree(tiny_world / "VOCdevkit" / "VOC2007", tmp_path_factory.mktemp("voc") / "VOC2007"))


# -- real VOC2007 ------------------------------------------------------------------------------------------
def test_real_voc2007_list_and_annotation(tmp_path):
    root = realdata("voc2007", "VOCdevkit", "VOC2007")
    assert find_voc2007(root.parent.parent) == root  # the folder holding VOCdevkit/ is accepted too
    # the samples hold the complete lists (CRLF) but only one annotation: the test list is read (4952 ids),
    # then every missing annotation is counted
    with pytest.raises(UserError, match=r"4952 annotations of 'test' are missing, e.g. 000001.xml"):
        load_split(root, "test")
    # 000002 (a train) through a one-line list written on Windows
    (tmp_path / "ImageSets" / "Main").mkdir(parents=True)
    (tmp_path / "ImageSets" / "Main" / "one.txt").write_bytes(b"000002\r\n")
    for folder in ("Annotations", "JPEGImages"):
        (tmp_path / folder).symlink_to(root / folder)
    [sample] = load_split(tmp_path, "one")
    assert (sample.image_id, sample.width, sample.height, sample.path.name) == ("000002", 335, 500, "000002.jpg")
    assert sample.boxes.tolist() == [[139, 200, 207, 301]] and sample.labels.tolist() == [VOC_CLASSES.index("train")]
    target = training_target(sample)
    # torchvision's labels: 0 is the background, so "train" (class 18 of 0..19) is 19
    assert target["boxes"].tolist() == [[138, 199, 207, 301]] and target["labels"].tolist() == [18 + 1]
    _, image = _Images([sample])[0]
    assert image.shape == (3, 500, 335) and image.dtype == torch.uint8
    assert input_scale([sample], Config()) == (600, 1000)  # photos: the paper's scale


# -- pieces --------------------------------------------------------------------------------------------------
def test_targets_drop_difficult_and_boxes_round_trip():
    s = Sample(
        "x",
        Path("x.jpg"),
        160,
        128,
        np.array([[1, 1, 10, 20], [5, 5, 8, 8]], float),
        np.array([3, 4]),
        np.array([False, True]),
    )
    target = training_target(s)
    assert target["boxes"].tolist() == [[0, 0, 10, 20]] and target["labels"].tolist() == [4]  # difficult left out
    assert to_voc_boxes(target["boxes"]).tolist() == [[1, 1, 10, 20]]


def test_input_scale_and_anchors_follow_the_data():
    rng = np.random.default_rng(0)
    sides = rng.uniform(8, 64, 200)
    samples = [
        Sample(str(i), Path("x"), 160, 128, np.array([[1, 1, s, s]]), np.array([0]), np.array([False]))
        for i, s in enumerate(sides)
    ]
    assert input_scale(samples, Config()) == (128, 213)  # small scenes: their own scale
    assert input_scale(samples, Config(min_size=256)) == (256, 427)
    anchors = anchor_sizes_for(samples, 128, 213)
    lo, hi = np.percentile(sides, [5, 95])
    assert anchors[0] == pytest.approx(lo, abs=0.1) and anchors[-1] == pytest.approx(hi, abs=0.1)
    # 10 → 60: 2.6 octaves
    assert all(b / a <= 2.0 + 1e-6 for a, b in itertools.pairwise(anchors)) and len(anchors) == 4


def test_box_head_starts_from_the_backbones_fc6_fc7():
    net, _ = resolve_backbone("random:small@32")
    det = build_detector(net, Config.quick(), anchor_sizes=(16.0,), min_size=85, max_size=142)
    head = det.roi_heads.box_head
    linears = [m for m in head.modules() if isinstance(m, torch.nn.Linear)]
    sources = [net.fc6[0], net.fc7[0]]
    assert len(linears) == 2
    for copy, source in zip(linears, sources):
        assert torch.equal(copy.weight, source.weight) and torch.equal(copy.bias, source.bias)
        assert copy.weight.data_ptr() != source.weight.data_ptr()  # a copy: fine-tuning leaves the backbone alone
    trunk = dict(det.backbone.named_parameters())
    assert trunk.keys() == dict(net.trunk.named_parameters()).keys()  # every conv (the last max-pool dropped)
    assert all(torch.equal(p, net.trunk.get_parameter(k)) for k, p in trunk.items())
    assert not isinstance(det.backbone[-1], torch.nn.MaxPool2d) and det.backbone.out_channels == net.trunk_channels
    assert isinstance(det.roi_heads.box_roi_pool, RoIPool) and det.roi_heads.box_roi_pool.spatial_scale == 1 / 8
    assert det.roi_heads.box_roi_pool.output_size == (net.roi_size, net.roi_size)
    aligned = build_detector(net, Config.quick(roi_pool="align"), anchor_sizes=(16.0,), min_size=85, max_size=142)
    assert isinstance(aligned.roi_heads.box_roi_pool, MultiScaleRoIAlign)
    assert det.roi_heads.box_predictor.cls_score.out_features == 21 and det.feature_stride == 8
    assert det.transform.image_std[0] == pytest.approx(0.229)  # small: torchvision's normalisation, 0-1 units


def test_resnet_gets_a_trainable_head():
    net, _ = resolve_backbone("random:resnet18@32")
    det = build_detector(net, Config.quick(resnet_head_dim=64), anchor_sizes=(32.0,), min_size=64, max_size=107)
    assert [m.out_features for m in det.roi_heads.box_head.modules() if isinstance(m, torch.nn.Linear)] == [64]
    assert det.roi_heads.box_roi_pool.output_size == (7, 7)
    det.eval()
    with torch.no_grad():
        [out] = det([torch.rand(3, 64, 80)])
    assert set(out) == {"boxes", "scores", "labels"}


# -- bad input -----------------------------------------------------------------------------------------------
def test_bad_input_is_a_user_error(voc_copy, tmp_path):
    with pytest.raises(UserError, match="not a VOC2007 folder"):
        find_voc2007(tmp_path / "nowhere")
    with pytest.raises(UserError, match="not a VOC2007 folder"):
        run(None, {}, Config(data=str(tmp_path)), progress=False)
    with pytest.raises(UserError, match=r"image set 'val2' not found; expected one of .*trainval"):
        load_split(voc_copy, "val2")
    test_ids = (voc_copy / "ImageSets" / "Main" / "test.txt").read_text().split()
    (voc_copy / "Annotations" / f"{test_ids[0]}.xml").rename(voc_copy / "gone.xml")
    with pytest.raises(
        UserError, match=rf"1 of the {len(test_ids)} annotations of 'test' are missing, e.g. {test_ids[0]}.xml"
    ):
        load_split(voc_copy, "test")
    (voc_copy / "gone.xml").rename(voc_copy / "Annotations" / f"{test_ids[0]}.xml")
    (voc_copy / "JPEGImages" / f"{test_ids[1]}.jpg").unlink()
    with pytest.raises(
        UserError, match=rf"1 of the {len(test_ids)} images of 'test' are missing, e.g. {test_ids[1]}.jpg"
    ):
        load_split(voc_copy, "test")
    (voc_copy / "ImageSets" / "Main" / "dup.txt").write_text(f"{test_ids[2]}\n{test_ids[2]}\n")
    with pytest.raises(UserError, match="listed more than once"):
        load_split(voc_copy, "dup")


@pytest.mark.parametrize(
    "bad, expected",
    [
        (dict(iterations=-1), "iterations = -1: expected greater than or equal to 0"),
        (dict(batch_size="4"), "batch_size = '4': expected a valid integer"),
        (dict(batch_size=0), "batch_size = 0: expected greater than or equal to 1"),
        (dict(anchor_sizes=(0.0,)), "anchor_sizes.0 = 0.0: expected greater than 0"),
        (dict(aspect_ratios=()), "aspect_ratios = (): Tuple should have at least 1 item"),
        (dict(flip=1), "flip = 1: expected a valid boolean"),
        (dict(lr_drop=1.5), "lr_drop = 1.5: expected less than or equal to 1"),
        (dict(roi_pool="avg"), "roi_pool = 'avg': expected 'max' or 'align'"),
        (dict(anchor_size=(8.0,)), "unknown key 'anchor_size'"),
    ],
)
def test_bad_config_is_a_user_error_naming_the_field_and_what_was_expected(bad, expected):
    with pytest.raises(UserError, match=re.escape(expected)):
        Config(**bad)


# -- the whole run ---------------------------------------------------------------------------------------------
def test_run_on_the_tiny_world(tiny_world, tmp_path):
    net, info = resolve_backbone("random:small@32")
    before = {k: v.clone() for k, v in net.state_dict().items()}
    root = tiny_world / "VOCdevkit" / "VOC2007"
    result = run(net, info, Config.quick(data=str(root)), device="cpu", progress=False)
    m = result.metrics
    expected = {
        "voc07_map",
        "voc07_coco_ap",
        "voc07_coco_ap50",
        "voc07_coco_ap75",
        "train_images",
        "test_images",
        *(f"voc07_ap_{c}" for c in VOC_CLASSES),
    }
    assert set(m) == expected
    test = load_split(root, "test")
    assert (m["train_images"], m["test_images"]) == (len(load_split(root, "trainval")), len(test))
    for key in ("voc07_map", "voc07_coco_ap", "voc07_coco_ap50", "voc07_coco_ap75"):
        assert math.isfinite(m[key]) and 0 <= m[key] <= 100, key
    # a class's AP is defined exactly when the test images hold a non-difficult object of it
    present = {VOC_CLASSES[label] for s in test for label, d in zip(s.labels, s.difficult) if not d}
    assert {c for c in VOC_CLASSES if math.isfinite(m[f"voc07_ap_{c}"])} == present
    assert all(0 <= m[f"voc07_ap_{c}"] <= 100 for c in present)
    table = result.tables["voc07_ap.csv"]
    assert list(table["class"]) == [*VOC_CLASSES, "mean"] and table["ap"].iloc[-1] == pytest.approx(m["voc07_map"])
    assert "anchor_sizes" in set(result.tables["voc07_derived.csv"]["setting"])
    predictions = result.predictions["voc07_map"]  # every test image a unit, the mAP recomputed from it
    assert set(predictions["unit"]) == {s.image_id for s in test}
    assert (predictions["gt"] == 1).sum() == sum(int((~np.asarray(s.difficult, bool)).sum()) for s in test)
    assert score("voc07_map", predictions) == pytest.approx(m["voc07_map"], abs=1e-9)
    result.figures["pr_curves.png"].savefig(tmp_path / "pr.png")
    assert (tmp_path / "pr.png").stat().st_size > 10_000
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # the caller's backbone is untouched
