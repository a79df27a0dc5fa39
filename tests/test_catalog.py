import json
import os
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
from conftest import cli, realdata

from imagenet_transfer import catalog as catalog_module
from imagenet_transfer.catalog import DEMO, hash_file_names, load_catalog, read_catalog, source_digest, write_catalog
from imagenet_transfer.errors import UserError

WNIDS = ["n01440764", "n01443537", "n02084071"]


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def make_imagenet(root: Path, per_class: int = 3, val: str = "foldered") -> Path:
    for w in WNIDS:
        for i in range(per_class):
            touch(root / "train" / w / f"{w}_{i}.JPEG")
        if val == "foldered":
            touch(root / "val" / w / f"ILSVRC2012_val_{WNIDS.index(w) + 1:08d}.JPEG")
    touch(root / "train" / WNIDS[0] / "notes.txt")  # not an image: ignored
    return root


def test_imagenet_layout_with_foldered_val(tmp_path):
    cat = load_catalog(make_imagenet(tmp_path / "src"))
    assert list(cat.columns) == ["path", "wnid", "split", "name_hash"]
    assert cat.groupby("split", observed=True).size().to_dict() == {"train": 9, "val": 3}
    assert set(cat["wnid"].astype(str)) == set(WNIDS)
    assert all(Path(p).is_absolute() and Path(p).exists() for p in cat["path"])


def test_flat_val_is_labelled_through_the_devkit_ground_truth(tmp_path):
    root = make_imagenet(tmp_path / "src", val="flat")
    for i in (1, 2, 3):
        touch(root / "val" / f"ILSVRC2012_val_{i:08d}.JPEG")
    (root / "map_clsloc.txt").write_text("n02084071 1 dog\nn01440764 2 tench\nn01443537 3 goldfish\n")
    (root / "ILSVRC2012_validation_ground_truth.txt").write_text("2\n1\n3\n")
    val = load_catalog(root).query("split == 'val'").sort_values("path")
    assert val["wnid"].astype(str).tolist() == ["n01440764", "n02084071", "n01443537"]


def test_flat_val_without_devkit_files_names_what_is_missing(tmp_path):
    root = make_imagenet(tmp_path / "src", val="flat")
    touch(root / "val" / "ILSVRC2012_val_00000001.JPEG")
    with pytest.raises(UserError, match="map_clsloc.txt were not found"):
        load_catalog(root)


def test_real_devkit_files_map_real_validation_ids(tmp_path):
    meta = realdata("imagenet", "meta")
    root = make_imagenet(tmp_path / "src", val="flat")
    (root / "meta").mkdir()
    for name in ("map_clsloc.txt", "ILSVRC2012_validation_ground_truth.txt"):
        (root / "meta" / name).write_text((meta / name).read_text())
    for i in (1, 2, 50000):
        touch(root / "val" / f"ILSVRC2012_val_{i:08d}.JPEG")
    val = load_catalog(root).query("split == 'val'").sort_values("path")
    # the first image's devkit id is 490 -> n01751748 (sea snake), the second 361 -> n09193705 (alp)
    assert val["wnid"].astype(str).tolist()[:2] == ["n01751748", "n09193705"]


def test_real_flat_sample_of_one_image_per_class():
    sample = realdata("imagenet", "sample-1k")
    cat = load_catalog(sample)
    assert len(cat) == 1000 and cat["wnid"].nunique() == 1000
    assert (cat["split"] == "train").all()
    first = cat.sort_values("path").iloc[0]
    assert (first["wnid"], Path(first["path"]).name) == ("n01440764", "n01440764_tench.JPEG")


def test_catalog_is_cached_and_rescanned_only_when_the_source_changes(tmp_path, monkeypatch):
    root = make_imagenet(tmp_path / "src")
    first = load_catalog(root)
    scans = []
    real_scan = catalog_module.scan
    monkeypatch.setattr(catalog_module, "scan", lambda r: scans.append(r) or real_scan(r))
    assert load_catalog(root).equals(first) and scans == []
    touch(root / "train" / WNIDS[1] / f"{WNIDS[1]}_new.JPEG")
    assert len(load_catalog(root)) == len(first) + 1 and len(scans) == 1


def test_parquet_catalog_round_trip_and_default_split(tmp_path):
    frame = pd.DataFrame({"path": ["/a/x.JPEG", "/a/y.JPEG"], "wnid": ["n01440764", "n01443537"]})
    frame.to_parquet(tmp_path / "c.parquet")
    cat = load_catalog(tmp_path / "c.parquet")
    assert cat["split"].astype(str).tolist() == ["train", "train"]
    write_catalog(cat, tmp_path / "d.parquet")
    assert read_catalog(tmp_path / "d.parquet").equals(cat)


def test_demo_catalog_is_shaped_like_imagenet():
    cat = load_catalog(DEMO)
    per_class = cat[cat["split"] == "train"].groupby("wnid", observed=True).size()
    assert len(per_class) == 1000 and per_class.between(45, 81).all()


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: d / "missing", "does not exist"),
        (lambda d: d, "not in a known layout"),
        (lambda d: touch(d / "train" / "cats" / "a.JPEG").parents[2], "not named by wnid: cats"),
        (lambda d: (d / "c.parquet").write_bytes(b"not parquet") and d / "c.parquet", "cannot be read as Parquet"),
        (lambda d: pd.DataFrame({"path": ["x"]}).to_parquet(d / "c.parquet") or d / "c.parquet", "lacks column"),
        (
            lambda d: pd.DataFrame({"path": ["x"], "wnid": ["cat"]}).to_parquet(d / "c.parquet") or d / "c.parquet",
            "not like n01440764",
        ),
    ],
)
def test_bad_sources_are_refused_with_a_clear_message(tmp_path, make, message):
    with pytest.raises(UserError, match=message):
        load_catalog(make(tmp_path))


def test_cli_scan_prints_counts_and_exits_2_on_bad_input(tmp_path, capsys):
    root = make_imagenet(tmp_path / "src")
    assert cli("catalog", "scan", root, "--out", tmp_path / "cat.parquet") == 0
    assert "train" in capsys.readouterr().out and len(read_catalog(tmp_path / "cat.parquet")) == 12
    assert cli("catalog", "scan", tmp_path / "nowhere") == 2
    assert "does not exist" in capsys.readouterr().err


def test_file_name_hash_ignores_folders_and_separates_names():
    paths = pd.Series(
        ["/a/b/n01_1.JPEG", "/mnt/x/n01_1.JPEG", "n01_1.JPEG", "/a/b/n01_2.JPEG", "/a/b/", "x", "/a/b/n01_1.JPEG.bak"]
    )
    h = hash_file_names(paths)
    assert h[0] == h[1] == h[2] and len({h[0], h[3], h[4], h[5], h[6]}) == 5
    chunked = pd.Series(pd.arrays.ArrowStringArray(__import__("pyarrow").chunked_array([paths[:3], paths[3:]])))
    assert (hash_file_names(chunked) == h).all()


# -- devkit contents, hidden names ------------------------------------------------------------------------
def make_flat_val(root: Path, truth: str = "2\n1\n3\n", devkit: str = ".") -> Path:
    make_imagenet(root, val="flat")
    for i in (1, 2, 3):
        touch(root / "val" / f"ILSVRC2012_val_{i:08d}.JPEG")
    (root / devkit).mkdir(parents=True, exist_ok=True)
    (root / devkit / "map_clsloc.txt").write_text("n02084071 1 dog\nn01440764 2 tench\nn01443537 3 goldfish\n")
    (root / devkit / "ILSVRC2012_validation_ground_truth.txt").write_text(truth)
    return root


def rewrite_keeping_mtimes(path: Path, text: str) -> None:
    """Rewrite `path` in place, then restore its own and its folders' modification times."""
    keep = [(p, p.stat()) for p in (path, *path.parents[:3])]
    path.write_text(text)
    for p, st in keep:
        os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))


def val_labels(root: Path) -> list[str]:
    return load_catalog(root).query("split == 'val'").sort_values("path")["wnid"].astype(str).tolist()


@pytest.mark.parametrize("devkit", [".", "meta"])
def test_devkit_ground_truth_rewritten_in_place_relabels_val(tmp_path, devkit):
    root = make_flat_val(tmp_path / "src", devkit=devkit)
    assert val_labels(root) == ["n01440764", "n02084071", "n01443537"]
    rewrite_keeping_mtimes(root / devkit / "ILSVRC2012_validation_ground_truth.txt", "3\n2\n1\n")
    assert val_labels(root) == ["n01443537", "n01440764", "n02084071"]


def test_devkit_class_map_rewritten_in_place_relabels_val(tmp_path):
    root = make_flat_val(tmp_path / "src")
    assert val_labels(root) == ["n01440764", "n02084071", "n01443537"]
    rewrite_keeping_mtimes(root / "map_clsloc.txt", "n01440764 1 tench\nn02084071 2 dog\nn01443537 3 goldfish\n")
    assert val_labels(root) == ["n02084071", "n01440764", "n01443537"]


def add_hidden(root: Path, layout: str) -> None:
    """Hidden files and folders where a Mac or an interrupted copy leaves them."""
    touch(root / ".DS_Store")
    if layout == "flat":
        touch(root / f"._{WNIDS[0]}_1.JPEG")
        touch(root / f".{WNIDS[1]}_9.JPEG")
        touch(root / ".partial" / f"{WNIDS[0]}_5.JPEG")
        return
    touch(root / "train" / WNIDS[0] / f"._{WNIDS[0]}_1.JPEG")
    touch(root / "train" / WNIDS[0] / ".DS_Store")
    touch(root / "train" / f".{WNIDS[1]}.partial" / f"{WNIDS[1]}_7.JPEG")
    touch(root / "train" / ".DS_Store")
    touch(root / "val" / ".DS_Store")
    touch(root / "val" / ".partial" / "ILSVRC2012_val_00000009.JPEG")
    if layout == "foldered val":
        touch(root / "val" / WNIDS[0] / "._ILSVRC2012_val_00000001.JPEG")
    else:
        touch(root / "val" / "._ILSVRC2012_val_00000001.JPEG")


def make_layout(root: Path, layout: str) -> Path:
    if layout == "flat":
        for w in WNIDS:
            touch(root / f"{w}_1.JPEG")
        return root
    return make_flat_val(root) if layout == "flat val" else make_imagenet(root)


@pytest.mark.parametrize("layout", ["foldered val", "flat val", "flat"])
def test_hidden_files_and_folders_are_never_catalogued(tmp_path, layout):
    clean = load_catalog(make_layout(tmp_path / "clean", layout))
    root = make_layout(tmp_path / "src", layout)
    add_hidden(root, layout)
    cat = load_catalog(root)
    relative = sorted(str(Path(p).relative_to(root)) for p in cat["path"])
    assert relative == sorted(str(Path(p).relative_to(tmp_path / "clean")) for p in clean["path"])
    assert not any(part.startswith(".") for r in relative for part in Path(r).parts)
    assert sorted(cat["wnid"].astype(str)) == sorted(clean["wnid"].astype(str))


# -- source_digest -------------------------------------------------------------------------------------------
def test_source_digest_is_stable_and_read_from_the_cached_catalog(tmp_path, monkeypatch):
    root = make_flat_val(tmp_path / "src")
    digest = source_digest(root)
    assert re.fullmatch(r"[0-9a-f]{32}", digest)
    scans = []
    real_scan = catalog_module.scan
    monkeypatch.setattr(catalog_module, "scan", lambda r: scans.append(r) or real_scan(r))
    assert source_digest(root) == digest and source_digest(str(root) + "/") == digest and scans == []
    load_catalog(root)
    assert source_digest(root) == digest and scans == []


def test_source_digest_is_the_listing_not_the_location_or_hidden_files(tmp_path):
    root = make_flat_val(tmp_path / "a")
    shutil.copytree(root, tmp_path / "b")
    digest = source_digest(root)
    assert source_digest(tmp_path / "b") == digest
    add_hidden(tmp_path / "b", "flat val")
    assert source_digest(tmp_path / "b") == digest


def test_source_digest_changes_when_an_image_is_added_or_renamed(tmp_path):
    root = make_imagenet(tmp_path / "src")
    before = source_digest(root)
    touch(root / "train" / WNIDS[1] / f"{WNIDS[1]}_new.JPEG")
    added = source_digest(root)
    (root / "train" / WNIDS[1] / f"{WNIDS[1]}_new.JPEG").rename(root / "train" / WNIDS[1] / f"{WNIDS[1]}_other.JPEG")
    assert len({before, added, source_digest(root)}) == 3


@pytest.mark.parametrize("name", ["ILSVRC2012_validation_ground_truth.txt", "map_clsloc.txt"])
def test_source_digest_changes_when_a_devkit_file_changes(tmp_path, name):
    root = make_flat_val(tmp_path / "src", devkit="meta")
    before = source_digest(root)
    text = (root / "meta" / name).read_text()
    rewrite_keeping_mtimes(root / "meta" / name, text + "\n")
    assert source_digest(root) != before


def make_world_part(world: Path, sha: str, name: str = "imagenet") -> Path:
    part = make_imagenet(world / name)
    (world / "world.json").write_text(json.dumps({"files": {name: {"count": 13, "bytes": 0, "sha256": sha}}}))
    return part


def test_source_digest_of_a_world_part_is_its_sha256_in_world_json(tmp_path):
    part = make_world_part(tmp_path / "world", "ab" * 32)
    first = source_digest(part)
    assert first == ("ab" * 32)[:32]
    make_world_part(tmp_path / "world", "cd" * 32)
    assert source_digest(part) == ("cd" * 32)[:32]
    other = make_imagenet(tmp_path / "world" / "other")  # not listed in world.json: identified by its listing
    assert source_digest(other) == source_digest(make_imagenet(tmp_path / "plain")) != first


def test_source_digest_refuses_a_bad_world_json(tmp_path):
    part = make_world_part(tmp_path / "world", "not a digest")
    with pytest.raises(UserError, match="world.json: files.imagenet.sha256 is 'not a digest'; expected"):
        source_digest(part)
    (tmp_path / "world" / "world.json").write_text("{")
    with pytest.raises(UserError, match="world.json is corrupt"):
        source_digest(part)


def test_source_digest_of_parquet_catalogs_is_their_content(tmp_path):
    frame = pd.DataFrame({"path": ["/a/x.JPEG", "/a/y.JPEG"], "wnid": ["n01440764", "n01443537"]})
    frame.to_parquet(tmp_path / "a.parquet")
    shutil.copy(tmp_path / "a.parquet", tmp_path / "copy.parquet")
    frame.assign(wnid=["n01440764", "n02084071"]).to_parquet(tmp_path / "b.parquet")
    a = source_digest(tmp_path / "a.parquet")
    assert re.fullmatch(r"[0-9a-f]{32}", a)
    assert source_digest(str(tmp_path / "copy.parquet")) == a != source_digest(tmp_path / "b.parquet")


def test_source_digest_of_the_demo_catalog_is_stable():
    digest = source_digest(DEMO)
    assert re.fullmatch(r"[0-9a-f]{32}", digest) and source_digest(DEMO) == digest


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: d / "missing", "source .*missing does not exist"),
        (lambda d: d / "gone.parquet", "catalog .*gone.parquet cannot be read"),
    ],
)
def test_source_digest_refuses_missing_sources(tmp_path, make, message):
    with pytest.raises(UserError, match=message):
        source_digest(make(tmp_path))
