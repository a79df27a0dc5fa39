"""SUN-CLS: the linear classifier and the metric on hand-made arrays, feature extraction and its cache, the
partitions (real lists when present, the tiny world), both protocols end to end, and the bad inputs."""

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import realdata

from imagenet_transfer.datasets.sun397 import find_sun397, read_class_names
from imagenet_transfer.errors import UserError
from imagenet_transfer.models import build_backbone
from imagenet_transfer.transfer import sun397
from imagenet_transfer.transfer.features import FeatureSlots, extract_features
from imagenet_transfer.transfer.linear import fit_linear, select_l2
from imagenet_transfer.transfer.metrics import mean_per_class_accuracy, top1_accuracy
from imagenet_transfer.transfer.sun397.data import load_partition
from imagenet_transfer.transfer.sun397.engine import evaluate_layers, summarise
from imagenet_transfer.transfer.sun397.model import feature_layers, with_new_head
from imagenet_transfer.transfer.uncertainty import score

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return build_backbone("small", 10, resolution=32)


# -- pure functions -----------------------------------------------------------------------------------------
def test_mean_per_class_accuracy_by_hand():
    targets = np.array([0, 0, 0, 0, 1, 2, 2])
    predictions = np.array([0, 0, 0, 1, 0, 2, 1])
    # class 0: 3/4, class 1: 0/1, class 2: 1/2 -> mean 0.41666; plain accuracy 4/7
    assert mean_per_class_accuracy(predictions, targets) == pytest.approx((0.75 + 0 + 0.5) / 3)
    assert top1_accuracy(predictions, targets) == pytest.approx(4 / 7)
    assert mean_per_class_accuracy(np.array([3, 3]), np.array([3, 3])) == 1.0  # only classes present count
    with pytest.raises(ValueError, match="equal"):
        mean_per_class_accuracy(np.array([1, 2]), np.array([1]))


def test_linear_classifier_separates_separable_data():
    rng = np.random.default_rng(0)
    centres = np.array([[5, 0, 0], [0, 5, 0], [0, 0, 5], [-5, -5, -5]], dtype=np.float32)
    y = np.repeat(np.arange(4), 20)
    x = centres[y] + rng.normal(scale=0.5, size=(80, 3)).astype(np.float32)
    x = np.hstack([x, np.zeros((80, 2), np.float32)])  # constant (dead) dimensions are harmless
    clf = fit_linear(x, y, num_classes=4, l2=1e-3)
    assert mean_per_class_accuracy(clf.predict(x), y) == 1.0
    assert np.allclose(fit_linear(x, y, num_classes=4, l2=1e-3).weight, clf.weight)  # deterministic
    val_y = np.repeat(np.arange(4), 5)
    val_x = np.hstack([centres[val_y], np.zeros((20, 2), np.float32)])
    sel = select_l2(x, y, val_x, val_y, num_classes=4, l2_grid=(1e-3, 1e-1, 10.0))
    assert set(sel.val_scores) == {1e-3, 1e-1, 10.0} and sel.val_score == 1.0
    assert sel.l2 == 10.0  # ties go to the strongest penalty
    assert np.abs(sel.classifier.weight).sum() < np.abs(clf.weight).sum()


def test_every_feature_slot_must_be_filled_once():
    slots = FeatureSlots(4, {"fc7": 2})
    slots.put([2, 0], {"fc7": np.array([[1, 1], [2, 2]])})
    slots.put([3], {"fc7": torch.tensor([[3.0, 3.0]])})
    with pytest.raises(AssertionError, match="1 never filled"):
        slots.result()
    slots.put([1], {"fc7": np.array([[4, 4]])})
    assert slots.result()["fc7"][:, 0].tolist() == [2, 4, 1, 3]
    slots.put([1], {"fc7": np.array([[4, 4]])})
    with pytest.raises(AssertionError, match="1 filled more than once"):
        slots.result()


def test_evaluate_layers_chooses_on_validation_only():
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(3), 10)
    good = np.eye(3, dtype=np.float32)[y] * 4 + rng.normal(size=(30, 3)).astype(np.float32) * 0.3
    noise = rng.normal(size=(30, 3)).astype(np.float32)
    data = {
        "fc7": dict.fromkeys(("train", "val", "test"), (noise, y)),
        "pool5": {"train": (good, y), "val": (good, y), "test": (noise, y)},
    }  # best on val, useless on test
    table, predicted = evaluate_layers(data, num_classes=3, l2_grid=(1e-2,), max_iter=50)
    assert set(predicted) == {"fc7", "pool5"} and predicted["pool5"].shape == (30,)
    chosen = table[table["chosen"]]
    assert chosen["layer"].tolist() == ["pool5"] and chosen["val_acc"].iloc[0] == 100.0
    assert chosen["test_acc"].iloc[0] < 70  # test is reported for the val choice, not maximised
    metrics = summarise(table.assign(partition=1), "linear")
    assert metrics["sun397_acc"] == chosen["test_acc"].iloc[0] and "sun397_acc_std" not in metrics
    assert set(metrics) >= {"sun397_acc_fc7", "sun397_acc_pool5", "sun397_val_acc"}


# -- features and their cache -------------------------------------------------------------------------------
def test_features_fill_rows_in_order_and_are_cached(net, tiny_world):
    paths = sorted(str(p) for p in (tiny_world / "SUN397").rglob("*.jpg"))[:12]
    first = extract_features(net, paths, ("pool5", "fc7"), batch_size=5)
    assert not first.from_cache
    assert first.arrays["fc7"].shape == (12, 512) and first.arrays["pool5"].shape == (12, 128 * 16)
    again = extract_features(net, paths, ("fc7", "pool5"), batch_size=7)
    assert again.from_cache and np.array_equal(again.arrays["fc7"], first.arrays["fc7"])
    alone = extract_features(net, paths[5:6], ("fc7",), cache=False)  # row i is image i, whatever the batching
    assert np.allclose(alone.arrays["fc7"][0], first.arrays["fc7"][5], atol=1e-5)
    changed = build_backbone("small", 10, resolution=32)  # other weights: other cache entry
    assert not extract_features(changed, paths, ("fc7",)).from_cache


def test_unreadable_image_is_a_user_error(net, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(UserError, match="1 of 1 .*could not be read"):
        extract_features(net, [bad], ("fc7",))


# -- partitions ---------------------------------------------------------------------------------------------
def test_real_partitions_through_the_reader():
    layout = find_sun397(realdata("sun397"))
    classes = read_class_names(layout.partitions / "ClassName.txt")
    with pytest.raises(UserError, match=r"partition 1: \d+ of 39700 listed images are missing"):
        load_partition(layout, 1, classes, val_fraction=0.2, seed=0, max_missing_fraction=0.001)
    part = load_partition(layout, 1, classes, val_fraction=0.2, seed=0, max_missing_fraction=1.0)
    kept = part.frame
    assert len(kept) + len(part.missing) == 39700 and 0 < len(kept) <= 153
    assert set(kept["role"]) <= {"train", "val", "test"} and kept["label"].between(0, 396).all()
    assert all(classes[label] in entry for entry, label in zip(kept["entry"], kept["label"]))


def test_tiny_world_partitions_and_validation_carving(tiny_world):
    layout = find_sun397(tiny_world)
    classes = read_class_names(layout.partitions / "ClassName.txt")
    part = load_partition(layout, 2, classes, val_fraction=0.2, seed=0, max_missing_fraction=0)
    counts = part.frame.groupby(["role", "label"]).size().unstack(0)
    assert (counts["val"] == 1).all() and (counts["train"] == 4).all() and (counts["test"] == 5).all()
    again = load_partition(layout, 2, classes, val_fraction=0.2, seed=0, max_missing_fraction=0)
    other = load_partition(layout, 2, classes, val_fraction=0.2, seed=1, max_missing_fraction=0)
    val = lambda p: set(p.part("val")["entry"])  # noqa: E731
    assert val(part) == val(again) and val(part) != val(other)
    assert not val(part) & set(part.part("test")["entry"])


# -- end to end ---------------------------------------------------------------------------------------------
def test_linear_protocol_end_to_end(net, tiny_world):
    config = sun397.Config.quick(data=str(tiny_world))
    result = sun397.run(net, {"uri": "test"}, config, progress=False)
    m = result.metrics
    assert m["sun397_partitions"] == 2 and m["sun397_classes"] == 6 and m["sun397_test_images"] == 30
    for name in (
        "sun397_acc",
        "sun397_acc_std",
        "sun397_val_acc",
        "sun397_acc_pool5",
        "sun397_acc_fc6",
        "sun397_acc_fc7",
    ):
        assert 0 <= m[name] <= 100, name
    table = result.tables["sun397_linear.csv"]
    assert len(table) == 6 and table.groupby("partition")["chosen"].sum().tolist() == [1, 1]
    assert m["sun397_acc"] == pytest.approx(table.loc[table["chosen"], "test_acc"].mean())
    assert "sun397_features_images_per_s" in m and set(result.figures) == {"sun397_layers.png"}
    predictions = result.predictions["sun397_acc"]  # each partition's test images, the chosen layer's labels
    assert predictions.groupby("stratum").size().tolist() == [30, 30]
    assert score("sun397_acc", predictions) == pytest.approx(m["sun397_acc"])
    again = sun397.run(net, {"uri": "test"}, config, progress=False)  # features from the cache
    assert "sun397_features_images_per_s" not in again.metrics and again.metrics["sun397_acc"] == m["sun397_acc"]


def test_finetune_protocol_end_to_end(net, tiny_world):
    before = {k: v.clone() for k, v in net.state_dict().items()}
    config = sun397.Config.quick(data=str(tiny_world), protocol="finetune", partitions=(3,))
    result = sun397.run(net, {"uri": "test"}, config, progress=False)
    table = result.tables["sun397_finetune.csv"]
    assert table["epoch"].tolist() == [1, 2] and table["chosen"].sum() == 1
    assert result.metrics["sun397_acc"] == table.loc[table["chosen"], "test_acc"].iloc[0]
    assert score("sun397_acc", result.predictions["sun397_acc"]) == pytest.approx(result.metrics["sun397_acc"])
    assert "sun397_acc_std" not in result.metrics and result.metrics["sun397_best_epoch"] in (1, 2)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # the caller's backbone untouched
    head = with_new_head(net, 6)
    assert head.classifier.out_features == 6 and head.num_classes == 6 and net.num_classes == 10


# -- bad input ----------------------------------------------------------------------------------------------
def test_missing_partition_is_a_user_error(net, tiny_world):
    expected = r"partition 7: Training_07.txt, Testing_07.txt not found.*available partitions: 1, 2, 3"
    with pytest.raises(UserError, match=expected):
        sun397.run(net, {}, sun397.Config.quick(data=str(tiny_world), partitions=(1, 7)), progress=False)


def test_layer_the_backbone_lacks_is_a_user_error(tiny_world):
    resnet = build_backbone("resnet18", 10, resolution=32)
    with pytest.raises(UserError, match="fc7 do not exist in a resnet18 backbone; it has pool5"):
        sun397.run(resnet, {}, sun397.Config.quick(data=str(tiny_world), layers=("fc7",)), progress=False)
    assert feature_layers(resnet, ()) == ("pool5",)


def test_bad_config_values_list_the_choices(net, tmp_path):
    with pytest.raises(UserError, match="protocol = 'svm': expected 'linear' or 'finetune'"):
        sun397.Config(protocol="svm")
    with pytest.raises(UserError, match="layers.0 = 'conv5': expected 'pool5', 'fc6' or 'fc7'"):
        sun397.Config(layers=("conv5",))
    with pytest.raises(UserError, match="val_fraction = 0: expected greater than 0"):
        sun397.Config(val_fraction=0)
    with pytest.raises(UserError, match=r"partitions = \(1, 1\): expected distinct partition numbers"):
        sun397.Config(partitions=(1, 1))
    with pytest.raises(UserError, match="partitions.0 = 0: expected greater than 0"):
        sun397.Config(partitions=(0,))
    with pytest.raises(UserError, match=r"partitions = \[1, 2\]: expected a valid tuple"):  # the callers pass tuples
        sun397.Config(partitions=[1, 2])
    with pytest.raises(UserError, match="no Partitions/ClassName.txt"):
        sun397.run(net, {}, sun397.Config(data=str(tmp_path)), progress=False)
    assert sun397.Config(partitions=(1, 2)).partitions == (1, 2)


def test_image_listed_but_absent_is_counted_and_tolerated(tiny_world, tmp_path):
    import shutil

    root = tmp_path / "sun"
    shutil.copytree(tiny_world / "SUN397", root / "SUN397")
    shutil.copytree(tiny_world / "Partitions", root / "Partitions")
    gone = pd.Series(sorted((root / "SUN397").rglob("*.jpg"))).iloc[0]
    gone.unlink()
    layout = find_sun397(root)
    classes = read_class_names(layout.partitions / "ClassName.txt")
    with pytest.raises(UserError, match=f"1 of 60 listed images are missing.*{gone.name}"):
        load_partition(layout, 1, classes, val_fraction=0.2, seed=0, max_missing_fraction=0)
    part = load_partition(layout, 1, classes, val_fraction=0.2, seed=0, max_missing_fraction=0.05)
    assert len(part.missing) == 1 and len(part.frame) == 59
