"""The whole chain at `--scale real` on real files: catalog → subset → pretrain (smoke size) → voc07_det,
voc12_action, sun397, probe (quick sizes) → report, through the CLI, on a miniature built from the real samples
in ../shared/realdata (skipped with a reason when they are absent).

What is real and what the fixture adds (nothing is written into the samples; images are symlinked):
- ImageNet: 32 real ILSVRC-2012 JPEGs (the first classes of `sample-1k`, one image each), laid out as
  `train/<wnid>/` (three links to the class's image) and `val/<wnid>/` (a fourth): the sample has no second image
  per class.
- VOC2007: the 17 real test JPEGs and the real `000002.xml`; the other XMLs are written from the real boxes of
  `coco_format/` (`difficult` is lost there: every object counts). The 17 are split 11 trainval / 6 test here.
- VOC2012: the 100 real JPEGs and their real XMLs, which carry no actions: every person gets seeded action
  labels (one action each) in an `<actions>` element, and the images with persons are split train / val.
- SUN397: the 153 real images of 8 classes, with `ClassName.txt`, `Training_01.txt` and `Testing_01.txt`
  cut down to the images present.
"""

from __future__ import annotations

import json
import random
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import mlflow
import pytest
import yaml
from conftest import REPO, cli, realdata

from imagenet_transfer.datasets.voc import VOC_ACTIONS

IMAGENET_CLASSES = 32


def link(target: Path, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(target.resolve())


def imagenet(root: Path) -> Path:
    sample = realdata("imagenet", "sample-1k")
    for image in sorted(sample.glob("*.JPEG"))[:IMAGENET_CLASSES]:
        wnid = image.name.split("_")[0]
        for copy in range(3):  # the sample has one image per class: a probe needs a few to carve a validation split
            link(image, root / "train" / wnid / f"{wnid}_{copy}.JPEG")
        link(image, root / "val" / wnid / f"{wnid}_val_1.JPEG")
    return root


def voc_xml(file_name: str, size: tuple[int, int], objects: list[tuple[str, tuple[int, ...]]]) -> str:
    body = "".join(
        f"<object><name>{name}</name><pose>Unspecified</pose><truncated>0</truncated><difficult>0</difficult>"
        f"<bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for name, b in objects
    )
    return (
        f"<annotation><folder>VOC2007</folder><filename>{file_name}</filename><size><width>{size[0]}</width>"
        f"<height>{size[1]}</height><depth>3</depth></size>{body}</annotation>"
    )


def voc2007(devkit: Path) -> None:
    real = realdata("voc2007", "VOCdevkit", "VOC2007")
    root = devkit / "VOC2007"
    images = sorted((real / "JPEGImages").glob("*.jpg"))
    coco = {"images": [], "annotations": [], "categories": []}
    for part in ("train", "val", "test"):
        got = json.loads(realdata("voc2007", "coco_format", f"pascal_{part}2007.json").read_text())
        for key in coco:
            coco[key] += got[key]
    names = {c["id"]: c["name"] for c in coco["categories"]}
    by_file = {i["file_name"]: i for i in coco["images"]}
    (root / "Annotations").mkdir(parents=True)
    for image in images:
        link(image, root / "JPEGImages" / image.name)
        xml = root / "Annotations" / f"{image.stem}.xml"
        if (real / "Annotations" / xml.name).is_file():
            link(real / "Annotations" / xml.name, xml)
            continue
        info = by_file[image.name]
        boxes = [
            (
                names[a["category_id"]],
                (a["bbox"][0] + 1, a["bbox"][1] + 1, a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]),
            )
            for a in coco["annotations"]
            if a["image_id"] == info["id"]
        ]
        xml.write_text(voc_xml(image.name, (info["width"], info["height"]), boxes))
    ids = [image.stem for image in images]
    main = root / "ImageSets" / "Main"
    main.mkdir(parents=True)
    (main / "trainval.txt").write_text("\n".join(ids[:11]) + "\n")
    (main / "test.txt").write_text("\n".join(ids[11:]) + "\n")


def voc2012(devkit: Path) -> None:
    real = realdata("voc2012", "VOCdevkit", "VOC2012")
    root = devkit / "VOC2012"
    rng = random.Random(0)
    with_persons = []
    for xml in sorted((real / "Annotations").glob("*.xml")):
        tree = ET.parse(xml)
        link(real / "JPEGImages" / tree.findtext("filename"), root / "JPEGImages" / tree.findtext("filename"))
        persons = [o for o in tree.getroot().iter("object") if o.findtext("name") == "person"]
        for person in persons:  # seeded labels: the real XMLs have none
            actions = ET.SubElement(person, "actions")
            chosen = rng.randrange(len(VOC_ACTIONS))
            for a, action in enumerate(VOC_ACTIONS):
                ET.SubElement(actions, action).text = str(int(a == chosen))
        (root / "Annotations").mkdir(parents=True, exist_ok=True)
        tree.write(root / "Annotations" / xml.name)
        if persons:
            with_persons.append(xml.stem)
    lists = root / "ImageSets" / "Action"
    lists.mkdir(parents=True)
    cut = len(with_persons) * 6 // 10
    (lists / "train.txt").write_text("\n".join(with_persons[:cut]) + "\n")
    (lists / "val.txt").write_text("\n".join(with_persons[cut:]) + "\n")


def sun397(root: Path) -> None:
    real = realdata("sun397")
    present = {"/" + p.relative_to(real / "SUN397").as_posix() for p in (real / "SUN397").rglob("*.jpg")}
    for entry in present:
        link(real / "SUN397" / entry.lstrip("/"), root / "SUN397" / entry.lstrip("/"))
    classes = sorted({entry.rsplit("/", 1)[0] for entry in present})
    (root / "Partitions").mkdir(parents=True)
    (root / "Partitions" / "ClassName.txt").write_text("\n".join(classes) + "\n")
    for name in ("Training_01.txt", "Testing_01.txt"):
        rows = (real / "Partitions" / name).read_text().split()
        (root / "Partitions" / name).write_text("\n".join(r for r in rows if r in present) + "\n")


@pytest.fixture(scope="module")
def miniature(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("real-miniature")
    source = imagenet(root / "imagenet")
    voc2007(root / "VOCdevkit")
    voc2012(root / "VOCdevkit")
    sun397(root)
    grid = yaml.safe_load((REPO / "configs" / "paper.yaml").read_text())
    real = grid["scales"]["real"]
    real.update(archs=["small"], recipe="smoke", quick=True, pretrain={}, benchmarks={"sun397": {"partitions": [1]}})
    grid["experiments"] = {
        "E1": {**grid["experiments"]["E1"], "benchmarks": ["voc07_det", "voc12_action", "sun397"]},
        "E4": grid["experiments"]["E4"],
    }
    for experiment in grid["experiments"].values():
        experiment["variants"]["real"] = ["full"]
    (root / "grid.yaml").write_text(yaml.safe_dump(grid))
    return {"root": root, "source": source, "grid": root / "grid.yaml"}


def test_the_chain_runs_at_real_scale_on_real_files(miniature, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")  # this chain's runs only
    root = miniature["root"]
    args = ["reproduce", "--grid", str(miniature["grid"]), "--scale", "real", "--source", str(miniature["source"])]
    for benchmark, path in (("voc07_det", "VOCdevkit"), ("voc12_action", "VOCdevkit"), ("sun397", ".")):
        args += ["--data", f"{benchmark}={root / path}"]
    assert cli(*args) == 0, capsys.readouterr().out
    runs = mlflow.search_runs(search_all_experiments=True)
    assert not runs.empty and set(runs["status"]) == {"FINISHED"}
    transfer = runs[runs["tags.stage"] == "transfer"]
    assert set(transfer["tags.benchmark"]) == {"voc07_det", "voc12_action", "sun397", "probe"}
    assert (runs["tags.stage"] == "pretrain").sum() == 1
    detection = transfer[transfer["tags.benchmark"] == "voc07_det"]
    assert (detection["metrics.test_images"] == 6).all() and (detection["metrics.train_images"] == 11).all()
    assert cli("report", "--out", str(tmp_path / "report")) == 0, capsys.readouterr().out
    report = (tmp_path / "report" / "report.md").read_text()
    assert re.search(r"voc07_map", report) and "E1" in report
