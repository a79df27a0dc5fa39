"""The device input pipeline: prepared shards → augmented, normalised batches, decoded and cropped on the device.

    from imagenet_transfer.shard_loader import make_shard_loader
    loader = make_shard_loader(shards, "train", arch="alexnet", batch_size=256, workers=15, train=True,
                               seed=0, device="cuda")
    for images, labels in loader: ...        # the same contract as `data.Loader`

Input: a `shards.ShardSet` (see `prepare`). Output: `ShardLoader`, an iterable of `(images, labels)` with
`len()`, `set_epoch(epoch, start_batch)`, `skipped` and `check_skipped`, exactly what `pretrain` uses of
`data.Loader`, so either can feed the training loop.

How it works, per batch:
1. Host (DataLoader workers; for raw shards on CUDA one reader thread straight into pinned memory): the
   batch's records are read from the memory-mapped shards. Raw shards: one uint8 (n, side, side, 3) copy, one
   multi-threaded `index_select` per shard file (the batch is grouped by file; order within a batch does not
   matter). JPEG shards: a share `1 - device_decode` of the batch is decoded by the workers
   (`torchvision.io.decode_jpeg` on CPU), the rest travels as bytes.
2. Device (on a side stream on CUDA, prefetching one batch ahead so input overlaps compute): the uint8 batch is
   copied (pinned, non-blocking), the remaining JPEGs are decoded there in one batched
   `decode_jpeg(list, device=...)` call, then one gather does the paper's augmentation for the whole batch:
   a random res×res crop of the stored side×side image (resized first, on the device, only when the shards
   were prepared at another side than round(res·256/227)) and a horizontal mirror with p=0.5; evaluation takes
   the centre crop. Normalisation as `data.normalise` (float32, channels_last).
Every op is device-agnostic, so the same code runs on CPU tensors (tests, and the CPU path over shards).

Same distribution and determinism as `data.make_loader`: the order of an epoch is `data.epoch_order(seed,
epoch)`, each rank reads its disjoint share (`EpochSampler`), and a sample's crop offsets and mirror come from
its own seed `data.sample_seeds(seed, epoch)[index]`, so they do not depend on the batch, the rank count or
the number of workers, and `start_batch=k` resumes exactly at batch k. Imports no MLflow and no pandas.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import nullcontext
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from imagenet_transfer.data import (
    NORMALISATION,
    SPLITS,
    EpochSampler,
    normalisation_for,
    normalisation_tensors,
    resize_size,
)
from imagenet_transfer.errors import UserError
from imagenet_transfer.models import check_resolution, default_resolution
from imagenet_transfer.shards import ShardSet

PIPELINES = ("auto", "loader", "shards")


class HostBatch(NamedTuple):
    """What the host hands to the device for one batch (tensors only, so workers and pinning handle it)."""

    images: Tensor  # uint8 (k, side, side, 3) or (k, 3, side, side) if `chw`: the records decoded on the host
    payload: Tensor  # uint8 bytes of the JPEGs left for the device, back to back
    sizes: Tensor  # int64 size of each of those JPEGs
    labels: Tensor  # int64, the whole batch (host records first)
    seeds: Tensor  # int64 augmentation seed per sample, same order
    chw: Tensor  # bool scalar: `images` is CHW (decoded JPEG) rather than HWC (raw)


class _BatchKeys(Sampler):
    """Yields one (positions, seeds) pair per batch of the epoch the wrapped `EpochSampler` is set to."""

    def __init__(self, sampler: EpochSampler, batch_size: int) -> None:
        self.sampler, self.batch_size = sampler, batch_size

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        positions, seeds = self.sampler.keys()
        for start in range(0, len(positions), self.batch_size):
            yield positions[start : start + self.batch_size], seeds[start : start + self.batch_size]

    def __len__(self) -> int:
        return -(-len(self.sampler) // self.batch_size)


class _HostBatches(Dataset):
    """Map-style dataset keyed by (positions, seeds): reads (and partly decodes) one batch on the host."""

    def __init__(self, shards: ShardSet, split: str, device_decode: float) -> None:
        self.shards, self.split, self.device_decode = shards, split, device_decode
        self.labels = torch.from_numpy(shards.splits[split].label)

    def __getitem__(self, key: tuple[np.ndarray, np.ndarray], pin: bool = False) -> HostBatch:
        positions, seeds = key
        empty_bytes, empty_sizes = torch.zeros(0, dtype=torch.uint8), torch.zeros(0, dtype=torch.int64)
        if self.shards.format == "raw":  # the batch grouped by shard file: one copy per file
            order = np.argsort(self.shards.splits[self.split].shard[positions], kind="stable")
            positions, seeds = positions[order], seeds[order]
            side = self.shards.side
            images = torch.empty((len(positions), side, side, 3), dtype=torch.uint8, pin_memory=pin)
            self.shards.read_raw(self.split, positions, out=images)
            labels, seeds = self.labels[torch.from_numpy(positions)], torch.from_numpy(seeds)
            if pin:  # the DataLoader pins what workers return; the reader thread pins here
                labels, seeds = labels.pin_memory(), seeds.pin_memory()
            return HostBatch(images, empty_bytes, empty_sizes, labels, seeds, torch.tensor(False))
        labels = self.labels[torch.from_numpy(positions)]
        seeds = torch.from_numpy(np.ascontiguousarray(seeds))
        on_host = len(positions) - round(len(positions) * self.device_decode)
        side = self.shards.side
        images = torch.empty((on_host, 3, side, side), dtype=torch.uint8)
        if on_host:
            from torchvision.io import ImageReadMode, decode_jpeg

            data, sizes = self.shards.read_bytes(self.split, positions[:on_host])
            for i, image in enumerate(decode_jpeg(list(torch.split(data, sizes)), mode=ImageReadMode.RGB)):
                images[i] = image
        payload, sizes = self.shards.read_bytes(self.split, positions[on_host:])
        return HostBatch(images, payload, torch.tensor(sizes, dtype=torch.int64), labels, seeds, torch.tensor(True))

    def __len__(self) -> int:
        return len(self.shards.splits[self.split])


def crop_params(seeds: Tensor, room: int, train: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Per-sample (top, left, mirror) of the paper's augmentation, from each sample's seed: top and left
    uniform in 0..room, mirror with p=0.5 (train); the centre, unmirrored (eval)."""
    if not train:
        centre = torch.full_like(seeds, room // 2)
        return centre, centre, torch.zeros_like(seeds, dtype=torch.bool)
    span = room + 1
    return seeds % span, (seeds // span) % span, (seeds // (span * span)) % 2 == 1


def augment(images: Tensor, seeds: Tensor, *, resolution: int, train: bool, resize: int | None = None) -> Tensor:
    """uint8 NHWC batch (any strides, any device) → uint8 N×3×res×res crops (channels_last strides): one
    gather for the whole batch. Resizes to `resize`×`resize` first when the batch has another side."""
    side = images.shape[1]
    if resize is not None and resize != side:
        nchw = images.permute(0, 3, 1, 2).float()
        nchw = torch.nn.functional.interpolate(
            nchw, size=(resize, resize), mode="bilinear", antialias=True, align_corners=False
        )
        images, side = nchw.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1), resize
    room = side - resolution
    if room < 0:
        raise UserError(
            f"shards hold {side}px images, smaller than the {resolution}px crop; expected shards "
            f"prepared with --short-side >= {resolution}"
        )
    top, left, mirror = (t.to(images.device) for t in crop_params(seeds, room, train))  # no-op if on the device
    steps = torch.arange(resolution, device=images.device)
    rows = top[:, None] + steps
    cols = left[:, None] + torch.where(mirror[:, None], resolution - 1 - steps, steps)
    batch = torch.arange(len(images), device=images.device)
    crops = images[batch[:, None, None], rows[:, :, None], cols[:, None, :]]  # N, res, res, 3
    return crops.permute(0, 3, 1, 2)


class ShardLoader:
    """Iterable of (float images NCHW normalised on `device`, int64 labels on `device`) read from shards."""

    def __init__(
        self,
        shards: ShardSet,
        split: str,
        sampler: EpochSampler,
        *,
        batch_size: int,
        resolution: int,
        train: bool,
        normalisation: str,
        device: torch.device,
        channels_last: bool,
        workers: int,
        device_decode: float,
        reader: str | None = None,
    ) -> None:
        self.shards, self.split, self.sampler, self.train = shards, split, sampler, train
        self.resolution, self.normalisation, self.device = resolution, normalisation, device
        self.channels_last, self.device_decode = channels_last, device_decode
        self.resize = resize_size(resolution)
        self.keys = _BatchKeys(sampler, batch_size)
        cuda = device.type == "cuda"
        self.host = _HostBatches(shards, split, device_decode)
        self.reader = reader or ("thread" if shards.format == "raw" and cuda else "workers")
        self.loader = (
            None
            if self.reader == "thread"
            else DataLoader(
                self.host,
                batch_size=None,
                sampler=self.keys,
                num_workers=workers,
                pin_memory=cuda,
                persistent_workers=workers > 0,
                prefetch_factor=4 if workers > 0 else None,
            )
        )
        self.skipped = shards.skipped(split)  # images prepare could not read: absent from the shards
        self.seen = 0
        self._normalisation: tuple[Tensor, Tensor] | None = None

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.sampler.set_epoch(epoch, start_batch)

    def __len__(self) -> int:
        return len(self.keys)

    def _stage(self, host: HostBatch) -> tuple[Tensor, Tensor]:
        """Upload/decode/augment/normalise one batch (enqueued on the current stream)."""
        device = self.device
        non_blocking = device.type == "cuda"
        parts = []
        if len(host.images):
            images = host.images.to(device, non_blocking=non_blocking)
            parts.append(images.permute(0, 2, 3, 1) if bool(host.chw) else images)
        if len(host.sizes):
            from torchvision.io import ImageReadMode, decode_jpeg

            payload = host.payload.cpu()
            decoded = decode_jpeg(
                list(torch.split(payload, host.sizes.tolist())), mode=ImageReadMode.RGB, device=device
            )
            parts.append(torch.stack(decoded).permute(0, 2, 3, 1))
        images = parts[0] if len(parts) == 1 else torch.cat(parts)
        seeds = host.seeds.to(device, non_blocking=non_blocking)  # crop offsets are computed on the device
        crops = augment(images, seeds, resolution=self.resolution, train=self.train, resize=self.resize)
        if self._normalisation is None:  # made once: a pageable upload per batch would stall the side stream
            self._normalisation = normalisation_tensors(self.normalisation, device)
        mean, inv_std = self._normalisation
        out = (crops.float() - mean) * inv_std
        out = out.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
        return out, host.labels.to(device, non_blocking=non_blocking)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        pending = None
        for host in self.loader if self.loader is not None else self._read_in_thread():
            self.seen += len(host.labels)
            with torch.cuda.stream(stream) if stream is not None else nullcontext():
                staged = self._stage(host)
                ready = torch.cuda.Event() if stream is not None else None
                if ready is not None:
                    ready.record(stream)
            if pending is not None:  # the next batch is enqueued on the side stream before this one is used
                yield self._ready(*pending)
            pending = staged, ready
        if pending is not None:
            yield self._ready(*pending)

    def _read_in_thread(self, depth: int = 4) -> Iterator[HostBatch]:
        """Host batches read by a background thread straight into pinned memory (raw shards on CUDA: the copy
        out of the page cache is the whole host work, multi-threaded inside torch, the GIL released)."""
        import queue
        import threading

        batches: queue.Queue = queue.Queue(maxsize=depth)
        stop = threading.Event()
        pin = self.device.type == "cuda"

        def produce() -> None:
            try:
                for key in self.keys:
                    if stop.is_set():
                        return
                    batches.put(self.host.__getitem__(key, pin=pin))
            except BaseException as err:  # handed to the consumer
                batches.put(err)
                return
            batches.put(None)

        thread = threading.Thread(target=produce, daemon=True, name="shard-reader")
        thread.start()
        try:
            while (item := batches.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            while thread.is_alive():  # unblock a producer waiting on a full queue
                try:
                    batches.get_nowait()
                except queue.Empty:
                    thread.join(timeout=0.01)

    def _ready(self, staged: tuple[Tensor, Tensor], ready) -> tuple[Tensor, Tensor]:
        if ready is not None:  # the compute stream waits for this batch only, and owns its memory from now on
            current = torch.cuda.current_stream(self.device)
            current.wait_event(ready)
            for tensor in staged:
                tensor.record_stream(current)
        return staged

    def check_skipped(self, max_fraction: float) -> int:
        """Number of images prepare skipped in this split; UserError when beyond `max_fraction` of the split."""
        count = len(self.skipped)
        total = count + len(self.shards.splits[self.split])
        if count and count > max_fraction * total:
            listing = "; ".join(f"{p} ({why})" for p, why in list(self.skipped.items())[:20])
            raise UserError(
                f"{count} of {total} {self.split} images could not be read when the shards in "
                f"{self.shards.folder} were prepared, more than the allowed fraction {max_fraction:g}: "
                f"{listing}; expected readable JPEG files (fix or remove them from the manifest)"
            )
        return count


def make_shard_loader(
    shards: ShardSet,
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
    normalisation: str | None = None,
    rank: int = 0,
    world_size: int = 1,
    channels_last: bool = False,
    device_decode: float | None = None,
    reader: str | None = None,
    **_: object,
) -> ShardLoader:
    """The shard loader of `split` for `arch`, with `data.make_loader`'s arguments and checks.

    `device_decode`: share of each JPEG batch decoded on the device (default: 0.5 on CUDA, 0 elsewhere; the
    workers decode the rest). Raw shards need no decoding. `reader`: "workers" (DataLoader processes) or
    "thread" (one thread of this process into pinned memory); default thread for raw shards on CUDA.
    """
    if reader not in (None, "workers", "thread"):
        raise UserError(f"reader={reader!r}; expected workers or thread")
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    n = len(shards.splits[split])
    if n == 0:
        raise UserError(f"shards in {shards.folder} have no {split} images; expected at least one")
    resolution = check_resolution(arch, default_resolution(arch) if resolution is None else resolution)
    normalisation = normalisation or normalisation_for(arch)
    if normalisation not in NORMALISATION:
        raise UserError(f"unknown normalisation {normalisation!r}; expected one of {', '.join(NORMALISATION)}")
    if batch_size < 1 or workers < 0:
        raise UserError(f"batch_size {batch_size} / workers {workers}; expected batch_size ≥ 1 and workers ≥ 0")
    if train and n // world_size < batch_size:
        raise UserError(
            f"{n} {split} images cannot fill one batch of {batch_size} per process "
            f"({world_size} process(es)); expected a smaller batch_size or more images"
        )
    if not 0 <= rank < world_size:
        raise UserError(f"rank {rank} is not in 0..{world_size - 1}")
    device = torch.device(device)
    if device_decode is None:
        device_decode = 0.5 if device.type == "cuda" else 0.0
    if not 0 <= device_decode <= 1:
        raise UserError(f"device_decode={device_decode}; expected a share between 0 and 1")
    sampler = EpochSampler(
        n,
        batch_size=batch_size,
        seed=seed,
        epoch=epoch,
        shuffle=train,
        drop_last=train,
        start_batch=start_batch,
        rank=rank,
        world_size=world_size,
    )
    if not 0 <= start_batch <= sampler.batches_per_epoch():
        raise UserError(f"start_batch {start_batch} is outside the epoch's 0..{sampler.batches_per_epoch()} batches")
    return ShardLoader(
        shards,
        split,
        sampler,
        batch_size=batch_size,
        resolution=resolution,
        train=train,
        normalisation=normalisation,
        device=device,
        channels_last=channels_last,
        workers=workers,
        device_decode=device_decode,
        reader=reader,
    )


def select_shards(
    pipeline: str, folder: str, manifest_digest: str, resolution: int, device: torch.device
) -> ShardSet | None:
    """The shards pre-training reads, or None for the loose-file loader.

    "loader": None. "shards": `folder`, or the prepared shards of this manifest at round(res·256/227) px found
    in the cache; UserError when there are none or they are stale. "auto": the same on CUDA when such
    shards exist (or `folder` is given), else None.
    """
    from imagenet_transfer.shards import find_prepared

    if pipeline not in PIPELINES:
        raise UserError(f"input_pipeline={pipeline!r}; expected one of {', '.join(PIPELINES)}")
    if pipeline == "loader":
        return None
    side = resize_size(resolution)
    found = folder or find_prepared(manifest_digest, side)
    if found:
        if pipeline == "auto" and device.type != "cuda" and not folder:
            return None
        return ShardSet.open(found, manifest_digest=manifest_digest)
    if pipeline == "shards":
        raise UserError(
            f"input_pipeline=shards but no shards of manifest {manifest_digest} at {side}px are "
            f"prepared; expected `imagenet-transfer prepare --subset ... --short-side {side}` first "
            "(or --shards DIR)"
        )
    return None
