"""SUN-CLS's data: each partition as one table of (entry, path, label, role), role train | val | test.

classes, parts = load_partitions(config)         # ClassName.txt, and one Partition per config.partitions
parts[0].part("val")                             # the rows carved from the training list for validation
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from imagenet_transfer.datasets.sun397 import SUN397Layout, class_of, find_sun397, read_class_names, read_partition
from imagenet_transfer.errors import UserError
from imagenet_transfer.transfer.common import carve_validation, world_part
from imagenet_transfer.transfer.sun397.config import Config


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
