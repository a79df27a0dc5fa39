"""SUN-CLS: scene classification on SUN397's official partitions, by a linear classifier or by fine-tuning.

    imagenet-transfer transfer run sun397 --backbone random:small                       # linear, ~15 s
    imagenet-transfer transfer run sun397 --backbone models:/small-full@current --set protocol=finetune
    imagenet-transfer transfer run sun397 --backbone ... --set data=/data/SUN397 --set partitions=1,2,3,4,5,6,7,8,9,10

Input: a backbone and a SUN397 root (`SUN397/<letter>/<class>/*.jpg` with `Partitions/` beside or inside it;
default: the embedded world). Each partition gives its Training_NN list (50 images per class on real data) and
its Testing_NN list. A validation split is carved from each partition's training images (`val_fraction` of each
class, seeded by `seed` and the partition); every choice below is made on it, and the test list is scored once
for the chosen configuration. With `evaluate_on="val"` (what a budget study optimises) the Testing lists are
never read: `eval_fraction` of each class's training images is held out and scored instead, and the
validation split for the choices is carved from the rest.

Protocols:
  linear    frozen features (eval view, cached on disk: `transfer.features`) of each layer among pool5, fc6, fc7
            that the backbone has (`layers` to restrict; ResNets have only pool5), a multinomial logistic regression
            per layer (`transfer.linear`) whose L2 strength is chosen on validation, then refitted on
            train + validation and scored on test. The layer with the best validation accuracy is the one
            reported as `sun397_acc`; every layer's test accuracy is logged too, to show where the transferable
            features live (fc7 of a net trained on objects can be worse for scenes than pool5).
  finetune  the paper's protocol: the whole backbone with a new num-scenes head (N(0, 0.01) init), SGD with
            momentum, the head at `lr`, the pre-trained layers at `trunk_lr` (10x lower, as in Caffe
            fine-tuning), cosine decay, the paper's augmentation (resize, random crop, mirror); after each epoch
            the validation accuracy is measured and the weights of the best epoch are the ones tested.

Output (`Result`), accuracies are mean per-class accuracy in %:
  sun397_acc                 test accuracy of the chosen configuration, mean over the partitions run (with
                             evaluate_on=val: accuracy on the held-out part of the training lists)
  sun397_acc_std             its standard deviation over the partitions (ddof=1; only with several partitions)
  sun397_val_acc             validation accuracy of the chosen configuration (mean over partitions)
  sun397_acc_<layer>         linear: test accuracy of each layer (mean over partitions), `_std` with several
  sun397_partitions, sun397_classes, sun397_train_images, sun397_val_images, sun397_test_images (per partition),
  sun397_missing_images      images listed but absent (tolerated up to `max_missing_fraction`, then dropped)
  sun397_features_images_per_s   linear: extraction speed, when the features were not cached
  tables  sun397_linear.csv (partition, layer, l2, val_acc, test_acc, chosen) or
          sun397_finetune.csv (partition, epoch, train_loss, val_acc, chosen, test_acc on the chosen row)
  figures sun397_layers.png (linear: test accuracy per layer, mean ± std, chosen layer marked) or
          sun397_finetune.png (validation accuracy per epoch, chosen epochs marked)

On the embedded default world (generator v2: 24 scenes, 50 + 50 images per scene per partition, `small`
backbone at 32 px), linear with partitions 1-3: `random:small@32` 6.0 ± 1.3 %, the default pre-trained
backbone 9.4 ± 0.4 % (chance 4.2 %; README "Transfer benchmarks"). Features of the 2,400 images are
extracted once per backbone and cached; finetune (12 epochs) costs tens of seconds per partition on 2 cores.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, get_args

import numpy as np
import pandas as pd
import torch
from pydantic import AfterValidator, Field, NonNegativeFloat, PositiveInt
from torch import nn

from imagenet_transfer.config import Settings
from imagenet_transfer.errors import UserError
from imagenet_transfer.transfer.common import Result, world_part
from imagenet_transfer.transfer.linear import L2_GRID, fit_linear, mean_per_class_accuracy, select_l2
from imagenet_transfer.transfer.sun397 import SUN397Layout, class_of, find_sun397, read_class_names, read_partition

Protocol = Literal["linear", "finetune"]
PROTOCOLS = get_args(Protocol)
VectorLayer = Literal["pool5", "fc6", "fc7"]
VECTOR_LAYERS = get_args(VectorLayer)
EvaluateOn = Literal["test", "val"]
EVALUATE_ON = get_args(EvaluateOn)


def _distinct(partitions: tuple[int, ...]) -> tuple[int, ...]:
    if len(set(partitions)) != len(partitions):
        raise ValueError("expected distinct partition numbers, e.g. 1,2,3")
    return partitions


Partitions = Annotated[tuple[PositiveInt, ...], AfterValidator(_distinct)]  # SUN397's Training/Testing_NN.txt numbers


class Config(Settings):
    """SUN-CLS options; `quick()` is the smoke-test variant."""

    data: str = ""  # SUN397 root (SUN397/ and Partitions/); "" = the embedded world
    protocol: Protocol = "linear"  # linear | finetune
    partitions: Partitions = Field((1, 2, 3), min_length=1)
    val_fraction: float = Field(0.2, gt=0, lt=1)  # of each class's training images, for every choice (layer, L2, epoch)
    seed: int = 0
    evaluate_on: EvaluateOn = "test"  # test: the Testing lists | val: a part of the training lists, held out and scored
    # evaluate_on=val: of each class's training images, held out and scored
    eval_fraction: float = Field(0.25, gt=0, lt=1)
    # listed images absent on disk: tolerated (dropped) up to this fraction
    max_missing_fraction: float = Field(0.001, ge=0, le=1)
    batch_size: int = Field(64, ge=1)  # feature extraction and evaluation
    # decoding processes beside the forward pass (extraction: 0.82 of pure inference, 0.76 with 0)
    workers: int = Field(1, ge=0)
    # linear
    layers: tuple[VectorLayer, ...] = ()  # () = every one of pool5, fc6, fc7 the backbone has
    l2_grid: tuple[NonNegativeFloat, ...] = Field(L2_GRID, min_length=1)
    max_iter: int = Field(100, ge=1)  # L-BFGS iterations per fit
    # finetune
    epochs: int = Field(12, ge=1)
    train_batch_size: int = Field(32, ge=1)
    lr: float = Field(0.01, gt=0)  # the new head
    trunk_lr: float = Field(0.001, ge=0)  # every pre-trained layer
    momentum: float = 0.9
    weight_decay: float = 5e-4

    @classmethod
    def quick(cls, **changes) -> Config:
        """A few seconds on the tiny world: two partitions, two L2 strengths, two epochs."""
        return cls(
            **{
                "partitions": (1, 2),
                "l2_grid": (1e-3, 1e-1),
                "max_iter": 30,
                "epochs": 2,
                "train_batch_size": 8,
                "batch_size": 32,
                "workers": 0,
                **changes,
            }
        )


# -- the data: partitions as tables of (entry, path, label, role) -------------------------------------------
@dataclass(frozen=True)
class Partition:
    number: int
    frame: pd.DataFrame  # columns entry, path, label, role (train | val | test), one row per image
    missing: list[str]  # listed images absent on disk (dropped)

    def part(self, role: str) -> pd.DataFrame:
        return self.frame[self.frame["role"] == role]


def load_partition(
    layout: SUN397Layout,
    number: int,
    classes: list[str],
    *,
    val_fraction: float,
    seed: int,
    max_missing_fraction: float,
    evaluate_on: str = "test",
    eval_fraction: float = 0.25,
) -> Partition:
    """Partition `number` as one table: its training list split into train/val (per class, seeded), its test
    list; UserError for an absent partition, an unknown class, or more missing images than tolerated.

    `evaluate_on="val"`: the Testing list is not read; the role `test` (what is scored) holds `eval_fraction` of
    each class's training images instead, carved before the validation split (seeded differently)."""
    kinds = ("Training", "Testing") if evaluate_on == "test" else ("Training",)
    files = [layout.partitions / f"{kind}_{number:02d}.txt" for kind in kinds]
    absent = [f.name for f in files if not f.is_file()]
    if absent:
        raise UserError(
            f"SUN397 partition {number}: {', '.join(absent)} not found in {layout.partitions}; "
            f"available partitions: {', '.join(map(str, layout.partition_ids())) or 'none'}"
        )
    train, test = read_partition(files[0]), (read_partition(files[1]) if len(files) > 1 else [])
    label_of = {c: i for i, c in enumerate(classes)}
    unknown = sorted({class_of(e) for e in train + test} - set(label_of))
    if unknown:
        raise UserError(
            f"SUN397 partition {number}: {len(unknown)} class(es) not in ClassName.txt, e.g. "
            f"{unknown[:3]}; expected every listed image under a class of "
            f"{layout.partitions / 'ClassName.txt'}"
        )
    overlap = set(train) & set(test)
    if overlap:
        raise UserError(
            f"SUN397 partition {number}: {len(overlap)} image(s) in both Training and Testing lists, "
            f"e.g. {sorted(overlap)[:3]}"
        )
    entries = train + test
    paths = [str(layout.image(e)) for e in entries]
    missing = [e for e, p in zip(entries, paths) if not Path(p).is_file()]
    if len(missing) > max_missing_fraction * len(entries):
        raise UserError(
            f"SUN397 partition {number}: {len(missing)} of {len(entries)} listed images are missing "
            f"under {layout.images} (more than max_missing_fraction={max_missing_fraction:g}), e.g. "
            f"{'; '.join(missing[:20])}; expected the full SUN397 image tree for these lists"
        )
    frame = pd.DataFrame(
        {
            "entry": entries,
            "path": paths,
            "label": np.array([label_of[class_of(e)] for e in entries], dtype=np.int64),
            "role": ["train"] * len(train) + ["test"] * len(test),
        }
    )
    frame = frame[~frame["entry"].isin(set(missing))].reset_index(drop=True)
    if evaluate_on == "val":
        frame.loc[carve_validation(frame, eval_fraction, seed=[seed, number, 1]), "role"] = "test"
    frame.loc[carve_validation(frame, val_fraction, seed=[seed, number]), "role"] = "val"
    for role in ("train", "val", "test"):
        if not (frame["role"] == role).any():
            raise UserError(
                f"SUN397 partition {number} has no {role} images left (after dropping {len(missing)} "
                f"missing ones and carving val_fraction={val_fraction:g}); expected at least two "
                "training images per class"
            )
    return Partition(number, frame, missing)


def carve_validation(frame: pd.DataFrame, fraction: float, *, seed) -> np.ndarray:
    """Index labels of the training rows moved to validation: round(fraction · n) of each class (at least one
    when a class has two or more training images, never all of them), drawn at random with `seed`."""
    rng = np.random.default_rng(seed)
    chosen = []
    train = frame[frame["role"] == "train"]
    for _, rows in train.groupby("label", sort=True):
        n = len(rows)
        take = min(max(round(fraction * n), 1), n - 1) if n >= 2 else 0
        chosen.extend(rows.index[rng.permutation(n)[:take]])
    return np.array(sorted(chosen), dtype=np.int64)


def load_partitions(config: Config) -> tuple[list[str], list[Partition]]:
    layout = find_sun397(config.data or world_part("sun397"))
    classes = read_class_names(layout.partitions / "ClassName.txt")
    parts = [
        load_partition(
            layout,
            p,
            classes,
            val_fraction=config.val_fraction,
            seed=config.seed,
            max_missing_fraction=config.max_missing_fraction,
            evaluate_on=config.evaluate_on,
            eval_fraction=config.eval_fraction,
        )
        for p in config.partitions
    ]
    return classes, parts


# -- run ---------------------------------------------------------------------------------------------------
def run(backbone, info: dict, config: Config, *, device: str | torch.device = "cpu", progress: bool = True) -> Result:
    """SUN-CLS of `backbone` under `config` (see the module docstring)."""
    device = torch.device(device)
    layers = feature_layers(backbone, config.layers) if config.protocol == "linear" else ()
    classes, parts = load_partitions(config)
    if config.protocol == "linear":
        table, speed = _linear(backbone, parts, len(classes), layers, config, device, progress)
    else:
        table = _finetune(backbone, parts, len(classes), config, device, progress)
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
    if config.protocol == "linear":
        return Result(
            metrics, {"sun397_layers.png": layer_figure(table, 100 / len(classes))}, {"sun397_linear.csv": table}
        )
    return Result(metrics, {"sun397_finetune.png": finetune_figure(table)}, {"sun397_finetune.csv": table})


def feature_layers(backbone, requested: tuple[str, ...]) -> tuple[str, ...]:
    """The layers to evaluate: `requested` (each must exist) or every one of pool5/fc6/fc7 the backbone has."""
    have = [layer for layer in VECTOR_LAYERS if layer in backbone.feature_layers]
    if not requested:
        return tuple(have)
    absent = [layer for layer in requested if layer not in have]
    if absent:
        raise UserError(
            f"layer(s) {', '.join(absent)} do not exist in a {backbone.arch} backbone; "
            f"it has {', '.join(have)} (leave `layers` empty to use all of them)"
        )
    return tuple(requested)


def _linear(
    backbone,
    parts: list[Partition],
    num_classes: int,
    layers: tuple[str, ...],
    config: Config,
    device: torch.device,
    progress: bool,
) -> tuple[pd.DataFrame, float | None]:
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
    tables = []
    for part in parts:
        split = {
            role: (part.part(role)["path"].map(row_of).to_numpy(), part.part(role)["label"].to_numpy())
            for role in ("train", "val", "test")
        }
        per_layer = {
            layer: {role: (got.arrays[layer][rows], y) for role, (rows, y) in split.items()} for layer in layers
        }
        table = evaluate_layers(per_layer, num_classes=num_classes, l2_grid=config.l2_grid, max_iter=config.max_iter)
        tables.append(table.assign(partition=part.number))
    table = pd.concat(tables, ignore_index=True)
    return table[["partition", "layer", "l2", "val_acc", "test_acc", "chosen"]], got.images_per_s


def evaluate_layers(
    data: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]], *, num_classes: int, l2_grid=L2_GRID, max_iter: int = 100
) -> pd.DataFrame:
    """The linear protocol on one partition, a pure function: `data[layer][role] = (features, labels)` for
    roles train, val, test. Per layer: L2 chosen on val (fitted on train), refitted on train + val, scored on
    test. The chosen layer is the one with the best val accuracy (ties: the earlier layer). Accuracies are
    mean per-class accuracy in %."""
    rows = []
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
        rows.append(
            {
                "layer": layer,
                "l2": sel.l2,
                "val_acc": 100 * sel.val_score,
                "test_acc": 100 * mean_per_class_accuracy(final.predict(sx), sy),
            }
        )
    table = pd.DataFrame(rows)
    table["chosen"] = False
    table.loc[table["val_acc"].idxmax(), "chosen"] = True
    return table


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
) -> pd.DataFrame:
    from imagenet_transfer.data import make_loader
    from imagenet_transfer.engine import train_steps

    tables = []
    for part in parts:
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
        optimizer = torch.optim.SGD(
            [{"params": trunk, "lr": config.trunk_lr}, {"params": head, "lr": config.lr}],
            momentum=config.momentum,
            weight_decay=config.weight_decay,
        )
        total = config.epochs * len(loader)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s, total=total: 0.5 * (1 + math.cos(math.pi * s / total))
        )
        rows, best_state, best_val = [], None, -1.0
        for epoch in range(config.epochs):
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
            val = 100 * mean_per_class_accuracy(*predict(net, part.part("val"), config, device))
            rows.append({"partition": part.number, "epoch": epoch + 1, "train_loss": stats.loss, "val_acc": val})
            if progress:
                print(
                    f"sun397 finetune partition {part.number} epoch {epoch + 1}/{config.epochs}: "
                    f"loss {stats.loss:.3f}, val {val:.1f} %",
                    flush=True,
                )
            if val > best_val:  # the earliest epoch among equals
                best_val, best_state = val, copy.deepcopy(net.state_dict())
        net.load_state_dict(best_state)
        test = 100 * mean_per_class_accuracy(*predict(net, part.part("test"), config, device))
        table = pd.DataFrame(rows)
        table["chosen"] = table["val_acc"] == best_val
        table["chosen"] &= ~table["chosen"].shift(fill_value=False).cummax()  # only the first best epoch
        table["test_acc"] = np.where(table["chosen"], test, np.nan)
        tables.append(table)
    return pd.concat(tables, ignore_index=True)


def with_new_head(backbone, num_classes: int, *, seed: int = 0):
    """A copy of `backbone` whose classifier is a fresh num_classes-way layer (weights N(0, 0.01), bias 0)."""
    net = copy.deepcopy(backbone).cpu()
    head = nn.Linear(net.classifier.in_features, num_classes)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        head.weight.copy_(torch.randn(head.weight.shape, generator=generator) * 0.01)
        head.bias.zero_()
    net.classifier, net.num_classes = head, num_classes
    return net


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


# -- figures -----------------------------------------------------------------------------------------------
def layer_figure(table: pd.DataFrame, chance: float | None = None):
    """Bar chart: test accuracy per layer (mean ± std over partitions); the layer(s) chosen on val hatched;
    chance level (100 / classes) dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stats = table.groupby("layer", sort=False).agg(
        acc=("test_acc", "mean"), std=("test_acc", "std"), chosen=("chosen", "sum"), val=("val_acc", "mean")
    )
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    bars = ax.bar(stats.index, stats["acc"], yerr=stats["std"].fillna(0), capsize=4, color="#4c72b0")
    for bar, (_, row) in zip(bars, stats.iterrows()):
        if row["chosen"]:
            bar.set_hatch("//")
        ax.annotate(
            f"{row['acc']:.1f}\n(val {row['val']:.1f})",
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    if chance is not None:
        ax.axhline(chance, color="grey", linestyle="--", linewidth=1, label="chance")
        ax.legend(fontsize=7, loc="upper right")
    ax.set_ylabel("SUN397 mean per-class accuracy (%)")
    ax.set_ylim(0, max(100.0, float((stats["acc"] + stats["std"].fillna(0)).max()) * 1.15))
    ax.set_title(
        f"linear probe per layer ({table['partition'].nunique()} partition(s); hatched = chosen on val)", fontsize=8
    )
    fig.tight_layout()
    return fig


def finetune_figure(table: pd.DataFrame):
    """Validation accuracy per epoch for each partition; the epoch chosen (and tested) marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    for number, rows in table.groupby("partition"):
        ax.plot(rows["epoch"], rows["val_acc"], marker=".", label=f"partition {number}")
        pick = rows[rows["chosen"]]
        ax.scatter(pick["epoch"], pick["val_acc"], s=80, facecolors="none", edgecolors="black")
    ax.set_xlabel("epoch")
    ax.set_ylabel("val mean per-class accuracy (%)")
    ax.set_title("SUN397 fine-tuning (circle = epoch tested)", fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


__all__ = [
    "PROTOCOLS",
    "Config",
    "Partition",
    "carve_validation",
    "evaluate_layers",
    "feature_layers",
    "load_partition",
    "run",
    "summarise",
    "with_new_head",
]
