"""Prepared shards and the device pipeline on CPU tensors: round trip, resume, stale/damaged shards, the
augmentation family, determinism, and pre-training from shards vs loose files on the tiny world."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as F
from conftest import cli

from imagenet_transfer.data import decode, normalise, resize_size
from imagenet_transfer.errors import UserError
from imagenet_transfer.shard_loader import augment, crop_params, make_shard_loader, select_shards
from imagenet_transfer.shards import Records, ShardOptions, ShardSet, choose_format, find_prepared, write_shards

SIDE = resize_size(32)  # 36: the side the tiny world's 32 px crops need


@pytest.fixture(scope="module")
def subset(tiny_world, tmp_path_factory):
    from imagenet_transfer.pretrain import resolve_subset

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("IMAGENET_TRANSFER_CACHE", str(tmp_path_factory.mktemp("subset-cache")))
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path_factory.mktemp('subset-mlruns') / 'mlflow.db'}")
        return resolve_subset("full", str(tiny_world / "imagenet"))


def records(manifest) -> Records:
    return Records(manifest["path"].astype(str).tolist(), manifest["label"].tolist(), manifest["split"].tolist())


def options(fmt: str) -> ShardOptions:
    return ShardOptions(format=fmt, side=SIDE, images_per_shard=256)


@pytest.fixture(scope="module")
def written(subset, tmp_path_factory):
    """Raw and JPEG shards of the tiny world's `full` subset, written once."""
    root = tmp_path_factory.mktemp("shards")
    for fmt in ("raw", "jpeg"):
        write_shards(root / fmt, records(subset.manifest), options(fmt), subset.digest)
    return {fmt: root / fmt for fmt in ("raw", "jpeg")}


def copy_of(folder: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(folder, tmp_path / folder.name))


def test_round_trip_keeps_labels_and_pixels(subset, written, one_thread):
    manifest = subset.manifest
    for fmt, tolerance in (("raw", 0.0), ("jpeg", 6.0)):
        shards = ShardSet.open(written[fmt], manifest_digest=subset.digest, verify="full")
        assert shards.info["counts"] == manifest["split"].value_counts().to_dict()
        for split in ("train", "val"):
            index = shards.splits[split]
            rows = np.flatnonzero((manifest["split"] == split).to_numpy())
            assert np.array_equal(index.row, rows)  # manifest order, every image once
            assert np.array_equal(index.label, manifest["label"].to_numpy()[rows])
        positions = np.array([0, 5, 300, len(shards.splits["train"]) - 1])  # across shard files
        if fmt == "raw":
            got = shards.read_raw("train", positions)
        else:
            from torchvision.io import decode_jpeg

            data, sizes = shards.read_bytes("train", positions)
            got = torch.stack([d.permute(1, 2, 0) for d in decode_jpeg(list(torch.split(data, sizes)))])
        for image, row in zip(got, shards.splits["train"].row[positions]):
            expected = F.resize(decode(manifest["path"].iloc[row]), [SIDE, SIDE], antialias=True).permute(1, 2, 0)
            diff = (image.float() - expected.float()).abs().mean().item()
            assert diff <= tolerance, (fmt, row, diff)
    raw, jpeg = (ShardSet.open(written[f]).info["bytes"] for f in ("raw", "jpeg"))
    assert raw == len(manifest) * SIDE * SIDE * 3 and jpeg < raw


def test_an_interrupted_prepare_resumes_to_the_same_shards(subset, written, tmp_path, one_thread):
    class Stop(Exception):
        pass

    def stop_after_two(done, total):
        assert total == 5  # 960 train images in 4 shards of 256, 240 val in 1
        if done == 2:
            raise Stop

    folder = tmp_path / "resumed"
    with pytest.raises(Stop):
        write_shards(folder, records(subset.manifest), options("jpeg"), subset.digest, on_shard=stop_after_two)
    assert not (folder / "index.json").exists() and len(list(folder.glob("*.bin"))) == 2
    with pytest.raises(UserError, match="no index.json"):
        ShardSet.open(folder)
    (folder / ".train-00002.bin.999.tmp").write_bytes(b"half a shard")  # a worker killed mid-shard
    seen = []
    info = write_shards(
        folder, records(subset.manifest), options("jpeg"), subset.digest, on_shard=lambda done, total: seen.append(done)
    )
    assert seen == [3, 4, 5]  # the two finished shards were skipped
    assert not list(folder.glob(".*"))
    whole = ShardSet.open(written["jpeg"]).info
    assert info["shards"] == whole["shards"] and info["index_sha256"] == whole["index_sha256"]
    assert info["written_images"] == 1200 - 2 * 256
    again = write_shards(folder, records(subset.manifest), options("jpeg"), subset.digest)  # done: verified only
    assert again == {k: v for k, v in info.items() if k != "written_images"}


def test_stale_truncated_and_tampered_shards_are_refused(subset, written, tmp_path):
    changed = subset.manifest.copy()
    changed.loc[changed.index[0], "label"] = (changed["label"].iloc[0] + 1) % 40
    from imagenet_transfer.subsets import manifest_digest

    new_digest = manifest_digest(changed)
    assert new_digest != subset.digest and options("raw").key(new_digest) != options("raw").key(subset.digest)
    with pytest.raises(UserError, match="prepared from manifest .* never read stale"):
        ShardSet.open(written["raw"], manifest_digest=new_digest)
    with pytest.raises(UserError, match="another manifest or other options"):
        write_shards(copy_of(written["raw"], tmp_path / "a"), records(changed), options("raw"), new_digest)

    truncated, rebuilt = copy_of(written["jpeg"], tmp_path / "b"), []
    shard = truncated / "train-00001.bin"
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(UserError, match=r"shard .*train-00001\.bin has .* bytes but the index says"):
        ShardSet.open(truncated, manifest_digest=subset.digest)
    repaired = write_shards(
        copy_of(truncated, tmp_path / "r"),
        records(subset.manifest),
        options("jpeg"),
        subset.digest,
        on_shard=lambda done, total: rebuilt.append(done),
    )
    assert rebuilt == [5] and repaired["shards"] == ShardSet.open(written["jpeg"]).info["shards"]  # only that one

    damaged = copy_of(written["jpeg"], tmp_path / "c")
    data = bytearray((damaged / "val-00000.bin").read_bytes())
    data[1000] ^= 0xFF
    (damaged / "val-00000.bin").write_bytes(bytes(data))
    ShardSet.open(damaged)  # same size: only the full check sees it
    with pytest.raises(UserError, match=r"val-00000\.bin does not match its sha256"):
        ShardSet.open(damaged, verify="full")

    edited = copy_of(written["raw"], tmp_path / "d")
    info = json.loads((edited / "index.json").read_text())
    info["counts"]["train"] = 1000
    (edited / "index.json").write_text(json.dumps(info))
    with pytest.raises(UserError, match="index.json does not match its own checksum"):
        ShardSet.open(edited)
    relabelled = copy_of(written["raw"], tmp_path / "e")
    with np.load(relabelled / "index.npz") as arrays:
        content = {k: arrays[k] for k in arrays.files}
    content["train_label"] = content["train_label"][::-1].copy()
    np.savez(relabelled / "index.npz", **content)
    with pytest.raises(UserError, match="index.npz is missing or does not match"):
        ShardSet.open(relabelled)

    # pre-training names the stale folder and exits 2 (before any training)
    assert (
        cli(
            "pretrain",
            "--subset",
            "full",
            "--source",
            subset.location,
            "--recipe",
            "smoke",
            "--device",
            "cpu",
            "--input-pipeline",
            "shards",
            "--shards",
            str(truncated),
            "--checkpoint-dir",
            str(tmp_path / "ck"),
        )
        == 2
    )


def test_a_disk_too_small_is_refused_before_writing(subset, tmp_path, monkeypatch):
    import imagenet_transfer.shards as shards_module

    monkeypatch.setattr(
        shards_module.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000)
    )
    with pytest.raises(UserError, match=r"need about .* GiB .* only 0.00 GiB are free"):
        write_shards(tmp_path / "full", records(subset.manifest), options("raw"), subset.digest)
    assert not list((tmp_path / "full").iterdir())


def test_crop_and_mirror_family():
    """Pixels that encode their own coordinates show where every crop came from."""
    side, res, n = 40, 32, 4000
    rows, cols = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    image = torch.stack([rows, cols, torch.zeros_like(rows)], dim=-1).to(torch.uint8)  # HWC
    seeds = torch.from_numpy(np.random.default_rng(0).integers(0, 2**62, size=n, dtype=np.int64))
    crops = augment(image.expand(n, -1, -1, -1), seeds, resolution=res, train=True)
    assert crops.shape == (n, 3, res, res) and crops.dtype == torch.uint8
    top, left = crops[:, 0, 0, :].min(dim=1).values, crops[:, 1, :, :].amin(dim=(1, 2))
    assert torch.equal(
        crops[:, 0], (top[:, None, None] + torch.arange(res)[None, :, None]).expand(-1, -1, res).to(torch.uint8)
    )
    mirrored = crops[:, 1, 0, 0] > crops[:, 1, 0, -1]
    expected_cols = torch.where(
        mirrored[:, None], left[:, None] + res - 1 - torch.arange(res), left[:, None] + torch.arange(res)
    )
    assert torch.equal(crops[:, 1, 0, :].long(), expected_cols)
    assert set(top.tolist()) == set(range(side - res + 1)) == set(left.tolist())  # every offset 0..room
    assert 0.45 < mirrored.float().mean() < 0.55
    exp_top, exp_left, exp_mirror = crop_params(seeds, side - res, train=True)
    assert torch.equal(top.long(), exp_top) and torch.equal(left.long(), exp_left) and torch.equal(mirrored, exp_mirror)
    centre = augment(image.expand(3, -1, -1, -1), seeds[:3], resolution=res, train=False)
    assert (centre[:, 0, 0, 0] == 4).all() and (centre[:, 1, 0, 0] == 4).all() and (centre[:, 1, 0, 1] == 5).all()
    resized = augment(image.expand(2, -1, -1, -1), seeds[:2], resolution=24, train=True, resize=27)
    assert resized.shape == (2, 3, 24, 24)


def test_shard_batches_are_normalised_crops_of_the_stored_images(subset, written, one_thread):
    shards = ShardSet.open(written["raw"])
    loader = make_shard_loader(
        shards, "train", arch="small", resolution=32, batch_size=16, train=True, seed=3, channels_last=True
    )
    images, labels = next(iter(loader))
    assert images.shape == (16, 3, 32, 32) and images.dtype == torch.float32 and labels.dtype == torch.int64
    assert images.is_contiguous(memory_format=torch.channels_last)
    positions, seeds = (keys[:16] for keys in loader.sampler.keys())  # noqa: SIM118 - the sampler's own keys()
    order = np.argsort(shards.splits["train"].shard[positions], kind="stable")  # a raw batch is read by shard
    assert len(set(shards.splits["train"].shard[positions])) > 1
    positions, seeds = positions[order], torch.from_numpy(seeds[order])
    stored = shards.read_raw("train", positions)
    top, left, mirror = crop_params(seeds, SIDE - 32, train=True)
    for i in range(16):
        crop = stored[i, top[i] : top[i] + 32, left[i] : left[i] + 32].permute(2, 0, 1)
        crop = crop.flip(-1) if mirror[i] else crop
        assert torch.allclose(images[i], normalise(crop, "imagenet"), atol=1e-5)
    assert torch.equal(labels, torch.from_numpy(shards.splits["train"].label[positions]))
    threaded = make_shard_loader(
        shards,
        "train",
        arch="small",
        resolution=32,
        batch_size=16,
        train=True,
        seed=3,
        channels_last=True,
        reader="thread",
    )
    assert threaded.loader is None and all(
        torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(loader, threaded)
    )
    val = make_shard_loader(shards, "val", arch="small", resolution=32, batch_size=100, train=False)
    assert len(val) == 3 and sum(len(y) for _, y in val) == 240  # every val image once, in order


def test_order_resume_ranks_workers_and_device_decode(subset, written, one_thread):
    shards = ShardSet.open(written["jpeg"])
    kw = dict(arch="small", resolution=32, batch_size=32, train=True, seed=5)

    def batches(**more):
        return [(x.clone(), y.clone()) for x, y in make_shard_loader(shards, "train", **{**kw, **more})]

    whole = batches(epoch=2)
    assert len(whole) == 30
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(whole, batches(epoch=2)))
    assert not torch.equal(whole[0][1], batches(epoch=3)[0][1])
    resumed = batches(epoch=2, start_batch=27)
    assert len(resumed) == 3 and all(torch.equal(a[0], b[0]) for a, b in zip(whole[27:], resumed))
    halves = batches(epoch=2, device_decode=0.5)  # half of each batch decoded on the "device" (CPU here)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(whole, halves))
    with_worker = batches(epoch=2, workers=1)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(whole, with_worker))
    rank0, rank1 = (
        make_shard_loader(shards, "train", rank=r, world_size=2, epoch=2, **kw).sampler.keys()[0] for r in (0, 1)
    )
    assert len(rank0) == len(rank1) == 480 and not set(rank0) & set(rank1)
    loader = make_shard_loader(shards, "train", **kw)
    loader.set_epoch(2, 27)
    assert len(loader) == 3 and torch.equal(next(iter(loader))[0], whole[27][0])


def test_pipeline_selection(subset, written, tmp_path, monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setenv("IMAGENET_TRANSFER_CACHE", str(tmp_path))
    assert select_shards("auto", "", subset.digest, 32, cuda) is None  # nothing prepared
    with pytest.raises(UserError, match="no shards of manifest .* are prepared"):
        select_shards("shards", "", subset.digest, 32, cpu)
    (tmp_path / "shards").mkdir()
    for fmt in ("jpeg", "raw"):
        shutil.copytree(written[fmt], tmp_path / "shards" / options(fmt).key(subset.digest))
    assert find_prepared(subset.digest, SIDE).name.startswith("raw36-")  # raw preferred
    assert find_prepared(subset.digest, 256) is None
    assert select_shards("auto", "", subset.digest, 32, cuda).format == "raw"
    assert select_shards("auto", "", subset.digest, 32, cpu) is None  # the CPU default stays the loader
    assert select_shards("shards", "", subset.digest, 32, cpu).format == "raw"
    assert select_shards("loader", "", subset.digest, 32, cuda) is None
    assert select_shards("auto", str(written["jpeg"]), subset.digest, 32, cpu).format == "jpeg"
    with pytest.raises(UserError, match="input_pipeline='fast'"):
        select_shards("fast", "", subset.digest, 32, cpu)


def test_prepare_logs_and_pretraining_from_shards_matches_loose_files(tiny_world, tmp_path, one_thread):
    """10 classes of the tiny world (24 train images each), 70 steps of 16 (~5 epochs): ~10 s per pipeline."""
    from imagenet_transfer.prepare import run_prepare
    from imagenet_transfer.pretrain import run_pretrain
    from imagenet_transfer.pretrain_config import PretrainConfig

    source, subset = str(tiny_world / "imagenet"), "e5-budget-240-classes-10"
    first = run_prepare(subset, source, format="auto", short_side=SIDE, workers=0)
    run = mlflow.get_run(first["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["stage"] == "prepare"
    assert first["format"] == "raw" and run.data.params["derived.format"] == "raw"  # 1 MB fits in RAM
    assert run.data.metrics["images"] == 300 and run.data.metrics["bytes"] == 300 * SIDE * SIDE * 3
    assert run.data.metrics["written_images"] == 300 and run.data.metrics["images_per_s"] > 0
    again = run_prepare(subset, source, format="raw", short_side=SIDE, workers=0)
    assert again["folder"] == first["folder"] and again["reused"]  # content-addressed: found, verified
    assert cli("prepare", "--subset", subset, "--source", source, "--format", "png") == 2
    assert cli("prepare", "--subset", subset, "--source", source, "--quality", "101") == 2

    results = {}
    for pipeline in ("shards", "loader"):
        settings = dict(
            subset=subset,
            source=source,
            recipe="world",
            iterations=70,
            batch_size=16,
            workers=0,
            device="cpu",
            register=False,
            seed=1,
            checkpoint_minutes=100,
            input_pipeline=pipeline,
            checkpoint_dir=str(tmp_path / pipeline),
        )
        results[pipeline] = summary = run_pretrain(PretrainConfig(**settings))
        used = mlflow.get_run(summary["run_id"]).data.params["derived.input_pipeline"]
        assert used == ("loader" if pipeline == "loader" else f"shards:{first['folder']}")
    shards, loose = results["shards"], results["loader"]
    assert shards["train_loss"] < 2.1 and loose["train_loss"] < 2.1  # both learn (chance: ln 10 = 2.30)
    assert abs(shards["train_loss"] - loose["train_loss"]) < 0.15, results
    assert abs(shards["val_top5"] - loose["val_top5"]) <= 0.15, results  # measured: 0.73 and 0.73
    assert abs(shards["val_top1"] - loose["val_top1"]) <= 0.15, results


def test_the_pipeline_modules_import_without_mlflow_or_pandas():
    """The GPU benchmark runs where only torch, torchvision, numpy and pillow are installed."""
    code = (
        "import sys, imagenet_transfer.shards, imagenet_transfer.shard_loader, imagenet_transfer.engine; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'mlflow', 'pandas', 'rich', 'yaml', 'typer'}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")},
    )
    assert done.stdout.strip() == "[]"


def test_format_auto_takes_raw_only_when_it_fits_the_ram_share():
    raw_bytes = 1000 * 256 * 256 * 3
    assert choose_format(1000, 256, 0.5, ram_bytes=2 * raw_bytes) == "raw"
    assert choose_format(1000, 256, 0.5, ram_bytes=2 * raw_bytes - 1) == "jpeg"
    assert choose_format(1000, 256, 0.25, ram_bytes=2 * raw_bytes) == "jpeg"
    with pytest.raises(UserError, match="format = 'png': expected 'raw' or 'jpeg'"):
        ShardOptions(format="png")
    with pytest.raises(UserError, match="side = 4: expected greater than or equal to 8"):
        ShardOptions(side=4)
