"""SUN-CLS's figures: test accuracy per layer (linear protocol), validation accuracy per epoch (finetune)."""

from __future__ import annotations

import pandas as pd

from imagenet_transfer.transfer.figures import panel


def layer_figure(table: pd.DataFrame, chance: float | None = None):
    """Bar chart: test accuracy per layer (mean ± std over partitions); the layer(s) chosen on val hatched;
    chance level (100 / classes) dashed."""
    stats = table.groupby("layer", sort=False).agg(
        acc=("test_acc", "mean"), std=("test_acc", "std"), chosen=("chosen", "sum"), val=("val_acc", "mean")
    )
    fig, ax = panel()
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
    return fig


def finetune_figure(table: pd.DataFrame):
    """Validation accuracy per epoch for each partition; the epoch chosen (and tested) marked."""
    fig, ax = panel()
    for number, rows in table.groupby("partition"):
        ax.plot(rows["epoch"], rows["val_acc"], marker=".", label=f"partition {number}")
        pick = rows[rows["chosen"]]
        ax.scatter(pick["epoch"], pick["val_acc"], s=80, facecolors="none", edgecolors="black")
    ax.set_xlabel("epoch")
    ax.set_ylabel("val mean per-class accuracy (%)")
    ax.set_title("SUN397 fine-tuning (circle = epoch tested)", fontsize=8)
    ax.legend(fontsize=7)
    return fig
