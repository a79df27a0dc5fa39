"""Prepare: a subset → shards built for fast reading (see `shards`), in the cache by manifest digest + options.

    imagenet-transfer prepare --subset e1-500 --source /data/imagenet --format auto      # 256 px for 227/224 crops
    imagenet-transfer prepare --subset full --short-side 36                              # the embedded world (32 px)
    mlflow run . -e prepare --env-manager local -P subset=full -P short_side=36

Input: a subset (preset, spec, subset folder or manifest.parquet, resolved like `pretrain` does). Output: the
shard folder `<cache>/shards/<key>/` (or `--out`), whose `index.json` names the manifest digest, and an MLflow
run (tag stage=prepare) with the options as params and images, bytes, written_images, seconds, images_per_s
(images written per second; verified per second when all were there) and skipped_images as metrics;
`index.json` is logged as an artifact. Every pre-training of the same subset at that side finds these shards
(`pretrain --input-pipeline auto|shards`). A rerun resumes an interrupted prepare and, once finished, only
verifies the checksums. ~1 s for the tiny world; ≥ 2,000 images/s on 16 cores from ~500×375
JPEGs (see bench/README.md).

`--format auto` picks raw when the raw shards fit in `--ram-share` of this machine's RAM, JPEG otherwise.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from imagenet_transfer import tracking
from imagenet_transfer.data import resize_size
from imagenet_transfer.shards import FORMATS, Records, ShardOptions, choose_format, shards_root, write_shards


def shard_options(
    images: int,
    *,
    format: str = "auto",
    short_side: int | None = None,
    resolution: int = 227,
    quality: int = 90,
    images_per_shard: int = 1024,
    ram_share: float = 0.5,
) -> ShardOptions:
    """The options `prepare` uses: side round(resolution·256/227) unless given, format resolved from auto."""
    from imagenet_transfer.errors import UserError

    side = short_side or resize_size(resolution)
    if format not in (*FORMATS, "auto"):
        raise UserError(f"unknown shard format {format!r}; expected one of {', '.join(FORMATS)} or auto")
    if not 0 < ram_share <= 1:
        raise UserError(f"ram_share={ram_share}; expected a share between 0 and 1")
    chosen = choose_format(images, side, ram_share) if format == "auto" else format
    return ShardOptions(format=chosen, side=side, quality=quality, images_per_shard=images_per_shard)


def run_prepare(
    subset: str,
    source: str = "",
    *,
    format: str = "auto",
    short_side: int | None = None,
    resolution: int = 227,
    quality: int = 90,
    images_per_shard: int = 1024,
    ram_share: float = 0.5,
    out: str | Path | None = None,
    workers: int | None = None,
    on_shard: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Prepare the shards of `subset` (resuming, or verifying finished ones) and log the run; returns a summary."""
    import mlflow

    from imagenet_transfer.data import default_workers
    from imagenet_transfer.pretrain import resolve_subset
    from imagenet_transfer.progress import progress_bar

    shard_options(
        0,
        format=format,
        short_side=short_side,
        resolution=resolution,
        quality=quality,
        images_per_shard=images_per_shard,
        ram_share=ram_share,
    )  # bad options fail before any work
    resolved = resolve_subset(subset, source)
    manifest = resolved.manifest
    options = shard_options(
        len(manifest),
        format=format,
        short_side=short_side,
        resolution=resolution,
        quality=quality,
        images_per_shard=images_per_shard,
        ram_share=ram_share,
    )
    folder = Path(out) if out else shards_root() / options.key(resolved.digest)
    workers = default_workers() + 1 if workers is None else workers
    records = Records(
        manifest["path"].astype(str).tolist(),
        manifest["label"].astype(int).tolist(),
        manifest["split"].astype(str).tolist(),
    )
    params = {
        "subset": subset,
        "source": source,
        "format": format,
        "short_side": short_side,
        "resolution": resolution,
        "quality": quality,
        "images_per_shard": images_per_shard,
        "ram_share": ram_share,
        "out": str(out or ""),
        "workers": workers,
        "derived.format": options.format,
        "derived.side": options.side,
    }
    tags = {"subset_name": resolved.name, "subset_digest": resolved.digest, "shards": str(folder)}
    with tracking.start_run("prepare", params=params, tags=tags, run_name=f"prepare {resolved.name}") as run:
        resolved = resolved.record()  # a preset or spec: its subset run, a child of this one
        if resolved.run_id:
            mlflow.set_tag("subset_run_id", resolved.run_id)
        started = time.perf_counter()
        existed = (folder / "index.json").exists()
        with progress_bar() as progress:
            task = progress.add_task(
                f"prepare {resolved.name} ({options.format} {options.side}px)", total=len(manifest)
            )
            info = write_shards(
                folder,
                records,
                options,
                resolved.digest,
                workers=workers,
                on_shard=on_shard,
                on_progress=lambda done, total: progress.update(task, completed=done),
            )
            progress.update(task, completed=len(manifest))
        seconds = time.perf_counter() - started
        skipped = sum(len(v) for v in info["skipped"].values())
        written = info.get("written_images", 0)
        metrics = {
            "images": float(sum(info["counts"].values())),
            "bytes": float(info["bytes"]),
            "written_images": float(written),
            "seconds": seconds,
            "images_per_s": (written or len(manifest)) / max(seconds, 1e-9),  # written (or verified) per s
            "skipped_images": float(skipped),
        }
        mlflow.set_tag("reused", str(existed).lower())
        mlflow.log_metrics(metrics)
        mlflow.log_artifact(str(folder / "index.json"), "shards")
        summary = {
            **metrics,
            "folder": str(folder),
            "format": options.format,
            "side": options.side,
            "run_id": run.info.run_id,
            "reused": existed,
        }
    return summary
