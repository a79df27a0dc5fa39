"""The E4 probes' `run`: features of the sampled source, then the probes `Config.parts` asks for (see the package
docstring).

    result = run(backbone, info, Config(), device="cpu")
    result.predictions["probe_knn_top1"]     # per val image: label, pred (transfer.uncertainty)
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import torch

from imagenet_transfer.errors import UserError
from imagenet_transfer.transfer.common import Result, world_part
from imagenet_transfer.transfer.metrics import top1_accuracy
from imagenet_transfer.transfer.probe.config import PARTS, Config
from imagenet_transfer.transfer.probe.data import sample_source
from imagenet_transfer.transfer.probe.figures import knn_figure
from imagenet_transfer.transfer.probe.model import coarse_probe, knn_curve, linear_probe, probe_layer


def run(backbone, info: dict, config: Config, *, device: str | torch.device = "cpu", progress: bool = True) -> Result:
    """The E4 probes of `backbone` (see the package docstring)."""
    from imagenet_transfer.catalog import load_catalog
    from imagenet_transfer.transfer.features import extract_features

    layer = probe_layer(backbone, config.layer)
    parts = _parts(config, info)
    label_wnids = _label_wnids(backbone, info) if "coarse" in parts else None
    penultimate = "fc7" if backbone.fc6 is not None else "pool5"
    frame = sample_source(
        load_catalog(config.data or world_part("imagenet")),
        train_per_class=config.train_per_class,
        val_per_class=config.val_per_class,
        seed=config.seed,
    )
    layers = [layer] if "coarse" not in parts else list(dict.fromkeys([layer, penultimate]))
    got = extract_features(
        backbone,
        frame["path"].tolist(),
        layers,
        batch_size=config.batch_size,
        workers=config.workers,
        device=device,
        progress=progress,
        what="probe images",
    )
    is_train = (frame["split"] == "train").to_numpy()
    y = frame["label"].to_numpy()
    num_classes = int(y.max()) + 1
    metrics = {
        "probe_fine_classes": float(num_classes),
        "probe_train_images": float(is_train.sum()),
        "probe_val_images": float((~is_train).sum()),
    }
    if got.images_per_s:
        metrics["probe_features_images_per_s"] = got.images_per_s
    tables, figures, predictions = {}, {}, {}
    x = got.arrays[layer]
    root = os.path.commonpath(frame["path"].tolist())
    units = [os.path.relpath(p, root) for p in frame.loc[~is_train, "path"]]  # the val images, named in the source

    def predictions_table(label: np.ndarray, pred: np.ndarray) -> pd.DataFrame:
        return pd.DataFrame({"unit": units, "label": np.asarray(label, np.int64), "pred": np.asarray(pred, np.int64)})

    if "knn" in parts:
        curve, predicted = knn_curve(
            x[is_train], y[is_train], x[~is_train], y[~is_train], ks=(config.k,), num_classes=num_classes
        )
        k = min(config.k, int(is_train.sum()))
        metrics["probe_knn_top1"] = float(curve.loc[curve["k"] == k, "top1"].iloc[0])
        metrics["probe_k"] = float(config.k)
        tables["probe_knn.csv"] = curve
        predictions["probe_knn_top1"] = predictions_table(y[~is_train], predicted[k])
    if "linear" in parts:
        table, predicted = linear_probe(frame, x, config)
        metrics["probe_linear_top1"] = 100 * top1_accuracy(predicted, y[~is_train])
        predictions["probe_linear_top1"] = predictions_table(y[~is_train], predicted)
        chosen = table[table["chosen"]].iloc[0]
        metrics["probe_linear_val_top1"], metrics["probe_linear_l2"] = float(chosen["val_top1"]), float(chosen["l2"])
        tables["probe_linear.csv"] = table
    if "coarse" in parts:
        mapping, coarse_metrics, pairs = coarse_probe(
            backbone,
            got.arrays[penultimate][~is_train],
            frame.loc[~is_train, "wnid"].to_numpy(),
            label_wnids,
            config.coarse_level,
        )
        metrics.update(coarse_metrics)
        tables["probe_coarse_map.csv"] = mapping
        predictions["probe_coarse_top1"] = predictions_table(pairs["label"], pairs["pred"])
    if "probe_knn.csv" in tables:
        figures["probe_knn.png"] = knn_figure(
            tables["probe_knn.csv"], metrics.get("probe_linear_top1"), layer, chance=100 / num_classes
        )
    return Result(metrics, figures, tables, predictions)


def _parts(config: Config, info: dict) -> tuple[str, ...]:
    if config.parts:
        return config.parts
    return PARTS if info.get("label_wnids") else PARTS[:2]


def _label_wnids(backbone, info: dict) -> list[str]:
    wnids = info.get("label_wnids")
    if not wnids:
        raise UserError(
            f"backbone {info.get('uri', '?')} does not say which wnid each of its outputs is "
            "(no label_wnids in its backbone.json: a random: backbone, or one pre-trained before "
            "label_wnids were recorded); the fine→coarse probe needs them: drop `coarse` from parts"
        )
    if len(wnids) != backbone.num_classes:
        raise UserError(
            f"backbone {info.get('uri', '?')} has {backbone.num_classes} outputs but {len(wnids)} "
            "label_wnids; expected one wnid per output label"
        )
    return list(map(str, wnids))
