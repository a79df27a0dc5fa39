"""Prepared shards: a subset's images decoded and resized once, stored in a few large memory-mappable files.

    from imagenet_transfer.shards import ShardOptions, ShardSet, write_shards
    options = ShardOptions(format="raw", side=256)              # or format="jpeg", quality=90
    folder = shards_root() / options.key(manifest_digest)      # content-addressed: digest + options
    write_shards(folder, records, options, manifest_digest, workers=15, on_progress=print)
    shards = ShardSet.open(folder, manifest_digest=manifest_digest)   # UserError when stale/truncated/tampered

Input: `Records` (paths, labels, splits in manifest order). Output: a folder with
    train-00000.bin ...   records back to back: raw uint8 side×side×3 (HWC), or JPEG bytes at `quality`
    train-00000.json      that shard's records (manifest rows, labels, offsets, sizes), its bytes and sha256,
                          the unreadable images it skipped; written atomically after its .bin
    index.npz             every split's records (shard, offset, size, label, row)
    index.json            written last: options, manifest digest, shards (file, bytes, sha256), counts, skipped
                          images, the sha256 of index.npz and of itself. A folder without it is no shard set.
Images are resized exactly as `data.Transform` resizes them (square side×side, antialiased, from the same
decode), so raw shards hold the very pixels the loose-file path crops from.

Resumable: a rerun skips every shard whose .json exists and whose .bin has the size it records; an interrupted
shard leaves only a dot-prefixed temporary file, which is removed. Preparing a finished folder again verifies
every sha256 and rebuilds the damaged shards (and the index) only. Bad input raises `UserError` naming the shard:
a .bin whose size (or, with `verify="full"`, sha256) differs from the index, an index that does not match its
checksum, shards of another manifest or other options. This module imports no MLflow and no pandas (the GPU
benchmark runs with torch, torchvision, numpy and pillow only); `prepare` is the stage that logs.
"""

from __future__ import annotations

import errno
import hashlib
import itertools
import json
import os
import shutil
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from imagenet_transfer.config import Settings
from imagenet_transfer.errors import UserError
from imagenet_transfer.paths import cache_dir

FORMATS = ("raw", "jpeg")
FORMAT_VERSION = 1
SPLITS = ("train", "val")
INDEX_FIELDS = ("shard", "offset", "size", "label", "row")


def shards_root() -> Path:
    return cache_dir() / "shards"


class ShardOptions(Settings):
    """How images are stored: `format` raw|jpeg, square `side` px, JPEG `quality`, records per shard file."""

    format: Literal[FORMATS] = "jpeg"
    side: int = Field(256, ge=8, le=4096)
    quality: int = Field(90, ge=1, le=100)
    images_per_shard: int = Field(1024, ge=1)

    @property
    def record_bytes(self) -> int:
        """Bytes of one raw record."""
        return self.side * self.side * 3

    def key(self, manifest_digest: str) -> str:
        """Names the shard folder: the manifest's digest and every option that changes the bytes."""
        fields = self.to_dict() | {"manifest_digest": manifest_digest, "version": FORMAT_VERSION}
        if self.format == "raw":
            fields.pop("quality")
        blob = json.dumps(fields, sort_keys=True).encode()
        return f"{self.format}{self.side}-{manifest_digest[:12]}-{hashlib.sha256(blob).hexdigest()[:12]}"


@dataclass(frozen=True)
class Records:
    """What to prepare, in manifest order: image paths, integer labels, split of each ("train"/"val")."""

    paths: Sequence[str]
    labels: Sequence[int]
    splits: Sequence[str]


def choose_format(images: int, side: int, ram_share: float, ram_bytes: int | None = None) -> str:
    """`--format auto`: raw when the raw shards fit in `ram_share` of the machine's RAM, JPEG otherwise."""
    ram = ram_bytes if ram_bytes is not None else os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return "raw" if images * side * side * 3 <= ram_share * ram else "jpeg"


# -- writing ---------------------------------------------------------------------------------------
def _tasks(records: Records, options: ShardOptions) -> list[tuple[str, np.ndarray]]:
    """(shard name, manifest rows) of every shard, train first, each split in manifest order."""
    splits = np.asarray(records.splits).astype(str)
    unknown = sorted(set(splits) - set(SPLITS))
    if unknown:
        raise UserError(f"records have split(s) {', '.join(unknown)}; expected {', '.join(SPLITS)}")
    tasks = []
    for split in SPLITS:
        rows = np.flatnonzero(splits == split)
        for i, start in enumerate(range(0, len(rows), options.images_per_shard)):
            tasks.append((f"{split}-{i:05d}", rows[start : start + options.images_per_shard]))
    return tasks


def resize_record(path: str, side: int):
    """uint8 3×side×side image of `path`, resized as `data.Transform` resizes (RuntimeError/OSError if bad)."""
    import torchvision.transforms.v2.functional as F

    from imagenet_transfer.data import decode

    return F.resize(decode(path), [side, side], antialias=True)


def encode_record(image, options: ShardOptions) -> bytes:
    """The stored bytes of a uint8 CHW image: raw HWC, or a JPEG at `options.quality`."""
    if options.format == "raw":
        return image.permute(1, 2, 0).contiguous().numpy().tobytes()
    from torchvision.io import encode_jpeg

    return encode_jpeg(image, quality=options.quality).numpy().tobytes()


def _write_json(path: Path, content: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(content, indent=1))
    os.replace(tmp, path)


def _no_space(folder: Path, err: OSError) -> UserError:
    return UserError(
        f"the disk under {folder} ran out of space while writing shards ({err.strerror}); "
        "expected enough free space (the unfinished shard was removed; rerun to resume)"
    )


def _write_shard(
    folder: str, name: str, rows: np.ndarray, paths: list[str], labels: list[int], options: ShardOptions, key: str
) -> dict:
    """Write one shard (.bin, then its .json), atomically; returns its .json content. Runs in a worker."""
    import torch

    torch.set_num_threads(1)
    folder_path = Path(folder)
    tmp = folder_path / f".{name}.bin.{os.getpid()}.tmp"
    digest, offsets, sizes, kept, skipped, position = hashlib.sha256(), [], [], [], {}, 0
    try:
        with open(tmp, "wb") as out:
            for row, path, label in zip(rows.tolist(), paths, labels):
                try:
                    data = encode_record(resize_record(path, options.side), options)
                except (RuntimeError, OSError, ValueError) as err:
                    skipped[path] = str(err).splitlines()[-1][-200:] if str(err) else type(err).__name__
                    continue
                out.write(data)
                digest.update(data)
                offsets.append(position)
                sizes.append(len(data))
                kept.append((row, int(label)))
                position += len(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, folder_path / f"{name}.bin")
    except OSError as err:
        tmp.unlink(missing_ok=True)
        if err.errno == errno.ENOSPC:
            raise _no_space(folder_path, err) from None
        raise
    meta = {
        "name": name,
        "key": key,
        "bytes": position,
        "sha256": digest.hexdigest(),
        "rows": [r for r, _ in kept],
        "labels": [lab for _, lab in kept],
        "offsets": offsets,
        "sizes": sizes,
        "skipped": skipped,
    }
    _write_json(folder_path / f"{name}.json", meta)
    return meta


def _finished(folder: Path, name: str, key: str) -> dict | None:
    """The .json of a shard an earlier run finished (and whose .bin is whole), else None."""
    meta_path, bin_path = folder / f"{name}.json", folder / f"{name}.bin"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        return None
    if meta.get("key") != key or not bin_path.exists() or bin_path.stat().st_size != meta.get("bytes"):
        return None
    return meta


def estimate_bytes(records: Records, options: ShardOptions, sample: int = 8) -> int:
    """Bytes the shards will take: exact for raw; for JPEG, the mean size of a few encoded images × count."""
    n = len(records.paths)
    if options.format == "raw" or n == 0:
        return n * options.record_bytes
    sizes = []
    for i in np.linspace(0, n - 1, min(sample, n)).round().astype(int):
        try:
            sizes.append(len(encode_record(resize_record(str(records.paths[i]), options.side), options)))
        except (RuntimeError, OSError, ValueError):
            continue
    per_image = np.mean(sizes) if sizes else options.record_bytes / 4
    return int(n * per_image * 1.15) + 65536


def check_disk(folder: Path, needed: int) -> None:
    """UserError when the disk under `folder` has less than `needed` bytes free."""
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise UserError(
            f"the shards need about {needed / 2**30:.2f} GiB in {folder} but only {free / 2**30:.2f} "
            "GiB are free; expected a disk with room (give --out elsewhere, or --format jpeg)"
        )


def write_shards(
    folder: Path,
    records: Records,
    options: ShardOptions,
    manifest_digest: str,
    *,
    workers: int = 0,
    on_progress: Callable[[int, int], None] | None = None,
    on_shard: Callable[[int, int], None] | None = None,
) -> dict:
    """Prepare (or finish preparing) the shards of `records` in `folder`; returns the index (index.json).

    `workers` processes write shards in parallel (0: in this process). The index returned also says how
    many images this call wrote (`written_images`). `on_progress(images_done, images)`
    after each shard; `on_shard(shards_done, shards)` too (an exception it raises stops the run; the finished
    shards stay and a rerun skips them). Checks the free disk space before writing.
    """
    folder = Path(folder)
    key = options.key(manifest_digest)
    folder.mkdir(parents=True, exist_ok=True)
    index_path = folder / "index.json"
    if index_path.exists():
        existing = json.loads(index_path.read_text())
        if existing.get("key") != key:
            raise UserError(
                f"{folder} holds shards of another manifest or other options (key "
                f"{existing.get('key')}, expected {key}); expected an empty folder or this key's"
            )
        try:
            return ShardSet.open(folder, manifest_digest=manifest_digest, options=options, verify="full").info
        except UserError:  # damaged: drop the index and the damaged shards, then rebuild those below
            for shard in existing.get("shards", []):
                path = folder / shard["file"]
                if not path.exists() or path.stat().st_size != shard["bytes"] or _sha256(path) != shard["sha256"]:
                    path.unlink(missing_ok=True)
            index_path.unlink()
    for stale in folder.glob(".*.tmp"):  # an interrupted shard or json
        stale.unlink()
    tasks = _tasks(records, options)
    metas: dict[str, dict] = {}
    for name, _ in tasks:
        meta = _finished(folder, name, key)
        if meta is not None:
            metas[name] = meta
    todo = [(name, rows) for name, rows in tasks if name not in metas]
    done_bytes = sum(m["bytes"] for m in metas.values())
    todo_records = Records([records.paths[r] for _, rows in todo for r in rows], [], [])
    check_disk(folder, estimate_bytes(todo_records, options))
    total_images = len(records.paths)
    done_images = sum(len(rows) for name, rows in tasks if name in metas)

    def finished(meta: dict, count: int) -> None:
        nonlocal done_images, done_bytes
        metas[meta["name"]] = meta
        done_images += count
        done_bytes += meta["bytes"]
        if on_progress is not None:
            on_progress(done_images, total_images)
        if on_shard is not None:
            on_shard(len(metas), len(tasks))

    def args(name: str, rows: np.ndarray) -> tuple:
        return (
            str(folder),
            name,
            rows,
            [str(records.paths[r]) for r in rows],
            [int(records.labels[r]) for r in rows],
            options,
            key,
        )

    if workers <= 0:
        for name, rows in todo:
            finished(_write_shard(*args(name, rows)), len(rows))
    else:
        pool = ProcessPoolExecutor(max_workers=workers)
        try:
            pending = {}
            queue = iter(todo)
            for name, rows in queue:  # keep 2 tasks per worker in flight, so a stop leaves little unfinished
                pending[pool.submit(_write_shard, *args(name, rows))] = len(rows)
                if len(pending) >= 2 * workers:
                    break
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    finished(future.result(), pending.pop(future))
                    following = next(queue, None)
                    if following is not None:
                        pending[pool.submit(_write_shard, *args(*following))] = len(following[1])
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    info = _write_index(folder, [metas[name] for name, _ in tasks], options, manifest_digest, key)
    return {**info, "written_images": sum(len(rows) for _, rows in todo)}  # this run's share (not in the file)


def _write_index(folder: Path, metas: list[dict], options: ShardOptions, manifest_digest: str, key: str) -> dict:
    columns: dict[str, dict[str, list]] = {s: {f: [] for f in INDEX_FIELDS} for s in SPLITS}
    shards, skipped = [], {s: {} for s in SPLITS}
    for number, meta in enumerate(metas):
        split = meta["name"].split("-")[0]
        shards.append({"file": f"{meta['name']}.bin", "bytes": meta["bytes"], "sha256": meta["sha256"]})
        col = columns[split]
        col["shard"] += [number] * len(meta["rows"])
        col["offset"] += meta["offsets"]
        col["size"] += meta["sizes"]
        col["label"] += meta["labels"]
        col["row"] += meta["rows"]
        skipped[split].update(meta["skipped"])
    arrays = {f"{s}_{f}": np.asarray(columns[s][f], dtype=np.int64) for s in SPLITS for f in INDEX_FIELDS}
    tmp = folder / f".index.npz.{os.getpid()}.tmp"
    with open(tmp, "wb") as out:
        np.savez(out, **arrays)
    os.replace(tmp, folder / "index.npz")
    info = {
        "key": key,
        "version": FORMAT_VERSION,
        "manifest_digest": manifest_digest,
        "options": options.to_dict(),
        "counts": {s: len(columns[s]["row"]) for s in SPLITS},
        "bytes": sum(s["bytes"] for s in shards),
        "shards": shards,
        "skipped": skipped,
        "index_sha256": _sha256(folder / "index.npz"),
    }
    info["self_sha256"] = _self_digest(info)
    _write_json(folder / "index.json", info)  # the per-shard .json files stay: a repair rebuilds only damaged shards
    return info


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _self_digest(info: dict) -> str:
    body = {k: v for k, v in info.items() if k != "self_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def find_prepared(manifest_digest: str, side: int, root: Path | None = None) -> Path | None:
    """The prepared shard folder of this manifest at this side (raw preferred over JPEG), or None."""
    root = shards_root() if root is None else root
    found = []
    for index in sorted(root.glob(f"*{side}-{manifest_digest[:12]}-*/index.json")):
        try:
            info = json.loads(index.read_text())
        except (OSError, ValueError):
            continue
        if info.get("manifest_digest") == manifest_digest and info.get("options", {}).get("side") == side:
            found.append((info["options"]["format"] != "raw", index.parent))
    return min(found)[1] if found else None


# -- reading ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SplitIndex:
    """One split's records: arrays of shard number, byte offset, size, label and manifest row."""

    shard: np.ndarray
    offset: np.ndarray
    size: np.ndarray
    label: np.ndarray
    row: np.ndarray

    def __len__(self) -> int:
        return len(self.row)


class ShardSet:
    """An opened, checked shard folder; reads records through read-only memory maps (opened lazily per
    process, so DataLoader workers can share one `ShardSet`)."""

    def __init__(self, folder: Path, info: dict, splits: dict[str, SplitIndex]) -> None:
        self.folder, self.info, self.splits = folder, info, splits
        self.options = ShardOptions(**info["options"])
        self.files = [folder / s["file"] for s in info["shards"]]
        self._maps: dict[int, np.ndarray] = {}
        self._pid = os.getpid()

    @classmethod
    def open(
        cls,
        folder: Path | str,
        *,
        manifest_digest: str | None = None,
        options: ShardOptions | None = None,
        verify: str = "size",
    ) -> ShardSet:
        """Open `folder`, refusing stale shards (another manifest digest or options), a tampered index and
        truncated shards (`verify="size"`; `"full"` also compares every shard's sha256)."""
        folder = Path(folder)
        index_path = folder / "index.json"
        try:
            info = json.loads(index_path.read_text())
        except FileNotFoundError:
            raise UserError(
                f"{folder} has no index.json; expected a folder written by `imagenet-transfer prepare` "
                "(an interrupted prepare resumes when run again)"
            ) from None
        except (OSError, ValueError) as err:
            raise UserError(f"{index_path} cannot be read ({err}); expected the JSON index prepare writes") from None
        if not isinstance(info, dict) or info.get("self_sha256") != _self_digest(info):
            raise UserError(
                f"{index_path} does not match its own checksum (edited or damaged); "
                "expected the index prepare wrote (prepare the shards again)"
            )
        if manifest_digest is not None and info["manifest_digest"] != manifest_digest:
            raise UserError(
                f"shards in {folder} were prepared from manifest {info['manifest_digest']}, but the "
                f"manifest now has digest {manifest_digest}; expected shards of this manifest "
                "(prepare them again: they are never read stale)"
            )
        if options is not None and info["options"] != options.to_dict():
            raise UserError(f"shards in {folder} have options {info['options']}; expected {options.to_dict()}")
        npz = folder / "index.npz"
        if not npz.exists() or _sha256(npz) != info["index_sha256"]:
            raise UserError(
                f"{npz} is missing or does not match the checksum in index.json; expected the "
                "index prepare wrote (prepare the shards again)"
            )
        with np.load(npz) as arrays:
            splits = {s: SplitIndex(*(arrays[f"{s}_{f}"] for f in INDEX_FIELDS)) for s in SPLITS}
        for shard in info["shards"]:
            path = folder / shard["file"]
            size = path.stat().st_size if path.exists() else None
            if size != shard["bytes"]:
                raise UserError(
                    f"shard {path} has {size} bytes but the index says {shard['bytes']} (truncated or "
                    "replaced); expected the file prepare wrote (prepare the shards again)"
                )
            if verify == "full" and _sha256(path) != shard["sha256"]:
                raise UserError(
                    f"shard {path} does not match its sha256 in the index (damaged); expected the "
                    "file prepare wrote (prepare the shards again)"
                )
        for split, index in splits.items():  # records must lie inside their shard files
            if len(index) and np.any(
                index.offset + index.size > np.asarray([s["bytes"] for s in info["shards"]])[index.shard]
            ):
                raise UserError(
                    f"{npz}: {split} records reach past the end of their shards; expected a "
                    "consistent index (prepare the shards again)"
                )
        return cls(folder, info, splits)

    @property
    def format(self) -> str:
        return self.options.format

    @property
    def side(self) -> int:
        return self.options.side

    def skipped(self, split: str) -> dict[str, str]:
        return dict(self.info["skipped"][split])

    def _map(self, shard: int) -> np.ndarray:
        if self._pid != os.getpid():  # a forked worker opens its own maps
            self._maps, self._pid = {}, os.getpid()
        if shard not in self._maps:
            path = self.files[shard]
            self._maps[shard] = (
                np.memmap(path, dtype=np.uint8, mode="c") if path.stat().st_size else np.zeros(0, np.uint8)
            )
        return self._maps[shard]

    def read_raw(self, split: str, positions: np.ndarray, out=None):
        """uint8 (n, side, side, 3) tensor of the raw records at `positions` of `split` (into `out` if given)."""
        import torch

        index, side = self.splits[split], self.side
        out = torch.empty((len(positions), side, side, 3), dtype=torch.uint8) if out is None else out
        shards = index.shard[positions]
        local = index.offset[positions] // self.options.record_bytes
        if np.all(shards[:-1] <= shards[1:]):  # grouped by shard: one (multi-threaded) copy per shard
            bounds = [0, *(np.flatnonzero(np.diff(shards)) + 1).tolist(), len(positions)]
            for a, b in itertools.pairwise(bounds):
                records = torch.from_numpy(self._map(int(shards[a]))).view(-1, side, side, 3)
                torch.index_select(records, 0, torch.from_numpy(local[a:b]), out=out[a:b])
            return out
        for shard in np.unique(shards):
            where = np.flatnonzero(shards == shard)
            records = torch.from_numpy(self._map(int(shard))).view(-1, side, side, 3)
            out[torch.from_numpy(where)] = records.index_select(0, torch.from_numpy(local[where]))
        return out

    def read_bytes(self, split: str, positions: np.ndarray):
        """The stored JPEG bytes of the records at `positions`, as one uint8 tensor and a list of sizes."""
        import torch

        index = self.splits[split]
        sizes = index.size[positions]
        out = np.empty(int(sizes.sum()), dtype=np.uint8)
        start = 0
        for shard, offset, size in zip(
            index.shard[positions].tolist(), index.offset[positions].tolist(), sizes.tolist()
        ):
            out[start : start + size] = self._map(shard)[offset : offset + size]
            start += size
        return torch.from_numpy(out), sizes.tolist()

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_maps": {}}
