"""PASCAL-DET's figure and tables: per-class precision/recall curves, per-class AP, the derived settings."""

from __future__ import annotations

from typing import Any

import numpy as np

from imagenet_transfer.transfer.figures import figure
from imagenet_transfer.transfer.metrics import DetectionResult


def ap_table(result: DetectionResult):
    """One row per class (AP in %, objects, difficult ones, detections, true positives, ignored, max recall), then
    the mean row."""
    import pandas as pd

    rows = [
        {
            "class": c.name,
            "ap": 100 * c.ap,
            "objects": c.npos,
            "difficult": c.ndifficult,
            "detections": len(c.tp),
            "true_positives": int(c.tp.sum()),
            "ignored": c.ignored,
            "max_recall": float(c.recall[-1]) if len(c.tp) and c.npos else 0.0,
        }
        for c in result.classes
    ]
    rows.append(
        {
            "class": "mean",
            "ap": 100 * result.mean_ap,
            "objects": sum(c.npos for c in result.classes),
            "difficult": sum(c.ndifficult for c in result.classes),
            "detections": sum(len(c.tp) for c in result.classes),
            "true_positives": sum(int(c.tp.sum()) for c in result.classes),
            "ignored": sum(c.ignored for c in result.classes),
            "max_recall": float("nan"),
        }
    )
    return pd.DataFrame(rows)


def derived_table(derived: dict[str, Any]):
    """The settings derived from the data and the run, as (setting, value) rows."""
    import pandas as pd

    return pd.DataFrame({"setting": list(derived), "value": [str(v) for v in derived.values()]})


def pr_figure(result: DetectionResult):
    """A 4×5 grid of per-class precision/recall curves with their VOC07 AP."""
    fig = figure((15, 11), layout="constrained")
    axes = fig.subplots(4, 5, sharex=True, sharey=True)
    for ax, c in zip(axes.flat, result.classes):
        if c.npos and len(c.tp):
            ax.plot(np.concatenate([[0.0], c.recall]), np.concatenate([[c.precision[0]], c.precision]), lw=1.2)
        ap = "n/a" if np.isnan(c.ap) else f"{100 * c.ap:.1f}"
        ax.set_title(f"{c.name}: AP {ap} ({c.npos} obj)", fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("recall")
    for ax in axes[:, 0]:
        ax.set_ylabel("precision")
    fig.suptitle(f"VOC2007 test: precision/recall per class, mAP {100 * result.mean_ap:.1f} (11-point, IoU 0.5)")
    return fig
