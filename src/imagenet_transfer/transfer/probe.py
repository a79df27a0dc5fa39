"""E4 probes: coarse→fine (kNN and linear probe on fine classes) and fine→coarse (predictions in a coarse space).

    imagenet-transfer transfer run probe --backbone models:/small-e3-127@current     # (a) on the fine classes
    imagenet-transfer transfer run probe --backbone models:/small-full@current       # (a) and (b)
    imagenet-transfer transfer run probe --backbone random:small                     # (a) baseline; (b) skipped

Input: a backbone and an ImageNet-style source (`train/<wnid>/*.JPEG` + `val/`, anything `catalog` reads;
default: the embedded world's `imagenet/`). The evaluation is always on the FINE classes of the source:
`train_per_class` training images per class (seeded sample; 0 = all) are the kNN memory and the linear probe's
training set, the source's val images (`val_per_class` per class; 0 = all) are scored once.

(a) coarse→fine, PAPER.md E4: frozen features (`layer`; default fc7, pool5 for ResNets, which have no fc7) of a
    backbone, typically one pre-trained on coarse labels (e.g. top-down 127), scored on the fine classes:
      probe_knn_top1      k-nearest-neighbour top-1 (%): cosine similarity, the k most similar training images
                          vote, ties between classes broken by their summed similarity; k = `k`, fixed in advance
      probe_linear_top1   linear-probe top-1 (%): multinomial logistic regression on standardised features
                          (`transfer.linear`), L2 chosen on a validation split carved from the training sample
                          (`val_fraction` per class), refitted on the whole sample, scored once on val
(b) fine→coarse, PAPER.md E4: the backbone's own classifier on the val images, its predicted output label mapped
    to the `coarse_level` label set (e.g. top-down-127) and compared with the image's coarse label:
      probe_coarse_top1   top-1 in the coarse space (%). For a fine-label backbone this is "fine predictions mapped
                          to coarse"; for a backbone trained on that coarse set it is its plain accuracy: run the
                          probe on both and compare their probe_coarse_top1 (same val images, same coarse labels)
      probe_coarse_majority_top1  the same for always answering the most frequent coarse class (the sets are
                          very unbalanced: "mammal" is 218 of the 1000 classes)
    (b) needs `info["label_wnids"]` (output label → wnid, written by pre-training into backbone.json). An output
    wnid maps to: its coarse label when it is an ILSVRC class; itself when it is a label of the coarse set; else
    the coarse label most of the ILSVRC classes below it have (counted in `probe_coarse_mixed_labels`).
Also: probe_fine_classes, probe_train_images, probe_val_images, probe_linear_val_top1, probe_linear_l2, probe_k,
probe_coarse_classes, probe_features_images_per_s (extraction speed, when the features were not cached).
Tables: probe_knn.csv (k, top1), probe_linear.csv (l2, val_top1, chosen), probe_coarse_map.csv (label,
label_wnid, coarse_wnid, rule). Figure: probe_knn.png (kNN top-1 against k, the linear probe as a line; the k
values besides `k` are descriptive, never used to choose anything).

`parts` chooses what runs (knn, linear, coarse); empty = knn and linear, plus coarse when the backbone's
output labels are known. Runtime on the default world (200 classes, 20 train + 20 val images per class,
`small`): about 30 s on 2 CPU cores, most of it feature extraction (cached for the next run).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Literal, get_args

import numpy as np
import pandas as pd
import torch
from pydantic import AfterValidator, Field, NonNegativeFloat

from imagenet_transfer.config import Settings
from imagenet_transfer.errors import UserError
from imagenet_transfer.transfer.common import Result, world_part
from imagenet_transfer.transfer.linear import L2_GRID, fit_linear, select_l2, top1_accuracy

Part = Literal["knn", "linear", "coarse"]
PARTS = get_args(Part)
K_CURVE = (1, 5, 10, 20, 50, 100)


def _coarse_level(level: str) -> str:
    method, _, count = level.rpartition("-")
    if method not in ("top-down", "bottom-up") or not count.isdigit():
        raise ValueError("expected METHOD-K, e.g. top-down-127 or bottom-up-79")
    return level


CoarseLevel = Annotated[str, AfterValidator(_coarse_level)]


class Config(Settings):
    """E4 probe options; `quick()` is the smoke-test variant."""

    data: str = ""  # ImageNet-style source (train/<wnid>/, val/); "" = the embedded world's imagenet/
    parts: tuple[Part, ...] = ()  # some of knn, linear, coarse; () = every one that applies
    layer: Literal["", "pool5", "fc6", "fc7"] = ""  # "" = fc7, or pool5 for a backbone without fc7
    k: int = Field(20, ge=1)
    train_per_class: int = Field(20, ge=0)  # training images per fine class (seeded sample); 0 = all
    val_per_class: int = Field(0, ge=0)  # val images per fine class; 0 = all
    val_fraction: float = Field(0.2, gt=0, lt=1)  # of the training sample, to choose the linear probe's L2
    l2_grid: tuple[NonNegativeFloat, ...] = Field(L2_GRID, min_length=1)
    max_iter: int = Field(100, ge=1)
    coarse_level: CoarseLevel = "top-down-127"  # METHOD-K, a label set of `taxonomy levels`
    batch_size: int = Field(64, ge=1)
    workers: int = Field(1, ge=0)  # decoding processes beside the forward pass
    seed: int = 0

    @classmethod
    def quick(cls, **changes) -> Config:
        """Seconds on the tiny world: few images per class, a small L2 grid."""
        return cls(
            **{
                "k": 5,
                "train_per_class": 8,
                "l2_grid": (1e-3, 1e-1),
                "max_iter": 30,
                "batch_size": 32,
                "workers": 0,
                **changes,
            }
        )


# -- pure functions: kNN and the coarse-space accuracy -----------------------------------------------------
def knn_neighbours(
    train_x: np.ndarray, query_x: np.ndarray, k: int, *, chunk: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """Cosine similarities and indices of the k most similar training rows of each query row, most similar first."""
    train = torch.nn.functional.normalize(torch.as_tensor(np.asarray(train_x, dtype=np.float32)), dim=1)
    query = torch.nn.functional.normalize(torch.as_tensor(np.asarray(query_x, dtype=np.float32)), dim=1)
    k = min(k, len(train))
    sims, idx = [], []
    for start in range(0, len(query), chunk):
        top = (query[start : start + chunk] @ train.T).topk(k, dim=1)
        sims.append(top.values)
        idx.append(top.indices)
    return torch.cat(sims).numpy(), torch.cat(idx).numpy()


def knn_vote(sims: np.ndarray, neighbour_labels: np.ndarray, k: int, num_classes: int) -> np.ndarray:
    """Majority vote of the first k neighbours of each row; ties between classes go to the larger summed
    similarity (the bonus sum/(2k+1) lies in (-1/2, 1/2), so it never outweighs one vote)."""
    sims, labels = np.asarray(sims[:, :k], dtype=np.float64), np.asarray(neighbour_labels[:, :k])
    rows = np.repeat(np.arange(len(labels)), labels.shape[1])
    votes = np.zeros((len(labels), num_classes))
    np.add.at(votes, (rows, labels.ravel()), 1.0 + sims.ravel() / (2 * k + 1))
    return votes.argmax(axis=1)


def knn_predict(
    train_x: np.ndarray, train_y: np.ndarray, query_x: np.ndarray, *, k: int, num_classes: int
) -> np.ndarray:
    """k-nearest-neighbour labels of the query rows (cosine similarity, see `knn_vote`)."""
    sims, idx = knn_neighbours(train_x, query_x, k)
    return knn_vote(sims, np.asarray(train_y)[idx], min(k, idx.shape[1]), num_classes)


def coarse_top1(predicted: np.ndarray, coarse_of_label: np.ndarray, target_coarse: np.ndarray) -> float:
    """Fraction of rows whose predicted output label maps (`coarse_of_label[label]`) to the target coarse label."""
    return top1_accuracy(np.asarray(coarse_of_label)[np.asarray(predicted)], np.asarray(target_coarse))


def coarse_map(label_wnids: Sequence[str], fine_to_coarse: dict[str, str], taxonomy) -> pd.DataFrame:
    """The coarse label of each output label (see the module docstring): columns label, label_wnid, coarse_wnid,
    rule (fine | coarse | majority | unknown)."""
    coarse_set = set(fine_to_coarse.values())
    rows = []
    for label, wnid in enumerate(label_wnids):
        if wnid in fine_to_coarse:
            coarse, rule = fine_to_coarse[wnid], "fine"
        elif wnid in coarse_set:
            coarse, rule = wnid, "coarse"
        elif wnid in taxonomy:
            below = pd.Series([c for f, c in fine_to_coarse.items() if taxonomy.is_below(f, wnid)], dtype=object)
            coarse, rule = (below.value_counts().index[0], "majority") if len(below) else ("", "unknown")
        else:
            coarse, rule = "", "unknown"
        rows.append({"label": label, "label_wnid": wnid, "coarse_wnid": coarse, "rule": rule})
    return pd.DataFrame(rows)


# -- the data ----------------------------------------------------------------------------------------------
def sample_source(catalog: pd.DataFrame, *, train_per_class: int, val_per_class: int, seed: int) -> pd.DataFrame:
    """Train and val rows of the catalog restricted to the classes present in both splits, at most the given
    number per class (a seeded sample, kept in catalog order; 0 = all); adds `label` (sorted wnids 0..C-1)."""
    catalog = catalog.assign(wnid=catalog["wnid"].astype(str), split=catalog["split"].astype(str))
    train, val = catalog[catalog["split"] == "train"], catalog[catalog["split"] == "val"]
    if train.empty or val.empty:
        raise UserError(
            f"the probe's source has {len(train)} train and {len(val)} val images; expected both "
            "(train/<wnid>/ and val/ in an ImageNet layout)"
        )
    classes = sorted(set(train["wnid"]) & set(val["wnid"]))
    if not classes:
        raise UserError("the probe's source has no class with both train and val images")
    rng = np.random.default_rng(seed)
    parts = []
    for frame, cap in ((train, train_per_class), (val, val_per_class)):
        frame = frame[frame["wnid"].isin(classes)]
        if cap:
            keys = rng.random(len(frame))
            rank = pd.Series(keys, index=frame.index).groupby(frame["wnid"]).rank(method="first")
            frame = frame[rank <= cap]
        parts.append(frame)
    out = pd.concat(parts).reset_index(drop=True)
    label = {w: i for i, w in enumerate(classes)}
    return out.assign(label=out["wnid"].map(label).astype(np.int64))


# -- run ---------------------------------------------------------------------------------------------------
def run(backbone, info: dict, config: Config, *, device: str | torch.device = "cpu", progress: bool = True) -> Result:
    """The E4 probes of `backbone` (see the module docstring)."""
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
    tables, figures = {}, {}
    x = got.arrays[layer]
    if "knn" in parts:
        curve = knn_curve(x[is_train], y[is_train], x[~is_train], y[~is_train], ks=(config.k,), num_classes=num_classes)
        metrics["probe_knn_top1"] = float(curve.loc[curve["k"] == min(config.k, is_train.sum()), "top1"].iloc[0])
        metrics["probe_k"] = float(config.k)
        tables["probe_knn.csv"] = curve
    if "linear" in parts:
        table, top1 = linear_probe(frame, x, config)
        metrics["probe_linear_top1"] = top1
        chosen = table[table["chosen"]].iloc[0]
        metrics["probe_linear_val_top1"], metrics["probe_linear_l2"] = float(chosen["val_top1"]), float(chosen["l2"])
        tables["probe_linear.csv"] = table
    if "coarse" in parts:
        mapping, coarse_metrics = coarse_probe(
            backbone,
            got.arrays[penultimate][~is_train],
            frame.loc[~is_train, "wnid"].to_numpy(),
            label_wnids,
            config.coarse_level,
        )
        metrics.update(coarse_metrics)
        tables["probe_coarse_map.csv"] = mapping
    if "probe_knn.csv" in tables:
        figures["probe_knn.png"] = knn_figure(
            tables["probe_knn.csv"], metrics.get("probe_linear_top1"), layer, chance=100 / num_classes
        )
    return Result(metrics, figures, tables)


def probe_layer(backbone, requested: str) -> str:
    """`requested` if the backbone has it, else UserError; "" = fc7, or pool5 when there is no fc7."""
    have = [layer for layer in ("pool5", "fc6", "fc7") if layer in backbone.feature_layers]
    if not requested:
        return "fc7" if "fc7" in have else "pool5"
    if requested not in have:
        raise UserError(f"layer {requested} does not exist in a {backbone.arch} backbone; it has {', '.join(have)}")
    return requested


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


def knn_curve(train_x, train_y, val_x, val_y, *, ks: Sequence[int], num_classes: int) -> pd.DataFrame:
    """kNN top-1 (%) on val for `ks` and the descriptive K_CURVE values (capped at the training size)."""
    values = sorted({min(k, len(train_x)) for k in (*K_CURVE, *ks)})
    sims, idx = knn_neighbours(train_x, val_x, max(values))
    labels = np.asarray(train_y)[idx]
    rows = [{"k": k, "top1": 100 * top1_accuracy(knn_vote(sims, labels, k, num_classes), val_y)} for k in values]
    return pd.DataFrame(rows)


def linear_probe(frame: pd.DataFrame, x: np.ndarray, config: Config) -> tuple[pd.DataFrame, float]:
    """L2 chosen on a carved validation part of the training sample, refitted on the whole sample, scored on
    the source's val images (top-1, %). Returns the per-L2 table and the val top-1."""
    from imagenet_transfer.transfer.sun397_cls import carve_validation

    is_train = (frame["split"] == "train").to_numpy()
    y = frame["label"].to_numpy()
    num_classes = int(y.max()) + 1
    roles = frame[is_train].assign(role="train")
    held = np.zeros(len(frame), dtype=bool)
    held[carve_validation(roles, config.val_fraction, seed=[config.seed, 4])] = True
    fit = is_train & ~held
    sel = select_l2(
        x[fit],
        y[fit],
        x[held],
        y[held],
        num_classes=num_classes,
        l2_grid=config.l2_grid,
        max_iter=config.max_iter,
        score=top1_accuracy,
    )
    final = fit_linear(x[is_train], y[is_train], num_classes=num_classes, l2=sel.l2, max_iter=config.max_iter)
    top1 = 100 * top1_accuracy(final.predict(x[~is_train]), y[~is_train])
    table = pd.DataFrame({"l2": list(sel.val_scores), "val_top1": [100 * v for v in sel.val_scores.values()]})
    table["chosen"] = table["l2"] == sel.l2
    return table.sort_values("l2", ignore_index=True), top1


@torch.inference_mode()
def coarse_probe(
    backbone, penultimate: np.ndarray, val_wnids: np.ndarray, label_wnids: list[str], coarse_level: str
) -> tuple[pd.DataFrame, dict[str, float]]:
    """(b): the backbone's predictions (its classifier on the cached penultimate features) in the coarse space."""
    from imagenet_transfer.taxonomy import load_taxonomy

    method, _, count = coarse_level.rpartition("-")
    taxonomy = load_taxonomy()
    fine_to_coarse = taxonomy.labels(method, int(count))
    unknown = sorted(set(val_wnids) - set(fine_to_coarse))
    if unknown:
        raise UserError(
            f"{len(unknown)} val class(es) of the source are not ILSVRC-2012 classes, e.g. {unknown[:3]}; "
            "the coarse label sets are defined on the ILSVRC classes"
        )
    mapping = coarse_map(label_wnids, fine_to_coarse, taxonomy)
    if (mapping["rule"] == "unknown").any():
        bad = mapping.loc[mapping["rule"] == "unknown", "label_wnid"].tolist()
        raise UserError(
            f"{len(bad)} output label(s) of the backbone cannot be placed in {coarse_level}, "
            f"e.g. {bad[:3]}; "
            "expected WordNet noun wnids (ILSVRC classes or their ancestors)"
        )
    codes = {w: i for i, w in enumerate(sorted(set(mapping["coarse_wnid"]) | set(fine_to_coarse.values())))}
    coarse_of_label = mapping["coarse_wnid"].map(codes).to_numpy()
    target = np.array([codes[fine_to_coarse[w]] for w in val_wnids])
    backbone = backbone.cpu().eval()
    feats = torch.from_numpy(np.ascontiguousarray(penultimate))
    predicted = backbone.classifier(backbone.pre_classifier(feats)).argmax(dim=1).numpy()
    majority = np.bincount(target).argmax()
    return mapping, {
        "probe_coarse_top1": 100 * coarse_top1(predicted, coarse_of_label, target),
        "probe_coarse_majority_top1": 100 * top1_accuracy(np.full_like(target, majority), target),
        "probe_coarse_classes": float(len(set(target.tolist()))),
        "probe_coarse_mixed_labels": float((mapping["rule"] == "majority").sum()),
    }


def knn_figure(curve: pd.DataFrame, linear_top1: float | None, layer: str, chance: float | None = None):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    ax.plot(curve["k"], curve["top1"], marker="o", label=f"kNN ({layer}, cosine)")
    if linear_top1 is not None:
        ax.axhline(linear_top1, color="black", linestyle="--", label="linear probe")
    if chance is not None:
        ax.axhline(chance, color="grey", linestyle=":", label="chance")
    ax.set_xscale("log")
    ax.set_xlabel("k")
    ax.set_ylabel("top-1 on the fine classes (%)")
    ax.set_title("E4 coarse→fine probe (val images)", fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


__all__ = [
    "PARTS",
    "Config",
    "coarse_map",
    "coarse_probe",
    "coarse_top1",
    "knn_curve",
    "knn_neighbours",
    "knn_predict",
    "knn_vote",
    "linear_probe",
    "probe_layer",
    "run",
    "sample_source",
]
