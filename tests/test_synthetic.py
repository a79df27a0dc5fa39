"""The synthetic world: layout, manifest, caching, determinism, inherited appearance, bad input.

.venv/bin/python -m pytest tests/test_synthetic.py -q      # ~20 s on 2 cores (3 tiny worlds)
"""

import hashlib
import importlib
import itertools
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import imagenet_transfer.catalog as catalog_module
from imagenet_transfer.catalog import load_catalog
from imagenet_transfer.errors import UserError
from imagenet_transfer.synthetic import SIZES, default_world_dir, generate, read_world, verify_world
from imagenet_transfer.synthetic.plan import SCENE_NAMES, choose_classes, scene_recipes
from imagenet_transfer.synthetic.traits import FIGURE, GRAIN, model, traits_for
from imagenet_transfer.taxonomy import PASCAL_SYNSETS, load_taxonomy


@pytest.fixture(scope="module")
def world_cache(tmp_path_factory) -> Path:
    """The cache folder `world` was generated with (where its catalog was stored)."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def world(tmp_path_factory, world_cache) -> Path:
    """One tiny world per test file, with the catalog cache in a temporary folder."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("IMAGENET_TRANSFER_CACHE", str(world_cache))
        yield generate(tmp_path_factory.mktemp("world") / "tiny", size="tiny", seed=0, progress=False)


@pytest.fixture(scope="module")
def pixels(world):
    """Train/val images of the ImageNet part as float arrays, with class indices."""
    manifest = read_world(world)

    def load(split):
        xs, ys = [], []
        for i, wnid in enumerate(manifest["classes"]):
            for f in sorted((world / "imagenet" / split / wnid).iterdir()):
                xs.append(np.asarray(Image.open(f).convert("RGB"), dtype=np.float32) / 255)
                ys.append(i)
        return np.stack(xs), np.array(ys)

    return manifest, load("train"), load("val")


def tree_hash(root: Path) -> str:
    """Our own hash of every file under `root` (paths and bytes), independent of world.json."""
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def small(xs: np.ndarray, side: int = 8) -> np.ndarray:
    """Down-sampled pixels, each image standardised: a crude layout/shape feature."""
    feats = np.stack(
        [
            np.asarray(
                Image.fromarray((x * 255).astype(np.uint8)).resize((side, side), Image.BILINEAR), dtype=np.float32
            ).ravel()
            for x in xs
        ]
    )
    return (feats - feats.mean(1, keepdims=True)) / (feats.std(1, keepdims=True) + 1e-6)


def ridge_accuracy(ftr, ytr, fva, yva, classes: int, lam: float = 100.0) -> float:
    mu, sd = ftr.mean(0), ftr.std(0) + 1e-6
    a, b = (ftr - mu) / sd, (fva - mu) / sd
    w = np.linalg.solve(a.T @ a + lam * np.eye(a.shape[1]), a.T @ np.eye(classes)[ytr])
    return float(((b @ w).argmax(1) == yva).mean())


# -- layout and manifest ---------------------------------------------------------------------------------
def test_world_has_all_parts_and_counts_match(world):
    manifest = read_world(world)
    preset = SIZES["tiny"]
    classes = manifest["classes"]
    assert len(classes) == preset.classes == len(set(classes))
    assert manifest["options"]["seed"] == 0 and manifest["options"]["size"] == "tiny"
    for split, per_class in (("train", preset.train), ("val", preset.val)):
        for wnid in classes:
            names = sorted(p.name for p in (world / "imagenet" / split / wnid).iterdir())
            assert len(names) == per_class and all(n.startswith(f"{wnid}_") and n.endswith(".JPEG") for n in names)
    with Image.open(next((world / "imagenet" / "train" / classes[0]).iterdir())) as img:
        assert img.size == (preset.resolution, preset.resolution) and img.format == "JPEG"
    for part in ("VOCdevkit/VOC2007/JPEGImages", "VOCdevkit/VOC2012/Annotations", "SUN397", "Partitions"):
        assert (world / part).is_dir()
    assert manifest["counts"]["voc2007"]["trainval"] + manifest["counts"]["voc2007"]["test"] == preset.voc_images
    assert manifest["counts"]["voc2007"]["difficult"] > 0
    assert verify_world(world)["content_sha256"] == manifest["content_sha256"]


def test_the_imagenet_part_is_catalogued_on_creation(world, world_cache, monkeypatch):
    """Generating the world stores its catalog in the cache it ran with: reading it there scans no folder."""

    def scan(root):
        raise AssertionError(f"{root} was scanned: its catalog was not cached when the world was generated")

    monkeypatch.setenv("IMAGENET_TRANSFER_CACHE", str(world_cache))
    monkeypatch.setattr(catalog_module, "scan", scan)
    catalog = load_catalog(world / "imagenet")
    manifest = read_world(world)
    assert len(catalog) == sum(manifest["counts"]["imagenet"][s] for s in ("train", "val"))
    assert set(catalog["wnid"].astype(str)) == set(manifest["classes"])


def test_classes_span_the_tree_and_include_pascal_overlap(world):
    tax = load_taxonomy()
    manifest = read_world(world)
    classes = manifest["classes"]
    assert set(classes) <= set(tax.classes)
    removed = set(classes) - set(tax.pascal_removed())
    assert 0 < len(removed) < len(classes)  # E6 removes some, not all
    coarse = {tax.labels("top-down", 127)[w] for w in classes}
    assert len(coarse) == SIZES["tiny"].groups and len(coarse) < len(classes)  # 127-level labels merge classes
    assert len({tax.labels("bottom-up", 9)[w] for w in classes}) < len(classes)
    assert choose_classes(tax, SIZES["tiny"], 1) != classes  # the seed picks the classes


# -- caching and determinism -------------------------------------------------------------------------------
def test_a_second_call_finds_the_world_and_generates_nothing(world, monkeypatch):
    """What made a second call fast: the world is found, not generated again (no file written, added or removed)."""

    def make(*args, **kwargs):
        raise AssertionError("the world was generated again")

    monkeypatch.setattr(importlib.import_module("imagenet_transfer.synthetic.world"), "_make", make)
    before = {path: path.stat().st_mtime_ns for path in world.rglob("*")}
    assert generate(world, size="tiny", seed=0, progress=False) == world
    assert {path: path.stat().st_mtime_ns for path in world.rglob("*")} == before


def test_same_seed_gives_byte_identical_files_in_the_default_dir(world):
    twin = generate(size="tiny", seed=0, progress=False)
    assert twin == default_world_dir(size="tiny", seed=0) and twin != world
    assert tree_hash(twin) == tree_hash(world)
    assert read_world(twin)["content_sha256"] == read_world(world)["content_sha256"]


def test_a_world_made_part_by_part_is_the_world_made_at_once(world, tmp_path):
    from imagenet_transfer.synthetic import PARTS, present_parts

    out = tmp_path / "parts"
    assert generate(out, size="tiny", seed=0, progress=False, parts=("imagenet",)) == out
    partial = read_world(out)
    assert present_parts(partial) == {"imagenet"} and set(partial["files"]) == {"imagenet"}
    assert not (out / "VOCdevkit").exists() and not (out / "SUN397").exists()
    assert len(load_catalog(out / "imagenet")) == len(load_catalog(world / "imagenet"))  # catalogued on creation
    assert generate(out, size="tiny", seed=0, progress=False, parts=("voc2012",)) == out
    assert present_parts(read_world(out)) == {"imagenet", "voc2012"}
    generate(out, size="tiny", seed=0, progress=False)  # the rest
    assert present_parts(read_world(out)) == set(PARTS)
    assert (out / "world.json").read_bytes() == (world / "world.json").read_bytes()
    assert tree_hash(out) == tree_hash(world)
    verify_world(out)
    with pytest.raises(UserError, match="expected some of imagenet, voc2007, voc2012, sun397"):
        generate(out, size="tiny", seed=0, progress=False, parts=("voc2099",))


def test_corrupted_cache_is_regenerated(world):
    cached = default_world_dir(size="tiny", seed=0)
    shutil.copytree(world, cached)
    (cached / "world.json").write_text('{"generator": "imagenet_transfer.synth')  # truncated
    with pytest.raises(UserError, match="corrupt"):
        read_world(cached)
    assert generate(size="tiny", seed=0, progress=False) == cached
    assert read_world(cached)["content_sha256"] == read_world(world)["content_sha256"]
    assert not [p for p in cached.parent.iterdir() if p.name.startswith(".")]  # no temporary folders left


def test_damaged_worlds_are_detected(world, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(world, copy)
    victim = next((copy / "imagenet" / "train").rglob("*.JPEG"))
    victim.write_bytes(victim.read_bytes()[:-10])
    with pytest.raises(UserError, match="differ"):
        verify_world(copy)
    victim.unlink()
    with pytest.raises(UserError, match="incomplete"):
        read_world(copy)
    manifest = json.loads((copy / "world.json").read_text())
    del manifest["files"]
    (copy / "world.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="incomplete"):
        read_world(copy)
    (copy / "world.json").write_text("not json")
    with pytest.raises(UserError, match="corrupt"):
        generate(copy, size="tiny", progress=False)  # an explicit --out is refused, not overwritten
    with pytest.raises(UserError, match="no world.json"):
        read_world(tmp_path)


# -- appearance --------------------------------------------------------------------------------------------
def test_traits_are_inherited_down_the_tree():
    tax = load_taxonomy()
    traits = traits_for([*tax.classes, PASCAL_SYNSETS["cow"]], seed=0)
    dogs = tax.pascal_overlap()["dog"]
    assert len({traits[w].family for w in dogs}) == 1  # decided by an ancestor of all dogs
    hues = np.array([traits[w].hue for w in dogs])
    assert np.ptp(hues) < 0.15  # the palette is the ancestors', nudged a little below
    assert len({(traits[w].parts, traits[w].mark) for w in dogs}) == len(dogs)  # the leaf adds details
    assert all(traits[w].family == FIGURE for w in tax.pascal_overlap()["person"])
    cow = PASCAL_SYNSETS["cow"]  # no ILSVRC class below it: its coarse look is its ancestors'
    assert model(0).decider(cow, GRAIN["family"])[0] == tax.parent(cow)
    assert model(0).decider(cow, GRAIN["leaf"])[0] == cow
    other = traits_for(dogs, seed=1)
    assert [other[w] for w in dogs] != [traits[w] for w in dogs]


@pytest.mark.parametrize("size", ["tiny", "default"])
def test_scenes_hold_the_kinds_of_objects_pretraining_teaches(size):
    tax, preset = load_taxonomy(), SIZES[size]
    label = tax.labels("top-down", 127)
    classes = choose_classes(tax, preset, 0)
    scenes = scene_recipes(tax, preset.scenes, 0, classes)
    assert [s["name"] for s in scenes] == list(SCENE_NAMES[: preset.scenes])
    assert all(set(s["groups"]) <= {label[w] for w in classes} for s in scenes)  # groups of the world's classes
    assert all(label[w] == g for s in scenes for g, ws in zip(s["groups"], s["members"]) for w in ws)
    assert all(len(ws) >= 3 for s in scenes for ws in s["members"])
    assert all(len(set(a["groups"]) & set(b["groups"])) <= 1 for a, b in itertools.combinations(scenes, 2))


def test_classes_under_the_same_coarse_ancestor_look_more_alike(pixels):
    manifest, (xtr, ytr), _ = pixels
    classes, group = manifest["classes"], manifest["coarse_groups"]
    feats = small(xtr)
    centroids = np.stack([feats[ytr == i].mean(0) for i in range(len(classes))])
    dist = ((centroids[:, None] - centroids[None]) ** 2).sum(-1)
    pairs = list(itertools.combinations(range(len(classes)), 2))
    same = [dist[i, j] for i, j in pairs if group[classes[i]] == group[classes[j]]]
    other = [dist[i, j] for i, j in pairs if group[classes[i]] != group[classes[j]]]
    assert len(same) >= 10 and np.mean(same) < 0.9 * np.mean(other)


def test_fine_classes_are_separable_by_shape_but_not_by_colour(pixels):
    manifest, (xtr, ytr), (xva, yva) = pixels
    n = len(manifest["classes"])
    layout = ridge_accuracy(small(xtr), ytr, small(xva), yva, n)
    colour = ridge_accuracy(xtr.reshape(len(xtr), -1, 3).mean(1), ytr, xva.reshape(len(xva), -1, 3).mean(1), yva, n)
    assert layout > 2.0 / n  # above chance with a linear model on 8x8 pixels
    assert colour < 2.0 / n < layout  # the colour shortcut is not enough


# -- bad input -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(size="huge"), "tiny, default, large"),
        (dict(resolution=8), "from 24 to 512"),
        (dict(resolution=5000), "from 24 to 512"),
        (dict(partitions=0), "from 1 to 10"),
        (dict(seed=-1), "integer >= 0"),
    ],
)
def test_bad_options_are_refused(tmp_path, kwargs, message):
    with pytest.raises(UserError, match=message):
        generate(tmp_path / "w", progress=False, **{"size": "tiny", **kwargs})
    assert not (tmp_path / "w").exists()


def test_bad_output_folders_are_refused(world, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(UserError, match="is a file"):
        generate(afile, size="tiny", progress=False)
    with pytest.raises(UserError, match="cannot write"):
        generate(afile / "world", size="tiny", progress=False)  # parent is not a folder: unwritable
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("x")
    with pytest.raises(UserError, match="not empty"):
        generate(foreign, size="tiny", progress=False)
    assert (foreign / "thesis.tex").exists() and len(os.listdir(foreign)) == 1
    with pytest.raises(UserError, match="other options"):
        generate(world, size="tiny", seed=1, progress=False)
