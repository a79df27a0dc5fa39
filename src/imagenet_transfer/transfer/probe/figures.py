"""The E4 probes' figure: kNN top-1 against k, with the linear probe and chance as lines."""

from __future__ import annotations

import pandas as pd

from imagenet_transfer.transfer.figures import panel


def knn_figure(curve: pd.DataFrame, linear_top1: float | None, layer: str, chance: float | None = None):
    """kNN top-1 (%) against k (log scale); the linear probe's top-1 dashed and chance dotted, when given."""
    fig, ax = panel()
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
    return fig
