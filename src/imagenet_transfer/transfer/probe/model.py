"""The E4 probes' heads on frozen features of one backbone layer: kNN, the linear probe, and the backbone's own
classifier mapped to a coarse label set (see the package docstring).

    layer = probe_layer(backbone, "")                                  # fc7, or pool5 for a ResNet
    knn_predict(train_x, train_y, query_x, k=20, num_classes=200)      # cosine kNN labels
    curve, predicted = knn_curve(train_x, train_y, val_x, val_y, ks=(20,), num_classes=200)   # predicted[k]
    table, predicted = linear_probe(frame, x, config)                  # L2 chosen on a carved validation part
    mapping, metrics, pairs = coarse_probe(backbone, penultimate, val_wnids, label_wnids, "top-down-127")
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from imagenet_transfer.errors import UserError
from imagenet_transfer.transfer.common import carve_validation, vector_layers
from imagenet_transfer.transfer.linear import fit_linear, select_l2
from imagenet_transfer.transfer.metrics import coarse_top1, top1_accuracy
from imagenet_transfer.transfer.probe.config import Config

K_CURVE = (1, 5, 10, 20, 50, 100)


def probe_layer(backbone, requested: str) -> str:
    """`requested` if the backbone has it, else UserError; "" = fc7, or pool5 when there is no fc7."""
    have = vector_layers(backbone)
    if not requested:
        return "fc7" if "fc7" in have else "pool5"
    if requested not in have:
        raise UserError(f"layer {requested} does not exist in a {backbone.arch} backbone; it has {', '.join(have)}")
    return requested


# -- kNN ---------------------------------------------------------------------------------------------------
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


def knn_curve(
    train_x, train_y, val_x, val_y, *, ks: Sequence[int], num_classes: int
) -> tuple[pd.DataFrame, dict[int, np.ndarray]]:
    """kNN top-1 (%) on val for `ks` and the descriptive K_CURVE values (capped at the training size), and the
    predicted val labels for each of these k."""
    values = sorted({min(k, len(train_x)) for k in (*K_CURVE, *ks)})
    sims, idx = knn_neighbours(train_x, val_x, max(values))
    labels = np.asarray(train_y)[idx]
    predicted = {k: knn_vote(sims, labels, k, num_classes) for k in values}
    rows = [{"k": k, "top1": 100 * top1_accuracy(predicted[k], val_y)} for k in values]
    return pd.DataFrame(rows), predicted


# -- linear probe ------------------------------------------------------------------------------------------
def linear_probe(frame: pd.DataFrame, x: np.ndarray, config: Config) -> tuple[pd.DataFrame, np.ndarray]:
    """L2 chosen on a carved validation part of the training sample, refitted on the whole sample, applied to
    the source's val images. Returns the per-L2 table and the predicted labels of the val rows, in order."""
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
    table = pd.DataFrame({"l2": list(sel.val_scores), "val_top1": [100 * v for v in sel.val_scores.values()]})
    table["chosen"] = table["l2"] == sel.l2
    return table.sort_values("l2", ignore_index=True), final.predict(x[~is_train])


# -- fine→coarse -------------------------------------------------------------------------------------------
def coarse_map(label_wnids: Sequence[str], fine_to_coarse: dict[str, str], taxonomy) -> pd.DataFrame:
    """The coarse label of each output label (see the package docstring): columns label, label_wnid, coarse_wnid,
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


@torch.inference_mode()
def coarse_probe(
    backbone, penultimate: np.ndarray, val_wnids: np.ndarray, label_wnids: list[str], coarse_level: str
) -> tuple[pd.DataFrame, dict[str, float], pd.DataFrame]:
    """(b): the backbone's predictions (its classifier on the cached penultimate features) in the coarse space:
    the label mapping, the metrics, and each val row's coarse `label` (target) and `pred` (coarse codes)."""
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
    metrics = {
        "probe_coarse_top1": 100 * coarse_top1(predicted, coarse_of_label, target),
        "probe_coarse_majority_top1": 100 * top1_accuracy(np.full_like(target, majority), target),
        "probe_coarse_classes": float(len(set(target.tolist()))),
        "probe_coarse_mixed_labels": float((mapping["rule"] == "majority").sum()),
    }
    return mapping, metrics, pd.DataFrame({"label": target, "pred": coarse_of_label[predicted]})
