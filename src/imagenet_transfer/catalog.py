"""Catalogs: every image of a pre-training source as one table `(path, wnid, split)`.

Input: a source folder in one of the layouts below, or a catalog already stored as Parquet.
Output: a pandas DataFrame; a scanned source is cached as Parquet under `cache_dir()/catalogs/` and
re-scanned only when one of its folders changed (files added, removed or renamed).

Layouts (`imagenet-transfer catalog scan DIR` tells which one it found):
  imagenet   train/<wnid>/*.JPEG, and optionally val/ foldered by wnid (val/<wnid>/*.JPEG) or flat
             (val/ILSVRC2012_val_NNNNNNNN.JPEG) with the devkit's ILSVRC2012_validation_ground_truth.txt
             and map_clsloc.txt in the source, its val/, devkit/data/ or meta/ folder
  flat       <wnid>_*.JPEG directly in the folder (split "train"), e.g. a sample of one image per class
  builtin:demo  a listing shaped like ILSVRC-2012 at 1/16 scale, with no image files (`demo_catalog`)
Paths are stored absolute. Only folder listings are read: no image is opened or stat'ed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from imagenet_transfer.errors import UserError
from imagenet_transfer.paths import cache_dir

COLUMNS = ("path", "wnid", "split")
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
WNID = re.compile(r"n\d{8}")
FLAT_NAME = re.compile(r"(n\d{8})_")
VAL_NUMBER = re.compile(r"ILSVRC2012_val_(\d{8})\.", re.IGNORECASE)
DEVKIT_FILES = ("ILSVRC2012_validation_ground_truth.txt", "map_clsloc.txt")
LAYOUT_HELP = (
    "expected an ImageNet layout (train/<wnid>/*.JPEG, optional val/), "
    "a flat folder of <wnid>_*.JPEG files, or a catalog .parquet with columns path, wnid"
)


def load_catalog(source: str | Path, *, refresh: bool = False) -> pd.DataFrame:
    """The catalog of `source`: a Parquet catalog read as is, or a scanned (and cached) folder."""
    if str(source) == DEMO:
        return demo_catalog()
    source = Path(source).expanduser()
    if source.suffix == ".parquet":
        return read_catalog(source)
    if not source.is_dir():
        raise UserError(f"source {source} does not exist or is not a folder; {LAYOUT_HELP}")
    root = source.resolve()
    cached = cache_dir() / "catalogs" / f"{hashlib.sha1(str(root).encode()).hexdigest()[:16]}.parquet"
    stamp = fingerprint(root)
    if not refresh and cached.exists():
        try:
            meta = pq.read_schema(cached).metadata or {}
            if json.loads(meta.get(b"imagenet_transfer", b"{}")).get("fingerprint") == stamp:
                return read_catalog(cached)
        except (OSError, ValueError, pa.ArrowException, UserError):
            pass  # an unreadable cache is rebuilt below
    catalog = scan(root)
    write_catalog(catalog, cached, {"source": str(root), "fingerprint": stamp})
    return catalog


def scan(root: Path) -> pd.DataFrame:
    """List the images of `root` (see the module docstring for the layouts)."""
    if (root / "train").is_dir():
        frames = [_scan_foldered(root / "train", "train")]
        if (root / "val").is_dir():
            frames.append(_scan_val(root))
        return _frame(pd.concat(frames, ignore_index=True))
    flat = _scan_flat(root)
    if flat.empty:
        raise UserError(f"source {root} is not in a known layout: no train/ folder and no <wnid>_*.JPEG files; {LAYOUT_HELP}")
    return flat


def read_catalog(path: Path) -> pd.DataFrame:
    """Read a Parquet catalog, checking it has at least `path` and `wnid` (and valid wnids)."""
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as err:
        raise UserError(f"catalog {path} cannot be read as Parquet ({err}); expected a .parquet file with columns path, wnid") from None
    missing = [c for c in ("path", "wnid") if c not in table.column_names]
    if missing:
        raise UserError(f"catalog {path} lacks column(s) {', '.join(missing)}; expected at least path, wnid (and optionally split)")
    frame = table.to_pandas()
    if "split" not in frame:
        frame["split"] = "train"
    bad = frame.loc[~frame["wnid"].astype(str).str.fullmatch(WNID.pattern), "wnid"]
    if len(bad):
        raise UserError(f"catalog {path} has {len(bad)} row(s) whose wnid is not like n01440764, e.g. {bad.iloc[0]!r}")
    return _frame(frame)


def write_catalog(catalog: pd.DataFrame, path: Path, metadata: dict | None = None) -> Path:
    """Write atomically (temporary file + rename), with `metadata` in the Parquet schema."""
    table = pa.Table.from_pandas(catalog[list(COLUMNS)], preserve_index=False)
    if metadata:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), b"imagenet_transfer": json.dumps(metadata).encode()})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def fingerprint(root: Path) -> str:
    """Modification times of the source and its class folders: changes when files come or go."""
    stamps = []
    for folder in (root, root / "train", root / "val"):
        if folder.is_dir():
            stamps.append((str(folder), folder.stat().st_mtime_ns))
            with os.scandir(folder) as entries:
                stamps += sorted((e.path, e.stat().st_mtime_ns) for e in entries if e.is_dir())
    return hashlib.sha1(json.dumps(stamps).encode()).hexdigest()


def describe(catalog: pd.DataFrame) -> pd.DataFrame:
    """Images per split and class counts, for printing."""
    return catalog.groupby("split", observed=True).agg(images=("path", "size"), classes=("wnid", "nunique"))


# -- layouts ----------------------------------------------------------------------------------
def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES)


def _scan_foldered(folder: Path, split: str) -> pd.DataFrame:
    paths, wnids = [], []
    with os.scandir(folder) as entries:
        class_dirs = sorted((e.name, e.path) for e in entries if e.is_dir())
    strays = [name for name, _ in class_dirs if not WNID.fullmatch(name)]
    if strays:
        raise UserError(f"{folder} holds folder(s) not named by wnid: {', '.join(strays[:5])}; {LAYOUT_HELP}")
    for wnid, class_dir in class_dirs:
        with os.scandir(class_dir) as entries:
            names = [e.name for e in entries if _is_image(e.name)]
        paths += [f"{class_dir}/{n}" for n in names]
        wnids += [wnid] * len(names)
    return pd.DataFrame({"path": paths, "wnid": wnids, "split": split})


def _scan_val(root: Path) -> pd.DataFrame:
    val = root / "val"
    with os.scandir(val) as entries:
        entries = list(entries)
    if any(e.is_dir() for e in entries):
        return _scan_foldered(val, "val")
    images = sorted(e.name for e in entries if _is_image(e.name))
    if not images:
        return pd.DataFrame({"path": [], "wnid": [], "split": []})
    truth = _devkit_labels(root)
    paths, wnids = [], []
    for name in images:
        match = VAL_NUMBER.search(name)
        if not match or not 1 <= int(match[1]) <= len(truth):
            raise UserError(f"{val / name}: expected ILSVRC2012_val_NNNNNNNN.JPEG with N in 1..{len(truth)} (devkit ground truth)")
        paths.append(str(val / name))
        wnids.append(truth[int(match[1]) - 1])
    return pd.DataFrame({"path": paths, "wnid": wnids, "split": "val"})


def _devkit_labels(root: Path) -> list[str]:
    """Validation wnids in image order, from the devkit's ground truth and map_clsloc.txt."""
    for folder in (root, root / "val", root / "devkit" / "data", root / "meta"):
        if all((folder / f).is_file() for f in DEVKIT_FILES):
            ids = {}
            for line in (folder / "map_clsloc.txt").read_text().splitlines():
                if line.strip():
                    wnid, devkit_id, _ = line.split(maxsplit=2)
                    ids[devkit_id] = wnid
            lines = (folder / DEVKIT_FILES[0]).read_text().split()
            try:
                return [ids[i] for i in lines]
            except KeyError as err:
                raise UserError(f"{folder / DEVKIT_FILES[0]}: devkit id {err} is not in map_clsloc.txt") from None
    raise UserError(
        f"{root / 'val'} is a flat folder of images but {' and '.join(DEVKIT_FILES)} were not found in "
        f"{root}, its val/, devkit/data/ or meta/; expected them, or val/ foldered by wnid"
    )


def _scan_flat(root: Path) -> pd.DataFrame:
    with os.scandir(root) as entries:
        names = sorted(e.name for e in entries if _is_image(e.name))
    rows = [(f"{root}/{n}", m[1]) for n in names if (m := FLAT_NAME.match(n))]
    return _frame(pd.DataFrame(rows, columns=["path", "wnid"]).assign(split="train"))


def _frame(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame[list(COLUMNS)].astype({"path": str, "wnid": "category", "split": "category"})
    return frame.reset_index(drop=True)


# -- the built-in demo catalog ----------------------------------------------------------------------
DEMO = "builtin:demo"


def demo_catalog(seed: int = 0) -> pd.DataFrame:
    """A listing (no image files) shaped like ILSVRC-2012 at 1/16 scale: all 1000 classes with
    45-81 train images each (ImageNet: 732-1300) and 3 val images. Subsets can be built and
    inspected on it without any data; it is what `subset` uses when no source is given."""
    import numpy as np

    from imagenet_transfer.taxonomy import load_taxonomy

    rng = np.random.default_rng(seed)
    paths, wnids, splits = [], [], []
    for wnid in load_taxonomy().classes:
        n_train = int(rng.integers(45, 82))
        paths += [f"demo/train/{wnid}/{wnid}_{i}.JPEG" for i in range(n_train)]
        paths += [f"demo/val/{wnid}/{wnid}_val_{i}.JPEG" for i in range(3)]
        wnids += [wnid] * (n_train + 3)
        splits += ["train"] * n_train + ["val"] * 3
    return _frame(pd.DataFrame({"path": paths, "wnid": wnids, "split": splits}))
