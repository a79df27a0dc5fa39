"""Input pipelines against the model-only ceiling: prepared shards (raw, JPEG) vs a torchvision-reference loader.

    python bench/input_pipeline.py                     # CUDA: 20,000 JPEGs, alexnet + resnet50 at 224, ~3-5 min
    python bench/input_pipeline.py --device cpu        # CPU: shards vs JPEGs, small at 64, ~2 min on 2 cores
    python bench/input_pipeline.py --images 4000 --archs alexnet --steps 30 --out /tmp/t.md

Needs only torch, torchvision, numpy and pillow (no network, no MLflow, no pandas on CUDA): it puts the project's
`src/` on sys.path and uses `shards` and `shard_loader` directly. On the machine it runs on it
1. generates `--images` ImageNet-shaped JPEGs (500×375, some 375×500, quality 90: smooth random colour fields
   with noise, ~100 KB each, like ILSVRC photos) in a temporary folder, with every core;
2. prepares them once as raw and as JPEG shards (`shards.write_shards`, every core; images/s printed — the
   target is ≥ 2,000 images/s on 16 cores) at round(224·256/227) = 253 px;
3. times, per architecture, the same training step (`engine.train_steps`: forward, cross-entropy, backward,
   SGD; bf16 autocast and channels_last on CUDA) fed by
   (a) one random batch already on the device (the ceiling),
   (b) `shard_loader.make_shard_loader` over the raw shards and over the JPEG shards (each `--device-decode`
       share decoded by the GPU, the rest by the workers) — the project's pre-training path,
   (c) a torchvision-reference-style DataLoader (PIL decode, RandomResizedCrop, flip, float normalise in every
       CPU worker, pinned copies) over the loose JPEGs;
   and on CPU also `data.make_loader` over the loose JPEGs (the project's CPU path) against the shards;
4. prints images/s and the ratios b/a and b/c, and writes the table (Markdown) to `--out`.
Timing starts after `--warmup` steps and spans `--steps` steps (the loaders cycle through epochs as pre-training
does); every row is written as soon as it is measured, and a failing row is reported, not fatal.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
sys.path.insert(0, str(SRC))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from imagenet_transfer.data import default_workers, normalise, resize_size  # noqa: E402
from imagenet_transfer.engine import train_steps  # noqa: E402
from imagenet_transfer.models import build_backbone  # noqa: E402
from imagenet_transfer.shard_loader import make_shard_loader  # noqa: E402
from imagenet_transfer.shards import Records, ShardOptions, ShardSet, write_shards  # noqa: E402

NUM_CLASSES = 1000
CUDA_ARCHS = {"alexnet": 224, "resnet50": 224}
CPU_ARCHS = {"small": 64}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--archs", nargs="+", help="default: alexnet resnet50 on CUDA, small on CPU")
    parser.add_argument("--resolution", type=int, help="default: 224 (CUDA), 64 (CPU)")
    parser.add_argument("--images", type=int, help="JPEGs to generate (default 20000 on CUDA, 600 on CPU)")
    parser.add_argument("--batch-size", type=int, help="default 256 on CUDA, 32 on CPU")
    parser.add_argument("--steps", type=int, help="timed steps (default 60 on CUDA, 8 on CPU)")
    parser.add_argument("--warmup", type=int, help="untimed steps first (default 15 on CUDA, 2 on CPU)")
    parser.add_argument("--workers", type=int, default=None, help="loader workers (default: every core but one)")
    parser.add_argument(
        "--device-decode",
        type=float,
        nargs="+",
        default=[0.5],
        help="shares of each JPEG batch the device decodes (one row each)",
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--threads", type=int, help="torch threads of this process (CPU)")
    parser.add_argument("--out", type=Path, help="Markdown table (default bench/input_pipeline-<device>.md)")
    parser.add_argument("--keep", type=Path, help="generate/keep the images and shards in this folder")
    args = parser.parse_args(argv)
    cuda = args.device.startswith("cuda")
    args.archs = args.archs or list(CUDA_ARCHS if cuda else CPU_ARCHS)
    args.resolution = args.resolution or (224 if cuda else 64)
    args.images = args.images or (20_000 if cuda else 600)
    args.batch_size = args.batch_size or (256 if cuda else 32)
    args.steps = args.steps or (60 if cuda else 8)
    args.warmup = args.warmup if args.warmup is not None else (15 if cuda else 2)
    args.workers = default_workers() if args.workers is None else args.workers
    args.out = args.out or Path(__file__).with_name(f"input_pipeline-{'gpu' if cuda else 'cpu'}.md")
    return args


# -- the images -------------------------------------------------------------------------------------
def _make_image(job: tuple[int, str]) -> None:
    i, path = job
    rng = np.random.default_rng(i)
    w, h = (375, 500) if i % 5 == 4 else (500, 375)
    field = rng.integers(0, 256, (h // 24 + 2, w // 24 + 2, 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(field).resize((w, h), Image.BICUBIC), dtype=np.int16)
    noisy = smooth + rng.integers(-24, 25, (h, w, 3), dtype=np.int16)
    Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(path, quality=90)


def make_images(folder: Path, count: int, processes: int) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [str(folder / f"{i:06d}.JPEG") for i in range(count)]
    todo = [(i, p) for i, p in enumerate(paths) if not os.path.exists(p)]
    if todo:
        with multiprocessing.Pool(processes) as pool:
            pool.map(_make_image, todo, chunksize=64)
    return paths


# -- the reference loader (torchvision references/classification, PIL backend) -----------------------------
class ReferenceDataset(torch.utils.data.Dataset):
    def __init__(self, paths: list[str], resolution: int) -> None:
        from torchvision.transforms import v2

        self.paths = paths
        self.transform = v2.Compose(
            [
                v2.RandomResizedCrop(resolution, antialias=True),
                v2.RandomHorizontalFlip(),
                v2.PILToTensor(),
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
            ]
        )

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        with Image.open(self.paths[i]) as image:
            return self.transform(image.convert("RGB")), i % NUM_CLASSES


def reference_batches(paths: list[str], args, device: torch.device):
    loader = torch.utils.data.DataLoader(
        ReferenceDataset(paths, args.resolution),
        batch_size=args.batch_size,
        shuffle=True,
        num_workers=args.workers,
        pin_memory=device.type == "cuda",
        drop_last=True,
        persistent_workers=args.workers > 0,
        prefetch_factor=4 if args.workers else None,
    )
    fmt = torch.channels_last
    while True:
        for images, labels in loader:
            yield images.to(device, non_blocking=True).to(memory_format=fmt), labels.to(device, non_blocking=True)


def cycling(loader):
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        yield from loader
        epoch += 1


def ceiling_batches(args, device: torch.device):
    images = torch.randint(0, 256, (args.batch_size, 3, args.resolution, args.resolution), dtype=torch.uint8)
    images = normalise(images.to(device)).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, NUM_CLASSES, (args.batch_size,), device=device)
    while True:
        yield images, labels


# -- timing -----------------------------------------------------------------------------------------
def images_per_second(arch: str, batches, args, device: torch.device) -> float:
    torch.manual_seed(0)
    model = build_backbone(arch, NUM_CLASSES, resolution=args.resolution).to(device, memory_format=torch.channels_last)
    net = torch.compile(model) if args.compile else model
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    train_steps(net, batches, optimizer, scheduler, device=device, max_steps=args.warmup)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    stats = train_steps(net, batches, optimizer, scheduler, device=device, max_steps=args.steps)
    sync()
    return stats.images / (time.perf_counter() - start)


def loader_only(batches, steps: int) -> float:
    """Images/s of the input alone (CPU comparison): `steps` batches after one untimed one."""
    next(batches)
    start, images = time.perf_counter(), 0
    for _ in range(steps):
        images += len(next(batches)[1])
    return images / (time.perf_counter() - start)


class Table:
    """The Markdown report: a header, notes (generation, prepare), then one row per measurement."""

    def __init__(self, path: Path, header: str) -> None:
        self.path, self.header, self.notes, self.lines = path, header, [], []
        self.rows: dict[tuple[str, str], float] = {}

    def add(
        self, arch: str, what: str, value: float | str, ceiling: str = "ceiling", reference: str = "reference"
    ) -> None:
        if isinstance(value, str):
            shown, a, c = value, "", ""
        else:
            self.rows[arch, what] = value
            base, ref = self.rows.get((arch, ceiling)), self.rows.get((arch, reference))
            shown = f"{value:,.0f}"
            a = f"{value / base:.2f}" if base and what != ceiling else ""
            c = f"{value / ref:.2f}" if ref and what != reference else ""
        self.lines.append(f"| {arch} | {what} | {shown} | {a} | {c} |")
        print(self.lines[-1], flush=True)
        self.write()

    def note(self, text: str) -> None:
        self.notes.append(f"- {text}")
        print(text, flush=True)
        self.write()

    def write(self) -> None:
        head = ["| arch | input | images/s | vs ceiling (b/a) | vs reference (b/c) |", "|---|---|---|---|---|"]
        self.path.write_text("\n".join([self.header, "", *self.notes, "", *head, *self.lines]) + "\n")


def measure(table: Table, arch: str, what: str, run, **bases: str) -> None:
    try:
        table.add(arch, what, run(), **bases)
    except Exception as err:  # one failing row must not lose the others
        table.add(arch, what, f"failed: {type(err).__name__}: {str(err).splitlines()[0][:160] if str(err) else ''}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    header = (
        f"### Input pipelines — {card}, {cores} CPU cores, torch {torch.__version__}, torchvision "
        f"{__import__('torchvision').__version__}, batch {args.batch_size}, {args.resolution} px, "
        f"{args.images} generated JPEGs, {args.workers} workers{', compiled' if args.compile else ''}"
    )
    table = Table(args.out, header)
    print(header, flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        started = time.perf_counter()
        paths = make_images(root / "jpeg", args.images, max(cores, 1))
        table.note(
            f"generated {len(paths)} JPEGs in {time.perf_counter() - started:.1f} s "
            f"({sum(os.path.getsize(p) for p in paths[:200]) / min(200, len(paths)) / 1024:.0f} KiB each)"
        )
        records = Records(paths, [i % NUM_CLASSES for i in range(len(paths))], ["train"] * len(paths))
        side = resize_size(args.resolution)
        shards = {}
        for fmt in ("raw", "jpeg"):
            folder = root / f"shards-{fmt}"
            started = time.perf_counter()
            info = write_shards(
                folder, records, ShardOptions(format=fmt, side=side), f"bench-{len(paths)}", workers=max(cores, 1)
            )
            seconds = time.perf_counter() - started
            table.note(
                f"prepare {fmt} {side} px: {len(paths) / seconds:,.0f} images/s with {cores} processes "
                f"({info['bytes'] / 2**30:.2f} GiB, {seconds:.1f} s)"
            )
            shards[fmt] = ShardSet.open(folder)
        for arch in args.archs:

            def from_shards(fmt: str, share: float = 0.0, arch=arch):
                loader = make_shard_loader(
                    shards[fmt],
                    "train",
                    arch=arch,
                    resolution=args.resolution,
                    batch_size=args.batch_size,
                    workers=args.workers,
                    train=True,
                    seed=0,
                    device=device,
                    channels_last=True,
                    device_decode=share,
                )
                return cycling(loader)

            measure(
                table, arch, "ceiling", lambda: images_per_second(arch, ceiling_batches(args, device), args, device)
            )
            measure(
                table,
                arch,
                "reference",
                lambda: images_per_second(arch, reference_batches(paths, args, device), args, device),
            )
            measure(table, arch, "shards raw", lambda: images_per_second(arch, from_shards("raw"), args, device))
            for share in args.device_decode if device.type == "cuda" else [0.0]:
                measure(
                    table,
                    arch,
                    f"shards jpeg (device decodes {share:.2f})",
                    lambda: images_per_second(arch, from_shards("jpeg", share), args, device),
                )
            if device.type == "cpu":
                measure(
                    table,
                    arch,
                    "loose JPEGs (data.make_loader)",
                    lambda: images_per_second(arch, loose(paths, arch, args, device), args, device),
                )
                for fmt in ("raw", "jpeg"):
                    measure(
                        table,
                        arch,
                        f"input only: shards {fmt}",
                        lambda: loader_only(from_shards(fmt), args.steps),
                        ceiling="-",
                        reference="input only: loose JPEGs",
                    )
                measure(
                    table,
                    arch,
                    "input only: loose JPEGs",
                    lambda: loader_only(loose(paths, arch, args, device), args.steps),
                    ceiling="-",
                    reference="-",
                )
                for what in (
                    "shards raw",
                    "shards jpeg (device decodes 0.00)",
                    "input only: shards raw",
                    "input only: shards jpeg",
                ):
                    base = (
                        "loose JPEGs (data.make_loader)" if not what.startswith("input") else "input only: loose JPEGs"
                    )
                    if (arch, what) in table.rows and (arch, base) in table.rows:
                        table.note(f"{arch}: {what} / {base} = {table.rows[arch, what] / table.rows[arch, base]:.2f}")
    print(f"table written to {args.out}")


def loose(paths: list[str], arch: str, args, device: torch.device):
    """The project's CPU path over the loose JPEGs (`data.make_loader`; needs pandas)."""
    import pandas as pd

    from imagenet_transfer.data import make_loader

    frame = pd.DataFrame(
        {
            "path": paths,
            "wnid": "n0",
            "label": [i % NUM_CLASSES for i in range(len(paths))],
            "label_wnid": "n0",
            "split": "train",
        }
    )
    loader = make_loader(
        frame,
        "train",
        arch=arch,
        resolution=args.resolution,
        batch_size=args.batch_size,
        workers=args.workers,
        train=True,
        device=device,
        channels_last=True,
        persistent_workers=True,
    )
    return cycling(loader)


if __name__ == "__main__":
    main()
