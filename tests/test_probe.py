"""E4 probes: kNN and the coarse mapping on hand-made cases, the source sample, end to end on the tiny world
(random and pre-trained backbones), and the bad inputs."""

import numpy as np
import pytest
import torch

from imagenet_transfer.catalog import load_catalog
from imagenet_transfer.errors import UserError
from imagenet_transfer.models import build_backbone
from imagenet_transfer.taxonomy import load_taxonomy
from imagenet_transfer.transfer import probe
from imagenet_transfer.transfer.metrics import coarse_top1
from imagenet_transfer.transfer.probe.data import sample_source
from imagenet_transfer.transfer.probe.model import coarse_map, knn_neighbours, knn_predict, probe_layer
from imagenet_transfer.transfer.uncertainty import score

CHIHUAHUA, DOG, MAMMAL = "n02085620", "n02084071", "n01861778"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_classes(tiny_world):
    return sorted(set(load_catalog(tiny_world / "imagenet")["wnid"].astype(str)))


# -- pure functions -----------------------------------------------------------------------------------------
def test_knn_by_hand():
    # angles 0°, 10°, 20° (class 0), 90°, 100° (class 1), 180° (class 2); cosine ignores the length
    angles = np.radians([0, 10, 20, 90, 100, 180])
    train = np.stack([np.cos(angles), np.sin(angles)], 1) * np.array([[1], [2], [3], [1], [5], [1]])
    labels = np.array([0, 0, 0, 1, 1, 2])
    query = np.array([[np.cos(np.radians(4)), np.sin(np.radians(4))], [0.0, 1.0], [-1.0, 0.1]])
    sims, idx = knn_neighbours(train, query, 3)
    assert idx[0].tolist() == [0, 1, 2] and idx[1].tolist() == [3, 4, 2]
    assert sims[1, 0] == pytest.approx(1.0) and sims[0, 0] == pytest.approx(np.cos(np.radians(4)))
    assert knn_predict(train, labels, query, k=1, num_classes=3).tolist() == [0, 1, 2]
    assert knn_predict(train, labels, query, k=3, num_classes=3).tolist() == [0, 1, 1]
    # two votes each for classes 0 and 1 (k=4 at 60° and 52°): the larger summed similarity wins
    q = np.array([[np.cos(np.radians(60)), np.sin(np.radians(60))]])
    assert knn_predict(train, labels, q, k=4, num_classes=3).tolist() == [1]
    q = np.array([[np.cos(np.radians(52)), np.sin(np.radians(52))]])
    assert knn_predict(train, labels, q, k=4, num_classes=3).tolist() == [0]
    # k beyond the training size uses every training row
    assert knn_predict(train, labels, query[:1], k=50, num_classes=3).tolist() == [0]


def test_coarse_top1_and_mapping_by_hand():
    # output labels 0..3 map to coarse 0, 0, 1, 2; predictions right in the coarse space for rows 0, 1, 3
    assert coarse_top1(np.array([1, 0, 3, 2]), np.array([0, 0, 1, 2]), np.array([0, 0, 0, 1])) == 0.75
    tax = load_taxonomy()
    fine_to_coarse = tax.labels("top-down", 127)
    assert fine_to_coarse[CHIHUAHUA] == MAMMAL
    mapping = coarse_map([CHIHUAHUA, MAMMAL, DOG, "n99999999"], fine_to_coarse, tax)
    assert mapping["rule"].tolist() == ["fine", "coarse", "majority", "unknown"]
    assert mapping["coarse_wnid"].tolist()[:3] == [MAMMAL, MAMMAL, MAMMAL]


def test_source_sample_is_per_class_seeded_and_balanced(tiny_world, tiny_classes):
    catalog = load_catalog(tiny_world / "imagenet")
    frame = sample_source(catalog, train_per_class=5, val_per_class=3, seed=0)
    counts = frame.groupby(["split", "wnid"]).size()
    assert (counts["train"] == 5).all() and (counts["val"] == 3).all() and len(counts["train"]) == len(tiny_classes)
    assert frame["label"].tolist() == [tiny_classes.index(w) for w in frame["wnid"]]
    again = sample_source(catalog, train_per_class=5, val_per_class=3, seed=0)
    other = sample_source(catalog, train_per_class=5, val_per_class=3, seed=1)
    assert frame["path"].tolist() == again["path"].tolist() and frame["path"].tolist() != other["path"].tolist()
    every = sample_source(catalog, train_per_class=0, val_per_class=0, seed=0)
    assert len(every) == len(catalog)


# -- end to end ---------------------------------------------------------------------------------------------
def test_random_backbone_probes_fine_classes(tiny_world, tiny_classes):
    net = build_backbone("small", 10, resolution=32)
    config = probe.Config.quick(data=str(tiny_world / "imagenet"))
    result = probe.run(net, {"uri": "random:small@32"}, config, progress=False)
    m = result.metrics
    assert m["probe_fine_classes"] == len(tiny_classes) and m["probe_train_images"] == 8 * len(tiny_classes)
    assert 0 <= m["probe_knn_top1"] <= 100 and 0 <= m["probe_linear_top1"] <= 100
    assert "probe_coarse_top1" not in m  # no label_wnids: (b) does not apply
    assert set(result.tables) == {"probe_knn.csv", "probe_linear.csv"} and set(result.figures) == {"probe_knn.png"}
    curve = result.tables["probe_knn.csv"]
    assert m["probe_knn_top1"] == curve.loc[curve["k"] == 5, "top1"].iloc[0]
    assert "probe_features_images_per_s" in m
    assert set(result.predictions) == {"probe_knn_top1", "probe_linear_top1"}
    for metric, predictions in result.predictions.items():  # every val image once, the metric recomputed from it
        assert len(predictions) == predictions["unit"].nunique() == m["probe_val_images"]
        assert score(metric, predictions) == pytest.approx(m[metric])
    again = probe.run(net, {"uri": "random:small@32"}, config, progress=False)  # features from the cache
    assert "probe_features_images_per_s" not in again.metrics
    assert again.metrics["probe_linear_top1"] == m["probe_linear_top1"]


def test_fine_and_coarse_backbones_in_the_coarse_space(tiny_world, tiny_classes):
    tax = load_taxonomy()
    fine_to_coarse = tax.labels("top-down", 127)
    config = probe.Config.quick(data=str(tiny_world / "imagenet"), parts=("coarse",))
    fine = build_backbone("small", len(tiny_classes), resolution=32)
    result = probe.run(fine, {"label_wnids": tiny_classes}, config, progress=False)
    assert result.tables["probe_coarse_map.csv"]["rule"].eq("fine").all()
    m = result.metrics
    assert 0 <= m["probe_coarse_top1"] <= 100
    assert set(result.predictions) == {"probe_coarse_top1"}
    assert score("probe_coarse_top1", result.predictions["probe_coarse_top1"]) == pytest.approx(m["probe_coarse_top1"])
    assert m["probe_coarse_classes"] == len({fine_to_coarse[w] for w in tiny_classes})
    assert "probe_knn_top1" not in m
    # a backbone that answers one coarse label always scores exactly that label's share of the val images
    coarse_labels = sorted({fine_to_coarse[w] for w in tiny_classes})
    coarse = build_backbone("small", len(coarse_labels), resolution=32)
    with torch.no_grad():
        coarse.classifier.weight.zero_()
        coarse.classifier.bias.copy_(torch.arange(len(coarse_labels), dtype=torch.float32) == 0)
    result = probe.run(coarse, {"label_wnids": coarse_labels}, config, progress=False)
    assert result.tables["probe_coarse_map.csv"]["rule"].eq("coarse").all()
    share = np.mean([fine_to_coarse[w] == coarse_labels[0] for w in tiny_classes])  # val is balanced per class
    assert result.metrics["probe_coarse_top1"] == pytest.approx(100 * share)


def test_pretrained_backbone_carries_its_label_wnids(tiny_world, tmp_path):
    from imagenet_transfer.pretrain import run_pretrain
    from imagenet_transfer.pretrain_config import PretrainConfig
    from imagenet_transfer.tracking import load_backbone_with_info

    summary = run_pretrain(
        PretrainConfig(
            source=str(tiny_world / "imagenet"),
            subset="e3-127",
            recipe="smoke",
            workers=0,
            device="cpu",
            checkpoint_dir=str(tmp_path / "ck"),
            register=False,
        )
    )
    net, info = load_backbone_with_info(summary["model_uri"])
    if "label_wnids" not in info:
        pytest.skip("pre-training does not record label_wnids yet")
    result = probe.run(
        net,
        {**info, "uri": summary["model_uri"]},
        probe.Config.quick(data=str(tiny_world / "imagenet"), parts=("knn", "coarse")),
        progress=False,
    )
    assert result.tables["probe_coarse_map.csv"]["rule"].eq("coarse").all()  # an e3-127 net speaks coarse labels
    assert {"probe_knn_top1", "probe_coarse_top1"} <= set(result.metrics)


# -- bad input ----------------------------------------------------------------------------------------------
def test_missing_label_wnids_is_a_user_error(tiny_world):
    net = build_backbone("small", 10, resolution=32)
    config = probe.Config.quick(data=str(tiny_world / "imagenet"), parts=("knn", "coarse"))
    with pytest.raises(UserError, match="no label_wnids"):
        probe.run(net, {"uri": "random:small"}, config, progress=False)
    with pytest.raises(UserError, match="10 outputs but 2 label_wnids"):
        probe.run(net, {"label_wnids": [CHIHUAHUA, MAMMAL]}, config, progress=False)


def test_layer_the_backbone_lacks_and_bad_options(tiny_world, tmp_path):
    resnet = build_backbone("resnet18", 10, resolution=32)
    assert probe_layer(resnet, "") == "pool5"
    with pytest.raises(UserError, match="fc7 does not exist in a resnet18 backbone; it has pool5"):
        probe.run(resnet, {}, probe.Config.quick(data=str(tiny_world / "imagenet"), layer="fc7"), progress=False)
    with pytest.raises(UserError, match="parts.0 = 'svm': expected 'knn', 'linear' or 'coarse'"):
        probe.Config(parts=("svm",))
    with pytest.raises(UserError, match="coarse_level = '127': expected METHOD-K"):
        probe.Config(coarse_level="127")
    with pytest.raises(UserError, match="layer = 'conv5': expected '', 'pool5', 'fc6' or 'fc7'"):
        probe.Config(layer="conv5")
    (tmp_path / "no-val").mkdir()
    (tmp_path / "no-val" / "train").symlink_to(tiny_world / "imagenet" / "train")
    with pytest.raises(UserError, match="0 val images; expected both"):
        probe.run(
            build_backbone("small", 10, resolution=32),
            {},
            probe.Config.quick(data=str(tmp_path / "no-val")),
            progress=False,
        )
