"""What a budget study is: its config, the checks made before anything runs, and the configs its stages get.

    imagenet-transfer budget-study --budget 12000 --n-trials 3 --objective sun397 --labels fine,top-down-127

Input: the `budget-study` command's options (the MLproject entry point's parameters), which are the fields of
`StudyConfig`, and the pre-training source's catalog. Output: a checked `StudyConfig`; the `Pools` its trials
draw classes from (`check`; for a class rule other than `random`, a catalog written as Parquet under the
cache folder's `study/catalogs/`); per trial, the `PretrainConfig` and the benchmark configs it runs. Bad input
raises a UserError naming it before any run starts. The other `study*` modules import this one; it imports
none of them.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from imagenet_transfer.config import Settings
from imagenet_transfer.errors import UserError

OBJECTIVE_METRICS = {"voc12_action": "voc12_action_map", "sun397": "sun397_acc"}  # benchmarks with evaluate_on
CLASS_RULES = ("random", "pascal-removed")
SAMPLERS = ("tpe", "random")
PRUNERS = ("median", "hyperband", "none", "threshold:<val_top1 %>")


class StudyConfig(Settings):
    """Every knob of a budget study. The `budget-study` command's options and the MLproject entry point's
    parameters are these fields; `check()` adds what needs the data (budget vs source, the C range)."""

    budget: int = Field(ge=1)  # B: train images of every trial's subset
    n_trials: int = Field(3, ge=1)  # finished (complete or pruned) trials the study should hold, over all workers
    study_name: str = ""  # "" = budget-<B>
    storage: str = ""  # Optuna RDB URL or a .log/.journal file; "" = IMAGENET_TRANSFER_DB, else sqlite by MLflow's
    objective: tuple[Literal[tuple(OBJECTIVE_METRICS)], ...] = Field(
        ("voc12_action",), min_length=1
    )  # maximised on val
    min_classes: int | None = Field(None, ge=1)  # C range; None = the smallest C whose B/C images every class has
    max_classes: int | None = Field(None, ge=1)  # None = every class of the source (at most B)
    log_classes: bool = True  # sample C on a log scale
    labels: tuple[str, ...] = Field(
        ("fine",), min_length=1
    )  # label granularities searched: fine, bottom-up-K, top-down-K
    class_rules: tuple[Literal[CLASS_RULES], ...] = Field(("random",), min_length=1)  # class-selection rules searched
    source: str = ""  # pre-training source (default: the embedded world)
    arch: str = "small"
    recipe: str = "world"
    iterations: int | None = Field(None, ge=1)  # pre-training overrides of the recipe
    epochs: int | None = Field(None, ge=1)
    batch_size: int | None = Field(None, ge=1)
    benchmark_settings: tuple[str, ...] = ()  # BENCHMARK.KEY=VALUE, e.g. sun397.partitions=1
    quick: bool = False  # the benchmarks' toy size
    seed: int = Field(0, ge=0)  # class choice, pre-training and samplers
    sampler: Literal[SAMPLERS] = "tpe"
    pruner: str = "median"  # median, hyperband, none or threshold:<val_top1 %>
    heartbeat_interval: int = Field(60, ge=1)  # seconds between a running trial's heartbeats (and waiting looks)
    grace_period: int = Field(180, ge=1)  # a worker silent this long is dead: its trial failed (and retried), its
    # claims (final test, finishing) taken over
    max_retry: int = Field(2, ge=0)  # retries of a trial whose worker died or was stopped (SIGTERM)
    workers: int | None = Field(None, ge=0)  # data-loading processes of pre-training
    device: Literal["auto", "cpu", "cuda"] = "auto"

    @model_validator(mode="before")
    @classmethod
    def _lists_and_name(cls, data: Any) -> Any:
        """Comma-separated text or lists for the tuple fields; the default study name from the budget."""
        if isinstance(data, dict):
            data = dict(data)
            for name in ("objective", "labels", "class_rules", "benchmark_settings"):
                value = data.get(name)
                if isinstance(value, str):
                    data[name] = tuple(part.strip() for part in value.split(",") if part.strip())
                elif isinstance(value, list):
                    data[name] = tuple(value)
            if not data.get("study_name") and isinstance(data.get("budget"), int):
                data["study_name"] = f"budget-{data['budget']}"
        return data

    @model_validator(mode="after")
    def _consistent(self) -> StudyConfig:
        if len(set(self.objective)) != len(self.objective):
            raise ValueError(f"objective {','.join(self.objective)} repeats a benchmark; expected each once")
        if self.grace_period <= self.heartbeat_interval:
            raise ValueError(
                f"heartbeat_interval={self.heartbeat_interval}, grace_period={self.grace_period}: "
                "expected heartbeat_interval < grace_period"
            )
        return self

    @property
    def metrics(self) -> list[str]:
        return [OBJECTIVE_METRICS[b] for b in self.objective]

    def search_space(self, low: int, high: int) -> dict[str, Any]:
        """What must match for a second worker or a restart to join an existing study."""
        return {
            "budget": self.budget,
            "objective": list(self.objective),
            "num_classes": [low, high, self.log_classes],
            "labels": list(self.labels),
            "class_rules": list(self.class_rules),
            "arch": self.arch,
            "recipe": self.recipe,
            "iterations": self.iterations,
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "benchmark_settings": list(self.benchmark_settings),
            "quick": self.quick,
            "seed": self.seed,
        }


# -- checks that happen before anything runs ----------------------------------------------------------------
@dataclass(frozen=True)
class Pools:
    """For each class rule: the catalog (source path or a written parquet) trials draw their classes from."""

    sources: dict[str, str]
    low: int  # the C range every rule can serve
    high: int


def check(config: StudyConfig) -> Pools:
    """Refuse bad input (UserError naming it): budget vs source, C range, choices, benchmarks, settings."""
    from imagenet_transfer.catalog import load_catalog, write_catalog
    from imagenet_transfer.paths import cache_dir
    from imagenet_transfer.taxonomy import load_taxonomy

    def need(ok: bool, what: str) -> None:
        if not ok:
            raise UserError(f"budget study: {what}")

    make_pruner(config.pruner)
    tax = load_taxonomy()
    for labels in config.labels:
        label_spec(labels, tax)
    _check_pretrain(config)
    for name in config.objective:
        benchmark_config(config, name, "val")

    from imagenet_transfer.synthetic import default_source

    source = config.source or default_source()
    catalog = load_catalog(source)
    train = catalog[catalog["split"] == "train"]
    per_class = train["wnid"].astype(str).value_counts()
    need(
        config.budget <= len(train),
        f"budget={config.budget} is larger than the source's {len(train)} train "
        f"images ({source}); expected at most {len(train)}",
    )
    pools, smallest, largest = {}, 1, config.budget
    removed = set(tax.pascal_removed())
    for rule in config.class_rules:
        counts = per_class if rule == "random" else per_class[[w in removed for w in per_class.index]]
        need(len(counts) > 0, f"class rule {rule} keeps none of the source's classes")
        need(
            config.budget <= counts.sum(),
            f"budget={config.budget} is larger than the {int(counts.sum())} train "
            f"images of the classes rule {rule} keeps",
        )
        smallest = max(smallest, math.ceil(config.budget / int(counts.min())))  # B/C images for any C classes
        largest = min(largest, len(counts))
        if rule == "random":
            pools[rule] = str(source)
        else:
            kept = catalog[catalog["wnid"].astype(str).isin(removed)]
            key = hashlib.sha1(f"{Path(str(source)).resolve()}|{len(catalog)}|{rule}".encode()).hexdigest()[:16]
            path = cache_dir() / "study" / "catalogs" / f"{rule}-{key}.parquet"
            pools[rule] = str(write_catalog(kept, path, {"source": str(source), "rule": rule}))
    low = config.min_classes if config.min_classes is not None else max(smallest, min(2, largest))
    high = config.max_classes if config.max_classes is not None else largest
    need(
        low >= smallest,
        f"min_classes={low}: a budget of {config.budget} gives {math.ceil(config.budget / low)} "
        f"images to each class, more than the smallest class has; expected min_classes >= {smallest}",
    )
    need(
        high <= largest,
        f"max_classes={high}: the source ({', '.join(config.class_rules)}) has {largest} classes "
        f"for a budget of {config.budget}; expected max_classes <= {largest}",
    )
    need(low <= high, f"classes range {low}..{high} is empty; expected min_classes <= max_classes")
    return Pools(pools, low, high)


def label_spec(labels: str, taxonomy=None) -> dict[str, Any]:
    """`fine` or `bottom-up-K` / `top-down-K` as SubsetSpec fields; UserError listing the valid forms."""
    if labels == "fine":
        return {"labels": "fine", "label_classes": None}
    method, _, k = labels.rpartition("-")
    if method not in ("bottom-up", "top-down") or not k.isdigit():
        raise UserError(
            f"budget study: labels {labels!r}; expected fine, bottom-up-K or top-down-K (e.g. top-down-127)"
        )
    if taxonomy is not None:
        taxonomy.labels(method, int(k))  # raises, listing the valid K
    return {"labels": method, "label_classes": int(k)}


def make_pruner(text: str):
    import optuna

    if text == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)
    if text == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1)
    if text == "none":
        return optuna.pruners.NopPruner()
    if text.startswith("threshold:"):
        try:
            return optuna.pruners.ThresholdPruner(lower=float(text.split(":", 1)[1]))
        except ValueError:
            pass
    raise UserError(f"budget study: pruner {text!r}; expected one of {', '.join(PRUNERS)}")


# -- the configs of a trial's stages -------------------------------------------------------------------------
def _check_pretrain(config: StudyConfig) -> None:
    pretrain_config(config, "unused").resolve()


def pretrain_config(config: StudyConfig, subset: str, source: str = ""):
    from imagenet_transfer.pretrain_config import PretrainConfig

    return PretrainConfig(
        subset=subset,
        source=source,
        arch=config.arch,
        recipe=config.recipe,
        iterations=config.iterations,
        epochs=config.epochs,
        batch_size=config.batch_size,
        seed=config.seed,
        workers=config.workers,
        device=config.device,
    )


def benchmark_config(config: StudyConfig, name: str, evaluate_on: str):
    """The benchmark's config: quick or not, the study's `name.KEY=VALUE` settings, and where it is scored."""
    from imagenet_transfer.transfer.runner import make_config

    mine = [s.split(".", 1)[1] for s in config.benchmark_settings if s.split(".", 1)[0] == name and "." in s]
    stray = [s for s in config.benchmark_settings if s.split(".", 1)[0] not in config.objective or "." not in s]
    if stray:
        raise UserError(
            f"budget study: benchmark setting(s) {', '.join(stray)}; expected BENCHMARK.KEY=VALUE with "
            f"BENCHMARK one of the objective's: {', '.join(config.objective)}"
        )
    if any(s.startswith("evaluate_on=") for s in mine):
        raise UserError(f"budget study: {name}.evaluate_on is set by the study (val for trials, test at the end)")
    return make_config(name, mine, quick=config.quick).replace(evaluate_on=evaluate_on)
