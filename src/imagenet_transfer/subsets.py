"""Subsets: which images of a catalog a pre-training uses, and with which labels (E1-E7).

Input: a catalog (`catalog.load_catalog`) and a `SubsetSpec` (a preset name or a YAML file).
Output: a folder written atomically, read by `pretrain` through its path (or the subset run's artifacts):
    manifest.parquet   path, wnid, label, label_wnid, split   (train: the selection; val: every
                       validation image of the selected classes, relabelled the same way)
    classes.tsv        label, label_wnid, name, fine_classes, train_images, val_images
    counts.tsv         wnid, label_wnid, train_images, val_images   (one row per fine class)
    spec.yaml          the spec;  subset.json   digests, counts, source

    spec = preset("e1-500")                          # or SubsetSpec.from_yaml(text)
    subset = build_subset(catalog, spec)             # pure: a Subset of tables
    write_subset(subset, Path("subsets/e1-500"))

Selection is deterministic for a seed and independent of the catalog's row order and of where the
data is mounted: within a class, images are ranked by a seeded hash of their file name.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import mlflow
import numpy as np
import pandas as pd
import yaml
from pydantic import Field, model_validator

from imagenet_transfer.catalog import hash_file_names, name_hashes
from imagenet_transfer.config import Settings
from imagenet_transfer.errors import UserError
from imagenet_transfer.paths import cache_dir
from imagenet_transfer.taxonomy import METHODS, SPLITS, Taxonomy, load_taxonomy

CLASS_RULES = ("all", "pascal-removed", "random", "half")
LABEL_RULES = ("fine", *METHODS)
HALVES = ("a", "b", "ab")


class SubsetSpec(Settings):
    """One pre-training data variant. Fields left at their defaults mean "as in ImageNet"."""

    name: str = "full"
    classes: Literal[CLASS_RULES] = "all"  # all | pascal-removed (E6) | random (E5: `num_classes`) | half (E7)
    num_classes: int | None = Field(None, ge=1)  # classes=random: how many, chosen with `seed`
    split: Literal[SPLITS] | None = None  # classes=half: random | minimal
    half: Literal[HALVES] | None = None  # classes=half: a | b | ab (A+B)
    images_per_class: int | None = Field(None, ge=1)  # E1: N train images per class (None: all)
    budget: int | None = Field(None, ge=1)  # E5: total train images, spread evenly over the classes
    labels: Literal[LABEL_RULES] = "fine"  # fine | bottom-up (E2) | top-down (E3)
    label_classes: int | None = Field(
        None, ge=1
    )  # K of the bottom-up/top-down label set (its size on all 1000 classes)
    seed: int = 0

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except UserError as err:
            raise UserError(
                f"subset spec {data.get('name', 'full')!r}: {str(err).removeprefix('SubsetSpec: ')}"
            ) from None

    @model_validator(mode="after")
    def _consistent(self) -> SubsetSpec:
        if (self.classes == "random") != (self.num_classes is not None):
            raise ValueError("num_classes goes with classes: random, and classes: random needs num_classes")
        if self.classes == "half" and (self.split is None or self.half is None):
            raise ValueError(
                f"classes: half needs split (one of {', '.join(SPLITS)}) and half (one of {', '.join(HALVES)})"
            )
        if self.classes != "half" and (self.split is not None or self.half is not None):
            raise ValueError("split and half go with classes: half")
        if self.budget is not None and self.images_per_class is not None:
            raise ValueError(
                "budget and images_per_class contradict each other: give one (budget / classes = images per class)"
            )
        if self.budget is not None and self.num_classes is not None and self.budget < self.num_classes:
            raise ValueError(
                f"a budget of {self.budget} images cannot give each of {self.num_classes} classes an image"
            )
        if (self.labels == "fine") != (self.label_classes is None):
            raise ValueError("label_classes (K) goes with labels: bottom-up or top-down, which need it")
        return self

    def params(self) -> dict[str, Any]:
        return self.to_dict()

    @property
    def digest(self) -> str:
        """sha256 of the content (not the name): equal specs select the same images from a catalog."""
        content = {k: v for k, v in self.params().items() if k != "name"}
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]

    def to_yaml(self) -> str:
        return yaml.safe_dump({k: v for k, v in self.params().items() if v is not None}, sort_keys=False)

    @classmethod
    def from_dict(cls, data: Any, source: str = "spec") -> SubsetSpec:
        if not isinstance(data, dict):
            raise UserError(f"{source}: expected a mapping of subset spec fields, got {type(data).__name__}")
        try:
            return cls(**data)
        except UserError as err:
            raise UserError(f"{source}: {err}") from None

    @classmethod
    def from_yaml(cls, text: str, source: str = "spec") -> SubsetSpec:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise UserError(f"{source}: not valid YAML ({err})") from None
        return cls.from_dict(data, source)

    def with_seed(self, seed: int | None) -> SubsetSpec:
        return self if seed is None else self.replace(seed=seed)


# -- presets --------------------------------------------------------------------------------------
PRESET_PATTERNS = {
    "full": "every class, every image, fine labels",
    "e1-<N>": "E1: N train images per class (paper: 500, 250, 125, 50)",
    "e2-<K>": "E2: bottom-up WordNet merge to K classes (paper: 918, 753, 486, 79, 9)",
    "e3-<K>": "E3: top-down WordNet clustering to K classes (127, 10, 2)",
    "e5-budget-<B>-classes-<C>": "E5: a budget of B train images over C random classes (among those with B/C)",
    "e6-pascal-removed": "E6: drop every class below a PASCAL VOC synset (771 of 1000 kept)",
    "e7-<random|minimal>-<a|b|ab>": "E7: half A, half B or A+B of a random or a minimal class split",
}
PAPER_PRESETS = (
    ["full", "e1-500", "e1-250", "e1-125", "e1-50"]
    + [f"e2-{k}" for k in (918, 753, 486, 79, 9)]
    + ["e3-127", "e6-pascal-removed"]
    + [f"e7-{s}-{h}" for s in SPLITS for h in HALVES]
)


def preset(name: str, taxonomy: Taxonomy | None = None) -> SubsetSpec:
    """The spec a preset name stands for (see PRESET_PATTERNS); unknown names list the valid ones."""
    if name == "full":
        return SubsetSpec(name=name)
    if name == "e6-pascal-removed":
        return SubsetSpec(name=name, classes="pascal-removed")
    if m := re.fullmatch(r"e1-(\d+)", name):
        return SubsetSpec(name=name, images_per_class=int(m[1]))
    if m := re.fullmatch(r"e([23])-(\d+)", name):
        method = "bottom-up" if m[1] == "2" else "top-down"
        (taxonomy or load_taxonomy()).labels(method, int(m[2]))  # raises, listing the valid K
        return SubsetSpec(name=name, labels=method, label_classes=int(m[2]))
    if m := re.fullmatch(r"e5-budget-(\d+)-classes-(\d+)", name):
        return SubsetSpec(name=name, classes="random", budget=int(m[1]), num_classes=int(m[2]))
    if m := re.fullmatch(r"e7-(random|minimal)-(a|b|ab)", name):
        return SubsetSpec(name=name, classes="half", split=m[1], half=m[2])
    patterns = "; ".join(f"{p} ({what})" for p, what in PRESET_PATTERNS.items())
    raise UserError(f"unknown preset {name!r}; valid presets: {patterns}")


def load_spec(preset_name: str | None = None, spec_file: Path | None = None) -> SubsetSpec:
    """A spec from exactly one of a preset name and a YAML file."""
    if (preset_name is None) == (spec_file is None):
        raise UserError("give exactly one of --preset NAME and --spec FILE")
    if preset_name is not None:
        return preset(preset_name)
    try:
        text = Path(spec_file).read_text()
    except OSError as err:
        raise UserError(f"spec file {spec_file} cannot be read ({err.strerror}); expected a YAML subset spec") from None
    return SubsetSpec.from_yaml(text, source=str(spec_file))


# -- building -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Subset:
    spec: SubsetSpec
    manifest: pd.DataFrame  # path, wnid, label, label_wnid, split
    classes: pd.DataFrame  # one row per label
    counts: pd.DataFrame  # one row per fine class
    digest: str  # sha256 of (file name, label, split) over the manifest: the data a pre-training sees

    def summary(self) -> dict[str, Any]:
        train = self.manifest["split"] == "train"
        return {
            "name": self.spec.name,
            "spec_digest": self.spec.digest,
            "digest": self.digest,
            "num_labels": len(self.classes),
            "num_fine_classes": len(self.counts),
            "train_images": int(train.sum()),
            "val_images": int((~train).sum()),
        }


def _classes_for_budget(spec: SubsetSpec, available: list[str], counts: np.ndarray, fine: list[str]) -> list[str]:
    """E5's rule: the C classes are drawn among those that hold B/C train images (rounded up), so that every
    chosen class gets its share. ILSVRC-2012 has classes of 732 images, so a budget of 1000 a class can only
    come from the classes that have 1000; on a world where every class has the same count nothing changes."""
    need = -(-spec.budget // spec.num_classes)
    index = {w: i for i, w in enumerate(fine)}
    eligible = [w for w in available if counts[index[w]] >= need]
    if len(eligible) < spec.num_classes:
        raise UserError(
            f"subset spec {spec.name!r}: a budget of {spec.budget} over {spec.num_classes} classes needs {need} "
            f"train images in each, and only {len(eligible)} of the catalog's {len(available)} classes have that many"
        )
    return eligible


def select_classes(spec: SubsetSpec, available: list[str], taxonomy: Taxonomy) -> list[str]:
    """The fine classes of `available` (the catalog's train classes) that `spec` keeps."""
    if spec.classes == "all":
        return sorted(available)
    if spec.classes == "pascal-removed":
        kept = set(taxonomy.pascal_removed())
        return sorted(w for w in available if w in kept)
    if spec.classes == "random":
        if spec.num_classes > len(available):
            raise UserError(
                f"subset spec {spec.name!r} asks for {spec.num_classes} classes but the catalog has {len(available)}"
            )
        return taxonomy.random_classes(available, spec.num_classes, spec.seed)
    half_a, half_b = taxonomy.split(available, spec.split, spec.seed)
    return sorted({"a": half_a, "b": half_b, "ab": half_a + half_b}[spec.half])


def build_subset(catalog: pd.DataFrame, spec: SubsetSpec, taxonomy: Taxonomy | None = None) -> Subset:
    """Select and relabel the images of `catalog` that `spec` describes.

    Vectorised over class codes: an ImageNet-sized catalog (1.28M rows) builds in about a second.
    """
    taxonomy = taxonomy or load_taxonomy()
    wnid = catalog["wnid"].astype("category")
    fine = list(wnid.cat.categories.astype(str))
    taxonomy.check_wnids(fine, what="wnid(s) in the catalog")
    if len(fine) >= 1024:
        raise UserError(f"the catalog has {len(fine)} classes; expected at most the 1000 ILSVRC-2012 classes")
    codes = wnid.cat.codes.to_numpy()
    split = (
        catalog["split"]
        if isinstance(catalog["split"].dtype, pd.CategoricalDtype)
        else catalog["split"].astype("category")
    )
    split_codes = split.cat.codes.to_numpy()
    train_code = _code_of(split, "train")
    val_code = _code_of(split, "val")
    is_train = split_codes == train_code
    train_counts = np.bincount(codes[is_train], minlength=len(fine))
    available = [fine[c] for c in np.flatnonzero(train_counts)]
    if not available:
        raise UserError("the catalog has no train images; expected rows with split == 'train'")
    if spec.classes == "random" and spec.budget is not None and spec.num_classes <= len(available):
        available = _classes_for_budget(spec, available, train_counts, fine)
    chosen = select_classes(spec, available, taxonomy)
    if not chosen:
        raise UserError(f"subset spec {spec.name!r} keeps none of the catalog's {len(available)} classes")

    chosen_mask = np.isin(np.array(fine), chosen)
    rows = np.flatnonzero(chosen_mask[codes] & ((split_codes == train_code) | (split_codes == val_code)))
    names = name_hashes(catalog)[rows]
    row_codes, row_train = codes[rows].astype(np.int64), split_codes[rows] == train_code

    label_of = taxonomy.labels(spec.labels, spec.label_classes) if spec.labels != "fine" else {}
    label_wnids = sorted({label_of.get(w, w) for w in chosen})
    label_index = {w: i for i, w in enumerate(label_wnids)}
    label_by_code = np.array([label_index.get(label_of.get(w, w), 0) for w in fine], dtype=np.int64)
    row_labels = label_by_code[row_codes]
    # one sort: train first, then label, class, and a seeded hash of the file name (43 bits)
    sort_key = (
        (~row_train).astype(np.uint64) << np.uint64(63)
        | row_labels.astype(np.uint64) << np.uint64(53)
        | row_codes.astype(np.uint64) << np.uint64(43)
        | _mix(names, spec.seed) >> np.uint64(21)
    )
    order = np.argsort(sort_key, kind="stable")
    rows, names, row_codes, row_labels, row_train = (a[order] for a in (rows, names, row_codes, row_labels, row_train))
    quota = _quota(spec, np.bincount(row_codes[row_train], minlength=len(fine)), fine, chosen)
    if quota is not None:  # keep the first quota[class] train images of each class in hash order
        starts = np.r_[0, np.flatnonzero(np.diff(row_codes)) + 1]
        rank = np.arange(len(rows)) - np.repeat(starts, np.diff(np.r_[starts, len(rows)]))
        keep = ~row_train | (rank < quota[row_codes])
        rows, names, row_codes, row_labels, row_train = (
            a[keep] for a in (rows, names, row_codes, row_labels, row_train)
        )

    manifest = pd.DataFrame(
        {
            "path": catalog["path"].take(rows).reset_index(drop=True),
            "wnid": pd.Categorical.from_codes(row_codes, categories=fine),
            "label": row_labels,
            "label_wnid": pd.Categorical.from_codes(row_labels, categories=label_wnids),
            "split": pd.Categorical.from_codes((~row_train).astype(np.int8), categories=["train", "val"]),
        }
    )
    digest = _digest(names, row_labels, row_train)

    counts = pd.DataFrame(
        {
            "wnid": chosen,
            "label_wnid": [label_of.get(w, w) for w in chosen],
            "train_images": np.bincount(row_codes[row_train], minlength=len(fine))[chosen_mask],
            "val_images": np.bincount(row_codes[~row_train], minlength=len(fine))[chosen_mask],
        }
    )
    classes = counts.groupby("label_wnid").agg(
        fine_classes=("wnid", "size"), train_images=("train_images", "sum"), val_images=("val_images", "sum")
    )
    classes = classes.reindex(label_wnids).reset_index()
    classes.insert(0, "label", range(len(classes)))
    classes.insert(2, "name", classes["label_wnid"].map(taxonomy.name))
    return Subset(spec, manifest, classes, counts, digest)


def _digest(names: np.ndarray, labels: np.ndarray, is_train: np.ndarray) -> str:
    rows = np.stack([names.astype(np.uint64), labels.astype(np.uint64), is_train.astype(np.uint64)])
    return hashlib.sha256(rows.tobytes()).hexdigest()[:16]


def manifest_digest(manifest: pd.DataFrame) -> str:
    """The digest `build_subset` gives the same rows (file names, labels, splits, in manifest order)."""
    names = hash_file_names(manifest["path"])
    return _digest(names, manifest["label"].to_numpy(), (manifest["split"] == "train").to_numpy())


def _code_of(column: pd.Series, value: str) -> int:
    categories = list(column.cat.categories)
    return categories.index(value) if value in categories else -2


def _quota(spec: SubsetSpec, have: np.ndarray, fine: list[str], chosen: list[str]) -> np.ndarray | None:
    """Train images to keep per class code (None: all), checking that every class has enough."""
    if spec.images_per_class is None and spec.budget is None:
        return None
    want = dict.fromkeys(chosen, spec.images_per_class)
    if spec.budget is not None:
        if spec.budget < len(chosen):
            raise UserError(f"subset spec {spec.name!r}: a budget of {spec.budget} cannot cover {len(chosen)} classes")
        base, extra = divmod(spec.budget, len(chosen))
        order = np.random.default_rng(spec.seed).permutation(len(chosen))
        want = {chosen[i]: base + int(rank < extra) for rank, i in enumerate(order)}
    quota = np.array([want.get(w, 0) for w in fine], dtype=np.int64)
    short = [(w, int(have[i]), int(quota[i])) for i, w in enumerate(fine) if have[i] < quota[i]]
    if short:
        listed = ", ".join(f"{w} ({n} < {q})" for w, n, q in short[:8])
        more = f" and {len(short) - 8} more" if len(short) > 8 else ""
        raise UserError(
            f"subset spec {spec.name!r} needs more train images than {len(short)} class(es) have: {listed}{more}"
        )
    return quota


def _mix(values: np.ndarray, seed: int) -> np.ndarray:
    """splitmix64 of values and seed: a seeded, well-spread sort key."""
    with np.errstate(over="ignore"):
        z = values + np.uint64(seed % 2**64) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


# -- writing --------------------------------------------------------------------------------------
def write_subset(subset: Subset, out: Path, source: str = "", source_digest: str = "") -> Path:
    """Write the subset folder atomically: a temporary sibling folder renamed into place."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder; expected a folder for the subset")
    if out.is_dir() and any(out.iterdir()) and not (out / "subset.json").exists():
        raise UserError(f"--out {out} is a non-empty folder that holds no subset; expected a new or subset folder")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as err:
        raise UserError(f"--out {out} cannot be written ({err.strerror}); expected a writable folder") from None
    try:
        subset.manifest.to_parquet(tmp / "manifest.parquet", index=False)
        subset.classes.to_csv(tmp / "classes.tsv", sep="\t", index=False)
        subset.counts.to_csv(tmp / "counts.tsv", sep="\t", index=False)
        (tmp / "spec.yaml").write_text(subset.spec.to_yaml())
        (tmp / "subset.json").write_text(
            json.dumps({**subset.summary(), "source": source, "source_digest": source_digest}, indent=2) + "\n"
        )
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def read_manifest(path: Path) -> pd.DataFrame:
    """The manifest of a subset folder (or a manifest.parquet), checked against its class list."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    manifest_path = folder / "manifest.parquet" if path.is_dir() else path
    try:
        manifest = pd.read_parquet(manifest_path)
    except (OSError, ValueError) as err:
        raise UserError(
            f"manifest {manifest_path} cannot be read ({err}); expected a subset folder or manifest.parquet"
        ) from None
    missing = sorted({"path", "wnid", "label", "label_wnid", "split"} - set(manifest.columns))
    if missing:
        raise UserError(f"manifest {manifest_path} lacks column(s) {', '.join(missing)}")
    classes_path = manifest_path.parent / "classes.tsv"
    if classes_path.exists():
        classes = pd.read_csv(classes_path, sep="\t")
        pairs = manifest[["label", "label_wnid"]].drop_duplicates().astype({"label_wnid": str})
        listed = dict(zip(classes["label"], classes["label_wnid"].astype(str)))
        wrong = [(int(n), w) for n, w in zip(pairs["label"], pairs["label_wnid"]) if listed.get(int(n)) != w]
        if wrong:
            raise UserError(
                f"manifest {manifest_path} labels do not match its class list {classes_path}: "
                f"{', '.join(f'label {n} = {w}' for n, w in wrong[:5])}; "
                "expected the label/label_wnid pairs of classes.tsv"
            )
    return manifest


def make_subset(spec: SubsetSpec, source: str | Path, out: Path | None = None) -> tuple[Subset, Path, str]:
    """Build `spec` from `source`, write it (default: content-addressed in the cache) and log a run.

    Everything that can fail on bad input happens before the MLflow run starts (`log_subset` starts it).
    Returns the subset, its folder and the run id.
    """
    from imagenet_transfer.catalog import load_catalog

    subset = build_subset(load_catalog(source), spec)
    folder, run_id = log_subset(subset, source, out)
    return subset, folder, run_id


def subset_folder(subset: Subset, out: Path | None = None) -> Path:
    """Where a subset is written: `out`, or the cache by name and digest."""
    return Path(out) if out is not None else cache_dir() / "subsets" / f"{subset.spec.name}-{subset.digest}"


def log_subset(subset: Subset, source: str | Path, out: Path | None = None) -> tuple[Path, str]:
    """Write a built subset and log it as a run (stage=subset): the spec as params, the digests as tags, the
    manifest as a dataset input and the folder as artifacts under `subset/`. Returns the folder and run id."""
    from imagenet_transfer import tracking
    from imagenet_transfer.catalog import source_digest

    spec, out = subset.spec, subset_folder(subset, out)
    summary = subset.summary()
    content = source_digest(source)
    tags = {
        "subset_name": spec.name,
        "subset_digest": subset.digest,
        "spec_digest": spec.digest,
        "source_digest": content,
    }
    with tracking.start_run(
        "subset", params={"subset": spec.params()}, tags=tags, run_name=f"subset {spec.name}"
    ) as run:
        write_subset(subset, out, source=str(source), source_digest=content)
        tracking.log_dataset(
            subset.manifest,
            name=spec.name,
            source=str(out),
            digest=subset.digest,
            context="subset",
            tags={"spec_digest": spec.digest},
        )
        mlflow.log_metrics({k: v for k, v in summary.items() if isinstance(v, int)})
        mlflow.log_artifacts(str(out), artifact_path="subset")
    return out, run.info.run_id
