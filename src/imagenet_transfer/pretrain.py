"""Pre-training: train a backbone on a subset, checkpoint it, and register it in the model registry.

    mlflow run . -e pretrain --env-manager local                 # the embedded world, ~2-3 min on 2 cores
    imagenet-transfer pretrain --subset e1-500 --source /data/imagenet --arch caffe_alexnet --recipe paper --gpus 8

Input: a subset: a preset name or a spec file (built from `source`; default: the embedded world, generated
on first use), a subset folder or a `manifest.parquet`.
Output: an MLflow run (tag stage=pretrain) with the resolved config as params, per-epoch metrics (train_loss,
lr, images_per_s, val_top1, val_top5, val_top1_coarse; the params `derived.val_top1_uniform`,
`derived.val_top1_majority` and `derived.val_top1_coarse_majority` say what guessing scores), the subset as a
dataset input, the backbone as an MLflow pyfunc model from code (`backbone/`: `state_dict.pt` + `backbone.json`, no
pickle; `tracking.load_backbone` or `mlflow.pyfunc.load_model`), and a registered model version `<arch>-<subset name>`
with the alias `current` (`models:/small-full@current`). Pre-training computes no transfer metric: benchmarks
read the model.

Checkpoints go to `checkpoint_dir` (default: the cache, keyed by the config less its `OPERATIONAL` fields, the
device type, the subset digest, the source's content digest, the code version and the tracking store): the first
after 1/20 of the run's steps (at least one) or `checkpoint_minutes`, whichever comes first, then at every epoch
end and every `checkpoint_minutes`. Running the same command again resumes the same MLflow run from the last
checkpoint (changed operational options are tagged `resumed.<key>`), and a finished one returns its model version
without training again, as long as that run and model version exist in the current store. A save that fails (disk
full) ends the run FAILED with a message naming the folder and the space needed; the previous checkpoint stays.

One process at a time trains a checkpoint folder: it holds an exclusive `flock` on `<folder>/pretrain.lock` (pid
and host inside; across machines on NFS too; the kernel releases it when the process dies, kill -9 included; under
DDP rank 0 holds it). The same command meanwhile says so and waits, then finds the training finished. Whoever holds
the lock knows that a RUNNING run tagged with this folder lost its process: its checkpoint is resumed, and without
one the run is ended KILLED (tag `killed_reason`) before a new run starts, so no run stays RUNNING.
Everything that can be checked (options, subset, loaders) is checked before the run starts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO

import mlflow
import pandas as pd
import torch
import yaml

from imagenet_transfer import preemption, tracking
from imagenet_transfer.errors import UserError
from imagenet_transfer.models import parameter_groups
from imagenet_transfer.paths import cache_dir
from imagenet_transfer.pretrain_config import PretrainConfig, lr_lambda


@dataclass(frozen=True)
class ResolvedSubset:
    manifest: pd.DataFrame
    name: str
    digest: str
    spec_yaml: str
    spec_digest: str
    location: str
    source_digest: str  # the content of the source it was built from ("" when unknown)
    built: Any = None  # a Subset built from a preset or spec, written and logged (`record`) inside the run
    source: str = ""
    run_id: str | None = None  # its subset run, once logged

    def record(self) -> ResolvedSubset:
        """Write and log a built subset (a run of its own, a child of the active run); as is otherwise."""
        if self.built is None:
            return self
        from imagenet_transfer.subsets import log_subset

        folder, run_id = log_subset(self.built, self.source)
        return dataclasses.replace(self, location=str(folder), built=None, run_id=run_id)


def resolve_subset(subset: str, source: str) -> ResolvedSubset:
    """A subset folder or manifest as is; a preset or spec file built in memory from `source` (bad input fails
    here, before any run starts; `record()` writes and logs it)."""
    from imagenet_transfer.catalog import load_catalog, source_digest
    from imagenet_transfer.subsets import build_subset, load_spec, manifest_digest, read_manifest

    path = Path(subset).expanduser()
    if path.suffix == ".parquet" or (path.is_dir() and (path / "manifest.parquet").exists()):
        manifest = read_manifest(path)
        folder = path if path.is_dir() else path.parent
        info = json.loads((folder / "subset.json").read_text()) if (folder / "subset.json").exists() else {}
        spec_yaml = (folder / "spec.yaml").read_text() if (folder / "spec.yaml").exists() else ""
        return ResolvedSubset(
            manifest,
            info.get("name", folder.name),
            info.get("digest") or manifest_digest(manifest),
            spec_yaml,
            info.get("spec_digest", ""),
            str(path),
            info.get("source_digest", ""),
        )
    is_file = path.suffix in (".yaml", ".yml")
    spec = load_spec(None if is_file else subset, path if is_file else None)
    from imagenet_transfer.synthetic import default_source

    source = source or default_source()
    built = build_subset(load_catalog(source), spec)
    return ResolvedSubset(
        built.manifest,
        spec.name,
        built.digest,
        spec.to_yaml(),
        spec.digest,
        "",
        source_digest(source),
        built,
        str(source),
    )


def coarse_labels(manifest: pd.DataFrame, level: str) -> torch.Tensor:
    """Coarse label of each subset label: the majority `level` label of its fine classes."""
    from imagenet_transfer.taxonomy import load_taxonomy

    method, k = level.rsplit("-", 1)
    coarse_of_fine = load_taxonomy().labels(method, int(k))
    pairs = manifest[["label", "wnid"]].drop_duplicates()
    pairs = pairs.assign(coarse=pairs["wnid"].astype(str).map(coarse_of_fine))
    majority = pairs.groupby("label")["coarse"].agg(lambda c: c.value_counts().index[0])
    codes = {w: i for i, w in enumerate(sorted(set(majority)))}
    return torch.tensor([codes[majority[label]] for label in range(int(manifest["label"].max()) + 1)])


def reference_accuracies(manifest: pd.DataFrame, coarse_of_label: torch.Tensor) -> dict[str, float]:
    """What the val metrics are read against: top-1 of a uniform guess over the labels, and the val share of
    the most common label and coarse label (what always answering it scores)."""
    val = torch.tensor(manifest.loc[manifest["split"] == "val", "label"].to_numpy(), dtype=torch.long)
    if not len(val):
        return {}

    def share(labels: torch.Tensor) -> float:  # of the most common label
        return round(float(torch.bincount(labels).max()) / len(labels), 4)

    return {
        "derived.val_top1_uniform": round(1.0 / len(coarse_of_label), 4),
        "derived.val_top1_majority": share(val),
        "derived.coarse_classes": int(coarse_of_label.unique().numel()),
        "derived.val_top1_coarse_majority": share(coarse_of_label[val]),
    }


# -- checkpoints ------------------------------------------------------------------------------------
LOCK_FILE = "pretrain.lock"
FIRST_CHECKPOINT_FRACTION = 1 / 20  # the first checkpoint comes after this share of the steps (or checkpoint_minutes)


def checkpoint_folder(config: PretrainConfig, subset: ResolvedSubset) -> Path:
    """The checkpoint folder of this training (an absolute path): keyed by the config less its operational fields,
    the device type it trains on (CPU and CUDA differ in numerics), the subset and its source's content, the code
    version and the tracking store (a checkpoint resumes its run, which lives in one store)."""
    folder = Path(config.checkpoint_dir).expanduser() if config.checkpoint_dir else cache_dir() / "checkpoints"
    device_type = "cpu" if config.device == "cpu" or not torch.cuda.device_count() else "cuda"
    upstream = f"{subset.digest}:{subset.source_digest}:{tracking.store_id()}:{device_type}"
    folder = folder.absolute() / f"{config.arch}-{config.key(upstream)}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise UserError(
            f"checkpoint_dir {folder} is not writable ({err.strerror}); expected a writable folder"
        ) from None
    return folder


@contextlib.contextmanager
def checkpoint_lock(folder: Path, poll_seconds: float = 0.5) -> Iterator[None]:
    """Hold an exclusive `flock` on `folder/pretrain.lock` for the block: one process trains a folder at a time.

    When another process holds it, print who (the pid and host it wrote into the file) and wait until it is
    released: the training finished, failed or its process died (the kernel releases the lock of a dead
    process, kill -9 included; on NFS the lock is the server's). Ctrl-C and SIGTERM interrupt the wait."""
    path = folder / LOCK_FILE
    try:
        fd, writable = os.open(path, os.O_RDWR | os.O_CREAT, 0o664), True
    except PermissionError:  # another user's lock file: locking needs no write access
        fd, writable = os.open(path, os.O_RDONLY), False
    try:
        announced = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as err:
                if err.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    print(f"warning: {path} cannot be locked ({err.strerror}): training without the lock")
                    break
            if not announced:
                print(
                    f"the same pre-training is running in another process ({_lock_holder(path)}); waiting for it "
                    f"to finish (lock {path})",
                    flush=True,
                )
                announced = True
            time.sleep(poll_seconds)
        if announced:
            print("the other process released the lock: checking its checkpoint folder", flush=True)
        if writable:  # who holds it, for whoever waits
            since = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": since}
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def _lock_holder(path: Path) -> str:
    """Who holds the lock at `path`, as its holder wrote it."""
    try:
        holder = json.loads(path.read_text())
        return f"pid {holder['pid']} on host {holder['host']}, since {holder['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has not yet written its pid"


def save_checkpoint(folder: Path, state: dict[str, Any]) -> None:
    """Write `checkpoint.pt` atomically (temporary file, fsync, rename): a failed save leaves the previous one."""
    _write_atomically(folder, "checkpoint.pt", lambda f: torch.save(state, f), _size_of(state))


def _write_atomically(folder: Path, name: str, write: Callable[[BinaryIO], None], size: int) -> None:
    """`write(file)` into `folder/name` through a temporary file renamed over it once complete. A failed write
    (ENOSPC, EDQUOT, EIO…) removes the temporary file and raises a UserError naming the folder and the space
    needed (`size` bytes, about) and available; the file it would have replaced is untouched."""
    tmp = folder / f".{name}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, folder / name)
    except OSError as err:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        try:
            free = f"{shutil.disk_usage(folder).free / 2**20:.0f} MiB free"
        except OSError:
            free = "free space unknown"
        raise UserError(
            f"checkpoint folder {folder}: {name} could not be written ({err.strerror or err}); it needs about "
            f"{size / 2**20:.0f} MiB, {free}. Expected room for it: free some space or choose another "
            f"--checkpoint-dir; the previous {name} there is kept, and the same command resumes from it"
        ) from None


def _size_of(value: Any) -> int:
    """Bytes of the tensors in a nested state (what a checkpoint of it takes, give or take its metadata)."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(_size_of(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_size_of(v) for v in value)
    return 0


def load_checkpoint(folder: Path) -> dict[str, Any] | None:
    """The state in `folder/checkpoint.pt` (tensors and plain values only: loaded with weights_only), or None."""
    path = folder / "checkpoint.pt"
    return torch.load(path, map_location="cpu", weights_only=True) if path.exists() else None


def _readable(path: Path, read: Callable[[Path], Any]) -> Any:
    """`read(path)`, or None when the file is damaged (truncated, not what it should be): the file is moved
    aside as `<name>.corrupt` and named, so that it never blocks a rerun."""
    try:
        return read(path)
    except Exception as err:  # any damage: torch and json raise many kinds
        aside = path.with_name(path.name + ".corrupt")
        os.replace(path, aside)
        print(f"{path} is damaged ({type(err).__name__}: {str(err)[:120]}); moved to {aside}, training from the start")
        return None


def _remove_stale_saves(folder: Path) -> None:
    """Temporary files of saves cut short (a process killed while writing). Called under the folder's lock, so
    no other process is writing: every one is stale."""
    for tmp in folder.glob(".*.tmp"):
        tmp.unlink(missing_ok=True)


# -- the run ----------------------------------------------------------------------------------------
def run_pretrain(
    config: PretrainConfig,
    on_step: Callable[[int], None] | None = None,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> dict[str, Any]:
    """Train `config` (resuming its checkpoint if any) and register the backbone; returns a summary.

    `on_step(global_step)` is called after every optimiser step (used to interrupt runs in tests);
    `on_epoch(epoch, metrics)` after every epoch's validation and checkpoint, on the main process (a study
    reports intermediate values there; an exception it raises ends the run).
    """
    given, config = config, config.resolve()
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if config.gpus > 1 and world_size == 1:
        return _launch_torchrun(config)
    rank = int(os.environ.get("RANK", "0"))
    is_main = rank == 0
    device = _device(config, rank, world_size)
    if world_size > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")

    subset = resolve_subset(config.subset, config.source) if is_main else None
    if world_size > 1:  # every rank trains on rank 0's subset
        holder = [subset]
        torch.distributed.broadcast_object_list(holder, src=0)
        subset = holder[0]
    folder = checkpoint_folder(config, subset)
    with checkpoint_lock(folder) if is_main else contextlib.nullcontext():  # the other ranks follow rank 0
        found = _same_on_all_ranks(_checked_checkpoint(folder) if is_main else None, world_size)
        if found.get("done"):
            summary = found["done"]
            if is_main:
                print(f"already trained: {summary['model_uri']} (run {summary['run_id']}); nothing to do")
                command_run = tracking.command_run_id()
                if command_run:  # the run `mlflow run` made points at the run that holds the model
                    tracking.follow(command_run, summary["run_id"], "pretrain", f"pretrain {config.arch} {subset.name}")
            return summary
        summary = _run(given, config, subset, folder, found, device, rank, world_size, on_step, on_epoch)
    if world_size > 1:
        torch.distributed.destroy_process_group()
    return summary


def _run(given, config, subset, folder, found, device, rank, world_size, on_step, on_epoch) -> dict[str, Any]:
    """The training itself, under the folder's lock: its MLflow run, started or resumed from the checkpoint."""
    is_main = rank == 0
    state = load_checkpoint(folder) if found.get("resume") else None
    setup = _prepare(config, subset, device, state, rank, world_size)  # bad input fails here, before any run

    run_context = (
        tracking.start_run(
            "pretrain",
            params=given.to_dict(),
            resolved={**config.to_dict(), "device": device.type},
            run_name=f"pretrain {config.arch} {subset.name} seed {config.seed}",
            run_id=state["run_id"] if state else None,
            system_metrics=True,
            tags={
                "arch": config.arch,
                "recipe": config.recipe,
                "subset_name": subset.name,
                "subset_digest": subset.digest,
                "spec_digest": subset.spec_digest,
                "source_digest": subset.source_digest,
                "schedule": config.schedule,
                "checkpoint_dir": str(folder),
            },
        )
        if is_main
        else _no_run()
    )
    with run_context as run:
        if is_main:
            if state:
                mlflow.set_tag("resumed", "true")
                if found.get("status"):
                    mlflow.set_tag("resumed_from_status", found["status"])
                _tag_operational_changes(run.info.run_id, {**config.to_dict(), "device": device.type})
            subset = subset.record()  # the subset's own run, a child of this one
            if subset.run_id:
                mlflow.set_tag("subset_run_id", subset.run_id)
            tracking.log_dataset(
                subset.manifest,
                name=subset.name,
                source=subset.location,
                digest=subset.digest,
                context="pretrain",
                tags={"spec_digest": subset.spec_digest},
            )
        model, summary = _train(
            config,
            subset,
            setup,
            device,
            folder,
            run.info.run_id if is_main else "",
            rank,
            world_size,
            is_main,
            on_step,
            on_epoch,
        )
        if is_main:
            summary.update(_log_backbone(config, subset, model, folder))
            summary["run_id"] = run.info.run_id
            text = json.dumps({**summary, "store": tracking.store_id()}, indent=2)
            _write_atomically(folder, "done.json", lambda f: f.write(text.encode()), len(text))
    return summary


def _tag_operational_changes(run_id: str, values: dict[str, Any]) -> None:
    """On resume: each operational option whose value differs from the one the run started with (its
    `resolved.<key>` param, which MLflow cannot change) is tagged `resumed.<key>` with the value it runs with now
    (a tag left by an earlier resume is removed where the value is back to the original)."""
    client = mlflow.MlflowClient()
    data = client.get_run(run_id).data
    for key in PretrainConfig.OPERATIONAL:
        now = tracking.flatten({key: values[key]})[key]
        if f"resolved.{key}" in data.params and not tracking.same_value(data.params[f"resolved.{key}"], now):
            client.set_tag(run_id, f"resumed.{key}", now)
        elif f"resumed.{key}" in data.tags:
            client.delete_tag(run_id, f"resumed.{key}")


def _checked_checkpoint(folder: Path) -> dict[str, Any]:
    """What the checkpoint folder may give in this tracking store: `done` (the summary of a finished training whose
    run and model version exist here), `resume` (a checkpoint whose run exists here and did not finish; `status`
    is that run's), or nothing (the folder is cleared: its run or model is gone from the store).

    Called under the folder's lock: a run still RUNNING with this folder's `checkpoint_dir` tag has lost its
    process. The one the checkpoint belongs to is resumed; any other is ended KILLED, tagged `killed_reason`."""
    client = mlflow.MlflowClient()
    done, path = folder / "done.json", folder / "checkpoint.pt"
    _remove_stale_saves(folder)

    def exists(run_id: str) -> Any:
        try:
            return client.get_run(run_id)
        except mlflow.exceptions.MlflowException:
            return None

    summary = _readable(done, lambda p: json.loads(p.read_text())) if done.exists() else None
    if summary is not None:
        run = exists(summary.get("run_id", ""))
        model = summary.get("model_name") and summary.get("model_version")
        if run is not None and run.info.status == "FINISHED" and (not model or _version_exists(client, summary)):
            _end_orphaned_runs(folder, keep="")
            return {"done": summary}
        print(
            f"the finished training in {folder} was logged to a run or model that this tracking store does not "
            f"hold ({summary.get('model_uri', '')}, run {summary.get('run_id', '')}): training again"
        )
        done.unlink()
        path.unlink(missing_ok=True)
        _end_orphaned_runs(folder, keep="")
        return {}
    state = _readable(path, lambda p: torch.load(p, map_location="cpu", weights_only=True)) if path.exists() else None
    if state is not None:
        run_id = state.get("run_id", "")
        run = exists(run_id)
        if run is not None and run.info.status != "FINISHED":
            _end_orphaned_runs(folder, keep=run_id)
            if run.info.status == "RUNNING":
                print(f"run {run_id} is RUNNING but its process is gone: resuming it from its checkpoint")
            return {"resume": True, "status": run.info.status}
        print(
            f"the checkpoint in {folder} belongs to run {run_id}, which this store does not hold unfinished: "
            "training from the start"
        )
        path.unlink()
    _end_orphaned_runs(folder, keep="")
    return {}


def _end_orphaned_runs(folder: Path, keep: str) -> None:
    """End KILLED every pre-training run of this store still RUNNING with `folder` as its `checkpoint_dir` tag,
    but `keep`: whoever holds the folder's lock knows that no live process trains them (killed with -9, or the
    machine died, before anything resumable was saved)."""
    runs = mlflow.search_runs(
        search_all_experiments=True,
        filter_string="tags.stage = 'pretrain' and attributes.status = 'RUNNING'",
        output_format="list",
    )
    client = mlflow.MlflowClient()
    for run in runs:
        if run.data.tags.get("checkpoint_dir") != str(folder) or run.info.run_id == keep:
            continue
        reason = (
            "its process died (the checkpoint folder's lock was free) before saving a checkpoint to resume from; "
            "a rerun of the same pre-training ended it and started a new run"
        )
        client.set_tag(run.info.run_id, "killed_reason", reason)
        client.set_terminated(run.info.run_id, status="KILLED")
        print(f"run {run.info.run_id} was RUNNING without a process or a checkpoint: ended KILLED")


def _version_exists(client, summary: dict[str, Any]) -> bool:
    try:
        client.get_model_version(summary["model_name"], str(summary["model_version"]))
    except mlflow.exceptions.MlflowException:
        return False
    return True


def _same_on_all_ranks(value: Any, world_size: int) -> Any:
    """Rank 0's `value` on every rank."""
    if world_size > 1:
        holder = [value]
        torch.distributed.broadcast_object_list(holder, src=0)
        value = holder[0]
    return value


@dataclass
class _Setup:
    """Everything a training needs, built before its run starts (so that bad input leaves no run behind)."""

    model: torch.nn.Module
    net: torch.nn.Module  # the module stepped: compiled and/or DDP-wrapped `model`
    train_loader: Any
    val_loader: Any
    optimizer: torch.optim.Optimizer
    scheduler: Any
    coarse: torch.Tensor
    shards: Any
    workers: int
    total: int
    epochs: int
    position: tuple[int, int, int]  # step, epoch, batch to start from


def _prepare(config, subset, device, state, rank, world_size) -> _Setup:
    from imagenet_transfer.data import default_workers, make_loader
    from imagenet_transfer.models import build_backbone
    from imagenet_transfer.shard_loader import make_shard_loader, select_shards

    manifest = subset.manifest
    num_classes = int(manifest["label"].max()) + 1
    torch.manual_seed(config.seed)
    model = build_backbone(config.arch, num_classes, resolution=config.resolution, dropout=config.dropout)
    cuda = device.type == "cuda"
    model = model.to(device, memory_format=torch.channels_last)  # faster on CUDA and on CPU alike
    if world_size > 1 and cuda:  # BatchNorm statistics over the global batch, as one process would compute them
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)  # (CPU/gloo has no SyncBatchNorm: per rank)
    workers = default_workers() if config.workers is None else config.workers
    if config.batch_size % world_size:
        raise UserError(
            f"--batch-size {config.batch_size} is the global batch and must divide evenly over the {world_size} "
            f"processes; expected a multiple of {world_size}"
        )
    loader_args = dict(
        arch=config.arch,
        resolution=config.resolution,
        workers=workers,
        device=device,
        rank=rank,
        world_size=world_size,
        channels_last=True,
    )
    shards = select_shards(config.input_pipeline, config.shards, subset.digest, config.resolution, device)
    build = partial(make_shard_loader, shards) if shards else partial(make_loader, manifest)
    per_process = config.batch_size // world_size  # the recipe's schedule stays that of one process at this batch
    train_loader = build("train", batch_size=per_process, train=True, seed=config.seed, **loader_args)
    has_val = bool((manifest["split"] == "val").any())
    val_loader = (
        build("val", batch_size=max(config.batch_size, 128), train=False, **loader_args)
        if has_val and rank == 0
        else None
    )
    per_epoch = len(train_loader)
    total = config.iterations if config.schedule == "iterations" else config.epochs * per_epoch
    groups = parameter_groups(model, config.arch, lr=config.lr, weight_decay=config.weight_decay)
    optimizer = torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(config, total))
    position = (0, 0, 0)
    if state:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        position = (state["step"], state["epoch"], state["batch"])
    net = torch.compile(model) if config.compile else model
    if world_size > 1:
        net = torch.nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if cuda else None)
    coarse = coarse_labels(manifest, config.coarse_level)
    return _Setup(
        model,
        net,
        train_loader,
        val_loader,
        optimizer,
        scheduler,
        coarse,
        shards,
        workers,
        total,
        math.ceil(total / per_epoch),
        position,
    )


def _train(config, subset, setup, device, folder, run_id, rank, world_size, is_main, on_step, on_epoch):
    from imagenet_transfer.engine import evaluate, train_steps
    from imagenet_transfer.progress import progress_bar

    manifest = subset.manifest
    model, net, train_loader, val_loader = setup.model, setup.net, setup.train_loader, setup.val_loader
    optimizer, scheduler, coarse, shards = setup.optimizer, setup.scheduler, setup.coarse, setup.shards
    total, epochs, per_epoch = setup.total, setup.epochs, len(train_loader)
    step, epoch, batch = setup.position
    if is_main:
        guess = reference_accuracies(manifest, coarse)
        if guess:
            print(
                f"guessing scores val_top1 {guess['derived.val_top1_uniform']:.3f} (uniform) or "
                f"{guess['derived.val_top1_majority']:.3f} (most common label), val_top1_coarse "
                f"{guess['derived.val_top1_coarse_majority']:.3f} (most common of {guess['derived.coarse_classes']} "
                f"{config.coarse_level} labels)"
            )
        derived = {
            "derived.num_classes": int(manifest["label"].max()) + 1,
            "derived.batches_per_epoch": per_epoch,
            "derived.total_iterations": total,
            "derived.epochs": epochs,
            "derived.workers": setup.workers,
            "derived.device": str(device),
            **tracking.runtime_params(device, prefix="derived."),
            "derived.world_size": world_size,
            "derived.global_batch_size": config.batch_size,
            "derived.batch_per_process": config.batch_size // world_size,
            "derived.train_images": int((manifest["split"] == "train").sum()),
            "derived.input_pipeline": f"shards:{shards.folder}" if shards else "loader",
            **guess,
        }
        tracking.log_params(derived)

    last_save = time.monotonic()
    # the first checkpoint of a training: after 1/20 of its steps (at least one) unless checkpoint_minutes come first
    first_due = max(1, math.ceil(total * FIRST_CHECKPOINT_FRACTION)) if step == 0 else 0

    def checkpoint(next_epoch: int, next_batch: int) -> None:
        nonlocal last_save, first_due
        first_due = 0
        if is_main:
            save_checkpoint(
                folder,
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "step": step,
                    "epoch": next_epoch,
                    "batch": next_batch,
                    "run_id": run_id,
                    "config": config.to_dict(),
                    "subset_digest": subset.digest,
                },
            )
        last_save = time.monotonic()

    metrics: dict[str, float] = {}
    reported: set[str] = set()  # skipped images already named in a warning
    with preemption.deferred(), progress_bar(status=True, enabled=is_main) as progress:

        def say(text: str) -> None:
            progress.console.print(text, markup=False, highlight=False, soft_wrap=True)

        task = progress.add_task(f"pretrain {config.arch} on {subset.name}", total=total, completed=step, status="")
        while step < total:
            train_loader.set_epoch(epoch, batch)

            def after_step(images: int, loss: float, epoch: int = epoch) -> None:
                nonlocal step, batch
                step, batch = step + 1, batch + 1
                progress.update(task, advance=1, status=f"epoch {epoch + 1}/{epochs} loss {loss:.3f}")
                if on_step is not None:
                    on_step(step)
                if _preempted(world_size, device):  # SIGTERM on any rank: every rank stops after this step
                    checkpoint(epoch, batch)
                    raise preemption.Preempted("SIGTERM")
                if (
                    config.checkpoint_minutes == 0
                    or time.monotonic() - last_save > 60 * config.checkpoint_minutes
                    or 0 < first_due <= step
                ):
                    checkpoint(epoch, batch)

            stats = train_steps(
                net,
                train_loader,
                optimizer,
                scheduler,
                device=device,
                max_steps=total - step,
                seed=config.seed,
                rank=rank,
                first_step=step,
                on_step=after_step,
            )
            if is_main:
                _warn_skipped(train_loader, "train", reported, say)
            skipped = train_loader.check_skipped(config.max_skipped_fraction)
            epoch, batch = epoch + 1, 0
            metrics = {
                "train_loss": stats.loss,
                "lr": scheduler.get_last_lr()[0],
                "images_per_s": stats.images_per_second * world_size,
                "epoch": epoch,
                "skipped_images": skipped,
            }
            if val_loader is not None:
                metrics.update(evaluate(model, val_loader, device=device, coarse_of_label=coarse))
                _warn_skipped(val_loader, "val", reported, say)
                metrics["val_skipped_images"] = val_loader.check_skipped(config.max_skipped_fraction)
            if is_main:
                mlflow.log_metrics(metrics, step=step)
                shown = ", ".join(f"{k} {v:.3f}" for k, v in metrics.items() if k.startswith("val_top"))
                progress.console.print(
                    f"epoch {epoch}: loss {stats.loss:.3f}, {stats.images_per_second:.0f} img/s, {shown}"
                )
                skips = {**train_loader.skipped, **(val_loader.skipped if val_loader is not None else {})}
                if skips:
                    mlflow.log_text("\n".join(f"{p}\t{why}" for p, why in skips.items()), "skipped_images.tsv")
            checkpoint(epoch, 0)
            if on_epoch is not None and is_main:
                on_epoch(epoch, metrics)
    return model, {"step": step, **metrics}


def _warn_skipped(loader: Any, split: str, reported: set[str], show: Callable[[str], None]) -> None:
    """Name the images of `split` that `loader` skipped since the last warning (the first one, and how many)."""
    new = [(path, why) for path, why in loader.skipped.items() if path not in reported]
    if not new:
        return
    reported.update(path for path, _ in new)
    (path, why), more = new[0], len(new) - 1
    others = f" and {more} more" if more else ""
    show(
        f"warning: {len(new)} {split} image(s) could not be read and were skipped: {path} ({why}){others}; "
        f"counted in the metric {'skipped_images' if split == 'train' else 'val_skipped_images'} and listed in the "
        "run's skipped_images.tsv"
    )


def _preempted(world_size: int, device: torch.device) -> bool:
    """Whether any process received SIGTERM (agreed over the ranks, so that they all stop at the same step)."""
    stop = preemption.requested()
    if world_size > 1:
        flag = torch.tensor([int(stop)], device=device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        stop = bool(flag.item())
    return stop


def _log_backbone(config: PretrainConfig, subset: ResolvedSubset, model: torch.nn.Module, folder: Path) -> dict:
    name = config.model_name or f"{config.arch}-{subset.name}"
    pairs = subset.manifest[["label", "label_wnid"]].drop_duplicates().sort_values("label")
    info = {
        "backbone": model.config(),
        "label_wnids": pairs["label_wnid"].astype(str).tolist(),
        "subset_name": subset.name,
        "subset_digest": subset.digest,
        "spec_digest": subset.spec_digest,
        "source_digest": subset.source_digest,
        "recipe": config.recipe,
        "seed": config.seed,
    }
    version = tracking.log_backbone(
        model,
        info,
        name=name if config.register else None,
        tags={
            "arch": config.arch,
            "subset_name": subset.name,
            "subset_digest": subset.digest,
            "spec_digest": subset.spec_digest,
            "spec": subset.spec_yaml,
            "seed": str(config.seed),
            "recipe": config.recipe,
        },
    )
    uri = f"models:/{name}/{version}" if version else f"runs:/{mlflow.active_run().info.run_id}/backbone"
    return {"model_name": name if version else "", "model_version": version or "", "model_uri": uri}


def _device(config: PretrainConfig, rank: int, world_size: int) -> torch.device:
    available = torch.cuda.device_count()
    if config.device == "cuda" and not available:
        raise UserError("device=cuda but no CUDA device is visible; expected device=auto or cpu here")
    if config.gpus > max(available, 1) or (config.gpus > 1 and not available):
        raise UserError(
            f"gpus={config.gpus} but {available} CUDA device(s) exist; expected gpus <= {max(available, 1)}"
        )
    if config.device == "cpu" or not available:
        return torch.device("cpu")
    local = int(os.environ.get("LOCAL_RANK", rank))
    torch.cuda.set_device(local)
    return torch.device("cuda", local)


def _launch_torchrun(config: PretrainConfig) -> dict[str, Any]:
    """Re-run this pre-training under torchrun with one process per GPU (DDP)."""
    _device(config, 0, 1)  # refuses more GPUs than exist
    folder = checkpoint_folder(config, resolve_subset(config.subset, config.source))
    with checkpoint_lock(folder):  # another process trains it: wait here, not with the ranks started (their timeout)
        pass
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(yaml.safe_dump(config.to_dict()))
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={config.gpus}",
            "-m",
            "imagenet_transfer.cli",
            "pretrain",
            "--config",
            str(path),
        ]
        done = subprocess.run(command)
    if done.returncode:
        raise SystemExit(done.returncode)
    return json.loads((folder / "done.json").read_text())


class _no_run:
    """The run context of non-main DDP ranks: no MLflow calls."""

    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False
