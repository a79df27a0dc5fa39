"""PASCAL-ACT-CLS's figure and tables: AP per action, and every scored person's scores and labels."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from imagenet_transfer.datasets.voc import VOC_ACTIONS
from imagenet_transfer.transfer.figures import figure
from imagenet_transfer.transfer.voc12_action.data import Person


def ap_table(aps: dict[str, float], val_labels: np.ndarray, train: list[Person]) -> pd.DataFrame:
    """One row per action: its AP (%, NaN without positives), its positives among the scored and the train persons."""
    train_pos = np.array([p.labels for p in train]).sum(0)
    return pd.DataFrame(
        {
            "action": list(VOC_ACTIONS),
            "ap": [100 * aps[a] for a in VOC_ACTIONS],
            "val_positives": val_labels.sum(0).astype(int),
            "train_positives": train_pos.astype(int),
        }
    )


def scores_table(persons: list[Person], scores: np.ndarray, labels: np.ndarray) -> pd.DataFrame:
    """One row per scored person (image id, object number): its 10 scores and labels, to re-check the AP."""
    table = pd.DataFrame({"image_id": [p.image_id for p in persons], "object": [p.index for p in persons]})
    for i, a in enumerate(VOC_ACTIONS):
        table[f"score_{a}"], table[f"label_{a}"] = scores[:, i], labels[:, i].astype(int)
    return table


def ap_figure(table: pd.DataFrame, map_: float, info: dict[str, Any]):
    """Bars of the AP per action ("no positives" where undefined), the mAP as a dashed line."""
    fig = figure((8, 3.6), layout="constrained")
    ax = fig.add_subplot()
    ap = table["ap"].to_numpy(dtype=float)
    x = np.arange(len(table))
    ax.bar(x, np.nan_to_num(ap), color="tab:blue")
    for i, v in enumerate(ap):
        ax.text(
            i,
            (0 if math.isnan(v) else v) + 1,
            "no positives" if math.isnan(v) else f"{v:.0f}",
            ha="center",
            va="bottom",
            fontsize=7,
            rotation=90 if math.isnan(v) else 0,
        )
    if not math.isnan(map_):
        ax.axhline(map_, color="tab:red", lw=1, ls="--", label=f"mAP {map_:.1f}")
        ax.legend(loc="upper right", fontsize=8)
    ax.set_xticks(x, table["action"], rotation=35, ha="right", fontsize=8)
    ax.set_ylim(0, 105)
    ax.set_ylabel("AP on val (%)")
    ax.set_title(f"VOC2012 action, {info.get('uri', 'backbone')}", fontsize=9)
    return fig
