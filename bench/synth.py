"""Benchmark of the synthetic world generator: a fresh world, then the cached second call.

    .venv/bin/python bench/synth.py                  # default world (target: <= 60 s on 2 cores)
    .venv/bin/python bench/synth.py --size tiny      # the world the tests use (a few seconds)

Measures: seconds for a fresh generation into a temporary folder (all cores), files written, MB
written, files/s, and the seconds of a second `generate` call with the same options (must find the
world, < 1 s). Everything, the catalog cache included, goes to a temporary folder that is deleted at
the end: nothing is written into the repository or the user's cache.
"""

import argparse
import os
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="default")
    parser.add_argument("--resolution", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="synth-bench-") as tmp:
        os.environ["IMAGENET_TRANSFER_CACHE"] = str(Path(tmp) / "cache")
        from imagenet_transfer.synthetic import generate, read_world

        options = dict(size=args.size, seed=args.seed, resolution=args.resolution)
        started = time.perf_counter()
        root = generate(Path(tmp) / "world", progress=False, **options)
        fresh = time.perf_counter() - started
        started = time.perf_counter()
        generate(root, progress=False, **options)
        cached = time.perf_counter() - started
        world = read_world(root)
        files = sum(g["count"] for g in world["files"].values())
        mb = sum(g["bytes"] for g in world["files"].values()) / 1e6
        counts = world["counts"]
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        print(f"world: size={args.size} resolution={world['options']['resolution']} seed={args.seed} cores={cores}")
        preset, voc07, voc12 = world["options"]["preset"], counts["voc2007"], counts["voc2012"]
        print(
            f"  imagenet {counts['imagenet']['classes']} classes x ({preset['train']} train + {preset['val']} val); "
            f"VOC2007 {voc07['trainval'] + voc07['test']} images / {voc07['objects']} objects; "
            f"VOC2012 action {voc12['train'] + voc12['val']} images; "
            f"SUN397 {counts['sun397']['classes']} classes / {counts['sun397']['images']} images"
        )
        print(f"fresh:  {fresh:.1f} s, {files} files, {mb:.1f} MB, {files / fresh:.0f} files/s, {mb / fresh:.1f} MB/s")
        print(f"cached: {cached:.3f} s")


if __name__ == "__main__":
    main()
