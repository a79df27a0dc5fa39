"""Subset building speed on an ImageNet-sized catalog, against pandas read+rewrite of that catalog.

    python bench/subsets.py [--presets e1-500,e3-127,...] [--repeat 3]

Makes a catalog of 1,281,167 rows (1000 classes, 732-1300 train images each, like ILSVRC-2012, plus
50 val images per class) in a temporary folder, then times (baseline) reading it with pandas and
writing it back, and, for each preset, reading it + building the subset + writing the subset folder.
Prints seconds and the ratio preset / baseline (target: <= 3.0). Takes about a minute on 2 cores.
"""

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from imagenet_transfer.catalog import hash_file_names, load_catalog, write_catalog
from imagenet_transfer.subsets import PAPER_PRESETS, build_subset, preset, write_subset
from imagenet_transfer.taxonomy import load_taxonomy

DEFAULT_PRESETS = PAPER_PRESETS + ["e5-budget-128000-classes-200"]


def imagenet_sized_catalog(seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    classes = load_taxonomy().classes
    counts = np.full(len(classes), 1300)  # most ILSVRC classes have 1300; some as few as 732
    deficit = 1300 * len(classes) - 1281167
    for i in rng.permutation(len(classes)):
        cut = min(deficit, int(rng.integers(1, 1300 - 732 + 1)))
        counts[i] -= cut
        deficit -= cut
        if not deficit:
            break
    wnids = np.repeat(classes, counts)
    index = np.concatenate([np.arange(n) for n in counts])
    paths = [f"/data/imagenet/train/{w}/{w}_{i}.JPEG" for w, i in zip(wnids, index)]
    val_wnids = np.repeat(classes, 50)
    val_paths = [f"/data/imagenet/val/{w}/ILSVRC2012_val_{i + 1:08d}.JPEG" for i, w in enumerate(val_wnids)]
    return pd.DataFrame({
        "path": paths + val_paths,
        "wnid": pd.Categorical(np.concatenate([wnids, val_wnids])),
        "split": pd.Categorical(["train"] * len(paths) + ["val"] * len(val_paths)),
    })  # fmt: skip


def timed(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", default=",".join(DEFAULT_PRESETS))
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        catalog = imagenet_sized_catalog()
        start = time.perf_counter()
        catalog = catalog.assign(name_hash=hash_file_names(catalog["path"]))
        print(f"file-name hashes (once per catalog, stored in it): {time.perf_counter() - start:.2f} s")
        train_rows = int((catalog["split"] == "train").sum())
        write_catalog(catalog, tmp / "catalog.parquet")
        print(f"catalog: {train_rows:,} train + {len(catalog) - train_rows:,} val rows, "
              f"{(tmp / 'catalog.parquet').stat().st_size / 2**20:.1f} MiB parquet")

        def baseline():
            pd.read_parquet(tmp / "catalog.parquet").to_parquet(tmp / "rewritten.parquet", index=False)

        base = timed(baseline, args.repeat)
        print(f"{'baseline: pandas read + rewrite':40s} {base:7.2f} s")
        worst = 0.0
        for name in args.presets.split(","):
            spec = preset(name)

            def build():
                write_subset(build_subset(load_catalog(tmp / "catalog.parquet"), spec), tmp / "subset")

            seconds = timed(build, args.repeat)
            worst = max(worst, seconds / base)
            print(f"{name:40s} {seconds:7.2f} s   ratio {seconds / base:4.2f}")
        print(f"worst ratio {worst:.2f} (target <= 3.0)")


if __name__ == "__main__":
    main()
