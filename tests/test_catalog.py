from pathlib import Path

import pandas as pd
import pytest

from conftest import cli, realdata
from imagenet_transfer import catalog as catalog_module
from imagenet_transfer.catalog import DEMO, hash_file_names, load_catalog, read_catalog, write_catalog
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
        (lambda d: pd.DataFrame({"path": ["x"], "wnid": ["cat"]}).to_parquet(d / "c.parquet") or d / "c.parquet", "not like n01440764"),
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
    paths = pd.Series(["/a/b/n01_1.JPEG", "/mnt/x/n01_1.JPEG", "n01_1.JPEG", "/a/b/n01_2.JPEG", "/a/b/", "x", "/a/b/n01_1.JPEG.bak"])
    h = hash_file_names(paths)
    assert h[0] == h[1] == h[2] and len({h[0], h[3], h[4], h[5], h[6]}) == 5
    chunked = pd.Series(pd.arrays.ArrowStringArray(__import__("pyarrow").chunked_array([paths[:3], paths[3:]])))
    assert (hash_file_names(chunked) == h).all()
