"""SUN-CLS's two protocols, their summary over partitions, and `run` (see the package docstring).

result = run(backbone, info, Config(protocol="linear"), device="cpu")
table, predicted = evaluate_layers({"fc7": {"train": (x, y), "val": (x, y), "test": (x, y)}}, num_classes=397)
metrics = summarise(table.assign(partition=1), "linear")     # {"sun397_acc": ..., "sun397_val_acc": ...}
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from imagenet_transfer.errors import UserError
from imagenet_transfer.transfer.common import Result
from imagenet_transfer.transfer.finetune import cosine_schedule, head_sgd, train_epochs
from imagenet_transfer.transfer.linear import L2_GRID, fit_linear, select_l2
from imagenet_transfer.transfer.metrics import mean_per_class_accuracy
from imagenet_transfer.transfer.sun397.config import Config
from imagenet_transfer.transfer.sun397.data import Partition, load_partitions
from imagenet_transfer.transfer.sun397.figures import finetune_figure, layer_figure
from imagenet_transfer.transfer.sun397.model import feature_layers, with_new_head


def run(backbone, info: dict, config: Config, *, device: str | torch.device = "cpu", progress: bool = True) -> Result:
    """SUN-CLS of `backbone` under `config` (see the package docstring)."""
    device = torch.device(device)
    layers = feature_layers(backbone, config.layers) if config.protocol == "linear" else ()
    classes, parts = load_partitions(config)
    if config.protocol == "linear":
        table, predicted, speed = _linear(backbone, parts, len(classes), layers, config, device, progress)
    else:
        table, predicted = _finetune(backbone, parts, len(classes), config, device, progress)
        speed = None
    metrics = summarise(table, config.protocol)
    metrics.update(
        {
            "sun397_partitions": float(len(parts)),
            "sun397_classes": float(len(classes)),
            "sun397_missing_images": float(sum(len(p.missing) for p in parts)),
            **{
                f"sun397_{role}_images": float(np.mean([len(p.part(role)) for p in parts]))
                for role in ("train", "val", "test")
            },
        }
    )
    if speed:
        metrics["sun397_features_images_per_s"] = speed
    predictions = {"sun397_acc": predictions_table(parts, predicted)}
    if config.protocol == "linear":
        figure = {"sun397_layers.png": layer_figure(table, 100 / len(classes))}
        return Result(metrics, figure, {"sun397_linear.csv": table}, predictions)
    figure = {"sun397_finetune.png": finetune_figure(table)}
    return Result(metrics, figure, {"sun397_finetune.csv": table}, predictions)


def predictions_table(parts: list[Partition], predicted: dict[int, np.ndarray]) -> pd.DataFrame:
    """The class_mean table `transfer.uncertainty` resamples: one row per scored image of each partition,
    `unit` (its entry in the partition list), `stratum` (the partition), `label`, `pred` (the chosen layer's or
    epoch's prediction); `predicted[partition]` is in the order of the partition's test rows."""
    frames = []
    for part in parts:
        scored = part.part("test")
        frames.append(
            pd.DataFrame(
                {
                    "unit": scored["entry"].astype(str).to_numpy(),
                    "stratum": part.number,
                    "label": scored["label"].to_numpy(np.int64),
                    "pred": np.asarray(predicted[part.number], dtype=np.int64),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def _linear(
    backbone,
    parts: list[Partition],
    num_classes: int,
    layers: tuple[str, ...],
    config: Config,
    device: torch.device,
    progress: bool,
) -> tuple[pd.DataFrame, dict[int, np.ndarray], float | None]:
    from imagenet_transfer.transfer.features import extract_features

    paths = sorted({p for part in parts for p in part.frame["path"]})
    got = extract_features(
        backbone,
        paths,
        layers,
        batch_size=config.batch_size,
        workers=config.workers,
        device=device,
        progress=progress,
        what="SUN397 images",
    )
    row_of = {p: i for i, p in enumerate(paths)}
    tables, predicted = [], {}
    for part in parts:
        split = {
            role: (part.part(role)["path"].map(row_of).to_numpy(), part.part(role)["label"].to_numpy())
            for role in ("train", "val", "test")
        }
        per_layer = {
            layer: {role: (got.arrays[layer][rows], y) for role, (rows, y) in split.items()} for layer in layers
        }
        table, by_layer = evaluate_layers(
            per_layer, num_classes=num_classes, l2_grid=config.l2_grid, max_iter=config.max_iter
        )
        tables.append(table.assign(partition=part.number))
        predicted[part.number] = by_layer[table.loc[table["chosen"], "layer"].iloc[0]]
    table = pd.concat(tables, ignore_index=True)
    return table[["partition", "layer", "l2", "val_acc", "test_acc", "chosen"]], predicted, got.images_per_s


def evaluate_layers(
    data: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]], *, num_classes: int, l2_grid=L2_GRID, max_iter: int = 100
) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """The linear protocol on one partition, a pure function: `data[layer][role] = (features, labels)` for
    roles train, val, test. Per layer: L2 chosen on val (fitted on train), refitted on train + val, scored on
    test. The chosen layer is the one with the best val accuracy (ties: the earlier layer). Accuracies are
    mean per-class accuracy in %. Returns the table and each layer's predicted test labels."""
    rows, predicted = [], {}
    for layer, roles in data.items():
        (tx, ty), (vx, vy), (sx, sy) = roles["train"], roles["val"], roles["test"]
        sel = select_l2(tx, ty, vx, vy, num_classes=num_classes, l2_grid=l2_grid, max_iter=max_iter)
        final = fit_linear(
            np.concatenate([tx, vx]),
            np.concatenate([ty, vy]),
            num_classes=num_classes,
            l2=sel.l2,
            max_iter=max_iter,
            init=None,
        )
        predicted[layer] = final.predict(sx)
        rows.append(
            {
                "layer": layer,
                "l2": sel.l2,
                "val_acc": 100 * sel.val_score,
                "test_acc": 100 * mean_per_class_accuracy(predicted[layer], sy),
            }
        )
    table = pd.DataFrame(rows)
    table["chosen"] = False
    table.loc[table["val_acc"].idxmax(), "chosen"] = True
    return table, predicted


def summarise(table: pd.DataFrame, protocol: str) -> dict[str, float]:
    """Metrics of a linear or finetune table (one chosen row per partition): mean and std over partitions."""
    chosen = table[table["chosen"]]
    assert chosen["partition"].is_unique and len(chosen) == table["partition"].nunique(), "one choice per partition"
    metrics = _mean_std("sun397_acc", chosen["test_acc"])
    metrics["sun397_val_acc"] = float(chosen["val_acc"].mean())
    if protocol == "linear":
        for layer, rows in table.groupby("layer", sort=False):
            metrics.update(_mean_std(f"sun397_acc_{layer}", rows["test_acc"]))
    else:
        metrics["sun397_best_epoch"] = float(chosen["epoch"].mean())
    return metrics


def _mean_std(name: str, values: pd.Series) -> dict[str, float]:
    out = {name: float(values.mean())}
    if len(values) > 1:
        out[f"{name}_std"] = float(values.std(ddof=1))
    return out


# -- finetune ----------------------------------------------------------------------------------------------
def _finetune(
    backbone, parts: list[Partition], num_classes: int, config: Config, device: torch.device, progress: bool
) -> tuple[pd.DataFrame, dict[int, np.ndarray]]:
    tables, predicted = [], {}
    for part in parts:
        table, predicted[part.number] = _finetune_partition(backbone, part, num_classes, config, device, progress)
        tables.append(table)
    return pd.concat(tables, ignore_index=True), predicted


def _finetune_partition(
    backbone, part: Partition, num_classes: int, config: Config, device: torch.device, progress: bool
) -> tuple[pd.DataFrame, np.ndarray]:
    """Fine-tune a copy of `backbone` with a new head on the partition's train rows, keep the epoch with the best
    val accuracy, score the test rows once: one row per epoch (partition, epoch, train_loss, val_acc, chosen,
    test_acc on the chosen row), and the predicted labels of the test rows."""
    from imagenet_transfer.data import make_loader
    from imagenet_transfer.engine import train_steps

    net = with_new_head(backbone, num_classes, seed=config.seed).to(device)
    train = part.part("train")
    batch = min(config.train_batch_size, len(train))
    frame = part.frame.assign(split=part.frame["role"].where(part.frame["role"] == "train", "other"))
    loader = make_loader(
        frame,
        "train",
        arch=net.arch,
        resolution=net.resolution,
        batch_size=batch,
        workers=config.workers,
        train=True,
        seed=config.seed,
        device=device,
    )
    head = list(net.classifier.parameters())
    trunk = [p for name, p in net.named_parameters() if not name.startswith("classifier.")]
    optimizer = head_sgd(
        trunk, head, lr=config.trunk_lr, head_lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    scheduler = cosine_schedule(optimizer, config.epochs * len(loader))

    def train_one_epoch(epoch: int) -> float:
        loader.set_epoch(epoch)
        stats = train_steps(
            net,
            loader,
            optimizer,
            scheduler,
            device=device,
            max_steps=len(loader),
            seed=config.seed * 1000 + part.number,
            first_step=epoch * len(loader),
        )
        loader.check_skipped(config.max_missing_fraction)
        return stats.loss

    def validate() -> float:
        return 100 * mean_per_class_accuracy(*predict(net, part.part("val"), config, device))

    def report(epoch: int, loss: float, val: float) -> None:
        if progress:
            print(
                f"sun397 finetune partition {part.number} epoch {epoch}/{config.epochs}: "
                f"loss {loss:.3f}, val {val:.1f} %",
                flush=True,
            )

    history = train_epochs(net, config.epochs, train_one_epoch, validate, report)
    history.best.restore(net)
    predicted, labels = predict(net, part.part("test"), config, device)
    test = 100 * mean_per_class_accuracy(predicted, labels)
    table = pd.DataFrame(
        [
            {"partition": part.number, "epoch": epoch, "train_loss": loss, "val_acc": val}
            for epoch, (loss, val) in enumerate(zip(history.losses, history.scores), 1)
        ]
    )
    table["chosen"] = table["epoch"] == history.best.epoch  # the earliest of the best epochs
    table["test_acc"] = np.where(table["chosen"], test, np.nan)
    return table, predicted


@torch.inference_mode()
def predict(net, frame: pd.DataFrame, config: Config, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """(predicted labels, true labels) of the rows of `frame`, eval view, each image counted exactly once."""
    from imagenet_transfer.data import make_loader
    from imagenet_transfer.transfer.features import FeatureSlots

    indexed = pd.DataFrame({"path": frame["path"].to_numpy(), "label": np.arange(len(frame)), "split": "val"})
    loader = make_loader(
        indexed,
        "val",
        arch=net.arch,
        resolution=net.resolution,
        batch_size=config.batch_size,
        workers=config.workers,
        train=False,
        device=device,
    )
    net.eval()
    slots = FeatureSlots(len(frame), {"logits": net.num_classes})
    for images, indices in loader:
        slots.put(indices.cpu().numpy(), {"logits": net(images).float()})
    if loader.skipped:
        raise UserError(f"{len(loader.skipped)} SUN397 image(s) could not be read, e.g. {next(iter(loader.skipped))}")
    return slots.result()["logits"].argmax(axis=1), frame["label"].to_numpy()
