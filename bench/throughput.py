"""Training-step throughput of each backbone: the ceiling (tensors already on the device) vs the input pipeline.

    .venv/bin/python bench/throughput.py               # CPU: small, alexnet, resnet18, batch 32; ~2.5 min, 2 cores
    python bench/throughput.py --device cuda --out bench/throughput-gpu.md    # GPU: all five backbones, batch 256
    python bench/throughput.py --archs small caffe_alexnet --batch-size 64 --steps 10 --compile --out t.json

Prints one row per backbone at its default resolution (small at 64): images/s of a full training step (forward,
cross-entropy, backward, SGD step with momentum and weight decay) fed with random tensors already on the device
(`ceiling`), images/s of the same step fed by `imagenet_transfer.data.make_loader` over JPEGs this script writes
to a temporary folder (`pipeline`: read, decode, resize, random crop, mirror in DataLoader workers, copy,
normalise), and `pipeline / ceiling` (1.00 = the input pipeline keeps up; below 1 = the model waits for data).
On CUDA the step runs under bf16 autocast with channels_last (and `torch.compile` with `--compile`).

The JPEGs are smooth random textures with some noise, `--images` of them (default 256), cycled: 500×375 px
(a typical ILSVRC photo) for the ImageNet-resolution backbones, 1.4×res for `small` (the embedded world's low
resolution). Pipeline timing starts after `workers` warm-up batches and spans a whole number of worker waves, so
batches the workers prefetched during warm-up do not inflate it. `--out FILE` writes the table as Markdown
(.md) or JSON (.json). Defaults: CPU — archs small, alexnet, resnet18 (resnet50 and caffe_alexnet only when
named), batch 32, 6 timed steps; CUDA — every arch, batch 256, 40 timed steps.

Figures seen (images/s, ceiling → pipeline):
  NVIDIA H200, torch 2.11, batch 256, 15 workers, bf16 + channels_last, eager (~2 min for all five):
    caffe_alexnet 9654 → 9217 (0.95); alexnet 36188 → 7808 (0.22); resnet18 13246 → 7615 (0.57);
    resnet50 4715 → 4510 (0.96); small 81995 → 42723 (0.52).  Compiled: alexnet 42533 → 12409 (0.29).
    caffe_alexnet is 4x slower than alexnet: nn.LocalResponseNorm (avg_pool3d) and grouped convs.
  2-core CPU VM, torch 2.14, batch 32, 1 worker, fp32, three runs: small 28-279 → 37-278; alexnet 9.6-16.4 →
    10.1-17.1; resnet18 4.5-12.6 → 7.5-13.5. They swing several-fold within and between runs: with 2 torch
    threads (plus a worker) on 2 vCPUs, OpenMP waits on a descheduled core; `--threads 1` is slower but steady
    (small ~190 img/s both ways).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from imagenet_transfer.data import default_workers, make_loader
from imagenet_transfer.models import ARCHITECTURES, build_backbone, count_parameters

CPU_ARCHS = ("small", "alexnet", "resnet18")
NUM_CLASSES = 1000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--archs", nargs="+", choices=list(ARCHITECTURES), help=f"default: all on CUDA, {' '.join(CPU_ARCHS)} on CPU"
    )
    parser.add_argument("--batch-size", type=int, help="default 256 on CUDA, 32 on CPU")
    parser.add_argument("--steps", type=int, help="timed training steps per measurement (default 40 CUDA, 6 CPU)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--workers", type=int, default=None, help=f"DataLoader workers (default {default_workers()})")
    parser.add_argument("--images", type=int, default=256, help="distinct JPEGs written per resolution")
    parser.add_argument(
        "--warmup-s",
        type=float,
        help="seconds of warm-up steps before timing the ceiling (default 0 on CUDA, 10 on CPU)",
    )
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's, one per core)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--out", type=Path, help="write the table to FILE (.md or .json)")
    args = parser.parse_args(argv)
    cuda = torch.device(args.device).type == "cuda"
    args.archs = args.archs or (list(ARCHITECTURES) if cuda else list(CPU_ARCHS))
    args.batch_size = args.batch_size or (256 if cuda else 32)
    args.steps = args.steps or (40 if cuda else 6)
    args.warmup_s = (0.0 if cuda else 10.0) if args.warmup_s is None else args.warmup_s
    args.workers = default_workers() if args.workers is None else args.workers
    return args


def write_jpegs(folder: Path, count: int, size: tuple[int, int], seed: int = 0) -> list[str]:
    """`count` JPEGs of `size` (w, h): bicubic-upsampled random colour fields plus fine noise (JPEG-realistic)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        coarse = Image.fromarray(rng.integers(0, 256, (max(size[1] // 24, 2), max(size[0] // 24, 2), 3), np.uint8))
        pixels = np.asarray(coarse.resize(size, Image.BICUBIC), dtype=np.int16)
        pixels = np.clip(pixels + rng.integers(-12, 13, pixels.shape), 0, 255).astype(np.uint8)
        path = folder / f"{i:05d}.JPEG"
        Image.fromarray(pixels).save(path, quality=90)
        paths.append(str(path))
    return paths


def source_size(arch: str, resolution: int) -> tuple[int, int]:
    return (500, 375) if resolution >= 200 else (round(resolution * 1.4), round(resolution * 1.4))


class Stepper:
    """One SGD training step of `net` on a batch; synchronises on CUDA when asked for a time."""

    def __init__(self, net: torch.nn.Module, device: torch.device, compile: bool) -> None:
        self.device, self.cuda = device, device.type == "cuda"
        net = net.to(device)
        if self.cuda:
            net = net.to(memory_format=torch.channels_last)
        self.net = net.train()
        self.model = torch.compile(net) if compile else net
        self.opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        self.autocast = torch.autocast("cuda", dtype=torch.bfloat16) if self.cuda else nullcontext()

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        with self.autocast:
            loss = torch.nn.functional.cross_entropy(self.model(images), labels)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def sync(self) -> float:
        if self.cuda:
            torch.cuda.synchronize(self.device)
        return time.perf_counter()


def ceiling(step: Stepper, batch: int, resolution: int, steps: int, warmup: int, warmup_s: float = 0.0) -> float:
    gen = torch.Generator(device=step.device).manual_seed(0)
    fmt = torch.channels_last if step.cuda else torch.contiguous_format
    images = torch.randn(batch, 3, resolution, resolution, device=step.device, generator=gen).to(memory_format=fmt)
    labels = torch.randint(0, NUM_CLASSES, (batch,), device=step.device, generator=gen)
    begin, done = step.sync(), 0
    while done < warmup or step.sync() - begin < warmup_s:  # a CPU VM runs its first seconds slowly
        step(images, labels)
        done += 1
    start = step.sync()
    for _ in range(steps):
        step(images, labels)
    return steps * batch / (step.sync() - start)


def pipeline(
    step: Stepper, arch: str, resolution: int, paths: list[str], batch: int, steps: int, workers: int
) -> tuple[float, int]:
    wave = max(workers, 1)
    warmup, steps = max(wave, 2), math.ceil(steps / wave) * wave
    needed = (warmup + steps) * batch
    repeated = [paths[i % len(paths)] for i in range(needed)]
    manifest = pd.DataFrame(
        {
            "path": repeated,
            "wnid": "n00000000",
            "label_wnid": "n00000000",
            "split": "train",
            "label": np.arange(needed, dtype=np.int64) % NUM_CLASSES,
        }
    )
    loader = make_loader(
        manifest,
        "train",
        arch=arch,
        resolution=resolution,
        batch_size=batch,
        workers=workers,
        train=True,
        seed=0,
        device=step.device,
        channels_last=step.cuda,
        persistent_workers=False,
    )
    start = None
    for i, (images, labels) in enumerate(loader):
        if i == warmup:
            start = step.sync()
        step(images, labels)
    loader.check_skipped(0.0)
    return steps * batch / (step.sync() - start), steps


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.set_float32_matmul_precision("high")
        card = torch.cuda.get_device_name(device)
    else:
        card = f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"
    print(
        f"# throughput: torch {torch.__version__}, {card}, batch {args.batch_size}, {args.steps} timed steps, "
        f"{args.workers} workers, {'bf16 autocast + channels_last' if device.type == 'cuda' else 'fp32'}"
        f"{', torch.compile' if args.compile else ''}",
        flush=True,
    )
    rows, pools = [], {}
    with tempfile.TemporaryDirectory(prefix="throughput-") as tmp:
        for arch in args.archs:
            resolution = ARCHITECTURES[arch].default_resolution
            size = source_size(arch, resolution)
            if size not in pools:
                pools[size] = write_jpegs(Path(tmp) / f"{size[0]}x{size[1]}", args.images, size)
            torch.manual_seed(0)
            step = Stepper(build_backbone(arch, NUM_CLASSES), device, args.compile)
            warmup = 5 if args.compile else 3
            top = ceiling(step, args.batch_size, resolution, args.steps, warmup, args.warmup_s)
            fed, timed = pipeline(step, arch, resolution, pools[size], args.batch_size, args.steps, args.workers)
            row = {
                "arch": arch,
                "resolution": resolution,
                "params_M": round(count_parameters(step.net) / 1e6, 1),
                "batch": args.batch_size,
                "source_px": f"{size[0]}x{size[1]}",
                "ceiling_img_s": round(top, 1),
                "pipeline_img_s": round(fed, 1),
                "ratio": round(fed / top, 2),
                "pipeline_steps": timed,
            }
            rows.append(row)
            print(
                f"{arch:>14} {resolution:>4}px  ceiling {top:>9.1f} img/s  pipeline {fed:>9.1f} img/s  "
                f"ratio {fed / top:.2f}",
                flush=True,
            )
            del step
            if device.type == "cuda":
                torch.cuda.empty_cache()
    table = markdown(
        rows, header=f"torch {torch.__version__}, {card}, {args.workers} workers{', compiled' if args.compile else ''}"
    )
    print("\n" + table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        if args.out.suffix == ".json":
            args.out.write_text(
                json.dumps(
                    {
                        "device": card,
                        "torch": torch.__version__,
                        "workers": args.workers,
                        "compile": args.compile,
                        "rows": rows,
                    },
                    indent=2,
                )
                + "\n"
            )
        else:
            args.out.write_text(table + "\n")
        print(f"wrote {args.out}")
    return rows


def markdown(rows: list[dict], header: str) -> str:
    cols = list(rows[0]) if rows else []
    lines = [
        f"Training-step throughput ({header})",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "|".join("---" for _ in cols) + "|",
    ]
    lines += ["| " + " | ".join(str(row[c]) for c in cols) + " |" for row in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
