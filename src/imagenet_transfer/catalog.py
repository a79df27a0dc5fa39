"""Catalogs: every image of a pre-training source as one table `(path, wnid, split)`.

Input: a source folder in one of the layouts below, or a catalog already stored as Parquet.
Output: a pandas DataFrame; a scanned source is cached as Parquet under `cache_dir()/catalogs/` and
re-scanned only when one of its folders changed (files added, removed or renamed) or the content of its
devkit files changed.

Layouts (`imagenet-transfer catalog scan DIR` tells which one it found):
  imagenet   train/<wnid>/*.JPEG, and optionally val/ foldered by wnid (val/<wnid>/*.JPEG) or flat
             (val/ILSVRC2012_val_NNNNNNNN.JPEG) with the devkit's ILSVRC2012_validation_ground_truth.txt
             and map_clsloc.txt in the source, its val/, devkit/data/ or meta/ folder
  flat       <wnid>_*.JPEG directly in the folder (split "train"), e.g. a sample of one image per class
  builtin:demo  a listing shaped like ILSVRC-2012 at 1/16 scale, with no image files (`demo_catalog`)
Paths are stored absolute. Only folder listings are read: no image is opened or stat'ed. Names starting
with "." (`.DS_Store`, `._*` resource forks, `.partial` folders) are never catalogued.

`source_digest` identifies a source's content: a .parquet by its bytes, a synthetic world part by the hash
in world.json, a folder by its listing (names, wnids, splits) and devkit files; images are not re-hashed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from imagenet_transfer.errors import UserError
from imagenet_transfer.paths import cache_dir

COLUMNS = ("path", "wnid", "split", "name_hash")
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
WNID = re.compile(r"n\d{8}")
FLAT_NAME = re.compile(r"(n\d{8})_")
VAL_NUMBER = re.compile(r"ILSVRC2012_val_(\d{8})\.", re.IGNORECASE)
DEVKIT_FILES = ("ILSVRC2012_validation_ground_truth.txt", "map_clsloc.txt")
DEVKIT_FOLDERS = (".", "val", "devkit/data", "meta")  # searched in this order, relative to the source
CACHE_FORMAT = 2  # 2: devkit contents in the fingerprint, hidden names skipped, listing digest stored
DIGEST_CHARS = 32
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
    return _cached(_source_folder(source), refresh=refresh, read=True)[0]


def source_digest(source: str | Path) -> str:
    """A hex digest of the content of a pre-training source (any `load_catalog` source), for cache keys.

    A .parquet: the SHA-256 of its bytes; DEMO: of the demo rows; a part of a synthetic world (its parent
    holds world.json listing it): the part's `sha256` there; any other folder: the digest of its listing
    and devkit files, computed when it is scanned and kept with the cached catalog.
    """
    if str(source) == DEMO:
        return _demo_digest()
    source = Path(source).expanduser()
    if source.suffix == ".parquet":
        return _file_digest(source)
    root = _source_folder(source)
    return _world_part_digest(root) or _cached(root, refresh=False, read=False)[1]


def _source_folder(source: Path) -> Path:
    if not source.is_dir():
        raise UserError(f"source {source} does not exist or is not a folder; {LAYOUT_HELP}")
    return source.resolve()


def _cached(root: Path, *, refresh: bool, read: bool) -> tuple[pd.DataFrame | None, str]:
    """The catalog of folder `root` (None unless `read`) and its listing digest, from the cache when current."""
    cached = cache_dir() / "catalogs" / f"{hashlib.sha1(str(root).encode()).hexdigest()[:16]}.parquet"
    devkit = _devkit_hashes(root)
    stamp = _fingerprint(root, devkit)
    if not refresh and cached.exists():
        try:
            meta = json.loads((pq.read_schema(cached).metadata or {}).get(b"imagenet_transfer", b"{}"))
            if meta.get("fingerprint") == stamp and isinstance(meta.get("digest"), str):
                return (read_catalog(cached) if read else None), meta["digest"]
        except (OSError, ValueError, pa.ArrowException, UserError):
            pass  # an unreadable cache is rebuilt below
    catalog = scan(root)
    digest = _listing_digest(catalog, root, devkit)
    write_catalog(catalog, cached, {"source": str(root), "fingerprint": stamp, "digest": digest})
    return catalog, digest


def scan(root: Path) -> pd.DataFrame:
    """List the images of `root` (see the module docstring for the layouts)."""
    if (root / "train").is_dir():
        frames = [_scan_foldered(root / "train", "train")]
        if (root / "val").is_dir():
            frames.append(_scan_val(root))
        return _frame(pd.concat(frames, ignore_index=True))
    flat = _scan_flat(root)
    if flat.empty:
        raise UserError(
            f"source {root} is not in a known layout: no train/ folder and no <wnid>_*.JPEG files; {LAYOUT_HELP}"
        )
    return flat


def read_catalog(path: Path) -> pd.DataFrame:
    """Read a Parquet catalog, checking it has at least `path` and `wnid` (and valid wnids)."""
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as err:
        raise UserError(
            f"catalog {path} cannot be read as Parquet ({err}); expected a .parquet file with columns path, wnid"
        ) from None
    missing = [c for c in ("path", "wnid") if c not in table.column_names]
    if missing:
        raise UserError(
            f"catalog {path} lacks column(s) {', '.join(missing)}; expected at least path, wnid (and optionally split)"
        )
    frame = table.to_pandas()
    if "split" not in frame:
        frame["split"] = "train"
    if "name_hash" in frame and frame["name_hash"].dtype != np.uint64:
        frame = frame.drop(columns="name_hash")
    frame = _frame(frame)
    bad = [w for w in frame["wnid"].cat.categories if not WNID.fullmatch(str(w))]
    if bad:
        raise UserError(f"catalog {path} has {len(bad)} wnid(s) not like n01440764, e.g. {bad[0]!r}")
    return frame


def write_catalog(catalog: pd.DataFrame, path: Path, metadata: dict | None = None) -> Path:
    """Write atomically (temporary file + rename), with `metadata` in the Parquet schema."""
    table = pa.Table.from_pandas(_frame(catalog), preserve_index=False)
    if metadata:
        table = table.replace_schema_metadata(
            {**(table.schema.metadata or {}), b"imagenet_transfer": json.dumps(metadata).encode()}
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def fingerprint(root: Path) -> str:
    """Modification times of the source and its class folders (changes when files come or go), and the
    SHA-256 of the devkit files the val labels are read from (changes when they are rewritten)."""
    return _fingerprint(root, _devkit_hashes(root))


def _fingerprint(root: Path, devkit: dict[str, str]) -> str:
    stamps: list = [("format", CACHE_FORMAT), ("devkit", sorted(devkit.items()))]
    for folder in (root, root / "train", root / "val"):
        if folder.is_dir():
            stamps.append((str(folder), folder.stat().st_mtime_ns))
            with os.scandir(folder) as entries:
                stamps += sorted((e.path, e.stat().st_mtime_ns) for e in entries if _visible(e.name) and e.is_dir())
    return hashlib.sha1(json.dumps(stamps).encode()).hexdigest()


def _listing_digest(catalog: pd.DataFrame, root: Path, devkit: dict[str, str] | None = None) -> str:
    """A digest of a scanned catalog: file names relative to `root`, wnid and split of every row (in any
    order), and the devkit files' content hashes (`_devkit_hashes`)."""
    names = pc.utf8_slice_codeunits(_strings(catalog["path"]), len(str(root).rstrip("/")) + 1)
    tab = pa.scalar("\t", pa.large_string())
    rows = pc.binary_join_element_wise(names, _strings(catalog["wnid"]), _strings(catalog["split"]), tab)
    rows = rows.take(pc.sort_indices(rows))  # any row order gives the same digest
    offsets = np.frombuffer(rows.buffers()[1], dtype=np.int64)[rows.offset : rows.offset + len(rows) + 1]
    h = hashlib.sha256(f"catalog listing {CACHE_FORMAT}\n".encode())
    h.update(np.diff(offsets).tobytes())  # row lengths, then the rows' bytes
    if len(rows):
        h.update(memoryview(rows.buffers()[2])[offsets[0] : offsets[-1]])
    h.update(json.dumps(sorted((devkit or {}).items())).encode())
    return h.hexdigest()[:DIGEST_CHARS]


def _strings(column: pd.Series) -> pa.LargeStringArray:
    array = pa.array(column)
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    if isinstance(array.type, pa.DictionaryType):
        array = array.dictionary_decode()
    return array.cast(pa.large_string())


def describe(catalog: pd.DataFrame) -> pd.DataFrame:
    """Images per split and class counts, for printing."""
    return catalog.groupby("split", observed=True).agg(images=("path", "size"), classes=("wnid", "nunique"))


# -- layouts ----------------------------------------------------------------------------------
def _visible(name: str) -> bool:
    return not name.startswith(".")


def _is_image(name: str) -> bool:
    return _visible(name) and name.lower().endswith(IMAGE_SUFFIXES)


def _scan_foldered(folder: Path, split: str) -> pd.DataFrame:
    paths, wnids = [], []
    with os.scandir(folder) as entries:
        class_dirs = sorted((e.name, e.path) for e in entries if _visible(e.name) and e.is_dir())
    strays = [name for name, _ in class_dirs if not WNID.fullmatch(name)]
    if strays:
        raise UserError(f"{folder} holds folder(s) not named by wnid: {', '.join(strays[:5])}; {LAYOUT_HELP}")
    for wnid, class_dir in class_dirs:
        with os.scandir(class_dir) as entries:
            names = sorted(e.name for e in entries if _is_image(e.name))
        paths += [f"{class_dir}/{n}" for n in names]
        wnids += [wnid] * len(names)
    return pd.DataFrame({"path": paths, "wnid": wnids, "split": split})


def _scan_val(root: Path) -> pd.DataFrame:
    val = root / "val"
    with os.scandir(val) as entries:
        entries = [e for e in entries if _visible(e.name)]
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
            raise UserError(
                f"{val / name}: expected ILSVRC2012_val_NNNNNNNN.JPEG with N in 1..{len(truth)} (devkit ground truth)"
            )
        paths.append(str(val / name))
        wnids.append(truth[int(match[1]) - 1])
    return pd.DataFrame({"path": paths, "wnid": wnids, "split": "val"})


def _devkit_folder(root: Path) -> Path | None:
    """The first folder of `DEVKIT_FOLDERS` that holds both devkit files, if any."""
    for name in DEVKIT_FOLDERS:
        folder = root / name
        if all((folder / f).is_file() for f in DEVKIT_FILES):
            return folder
    return None


def _devkit_hashes(root: Path) -> dict[str, str]:
    """The SHA-256 of each devkit file `_devkit_labels` would read, by path relative to `root`."""
    folder = _devkit_folder(root)
    if folder is None:
        return {}
    try:
        contents = {(folder / f).relative_to(root).as_posix(): (folder / f).read_bytes() for f in DEVKIT_FILES}
    except OSError as err:
        raise UserError(
            f"devkit files in {folder} cannot be read ({err}); expected readable {' and '.join(DEVKIT_FILES)}"
        ) from None
    return {name: hashlib.sha256(data).hexdigest() for name, data in contents.items()}


def _devkit_labels(root: Path) -> list[str]:
    """Validation wnids in image order, from the devkit's ground truth and map_clsloc.txt."""
    folder = _devkit_folder(root)
    if folder is not None:
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


def name_hashes(catalog: pd.DataFrame) -> np.ndarray:
    """The `name_hash` column of a catalog, computed when the table lacks it."""
    if "name_hash" in catalog:
        return catalog["name_hash"].to_numpy(dtype=np.uint64)
    return hash_file_names(catalog["path"])


def hash_file_names(paths: pd.Series) -> np.ndarray:
    """A 64-bit hash of each path's file name (the part after the last '/').

    Subsets rank images by it (seeded), so a selection does not depend on where the data is mounted
    or on row order. Computed on the Arrow buffers, 8 bytes of every name per numpy pass: an
    ImageNet-sized catalog hashes in a fraction of a second; catalogs store it as `name_hash`.
    """
    array = pa.array(paths, type=pa.large_string())
    chunks = array.chunks if isinstance(array, pa.ChunkedArray) else [array]
    return np.concatenate([_hash_chunk(chunk) for chunk in chunks] or [np.zeros(0, np.uint64)])


def _hash_chunk(chunk: pa.LargeStringArray) -> np.ndarray:
    if chunk.null_count:
        raise UserError("the catalog has rows without a path; expected a file path on every row")
    if len(chunk) == 0:
        return np.zeros(0, np.uint64)
    offsets = np.frombuffer(chunk.buffers()[1], dtype=np.int64)[chunk.offset : chunk.offset + len(chunk) + 1]
    data = np.frombuffer(chunk.buffers()[2], dtype=np.uint8)
    lows, ends = offsets[:-1], offsets[1:]
    starts, todo, back = lows.copy(), np.arange(len(ends)), 1
    while len(todo):  # find the last '/' of every path, scanning back one byte per pass
        pos = ends[todo] - back
        inside = pos >= lows[todo]
        slash = inside & (data[np.maximum(pos, 0)] == ord("/"))
        starts[todo[slash]] = pos[slash] + 1
        todo, back = todo[inside & ~slash], back + 1
    lengths = ends - starts
    if len(data) < 8:
        data = np.concatenate([data, np.zeros(8 - len(data), np.uint8)])
    windows = np.lib.stride_tricks.as_strided(data, shape=(len(data) - 7, 8), strides=(1, 1))
    hashes = lengths.astype(np.uint64)
    with np.errstate(over="ignore"):
        for k in range(0, int(lengths.max()), 8):
            at = starts + k
            clamped = np.minimum(at, len(data) - 8)  # the last bytes of the buffer: read earlier, shift
            word = windows[clamped].view("<u8").ravel() >> ((at - clamped).astype(np.uint64) * np.uint64(8))
            left = np.clip(lengths - k, 0, 8).astype(np.uint64)
            mask = np.where(left >= 8, ~np.uint64(0), (np.uint64(1) << (left * np.uint64(8))) - np.uint64(1))
            hashes = (hashes ^ (word & mask)) * np.uint64(0x100000001B3)
    return hashes


def _frame(frame: pd.DataFrame) -> pd.DataFrame:
    if "name_hash" not in frame:
        frame = frame.assign(name_hash=hash_file_names(frame["path"]))
    types = {"path": str, "wnid": "category", "split": "category", "name_hash": "uint64"}
    frame = frame[list(COLUMNS)].astype({c: t for c, t in types.items() if str(frame[c].dtype) != t})
    return frame.reset_index(drop=True)


# -- the built-in demo catalog ----------------------------------------------------------------------
DEMO = "builtin:demo"


def demo_catalog(seed: int = 0) -> pd.DataFrame:
    """A listing (no image files) shaped like ILSVRC-2012 at 1/16 scale: all 1000 classes with
    45-81 train images each (ImageNet: 732-1300) and 3 val images. Subsets can be built and
    inspected on it without any data; it is what `subset` uses when no source is given."""
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


ILSVRC_TRAIN_IMAGES = 1_281_167  # ILSVRC-2012 train: 1000 classes of 732-1300 images, 50 val images each


def ilsvrc_shaped_catalog() -> pd.DataFrame:
    """A listing (no image files) with ILSVRC-2012's shape: the 1000 classes, 1,281,167 train images, 732 to 1300
    a class (one class of 732, 114 of 1140, one of 1275, the rest 1300), and 50 val images each. Enough to plan
    the real-scale grid (`reproduce --scale real --plan --source <this as .parquet>`) without the data."""
    from imagenet_transfer.taxonomy import load_taxonomy

    classes = load_taxonomy().classes
    counts = np.full(len(classes), 1300)
    counts[0], counts[1:115], counts[115] = 732, 1140, 1275
    assert counts.sum() == ILSVRC_TRAIN_IMAGES and counts.min() == 732
    paths, wnids, splits = [], [], []
    for wnid, n_train in zip(classes, counts):
        paths += [f"ilsvrc/train/{wnid}/{wnid}_{i}.JPEG" for i in range(n_train)]
        paths += [f"ilsvrc/val/{wnid}/{wnid}_val_{i}.JPEG" for i in range(50)]
        wnids += [wnid] * (int(n_train) + 50)
        splits += ["train"] * int(n_train) + ["val"] * 50
    return _frame(pd.DataFrame({"path": paths, "wnid": wnids, "split": splits}))


@lru_cache(maxsize=1)
def _demo_digest() -> str:
    """A digest of the demo catalog's rows (path, wnid, split, in order)."""
    demo = demo_catalog()
    rows = demo["path"] + "\t" + demo["wnid"].astype(str) + "\t" + demo["split"].astype(str)
    return hashlib.sha256(("demo\n" + "\n".join(rows)).encode()).hexdigest()[:DIGEST_CHARS]


# -- digests of other sources -------------------------------------------------------------------------
def _file_digest(path: Path) -> str:
    """The SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
    except OSError as err:
        raise UserError(
            f"catalog {path} cannot be read ({err.strerror or err}); expected a .parquet file with columns path, wnid"
        ) from None
    return h.hexdigest()[:DIGEST_CHARS]


def _world_part_digest(root: Path) -> str | None:
    """The `sha256` that the world.json beside `root` lists for the part named like `root`, or None when
    `root` is not a part of a synthetic world."""
    manifest = root.parent / "world.json"
    if not manifest.is_file():
        return None
    try:
        world = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{manifest} is corrupt ({err}); expected the world.json of a synthetic world") from None
    files = world.get("files") if isinstance(world, dict) else None
    if not isinstance(files, dict) or root.name not in files:
        return None
    sha = files[root.name].get("sha256") if isinstance(files[root.name], dict) else None
    if not isinstance(sha, str) or not re.fullmatch(r"[0-9a-f]{64}", sha):
        raise UserError(f"{manifest}: files.{root.name}.sha256 is {sha!r}; expected the part's 64-hex-digit SHA-256")
    return sha[:DIGEST_CHARS]
