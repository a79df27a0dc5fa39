"""What every transfer benchmark shares: the backbone it starts from, its default data, its splits, its result.

    net, info = resolve_backbone("models:/small-full@current")   # or "random:small", "random:alexnet@224"
    root = world_part("voc2007")                                  # the embedded world's copy, generated if absent
    frame.loc[carve_validation(frame, 0.2, seed=[0, 1]), "role"] = "val"   # per-class validation split
    return Result(metrics={"voc07_map": 0.41}, figures={"pr_curves.png": fig}, tables={"ap": frame})

A benchmark package (`voc07_det`, `voc12_action`, `sun397`, `probe`) exposes a frozen `Config` and
`run(backbone, info, config, *, device, progress) -> Result`; it knows nothing of MLflow. The runner
(`transfer.runner`) opens the run, tags it with the backbone and its pre-training data, and logs the result.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

import numpy as np

from imagenet_transfer.errors import UserError

if TYPE_CHECKING:
    import pandas as pd

# test: score the benchmark's test split | val: score data held out from its training split (a budget study)
EvaluateOn = Literal["test", "val"]
EVALUATE_ON = get_args(EvaluateOn)
VECTOR_LAYERS = ("pool5", "fc6", "fc7")  # the backbone layers whose features are vectors


@dataclass
class Result:
    metrics: dict[str, float]
    figures: dict[str, Any] = field(default_factory=dict)  # file name (.png) -> matplotlib Figure
    tables: dict[str, Any] = field(default_factory=dict)  # file name (.csv) -> pandas DataFrame
    # metric name -> pandas DataFrame of what was predicted for each test unit (image, person), from which
    # `transfer.uncertainty` recomputes the metric on resamples: its interval and paired comparisons
    predictions: dict[str, Any] = field(default_factory=dict)


def resolve_backbone(spec: str, num_classes: int = 1000):
    """The backbone `spec` names, and what is known of it.

    `models:/NAME@ALIAS`, `models:/NAME/VERSION`: a registered pre-trained backbone (weights loaded with
    weights_only); `random:ARCH[@RES][:SEED]` (`random:small`, `random:small@32`, `random:small@32:2`): the
    architecture at resolution RES (default: its own) randomly initialised with torch seed SEED (default 0), the
    no-pre-training baseline, identical on every call with the same SEED. `info` has `backbone` (the rebuild
    config), `uri`, for random ones `seed`, and for registered ones `subset_name`, `subset_digest`, `spec_digest`,
    `model_name`, `model_version`.
    """
    from imagenet_transfer.models import build_backbone, default_resolution

    m = re.fullmatch(r"random:([a-z0-9_]+)(?:@(\d+))?(?::(\d+))?", spec)
    if m and m[3] and int(m[3]) >= 2**63:
        raise UserError(f"backbone {spec!r}: seed {m[3]} is too large; expected 0 <= SEED < 2**63")
    if m:
        import torch

        seed = int(m[3]) if m[3] else 0
        with torch.random.fork_rng(devices=[]):  # the same random weights for a seed: a reproducible baseline
            torch.manual_seed(seed)
            net = build_backbone(m[1], num_classes, resolution=int(m[2]) if m[2] else default_resolution(m[1]))
        return net, {
            "backbone": net.config(),
            "uri": spec,
            "seed": seed,
            "subset_name": "none",
            "subset_digest": "",
            "spec_digest": "",
        }
    if not spec.startswith("models:/"):
        raise UserError(
            f"backbone {spec!r}: expected models:/NAME@ALIAS, models:/NAME/VERSION or random:ARCH[@RES][:SEED] "
            "(e.g. random:small@32:2)"
        )
    from imagenet_transfer.tracking import load_backbone_with_info

    net, info = load_backbone_with_info(spec)
    return net, {**info, "uri": spec}


def world_part(part: str) -> Path:
    """The folder of a part of the default embedded world (imagenet, voc2007, voc2012, or sun397: the root that
    holds SUN397/ and Partitions/), that part generated on first use."""
    from imagenet_transfer.synthetic import PARTS, generate

    folder = PARTS[part]  # a part of several folders (SUN397/ + Partitions/) is read from the world's root
    return generate(progress=False, parts=(part,)) / (folder if isinstance(folder, str) else "")


def vector_layers(backbone) -> list[str]:
    """The layers among pool5, fc6, fc7 that `backbone` has (ResNets: pool5 only)."""
    return [layer for layer in VECTOR_LAYERS if layer in backbone.feature_layers]


def carve_validation(frame: pd.DataFrame, fraction: float, *, seed) -> np.ndarray:
    """Index labels of the rows with role "train" to move to validation: round(fraction · n) of each `label`
    (at least one when a class has two or more training rows, never all of them), drawn at random with `seed`."""
    rng = np.random.default_rng(seed)
    chosen = []
    train = frame[frame["role"] == "train"]
    for _, rows in train.groupby("label", sort=True):
        n = len(rows)
        take = min(max(round(fraction * n), 1), n - 1) if n >= 2 else 0
        chosen.extend(rows.index[rng.permutation(n)[:take]])
    return np.array(sorted(chosen), dtype=np.int64)
