"""The E4 probes' data: a seeded sample of an ImageNet-style source's fine classes, train and val."""

from __future__ import annotations

import numpy as np
import pandas as pd

from imagenet_transfer.errors import UserError


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
