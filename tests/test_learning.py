"""Learning, not just running: each benchmark must learn the labels it is trained on, and nothing else.

The end-to-end tests of the benchmarks check that the metrics are finite and in range; a model that learns nothing
passes them. Here each benchmark runs a few dozen optimiser steps (or one linear fit) on a copy of its tiny-world
data whose test split is replaced by *twins*: byte-identical copies of its training images, under new names, with
their true labels. Each test runs twice:
- true labels: the training fits them, so the twins score far above chance;
- the training labels shuffled with a fixed seed (the twins keep the true ones): the same run scores at chance.
So a score goes up only when the benchmark learns the mapping from each training image to its own label, and
scores its test images against their own labels. That fails when images and labels are misaligned (in training or
in scoring), when the optimiser does not step or the head is not trained, when scores are paired with the wrong
images, and when labels leak into the scores (the shuffled run would score high too).

Why twins and not the benchmarks' own test splits: on the tiny world a randomly initialised backbone generalises to
no benchmark in seconds (measured, true vs shuffled training labels, real test split: voc12_action mAP 24-28 vs
25-34 after 30 epochs, 3 seeds; sun397 linear 19-27 % vs 7-26 %, probe kNN 3-6 % vs 2-3 %, 4 backbone inits), and
a pre-training that would make them generalise costs minutes. voc07_det is left out: fitting its 24 training
images from a random backbone takes ~150 iterations of 4 images (mAP on the twins 15-20 vs 1-4 shuffled, 3 seeds),
~25 s for the pair; at 60 iterations both stay at 0. Pre-training's own learning test is in test_pretrain.py.

Margins (each test's docstring gives the scores measured over 4 backbone inits and 4 shuffle seeds): thresholds
sit well below the lowest true-label score and well above the highest shuffled-label score.
"""

import shutil
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from imagenet_transfer.transfer.common import resolve_backbone
from imagenet_transfer.transfer.runner import benchmark_module, make_config

BACKBONE = "random:small@32"  # the tiny world's images are 32 px (ImageNet part) to 80 px (VOC, SUN)


def run(benchmark: str, data: Path, *settings: str) -> dict[str, float]:
    net, info = resolve_backbone(BACKBONE)
    config = make_config(benchmark, [f"data={data}", *settings], quick=True)
    return benchmark_module(benchmark).run(net, info, config, device="cpu", progress=False).metrics


# -- VOC2012 action -----------------------------------------------------------------------------------------
def voc12_twins(tiny_world: Path, out: Path, shuffle_seed: int | None = None) -> Path:
    """A copy of the world's VOC2012 whose val split is a twin of each train image (same pixels and persons, true
    actions); with `shuffle_seed`, the train persons' action flags are permuted among them (each action keeps its
    count)."""
    root = Path(shutil.copytree(tiny_world / "VOCdevkit" / "VOC2012", out))
    lists = root / "ImageSets" / "Action"
    for per_action in lists.glob("*_*.txt"):  # optional (the XML holds the flags), and would go stale below
        per_action.unlink()
    ids = (lists / "train.txt").read_text().split()
    for image_id in ids:
        tree = ET.parse(root / "Annotations" / f"{image_id}.xml")
        tree.getroot().find("filename").text = f"twin{image_id}.jpg"
        tree.write(root / "Annotations" / f"twin{image_id}.xml")
        shutil.copyfile(root / "JPEGImages" / f"{image_id}.jpg", root / "JPEGImages" / f"twin{image_id}.jpg")
    (lists / "val.txt").write_text("".join(f"twin{i}\n" for i in ids))
    if shuffle_seed is not None:
        trees = {i: ET.parse(root / "Annotations" / f"{i}.xml") for i in ids}
        persons = [actions for tree in trees.values() for actions in tree.getroot().iter("actions")]
        flags = [{flag.tag: flag.text for flag in actions} for actions in persons]
        for actions, k in zip(persons, np.random.default_rng(shuffle_seed).permutation(len(persons)), strict=True):
            for flag in actions:
                flag.text = flags[k][flag.tag]
        for image_id, tree in trees.items():
            tree.write(root / "Annotations" / f"{image_id}.xml")
    return root


def test_voc12_action_fine_tuning_learns_its_training_labels(tiny_world, tmp_path, one_thread):
    """Guards the fine-tuning and scoring of voc12_action: 10 epochs (~35 SGD steps of 8 of the 26 persons) must fit
    the train persons' actions, measured on their twins: mAP 75-92 with true labels vs 17-29 with shuffled ones
    (random scores: 19-32, the same run at lr 1e-6), over 4 backbone inits and 4 shuffle seeds. ~1 s per run."""
    true = run("voc12_action", voc12_twins(tiny_world, tmp_path / "true"), "epochs=10")
    shuffled = run("voc12_action", voc12_twins(tiny_world, tmp_path / "shuffled", shuffle_seed=0), "epochs=10")
    assert true["val_persons"] == true["train_persons"] == shuffled["val_persons"] > 20  # the twins are scored
    assert true["voc12_action_map"] >= 55, true
    assert shuffled["voc12_action_map"] <= 40, shuffled
    assert true["voc12_action_map"] - shuffled["voc12_action_map"] >= 25


# -- SUN397 -------------------------------------------------------------------------------------------------
def sun397_twins(tiny_world: Path, out: Path, shuffle_seed: int | None = None) -> Path:
    """A copy of the world's SUN397 + Partitions whose every Testing_NN list is a twin of its Training_NN images (in
    their true class folders); with `shuffle_seed`, each Training_NN list names copies of its images filed under
    the scene classes of that list permuted (each class keeps its count)."""
    out.mkdir()
    shutil.copytree(tiny_world / "SUN397", out / "SUN397")
    shutil.copytree(tiny_world / "Partitions", out / "Partitions")
    images = out / "SUN397"
    rng = np.random.default_rng(shuffle_seed)
    for training in sorted((out / "Partitions").glob("Training_*.txt")):
        rows = training.read_text().split()
        part = training.stem.removeprefix("Training_")
        twins = []
        for row in rows:  # rows look like /k/kitchen/sun_xyz.jpg
            folder, name = row.rsplit("/", 1)
            twins.append(f"{folder}/twin{part}_{name}")
            shutil.copyfile(images / row.lstrip("/"), images / twins[-1].lstrip("/"))
        training.with_name(f"Testing_{part}.txt").write_text("".join(f"{t}\n" for t in twins))
        if shuffle_seed is not None:
            classes = rng.permutation([row.rsplit("/", 1)[0] for row in rows])
            shuffled = [f"{folder}/shuffled{part}_{row.rsplit('/', 1)[1]}" for row, folder in zip(rows, classes)]
            for row, new in zip(rows, shuffled, strict=True):
                shutil.copyfile(images / row.lstrip("/"), images / new.lstrip("/"))
            training.write_text("".join(f"{s}\n" for s in shuffled))
    return out


def test_sun397_linear_classifier_learns_its_training_labels(tiny_world, tmp_path, one_thread):
    """Guards the linear protocol of sun397 (features aligned with their images and labels, the logistic regression
    fitted and scored on the right rows): frozen random features of 2 partitions x 30 images, 6 scenes; the
    classifier must fit the training scenes, measured on their twins: 100 % with true labels vs 5-20 % with shuffled
    ones (chance 16.7 %), over 4 backbone inits and 4 shuffle seeds. <1 s per run."""
    true = run("sun397", sun397_twins(tiny_world, tmp_path / "true"))
    shuffled = run("sun397", sun397_twins(tiny_world, tmp_path / "shuffled", shuffle_seed=0))
    images = true["sun397_train_images"] + true["sun397_val_images"]
    assert true["sun397_test_images"] == images == shuffled["sun397_test_images"] >= 24  # the twins are scored
    chance = 100 / true["sun397_classes"]
    assert true["sun397_acc"] >= 80, true
    assert shuffled["sun397_acc"] <= chance + 25, shuffled


# -- E4 probe -----------------------------------------------------------------------------------------------
def imagenet_twins(tiny_world: Path, out: Path, per_class: int = 8, shuffle_seed: int | None = None) -> Path:
    """An ImageNet-style source of the world's first `per_class` train images of each class, whose val/ is a twin of
    each (true class); with `shuffle_seed`, the train images' contents are permuted among the train files."""
    files = [f for d in sorted((tiny_world / "imagenet" / "train").iterdir()) for f in sorted(d.iterdir())[:per_class]]
    order = (
        np.random.default_rng(shuffle_seed).permutation(len(files)) if shuffle_seed is not None else range(len(files))
    )
    for file, k in zip(files, order, strict=True):
        train, twin = out / "train" / file.parent.name / file.name, out / "val" / file.parent.name / f"twin_{file.name}"
        train.parent.mkdir(parents=True, exist_ok=True)
        twin.parent.mkdir(parents=True, exist_ok=True)
        train.write_bytes(files[k].read_bytes())
        twin.write_bytes(file.read_bytes())
    return out


def test_probe_knn_and_linear_probe_learn_their_training_labels(tiny_world, tmp_path, one_thread):
    """Guards the E4 probe's kNN memory and linear probe (features paired with their images' classes, val images
    scored against their own class): 40 classes x 8 images; on the twins, kNN top-1 87-91 % and linear 87-100 %
    with true labels vs 1.6-3.8 % for both with shuffled ones (chance 2.5 %), over 4 backbone inits and 4
    shuffle seeds. ~1 s per run."""
    settings = ("train_per_class=0", "parts=knn,linear")
    true = run("probe", imagenet_twins(tiny_world, tmp_path / "true"), *settings)
    shuffled = run("probe", imagenet_twins(tiny_world, tmp_path / "shuffled", shuffle_seed=0), *settings)
    assert true["probe_val_images"] == true["probe_train_images"] == 8 * true["probe_fine_classes"]
    chance = 100 / true["probe_fine_classes"]
    for metric in ("probe_knn_top1", "probe_linear_top1"):
        assert true[metric] >= 60, (metric, true)
        assert shuffled[metric] <= chance + 10, (metric, shuffled)


@pytest.mark.parametrize("make", [voc12_twins, sun397_twins, imagenet_twins])
def test_shuffling_keeps_the_images_and_the_label_counts(tiny_world, tmp_path, make):
    """The controls above are fair: a shuffled copy holds the same training images and the same number of each
    label as the true copy; only which image carries which label changes."""
    true, shuffled = make(tiny_world, tmp_path / "true"), make(tiny_world, tmp_path / "shuffled", shuffle_seed=0)

    def pairs(root: Path) -> tuple[list[tuple[bytes, str]], list[bytes]]:
        """(training image bytes, its label) pairs, and the twins' bytes."""
        if make is voc12_twins:
            ids = (root / "ImageSets" / "Action" / "train.txt").read_text().split()
            out = []
            for i in ids:
                image = (root / "JPEGImages" / f"{i}.jpg").read_bytes()
                for actions in ET.parse(root / "Annotations" / f"{i}.xml").getroot().iter("actions"):
                    out.append((image, "".join(flag.text for flag in actions)))
            return out, [(root / "JPEGImages" / f"twin{i}.jpg").read_bytes() for i in ids]
        if make is sun397_twins:
            rows = (root / "Partitions" / "Training_01.txt").read_text().split()
            twins = (root / "Partitions" / "Testing_01.txt").read_text().split()
            images = [(root / "SUN397" / row.lstrip("/")).read_bytes() for row in rows + twins]
            return list(zip(images, (row.rsplit("/", 1)[0] for row in rows))), images[len(rows) :]
        train = sorted((root / "train").rglob("*.JPEG"))
        return [(f.read_bytes(), f.parent.name) for f in train], [f.read_bytes() for f in root.glob("val/*/twin_*")]

    (a, twins_a), (b, twins_b) = pairs(true), pairs(shuffled)
    assert {image for image, _ in a} == {image for image, _ in b} == set(twins_a) == set(twins_b)
    assert Counter(label for _, label in a) == Counter(label for _, label in b)
    assert sum((Counter(a) - Counter(b)).values()) > len(a) // 2  # most images carry another label
