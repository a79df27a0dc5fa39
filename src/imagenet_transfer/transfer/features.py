"""Frozen features of a backbone for a fixed list of images: extracted once, cached on disk.

    from imagenet_transfer.transfer.features import extract_features
    got = extract_features(net, paths, layers=("pool5", "fc7"), batch_size=64, device="cpu")
    got.arrays["fc7"]          # float32 (len(paths), 512); row i is paths[i]
    got.from_cache             # True when every layer came from the cache
    got.images_per_s           # extraction speed (None when cached); compare with inference_speed(net)

Input: a backbone (`models.Backbone`) and image paths. Images go through the evaluation view
(`data.Transform("center", net.resolution)`: square resize to round(res·256/227), centre crop) and the
architecture's normalisation, in the order given, in eval mode (no dropout, BatchNorm running stats).
Output: `cache_dir()/features/<key>.npy`, one file per layer, with a `.json` beside it saying what it holds.
The key is a hash of: the backbone's identity (SHA-256 of its config and weights, so a registered version,
a checkpoint and a random initialisation are each told apart by what they compute), the image list (paths in
order, each file's size and mtime), the layer, the resolution, the view, the normalisation and the precision
(bf16 autocast on CUDA, float32 elsewhere). A change to any of them is a different file; a file is written to
a temporary name and renamed, so a reader never sees half of one. Nothing prunes the cache: delete
`cache_dir()/features/` to reclaim space (real SUN397 pool5 of an AlexNet is ~1.5 GB per backbone).

Every feature row is written at its sample's index (the loader carries indices as labels) and the code asserts
that each slot was filled exactly once. Images that cannot be decoded are a UserError listing them: a feature
matrix with holes would silently shift every later row.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from imagenet_transfer.errors import UserError
from imagenet_transfer.paths import cache_dir
from imagenet_transfer.progress import progress_bar

CACHE_VERSION = 1  # bump when the extraction itself changes (view, dtype, ...)
VIEW = "center"


@dataclass
class FeatureSet:
    arrays: dict[str, np.ndarray]  # layer -> float32 (N, D), row i = image i
    from_cache: bool  # every layer was read from the cache
    seconds: float  # time spent extracting (0 when cached)
    images_per_s: float | None  # extraction speed, decode included (None when cached)


class FeatureSlots:
    """Feature rows written by sample index; `result()` asserts that each of the n slots was filled once."""

    def __init__(self, n: int, dims: Mapping[str, int]) -> None:
        self.arrays = {layer: np.zeros((n, dim), dtype=np.float32) for layer, dim in dims.items()}
        self.count = np.zeros(n, dtype=np.int64)

    def put(self, indices: np.ndarray | Sequence[int], features: Mapping[str, np.ndarray | torch.Tensor]) -> None:
        indices = np.asarray(indices, dtype=np.int64)
        for layer, array in self.arrays.items():
            value = features[layer]
            value = value.detach().float().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
            array[indices] = value.reshape(len(indices), -1)
        np.add.at(self.count, indices, 1)

    def result(self) -> dict[str, np.ndarray]:
        empty, twice = np.flatnonzero(self.count == 0), np.flatnonzero(self.count > 1)
        assert not len(empty) and not len(twice), (
            f"feature slots: {len(empty)} never filled (e.g. {empty[:5].tolist()}), "
            f"{len(twice)} filled more than once (e.g. {twice[:5].tolist()}) of {len(self.count)}"
        )
        return self.arrays


def backbone_identity(net: torch.nn.Module) -> str:
    """SHA-256 of the backbone's rebuild config and every tensor of its state dict (names, shapes, values)."""
    digest = hashlib.sha256(json.dumps(net.config(), sort_keys=True).encode())
    for name, tensor in net.state_dict().items():
        t = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def image_list_digest(paths: Sequence[str | Path]) -> str:
    """SHA-256 of the paths in order and each file's size and modification time (missing files count too)."""
    digest = hashlib.sha256()
    for path in paths:
        try:
            st = os.stat(path)
            stamp = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            stamp = "missing"
        digest.update(f"{path}\t{stamp}\n".encode())
    return digest.hexdigest()


def cache_key(
    identity: str, images: str, layer: str, resolution: int, normalisation: str, precision: str = "float32"
) -> str:
    parts = {
        "version": CACHE_VERSION,
        "backbone": identity,
        "images": images,
        "layer": layer,
        "resolution": resolution,
        "view": VIEW,
        "normalisation": normalisation,
        "precision": precision,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def extract_features(
    net,
    paths: Sequence[str | Path],
    layers: Iterable[str] = ("fc7",),
    *,
    batch_size: int = 64,
    workers: int = 0,
    device: str | torch.device = "cpu",
    cache: bool = True,
    progress: bool = False,
    what: str = "images",
) -> FeatureSet:
    """The `layers` features of `paths` (see the module docstring), from the cache where possible."""
    from imagenet_transfer.data import normalisation_for

    layers = tuple(dict.fromkeys((layers,) if isinstance(layers, str) else layers))
    vector_layers = [layer for layer in net.feature_layers if layer != "conv5"]
    unknown = [layer for layer in layers if layer not in vector_layers]
    if unknown:
        raise UserError(
            f"feature layer(s) {', '.join(map(repr, unknown))} do not exist in {net.arch}; "
            f"expected some of {', '.join(vector_layers)}"
        )
    paths = [str(p) for p in paths]
    if not paths:
        raise UserError(f"no {what} to extract features from; expected at least one image")
    normalisation = normalisation_for(net.arch)
    precision = "bfloat16" if torch.device(device).type == "cuda" else "float32"  # engine.autocast's choice
    folder = cache_dir() / "features"
    files: dict[str, Path] = {}
    if cache:
        identity, images = backbone_identity(net), image_list_digest(paths)
        files = {
            layer: folder / f"{cache_key(identity, images, layer, net.resolution, normalisation, precision)}.npy"
            for layer in layers
        }
    arrays = {}
    for layer, file in files.items():
        try:
            loaded = np.load(file)
        except (OSError, ValueError):
            continue  # absent or unreadable: extracted again below
        if loaded.shape[0] == len(paths):
            arrays[layer] = loaded
    todo = [layer for layer in layers if layer not in arrays]
    if not todo:
        return FeatureSet(arrays, True, 0.0, None)
    started = time.perf_counter()
    fresh = _extract(
        net,
        paths,
        todo,
        batch_size=batch_size,
        workers=workers,
        device=torch.device(device),
        progress=progress,
        what=what,
    )
    seconds = time.perf_counter() - started
    for layer, array in fresh.items():
        if layer in files:
            _save(
                files[layer],
                array,
                {
                    "layer": layer,
                    "images": len(paths),
                    "arch": net.arch,
                    "resolution": net.resolution,
                    "first_image": paths[0],
                },
            )
    arrays.update(fresh)
    return FeatureSet({layer: arrays[layer] for layer in layers}, False, seconds, len(paths) / max(seconds, 1e-9))


@torch.inference_mode()
def _extract(
    net,
    paths: list[str],
    layers: list[str],
    *,
    batch_size: int,
    workers: int,
    device: torch.device,
    progress: bool,
    what: str,
) -> dict[str, np.ndarray]:
    from imagenet_transfer.data import make_loader
    from imagenet_transfer.engine import autocast

    frame = pd.DataFrame({"path": paths, "label": np.arange(len(paths), dtype=np.int64), "split": "val"})
    loader = make_loader(
        frame,
        "val",
        arch=net.arch,
        resolution=net.resolution,
        batch_size=batch_size,
        workers=workers,
        train=False,
        device=device,
    )
    net = net.to(device).eval()
    slots = FeatureSlots(len(paths), {layer: net.feature_dims()[layer] for layer in layers})
    with progress_bar(enabled=progress, transient=True) as bar:
        task = bar.add_task(f"features of {len(paths)} {what}", total=len(loader))
        for images, indices in loader:
            with autocast(device):
                out = net.features(images, layers)
            slots.put(indices.cpu().numpy(), out)
            bar.advance(task)
    if loader.skipped:
        listing = "; ".join(f"{p} ({why})" for p, why in list(loader.skipped.items())[:20])
        raise UserError(
            f"{len(loader.skipped)} of {len(paths)} {what} could not be read: {listing}; "
            "expected readable image files (fix or remove them from the lists)"
        )
    return slots.result()


def _save(file: Path, array: np.ndarray, meta: dict) -> None:
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_name(f".{file.stem}.{os.getpid()}.tmp.npy")
    try:
        np.save(tmp, array)
        os.replace(tmp, file)
        file.with_suffix(".json").write_text(json.dumps({**meta, "shape": list(array.shape)}, indent=1) + "\n")
    except OSError:
        pass  # a read-only cache only costs a second extraction
    finally:
        tmp.unlink(missing_ok=True)


@torch.inference_mode()
def inference_speed(
    net, *, batch_size: int = 64, batches: int = 5, layer: str = "fc7", device: str | torch.device = "cpu"
) -> float:
    """Images per second of the backbone alone (random inputs, no decoding) up to `layer`: the ceiling that
    `extract_features` is compared with."""
    from imagenet_transfer.engine import autocast

    device = torch.device(device)
    net = net.to(device).eval()
    x = torch.randn(batch_size, 3, net.resolution, net.resolution, device=device)
    with autocast(device):
        net.features(x, (layer,))  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(batches):
        with autocast(device):
            net.features(x, (layer,))
    if device.type == "cuda":
        torch.cuda.synchronize()
    return batch_size * batches / (time.perf_counter() - started)
