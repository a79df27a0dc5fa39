"""Subset building speed on an ImageNet-sized catalog, against pandas read+rewrite of that catalog.

    python bench/subsets.py [--presets e1-500,e3-127,...] [--repeat 3] [--no-cli] [--no-log-dataset]

Makes a catalog of 1,281,167 rows (1000 classes, 732-1300 train images each, like ILSVRC-2012, plus
50 val images per class) in a temporary folder, then times (baseline) reading it with pandas and
writing it back, and, for each preset, reading it + building the subset + writing the subset folder.
Prints seconds and the ratio preset / baseline (target: <= 3.0).

Then (unless --no-cli) the whole command `imagenet-transfer subset build --preset e1-500 --catalog
<that catalog> --out <tmp>` as a separate process, from its start to its exit (imports, MLflow run,
dataset input, artifacts), each time with a fresh temporary SQLite tracking store and cache
(target: <= 3 x baseline + 3 s); and (unless --no-log-dataset) `tracking.log_dataset` alone on the
`full` manifest (1,281,167 train + 50,000 val rows), against logging it the plain MLflow way
(`mlflow.data.from_pandas` + `mlflow.log_input`, which infers the schema value by value).
Takes a few minutes on 2 cores.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from imagenet_transfer.catalog import hash_file_names, load_catalog, write_catalog
from imagenet_transfer.subsets import PAPER_PRESETS, build_subset, preset, write_subset
from imagenet_transfer.taxonomy import load_taxonomy

DEFAULT_PRESETS = [*PAPER_PRESETS, "e5-budget-128000-classes-200"]


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
    return pd.DataFrame(
        {
            "path": paths + val_paths,
            "wnid": pd.Categorical(np.concatenate([wnids, val_wnids])),
            "split": pd.Categorical(["train"] * len(paths) + ["val"] * len(val_paths)),
        }
    )


def timed(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


OUTER_RUN = ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME")  # never log into a real run


def cli_command() -> list[str]:
    """`imagenet-transfer`: the console script of this interpreter's environment, else the module."""
    script = Path(sys.executable).parent / "imagenet-transfer"
    if script.exists():
        return [str(script)]
    found = shutil.which("imagenet-transfer")
    return [found] if found else [sys.executable, "-m", "imagenet_transfer.cli"]


# what every command pays before its own work: Python, the imports, and creating a fresh SQLite store
FIXED_COST = (
    "import mlflow, pandas, imagenet_transfer.cli, imagenet_transfer.subsets, imagenet_transfer.tracking as t; "
    "t.configure(); mlflow.search_experiments()"
)


def time_cli_build(catalog: Path, work: Path, preset_name: str | None) -> float:
    """Seconds from start to exit of `imagenet-transfer subset build` in a fresh store and cache (with
    `preset_name` None: of a process that only pays the fixed cost, see FIXED_COST)."""
    work.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if k not in OUTER_RUN}
    env |= {"MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}", "IMAGENET_TRANSFER_CACHE": str(work / "cache")}
    if preset_name is None:
        command = [sys.executable, "-c", FIXED_COST]
    else:
        command = [*cli_command(), "subset", "build", "--preset", preset_name, "--catalog", str(catalog)]
        command += ["--out", str(work / "out")]
    start = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=work, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return seconds


def time_log_dataset(manifest: pd.DataFrame, work: Path, repeat: int) -> tuple[float, float]:
    """Seconds to log `manifest` as a dataset input the plain MLflow way (once) and with `tracking.log_dataset`."""
    import mlflow

    from imagenet_transfer import tracking

    for var in OUTER_RUN:
        os.environ.pop(var, None)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'mlflow.db'}"
    os.environ["IMAGENET_TRANSFER_CACHE"] = str(work / "cache")
    source = str(work / "subset")

    def plain():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            dataset = mlflow.data.from_pandas(
                manifest, source=source, name="full", digest=uuid.uuid4().hex[:16], targets="label"
            )
            mlflow.log_input(dataset, context="subset", tags={"spec_digest": "bench"})

    def project():
        tracking.log_dataset(
            manifest,
            name="full",
            source=source,
            digest=uuid.uuid4().hex[:16],
            context="subset",
            tags={"spec_digest": "bench"},
        )

    with tracking.start_run("subset"):  # the store exists before the clock starts
        pass
    times = []
    for fn, n in ((plain, 1), (project, repeat)):  # fresh digests: every call writes a new dataset
        with tracking.start_run("subset"):
            times.append(timed(fn, n))
    return times[0], times[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", default=",".join(DEFAULT_PRESETS))
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--cli-preset", default="e1-500", help="preset of the timed `subset build` command")
    parser.add_argument("--no-cli", action="store_true", help="skip timing the `subset build` command")
    parser.add_argument("--no-log-dataset", action="store_true", help="skip timing log_dataset")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        catalog = imagenet_sized_catalog()
        start = time.perf_counter()
        catalog = catalog.assign(name_hash=hash_file_names(catalog["path"]))
        print(f"file-name hashes (once per catalog, stored in it): {time.perf_counter() - start:.2f} s")
        train_rows = int((catalog["split"] == "train").sum())
        write_catalog(catalog, tmp / "catalog.parquet")
        print(
            f"catalog: {train_rows:,} train + {len(catalog) - train_rows:,} val rows, "
            f"{(tmp / 'catalog.parquet').stat().st_size / 2**20:.1f} MiB parquet"
        )

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

        if not args.no_cli:
            seconds = min(
                time_cli_build(tmp / "catalog.parquet", tmp / f"cli-{i}", args.cli_preset) for i in range(args.repeat)
            )
            target = 3 * base + 3
            print(
                f"{'CLI: subset build --preset ' + args.cli_preset:40s} {seconds:7.2f} s   "
                f"target <= 3 x {base:.2f} + 3 = {target:.2f} s: {'met' if seconds <= target else 'MISSED'}"
            )
            fixed = min(time_cli_build(tmp / "catalog.parquet", tmp / f"fixed-{i}", None) for i in range(args.repeat))
            print(f"{'  of which fixed: imports + fresh store':40s} {fixed:7.2f} s   (a process doing only that)")
        if not args.no_log_dataset:
            manifest = build_subset(load_catalog(tmp / "catalog.parquet"), preset("full")).manifest
            plain, project = time_log_dataset(manifest, tmp / "log", args.repeat)
            print(f"log_dataset of the full manifest ({len(manifest):,} rows):")
            print(f"{'  mlflow.data.from_pandas + log_input':40s} {plain:7.2f} s")
            print(f"{'  tracking.log_dataset':40s} {project:7.2f} s   ({plain / project:.0f}x faster; target < 1 s)")


if __name__ == "__main__":
    main()
