"""PASCAL-ACT-CLS (voc12_action): the AP metric on hand-computed cases, the person dataset, end-to-end smoke runs
and bad input.

    .venv/bin/python -m pytest tests/test_voc12_action.py -q      # ~15 s on 2 cores (~30 s when shared with other jobs)
"""

import math
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import realdata

from imagenet_transfer.datasets.voc import VOC_ACTIONS, read_annotation, read_image_set
from imagenet_transfer.errors import UserError
from imagenet_transfer.transfer.common import resolve_backbone
from imagenet_transfer.transfer.metrics import action_aps, average_precision, mean_ap
from imagenet_transfer.transfer.uncertainty import score
from imagenet_transfer.transfer.voc12_action import Config, run
from imagenet_transfer.transfer.voc12_action.data import PersonCrops, person_window, read_persons, voc2012_root

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def voc12(tiny_world) -> Path:
    return tiny_world / "VOCdevkit" / "VOC2012"


# -- the metric ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("scores", "labels", "expected"),
    [
        ([0.9, 0.8, 0.7, 0.6], [1, 1, 0, 0], 1.0),  # perfect ranking
        ([0.9, 0.8, 0.7, 0.6], [0, 0, 1, 1], 0.5),  # worst: P 1/3 at R .5 lifted to 2/4, 2/4 at R 1
        ([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0], 0.5 * 1 + 0.5 * 2 / 3),  # P 1, 1/2, 2/3 → monotone: 1 then 2/3
        ([0.9, 0.8, 0.7], [0, 1, 1], 2 / 3),  # P 0, 1/2, 2/3 made monotone: 2/3 everywhere
        ([0.5, 0.5, 0.1], [1, 0, 1], 0.5 * 2 / 3 + 0.5 * 2 / 3),  # tie = one threshold: P 1/2 at R .5, lifted to 2/3
        ([0.5, 0.5, 0.1], [0, 1, 1], 2 / 3),  # the same multiset in another order: same AP
        ([0.3, 0.2], [1, 1], 1.0),  # all positive
        ([0.7, 0.7, 0.7, 0.7], [1, 0, 0, 0], 0.25),  # everything tied: precision = base rate
        ([0.9, 0.8, 0.7, 0.6, 0.5], [1, -1, -1, 1, -1], 0.5 + 0.5 * 2 / 4),  # -1 counts as negative
    ],
)
def test_average_precision_hand_cases(scores, labels, expected):
    assert average_precision(scores, labels) == pytest.approx(expected)
    perm = np.random.default_rng(0).permutation(len(scores))  # a pure function of the (score, label) pairs
    assert average_precision(np.array(scores)[perm], np.array(labels)[perm]) == pytest.approx(expected)


def test_average_precision_all_points_not_eleven():
    # positives at ranks 1 and 3 of 3: all-point AP = .5·1 + .5·2/3 = .8333; VOC07's 11-point one would be
    # (6 × 1 + 5 × 2/3) / 11 = .8485
    assert average_precision([3, 2, 1], [1, 0, 1]) == pytest.approx(5 / 6)


def test_average_precision_edge_cases():
    assert math.isnan(average_precision([0.4, 0.2], [0, 0]))  # no positive: undefined
    assert math.isnan(average_precision([], []))
    with pytest.raises(ValueError):
        average_precision([0.1, 0.2], [1])
    with pytest.raises(ValueError):
        average_precision([np.nan, 0.2], [1, 0])


def test_action_aps_and_mean_leave_out_actions_without_positives():
    labels = np.zeros((4, 10), int)
    labels[[0, 1], 0] = 1  # jumping: 2 positives
    labels[2, 1] = 1  # phoning: 1 positive
    scores = np.zeros((4, 10))
    scores[:, 0] = [0.9, 0.1, 0.5, 0.2]  # jumping positives at ranks 1 and 4 → .5·1 + .5·2/4
    scores[:, 1] = [0.1, 0.2, 0.3, 0.0]  # phoning positive ranked first → 1
    aps = action_aps(scores, labels)
    assert list(aps) == list(VOC_ACTIONS)
    assert aps["jumping"] == pytest.approx(0.75) and aps["phoning"] == 1.0
    assert all(math.isnan(aps[a]) for a in VOC_ACTIONS[2:])
    assert mean_ap(aps) == pytest.approx((0.75 + 1.0) / 2)
    assert math.isnan(mean_ap({"a": float("nan")}))
    with pytest.raises(ValueError):
        action_aps(scores[:, :9], labels[:, :9])


# -- the dataset -----------------------------------------------------------------------------------------------
def test_persons_agree_with_the_lists(voc12):
    action = voc12 / "ImageSets" / "Action"
    for split in ("train", "val"):
        persons = read_persons(voc12, split)
        assert {p.image_id for p in persons} == set(read_image_set(action / f"{split}.txt"))
        for a, act in enumerate(VOC_ACTIONS):
            rows = read_image_set(action / f"{act}_{split}.txt")
            assert len(rows) == len(persons)  # every person once per action list
            assert {(i, j): f == 1 for i, j, f in rows} == {(p.image_id, p.index): bool(p.labels[a]) for p in persons}
        assert all(sum(p.labels) == 1 for p in persons)  # one action per person in the world
    train, val = read_persons(voc12, "train"), read_persons(voc12, "val")
    assert not {p.image_id for p in train} & {p.image_id for p in val}
    assert voc2012_root(voc12.parent) == voc12 == voc2012_root(voc12)


def test_person_window():
    assert person_window((1, 1, 10, 20), 100, 50, 0.0) == (0, 0, 20, 10)  # VOC 1-based inclusive → 0-based
    assert person_window((11, 11, 20, 30), 100, 50, 0.5) == (0, 5, 40, 20)  # +half a side each way
    assert person_window((1, 1, 100, 50), 100, 50, 0.5) == (0, 0, 50, 100)  # clipped to the image
    rng = random.Random(0)
    for _ in range(200):
        top, left, h, w = person_window((90, 40, 100, 50), 100, 50, 0.3, 0.45, rng)
        assert h >= 1 and w >= 1 and top >= 0 and left >= 0 and top + h <= 50 and left + w <= 100


def test_crops_views_and_shared_mirror(voc12):
    persons = read_persons(voc12, "train")[:6]
    plain = PersonCrops(persons, resolution=32, margin=0.1, context=True, train=False)
    aug = PersonCrops(persons, resolution=32, margin=0.1, context=True, train=True, jitter=0.0)
    flips = set()
    for i in range(len(persons)):
        x, y, index = plain[i]
        assert x.shape == (2, 3, 32, 32) and x.dtype == torch.uint8 and index == i and y.sum() == 1
        for seed in range(4):
            z = aug[(i, seed)][0]
            same, flipped = torch.equal(z, x), torch.equal(z, x.flip(-1))  # both views flipped together, or neither
            assert same or flipped
            flips.add(flipped)
    assert flips == {True, False}
    assert PersonCrops(persons, resolution=40, margin=0, context=False, train=False)[0][0].shape == (1, 3, 40, 40)


def test_real_voc2012_person_boxes_crop_inside_the_image():
    from imagenet_transfer.data import decode

    folder = realdata("voc2012", "VOCdevkit", "VOC2012")
    people = 0
    for xml in sorted((folder / "Annotations").glob("*.xml"))[:40]:
        ann = read_annotation(xml)
        for o in (o for o in ann.objects if o.name == "person"):
            image = decode(str(folder / "JPEGImages" / ann.filename))
            assert image.shape[1:] == (ann.height, ann.width)
            top, left, h, w = person_window(o.box, ann.width, ann.height, 0.1)
            assert top >= 0 and left >= 0 and top + h <= ann.height and left + w <= ann.width  # inside the image
            assert top <= o.ymin - 1 and left <= o.xmin - 1 and top + h >= o.ymax and left + w >= o.xmax  # holds box
            crop = image[:, top : top + h, left : left + w]
            assert crop.shape == (3, h, w) and crop.float().std() > 0
            people += 1
    assert people > 0


def test_real_voc2012_without_actions_is_refused(tmp_path):
    folder = realdata("voc2012", "VOCdevkit", "VOC2012")
    ids = [
        p.stem
        for p in sorted((folder / "Annotations").glob("*.xml"))
        if any(o.name == "person" for o in read_annotation(p).objects)
    ][:3]
    root = tmp_path / "VOC2012"
    (root / "ImageSets" / "Action").mkdir(parents=True)
    (root / "Annotations").symlink_to(folder / "Annotations")
    (root / "JPEGImages").symlink_to(folder / "JPEGImages")
    (root / "ImageSets" / "Action" / "train.txt").write_text("\r\n".join(ids) + "\r\n")
    with pytest.raises(UserError, match=rf"{ids[0]}\.xml: no object has an <actions> element"):
        read_persons(root, "train")


# -- end to end ------------------------------------------------------------------------------------------------
def _finite_result(result, val_persons):
    m = result.metrics
    assert all(isinstance(v, float) and math.isfinite(v) for v in m.values()), m
    assert 0 <= m["voc12_action_map"] <= 100 and m["val_persons"] == val_persons and m["train_persons"] > 0
    table = result.tables["voc12_action_ap.csv"]
    assert list(table["action"]) == list(VOC_ACTIONS) and table["val_positives"].sum() == val_persons
    scored = [a for a, n in zip(table["action"], table["val_positives"]) if n > 0]
    assert {k for k in m if k.startswith("voc12_action_ap_")} == {f"voc12_action_ap_{a}" for a in scored}
    assert len(result.tables["voc12_action_val_scores.csv"]) == val_persons
    predictions = result.predictions["voc12_action_map"]  # one row per val person, the mAP recomputed from it
    assert len(predictions) == predictions["unit"].nunique() == val_persons
    assert score("voc12_action_map", predictions) == pytest.approx(m["voc12_action_map"], abs=1e-9)
    assert set(result.figures) == {"action_ap.png"}


def test_run_quick_without_context(voc12):
    net, info = resolve_backbone("random:small@32")
    before = {k: v.clone() for k, v in net.state_dict().items()}
    result = run(net, info, Config.quick(data=str(voc12)), device="cpu", progress=False)
    _finite_result(result, len(read_persons(voc12, "val")))
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # the caller's backbone is untouched


def test_run_quick_with_context_bce_and_holdout(voc12):
    net, info = resolve_backbone("random:small@32")
    config = Config.quick(data=str(voc12), context=True, loss="bce", holdout=0.25, epochs=2)
    result = run(net, info, config, device="cpu", progress=False)
    _finite_result(result, len(read_persons(voc12, "val")))
    assert result.metrics["best_epoch"] in (1.0, 2.0) and result.metrics["holdout_persons"] > 0
    assert result.metrics["train_persons"] + result.metrics["holdout_persons"] == len(read_persons(voc12, "train"))


# -- bad input -------------------------------------------------------------------------------------------------
@pytest.fixture()
def copy_of(voc12, tmp_path) -> Path:
    root = tmp_path / "VOC2012"
    shutil.copytree(voc12, root)
    return root


def test_missing_action_lists(tmp_path, copy_of):
    with pytest.raises(UserError, match="no ImageSets/Action folder"):
        voc2012_root(tmp_path / "nowhere")
    (copy_of / "ImageSets" / "Action" / "val.txt").unlink()
    with pytest.raises(UserError, match="val.txt is missing"):
        read_persons(copy_of, "val")
    shutil.rmtree(copy_of / "ImageSets" / "Action")
    with pytest.raises(UserError, match="no ImageSets/Action folder"):
        run(*resolve_backbone("random:small@32"), Config.quick(data=str(copy_of)), progress=False)


def test_image_without_actions(copy_of):
    first = read_image_set(copy_of / "ImageSets" / "Action" / "train.txt")[0]
    xml = copy_of / "Annotations" / f"{first}.xml"
    text = xml.read_text()
    start, end = text.index("<actions>"), text.rindex("</actions>") + len("</actions>")
    xml.write_text(text[:start] + text[end:].replace("<actions>", "<x>").replace("</actions>", "</x>"))
    with pytest.raises(UserError, match=rf"{first}\.xml: no object has an <actions> element"):
        read_persons(copy_of, "train")


def test_lists_that_disagree_and_missing_images(copy_of):
    lst = copy_of / "ImageSets" / "Action" / "jumping_train.txt"
    rows = lst.read_text().splitlines()
    first_id, index, flag = rows[0].split()
    rows[0] = f"{first_id} {index} {-int(flag):2d}"
    lst.write_text("\n".join(rows) + "\n")
    with pytest.raises(UserError, match="jumping_train.txt: 1 flag"):
        read_persons(copy_of, "train")
    lst.write_text("\n".join(rows[1:]) + "\n")
    with pytest.raises(UserError, match="in the XML but not listed"):
        read_persons(copy_of, "train")
    val = read_image_set(copy_of / "ImageSets" / "Action" / "val.txt")
    (copy_of / "JPEGImages" / f"{val[0]}.jpg").unlink()
    with pytest.raises(UserError, match=rf"1 file\(s\) listed by .*val.txt are missing: .*{val[0]}\.jpg"):
        read_persons(copy_of, "val")


def test_bad_config(voc12):
    with pytest.raises(UserError, match="loss = 'hinge': expected 'softmax' or 'bce'"):
        Config(loss="hinge")
    with pytest.raises(UserError, match="holdout = 0.7: expected less than 0.5"):
        Config(holdout=0.7)
    with pytest.raises(UserError, match="evaluate_on = 'train': expected 'test' or 'val'"):
        Config(evaluate_on="train")
    with pytest.raises(UserError, match="epochs = '3': expected a valid integer"):
        Config(epochs="3")
    with pytest.raises(UserError, match="context = 1: expected a valid boolean"):
        Config(context=1)
    assert Config(lr=1).lr == 1.0 and Config.quick(loss="bce").replace(epochs=3).to_dict()["loss"] == "bce"
    with pytest.raises(UserError, match="cannot fill one batch"):
        run(*resolve_backbone("random:small@32"), Config.quick(data=str(voc12), batch_size=10_000), progress=False)
