"""The input pipeline: manifest rows → decoded, augmented, normalised image batches on the device.

Input: a manifest (DataFrame, or the Parquet file `subsets` writes) with columns path, wnid, label, label_wnid,
split. Output: `Loader`, an iterable of `(images, labels)` with `len()`: images float32 NCHW, normalised for the
architecture, on `device`; labels int64. That is all the training loop relies on, so a faster pipeline (GPU
decode, DALI, FFCV…) can replace this module without touching it.

    from imagenet_transfer.data import make_loader
    loader = make_loader(manifest, "train", arch="small", batch_size=64, workers=2, train=True, seed=0, epoch=3)
    for images, labels in loader: ...
    loader.check_skipped(max_fraction=0.001)   # UserError listing the corrupt images past the threshold

How it works:
- `ManifestDataset` reads each file with `torchvision.io.read_file` and decodes it with `decode_jpeg` (PNG and
  other formats via `decode_image`) into uint8 RGB CHW (greyscale and CMYK are converted). An unreadable or
  corrupt image becomes a `Skipped` marker; the collate function drops it and the `Loader` records its path.
  A batch whose every image is corrupt is dropped whole. Train and val loaders alike count them: `pretrain`
  warns with the first one's path, logs `skipped_images`/`val_skipped_images` and stops past `max_fraction`.
- Transforms (`PRESETS`, named data) work on uint8 tensors with `torchvision.transforms.v2.functional` inside
  the workers: "paper" = the paper's training augmentation scaled to the resolution (square resize to
  round(res·256/227), i.e. 256 for 227, a random res×res crop, horizontal mirror with p=0.5); "center" = the
  evaluation view (same resize, centre crop); "rrc" = torchvision's random-resized-crop + mirror, for
  comparison. Normalisation happens on the device after the uint8 batch is moved (4× less to copy):
  `NORMALISATION` has "caffe" (subtract the ILSVRC mean pixel in 0-255 units, no scaling: what the Caffe
  AlexNet was trained with) and "imagenet" (torchvision's mean/std on 0-1 inputs, for alexnet, the ResNets and
  `small`, whose BatchNorm prefers unit-scale inputs); `ARCH_NORMALISATION` picks one per architecture.
- Reproducibility and resume: the order of an epoch is `epoch_order(n, seed, epoch)`, a function of
  (seed, epoch) only, and every sample's augmentation draws from its own RNG seeded by (seed, epoch, index).
  So batches do not depend on the number of workers, and `start_batch=k` yields exactly batches k, k+1, … of
  the uninterrupted epoch. Multi-GPU: `rank`/`world_size` give each process an equal, disjoint shard.
- CUDA: pinned memory, non-blocking copies, persistent workers (call `Loader.set_epoch` to reuse them).
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torchvision.transforms.v2.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.io import ImageReadMode, decode_image, decode_jpeg, read_file

from imagenet_transfer.errors import UserError
from imagenet_transfer.models import architecture, check_resolution, default_resolution

if TYPE_CHECKING:  # pandas is imported where a manifest is read, so the shard pipeline runs without it
    import pandas as pd

MANIFEST_COLUMNS = ("path", "wnid", "label", "label_wnid", "split")
SPLITS = ("train", "val")
RESIZE_RATIO = 256 / 227  # the paper: 256×256 images, 227×227 crops


# -- normalisation --------------------------------------------------------------------------------
NORMALISATION: dict[str, dict[str, tuple[float, float, float]]] = {
    # RGB mean pixel of ILSVRC-2012 as Caffe subtracts it (BGR 104, 117, 123), inputs stay in 0-255 units
    "caffe": {"mean": (123.68, 116.78, 103.94), "std": (1.0, 1.0, 1.0)},
    # torchvision's mean/std on 0-1 inputs, written in 0-255 units
    "imagenet": {"mean": (0.485 * 255, 0.456 * 255, 0.406 * 255), "std": (0.229 * 255, 0.224 * 255, 0.225 * 255)},
}
ARCH_NORMALISATION = {
    "caffe_alexnet": "caffe",
    "alexnet": "imagenet",
    "resnet18": "imagenet",
    "resnet50": "imagenet",
    "small": "imagenet",
}


def _choose(kind: str, name: str, table: dict) -> Any:
    if name not in table:
        raise UserError(f"unknown {kind} {name!r}; expected one of {', '.join(table)}")
    return table[name]


def normalisation_for(arch: str) -> str:
    architecture(arch)  # UserError for an unknown name
    return ARCH_NORMALISATION[arch]


def normalise(images: Tensor, normalisation: str = "imagenet") -> Tensor:
    """uint8 (or float 0-255) NCHW/CHW images → float32 normalised (on the images' device)."""
    mean, inv_std = normalisation_tensors(normalisation, images.device)
    return (images.float() - mean) * inv_std


def normalisation_tensors(normalisation: str, device: torch.device) -> tuple[Tensor, Tensor]:
    """The named normalisation as (mean, 1 / std), float32 3×1×1 tensors on `device` in 0-255 units:
    `(images.float() - mean) * inv_std` normalises CHW/NCHW images; UserError for an unknown name."""
    spec = _choose("normalisation", normalisation, NORMALISATION)
    mean = torch.tensor(spec["mean"], device=device).view(3, 1, 1)
    return mean, 1.0 / torch.tensor(spec["std"], device=device).view(3, 1, 1)


# -- transforms (on uint8 CHW tensors) ------------------------------------------------------------
@dataclass(frozen=True)
class Preset:
    """How one image becomes a res×res uint8 crop; every random choice draws from the given `rng`."""

    crop: str  # "random", "center" or "resized" (random-resized-crop)
    mirror: bool
    description: str
    scale: tuple[float, float] = (0.08, 1.0)  # "resized" only
    ratio: tuple[float, float] = (3 / 4, 4 / 3)


PRESETS: dict[str, Preset] = {
    "paper": Preset("random", True, "resize to round(res*256/227) square, random res crop, mirror (train)"),
    "center": Preset("center", False, "resize to round(res*256/227) square, centre res crop (eval)"),
    "rrc": Preset("resized", True, "torchvision random-resized-crop (scale 0.08-1) to res, mirror (train)"),
}


def resize_size(resolution: int) -> int:
    return round(resolution * RESIZE_RATIO)


class Transform:
    """Callable (uint8 CHW image, rng) → uint8 3×res×res crop, following a named preset."""

    def __init__(self, preset: str, resolution: int) -> None:
        self.name, self.preset, self.resolution = preset, _choose("transform preset", preset, PRESETS), resolution
        self.resize = resize_size(resolution)

    def __call__(self, image: Tensor, rng: random.Random) -> Tensor:
        p, res = self.preset, self.resolution
        if p.crop == "resized":
            top, left, h, w = _resized_crop_box(image.shape[-2], image.shape[-1], p.scale, p.ratio, rng)
            out = F.resized_crop(image, top, left, h, w, [res, res], antialias=True)
        else:
            out = F.resize(image, [self.resize, self.resize], antialias=True)
            room = self.resize - res
            if p.crop == "random":
                top, left = rng.randint(0, room), rng.randint(0, room)
            else:
                top = left = room // 2
            out = F.crop(out, top, left, res, res)
        if p.mirror and rng.random() < 0.5:
            out = F.horizontal_flip(out)
        return out.contiguous()

    def __repr__(self) -> str:
        return f"Transform({self.name!r}, resolution={self.resolution})"


def _resized_crop_box(
    height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float], rng: random.Random
) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop box, drawn from `rng`."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, height - h), rng.randint(0, width - w), h, w
    in_ratio = width / height  # fallback: centre crop at the nearest allowed aspect ratio
    if in_ratio < min(ratio):
        w, h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        h, w = height, round(height * max(ratio))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


# -- dataset --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Skipped:
    """Marker for an image that could not be read or decoded."""

    path: str
    reason: str


def decode(path: str) -> Tensor:
    """uint8 RGB CHW image of the file at `path` (RuntimeError/OSError when unreadable or corrupt)."""
    data = read_file(path)
    if data.numel() >= 2 and data[0] == 0xFF and data[1] == 0xD8:
        return decode_jpeg(data, mode=ImageReadMode.RGB)
    return decode_image(data, mode=ImageReadMode.RGB)


class ManifestDataset(Dataset):
    """Rows of a manifest as (uint8 3×res×res image, label); a corrupt file gives a `Skipped` marker.

    Keys are dataset indices or `(index, sample_seed)` pairs (what `EpochSampler` yields); the transform draws
    its random choices from `random.Random(sample_seed)`, so an image's augmentation depends on the key only.
    """

    def __init__(self, frame: pd.DataFrame, transform: Transform) -> None:
        self.paths = frame["path"].astype(str).to_numpy()
        self.labels = frame["label"].to_numpy(dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Tensor, int] | Skipped:
        index, sample_seed = key if isinstance(key, tuple) else (key, key)
        path = self.paths[index]
        try:
            image = decode(path)
        except (RuntimeError, OSError, ValueError) as err:
            return Skipped(path, str(err).splitlines()[-1][-200:])
        return self.transform(image, random.Random(sample_seed)), int(self.labels[index])


def collate(items: Sequence[tuple[Tensor, int] | Skipped]) -> tuple[Tensor | None, Tensor | None, list[Skipped]]:
    """Stack the good items into (uint8 NCHW, int64 labels); return the skipped markers alongside."""
    good = [item for item in items if not isinstance(item, Skipped)]
    skipped = [item for item in items if isinstance(item, Skipped)]
    if not good:
        return None, None, skipped
    return torch.stack([img for img, _ in good]), torch.tensor([lab for _, lab in good], dtype=torch.int64), skipped


# -- order ----------------------------------------------------------------------------------------
def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The permutation of range(n) that epoch `epoch` of a run seeded `seed` visits: a function of both only."""
    return np.random.default_rng([seed, epoch, 0]).permutation(n)


def sample_seeds(n: int, seed: int, epoch: int) -> np.ndarray:
    """One augmentation seed per dataset index for this (seed, epoch)."""
    return np.random.default_rng([seed, epoch, 1]).integers(0, 2**62, size=n, dtype=np.int64)


class EpochSampler(Sampler):
    """Yields `(index, sample_seed)` keys of one epoch: shuffled by (seed, epoch) or in order, this rank's shard,
    from batch `start_batch` on. With `drop_last` the shard is cut to whole batches (train); otherwise every
    index appears once across ranks (eval)."""

    def __init__(
        self,
        n: int,
        *,
        batch_size: int,
        seed: int = 0,
        epoch: int = 0,
        shuffle: bool = True,
        drop_last: bool = True,
        start_batch: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.n, self.batch_size, self.seed, self.shuffle, self.drop_last = n, batch_size, seed, shuffle, drop_last
        self.rank, self.world_size = rank, world_size
        self.set_epoch(epoch, start_batch)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def batches_per_epoch(self) -> int:
        if self.drop_last:
            return self.n // self.world_size // self.batch_size
        per_rank = math.ceil(max(self.n - self.rank, 0) / self.world_size)
        return math.ceil(per_rank / self.batch_size)

    def keys(self) -> tuple[np.ndarray, np.ndarray]:
        """The (dataset indices, augmentation seeds) this iteration yields, as arrays."""
        indices = self._indices()
        return indices, sample_seeds(self.n, self.seed, self.epoch)[indices]

    def _indices(self) -> np.ndarray:
        order = epoch_order(self.n, self.seed, self.epoch) if self.shuffle else np.arange(self.n)
        if self.drop_last:
            order = order[: self.n // self.world_size * self.world_size]
        mine = order[self.rank :: self.world_size]
        if self.drop_last:
            mine = mine[: len(mine) // self.batch_size * self.batch_size]
        return mine[self.start_batch * self.batch_size :]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        seeds = sample_seeds(self.n, self.seed, self.epoch)
        for index in self._indices():
            yield int(index), int(seeds[index])

    def __len__(self) -> int:
        if self.drop_last:
            return (self.batches_per_epoch() - self.start_batch) * self.batch_size
        per_rank = math.ceil(max(self.n - self.rank, 0) / self.world_size)
        return max(per_rank - self.start_batch * self.batch_size, 0)


# -- loader ---------------------------------------------------------------------------------------
class Loader:
    """Iterable of (float images NCHW normalised on `device`, int64 labels on `device`) with `len()`.

    Records the paths of images it had to skip (`skipped`, unique, with reasons) and how many it tried
    (`seen`), over all iterations; `check_skipped` turns too many into a UserError.
    """

    def __init__(
        self,
        loader: DataLoader,
        sampler: EpochSampler,
        *,
        normalisation: str,
        device: torch.device,
        channels_last: bool = False,
        split: str = "",
    ) -> None:
        self.loader, self.sampler, self.normalisation, self.split = loader, sampler, normalisation, split
        self.device, self.channels_last = device, channels_last
        self.skipped: dict[str, str] = {}  # path → reason, each path once
        self.seen = 0  # images tried, over all iterations
        self.skip_events = 0  # images skipped, over all iterations (a corrupt file counts once per epoch)

    @property
    def dataset(self) -> ManifestDataset:
        return self.loader.dataset

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Next iteration yields this epoch from this batch on (reuses persistent workers)."""
        self.sampler.set_epoch(epoch, start_batch)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        mean, inv_std = normalisation_tensors(self.normalisation, self.device)
        non_blocking = self.device.type == "cuda"
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        for images, labels, skipped in self.loader:
            self.seen += len(skipped) + (0 if labels is None else len(labels))
            self.skip_events += len(skipped)
            for item in skipped:
                self.skipped[item.path] = item.reason
            if images is None:
                continue
            images = images.to(self.device, non_blocking=non_blocking).to(memory_format=fmt)
            yield (images.float() - mean) * inv_std, labels.to(self.device, non_blocking=non_blocking)

    def check_skipped(self, max_fraction: float) -> int:
        """Number of distinct skipped images; UserError listing them (the first one first) when skips exceed
        `max_fraction` of the images tried so far."""
        count = len(self.skipped)
        if self.skip_events and self.skip_events > max_fraction * max(self.seen, 1):
            listing = "; ".join(f"{p} ({why})" for p, why in list(self.skipped.items())[:20])
            more = f" and {count - 20} more" if count > 20 else ""
            split = f" of the {self.split} split" if self.split else ""
            raise UserError(
                f"{self.skip_events} of {self.seen} images could not be read ({count} distinct "
                f"files{split}), more than the allowed fraction (max_skipped_fraction) "
                f"{max_fraction:g}: {listing}{more}; expected readable JPEG files (fix or remove them "
                f"from the manifest)"
            )
        return count


def read_manifest(manifest: pd.DataFrame | str | Path) -> pd.DataFrame:
    """A manifest frame, checked for the columns and label values the pipeline needs."""
    import pandas as pd

    if not isinstance(manifest, pd.DataFrame):
        try:
            manifest = pd.read_parquet(manifest)
        except (OSError, ValueError, ImportError) as err:
            raise UserError(
                f"manifest {manifest} cannot be read as Parquet ({err}); expected a manifest.parquet "
                f"with columns {', '.join(MANIFEST_COLUMNS)}"
            ) from None
    missing = [c for c in ("path", "label", "split") if c not in manifest.columns]
    if missing:
        raise UserError(f"manifest lacks column(s) {', '.join(missing)}; expected {', '.join(MANIFEST_COLUMNS)}")
    labels = manifest["label"]
    if not pd.api.types.is_integer_dtype(labels) or (len(labels) and labels.min() < 0):
        lowest = labels.min() if len(labels) else "-"
        raise UserError(
            f"manifest column label has dtype {labels.dtype} / minimum {lowest}; expected non-negative integers 0..L-1"
        )
    return manifest


def make_loader(
    manifest: pd.DataFrame | str | Path,
    split: str,
    *,
    arch: str,
    resolution: int | None = None,
    batch_size: int,
    workers: int = 0,
    train: bool,
    seed: int = 0,
    epoch: int = 0,
    start_batch: int = 0,
    device: str | torch.device = "cpu",
    preset: str | None = None,
    normalisation: str | None = None,
    rank: int = 0,
    world_size: int = 1,
    channels_last: bool = False,
    persistent_workers: bool | None = None,
) -> Loader:
    """The loader of `split` for `arch` (see the module docstring).

    train=True: preset "paper", shuffled by (seed, epoch), drop_last; train=False: preset "center", manifest
    order, every image once. `resolution` defaults to the architecture's; `start_batch` skips the batches an
    interrupted run already consumed.
    """
    frame = read_manifest(manifest)
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    frame = frame[frame["split"] == split]
    if frame.empty:
        raise UserError(f"manifest has no rows with split == {split!r}; expected at least one {split} image")
    resolution = check_resolution(arch, default_resolution(arch) if resolution is None else resolution)
    normalisation = normalisation or normalisation_for(arch)
    _choose("normalisation", normalisation, NORMALISATION)
    transform = Transform(preset or ("paper" if train else "center"), resolution)
    if batch_size < 1 or workers < 0:
        raise UserError(f"batch_size {batch_size} / workers {workers}; expected batch_size ≥ 1 and workers ≥ 0")
    if train and len(frame) // world_size < batch_size:
        raise UserError(
            f"{len(frame)} {split} images cannot fill one batch of {batch_size} per process "
            f"({world_size} process(es)); expected a smaller batch_size or more images"
        )
    if not 0 <= rank < world_size:
        raise UserError(f"rank {rank} is not in 0..{world_size - 1}")
    sampler = EpochSampler(
        len(frame),
        batch_size=batch_size,
        seed=seed,
        epoch=epoch,
        shuffle=train,
        drop_last=train,
        start_batch=start_batch,
        rank=rank,
        world_size=world_size,
    )
    total = sampler.batches_per_epoch()
    if not 0 <= start_batch <= total:
        raise UserError(f"start_batch {start_batch} is outside the epoch's 0..{total} batches")
    device = torch.device(device)
    dataset = ManifestDataset(frame.reset_index(drop=True), transform)
    persistent = workers > 0 and (device.type == "cuda" if persistent_workers is None else persistent_workers)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=device.type == "cuda",
        drop_last=train,
        persistent_workers=persistent,
        prefetch_factor=4 if workers > 0 else None,
    )
    return Loader(loader, sampler, normalisation=normalisation, device=device, channels_last=channels_last, split=split)


def default_workers() -> int:
    """Worker processes for this machine: every core but one for the training process, at most 16."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(0, min(16, cores - 1))
