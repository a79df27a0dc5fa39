"""The VOC and SUN397 readers, on the real samples (skipped when absent) and on a tiny synthetic world.

.venv/bin/python -m pytest tests/test_readers.py -q      # ~6 s on 2 cores
"""

from collections import Counter
from pathlib import Path

import pytest
from conftest import realdata
from PIL import Image

from imagenet_transfer.datasets.sun397 import class_of, find_sun397, read_class_names, read_partition
from imagenet_transfer.datasets.voc import VOC_ACTIONS, VOC_CLASSES, read_annotation, read_image_set
from imagenet_transfer.errors import UserError
from imagenet_transfer.synthetic import generate, read_world


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("IMAGENET_TRANSFER_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield generate(tmp_path_factory.mktemp("world") / "tiny", size="tiny", seed=3, progress=False)


# -- real samples ------------------------------------------------------------------------------------------
def test_real_voc2007_annotation_and_lists():
    root = realdata("voc2007", "VOCdevkit", "VOC2007")
    ann = read_annotation(root / "Annotations" / "000002.xml")
    assert (ann.filename, ann.width, ann.height) == ("000002.jpg", 335, 500)
    [obj] = ann.objects
    assert (obj.name, obj.box, obj.difficult, obj.truncated, obj.actions) == (
        "train",
        (139, 200, 207, 301),
        False,
        False,
        None,
    )
    main = root / "ImageSets" / "Main"
    trainval, test = read_image_set(main / "trainval.txt"), read_image_set(main / "test.txt")
    assert (len(trainval), len(test)) == (5011, 4952) and not set(trainval) & set(test)
    assert all(len(i) == 6 and i.isdigit() for i in trainval)  # CRLF stripped
    cats = read_image_set(main / "cat_trainval.txt")
    assert [i for i, _ in cats] == trainval and {f for _, f in cats} == {-1, 0, 1}
    assert [line.strip() for line in (main / "class.txt").read_text().splitlines()] == list(VOC_CLASSES)


def test_real_voc2012_annotations():
    folder = realdata("voc2012", "VOCdevkit", "VOC2012", "Annotations")
    anns = [read_annotation(p) for p in sorted(folder.glob("*.xml"))]
    assert len(anns) == 100
    names = Counter(o.name for a in anns for o in a.objects)
    assert set(names) <= set(VOC_CLASSES) and names["person"] > 0
    for a in anns:
        for o in a.objects:
            assert 1 <= o.xmin < o.xmax <= a.width and 1 <= o.ymin < o.ymax <= a.height and o.actions is None


def test_real_sun397_partitions():
    layout = find_sun397(realdata("sun397"))
    classes = read_class_names(layout.partitions / "ClassName.txt")
    assert len(classes) == 397 and classes[0] == "/a/abbey" and "/d/desert/sand" in classes
    assert layout.partition_ids() == list(range(1, 11))
    train, test = (
        read_partition(layout.partitions / "Training_01.txt"),
        read_partition(layout.partitions / "Testing_01.txt"),
    )
    assert len(train) == len(test) == 397 * 50 and not set(train) & set(test)
    assert Counter(map(class_of, train)) == dict.fromkeys(classes, 50)
    on_disk = {"/" + str(p.relative_to(layout.images)) for p in layout.images.rglob("*.jpg")}
    assert len(on_disk) == 153 and on_disk <= set(train) | set(test)
    assert class_of("/d/desert/sand/sun_x.jpg") == "/d/desert/sand"
    assert all(layout.image(e).is_file() for e in on_disk)


# -- the synthetic world through the same readers ---------------------------------------------------------------
def test_world_voc2007_reads_like_voc(world):
    root = world / "VOCdevkit" / "VOC2007"
    main = root / "ImageSets" / "Main"
    trainval, test = read_image_set(main / "trainval.txt"), read_image_set(main / "test.txt")
    train, val = read_image_set(main / "train.txt"), read_image_set(main / "val.txt")
    assert not set(trainval) & set(test) and sorted(train + val) == trainval
    objects = {}
    for image_id in trainval + test:
        ann = read_annotation(root / "Annotations" / f"{image_id}.xml")
        with Image.open(root / "JPEGImages" / ann.filename) as img:
            assert img.size == (ann.width, ann.height)
        for o in ann.objects:
            assert o.name in VOC_CLASSES and o.actions is None
            assert 1 <= o.xmin < o.xmax <= ann.width and 1 <= o.ymin < o.ymax <= ann.height
        objects[image_id] = ann.objects
    assert sum(o.difficult for os_ in objects.values() for o in os_) > 0
    assert len({o.name for os_ in objects.values() for o in os_}) >= 10
    for cls in VOC_CLASSES:  # the per-class lists agree with the annotations
        for image_id, flag in read_image_set(main / f"{cls}_trainval.txt"):
            mine = [o for o in objects[image_id] if o.name == cls]
            assert flag == (-1 if not mine else 1 if any(not o.difficult for o in mine) else 0)
    assert (main / "person_test.txt").read_text().splitlines()[0][6:] in (" -1", "  1", "  0")


def test_world_voc2012_actions(world):
    root = world / "VOCdevkit" / "VOC2012"
    action = root / "ImageSets" / "Action"
    train, val = read_image_set(action / "train.txt"), read_image_set(action / "val.txt")
    assert not set(train) & set(val) and sorted(train + val) == read_image_set(action / "trainval.txt")
    seen = Counter()
    for image_id in train + val:
        ann = read_annotation(root / "Annotations" / f"{image_id}.xml")
        assert ann.objects and all(o.name == "person" for o in ann.objects)
        for o in ann.objects:
            assert set(o.actions) == set(VOC_ACTIONS) and sum(o.actions.values()) == 1
            seen.update(a for a, on in o.actions.items() if on)
    assert len(seen) >= 8
    for act in VOC_ACTIONS:
        rows = read_image_set(action / f"{act}_train.txt")
        assert {r[0] for r in rows} == set(train)
        for image_id, index, flag in rows:
            obj = read_annotation(root / "Annotations" / f"{image_id}.xml").objects[index - 1]
            assert flag == (1 if obj.actions[act] else -1)


def test_world_sun397_partitions(world):
    manifest = read_world(world)
    layout = find_sun397(world)
    classes = read_class_names(layout.partitions / "ClassName.txt")
    assert classes == [s["name"] for s in manifest["scenes"]] and any(c.count("/") == 3 for c in classes)
    assert layout.partition_ids() == list(range(1, manifest["options"]["partitions"] + 1))
    everything = None
    for p in layout.partition_ids():
        train, test = (
            read_partition(layout.partitions / f"Training_{p:02d}.txt"),
            read_partition(layout.partitions / f"Testing_{p:02d}.txt"),
        )
        assert not set(train) & set(test)
        assert set(Counter(map(class_of, train))) == set(classes) and len(train) == len(test)
        everything = everything or set(train) | set(test)
        assert set(train) | set(test) == everything
    assert all(layout.image(e).is_file() for e in everything)
    assert len(everything) == manifest["counts"]["sun397"]["images"]


# -- bad input -------------------------------------------------------------------------------------------------
def test_readers_refuse_bad_files(tmp_path):
    bad = tmp_path / "bad.xml"
    bad.write_text("<annotation><object><name>dog</name></object>")
    with pytest.raises(UserError, match="bad.xml"):
        read_annotation(bad)
    bad.write_text("<annotation><object><name>dog</name></object></annotation>")
    with pytest.raises(UserError, match="bndbox"):
        read_annotation(bad)
    lst = tmp_path / "list.txt"
    lst.write_text("000001 1\r\n000002 x\r\n")
    with pytest.raises(UserError, match="list.txt:2"):
        read_image_set(lst)
    lst.write_text("/a/abbey\r\nabbey\r\n")
    with pytest.raises(UserError, match="not a SUN397 class"):
        read_class_names(lst)
    with pytest.raises(UserError, match="ClassName.txt"):
        find_sun397(tmp_path)
    with pytest.raises(UserError, match="cannot read"):
        read_image_set(tmp_path / "missing.txt")
