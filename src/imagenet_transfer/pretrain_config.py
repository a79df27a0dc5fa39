"""Pre-training's configuration: the named recipes and `PretrainConfig`, resolved once and frozen.

    config = PretrainConfig(subset="e3-127", recipe="world-long").resolve()   # recipe values filled in
    config.lr, config.iterations, config.batch_size                            # 0.05, 8000, 64 (the global batch)
    lr_lambda(config, total_steps)(step)                                       # the learning-rate multiplier

`RECIPES` is a named table of training hyper-parameters (the paper's CaffeNet schedule, its epoch form, the
embedded world's lengths); an option given explicitly overrides the recipe's value. `pretrain` trains with it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import Field

from imagenet_transfer.config import Settings
from imagenet_transfer.errors import UserError
from imagenet_transfer.models import ARCHITECTURES

# The recipes: named tables of training hyper-parameters; CLI options override single values.
RECIPES: dict[str, dict[str, Any]] = {
    # PAPER.md: Caffe's reference schedule, 450k iterations of 256, lr /10 every 100k
    "paper": dict(
        schedule="iterations",
        iterations=450_000,
        epochs=None,
        batch_size=256,
        lr=0.01,
        momentum=0.9,
        weight_decay=5e-4,
        decay="step",
        step_fraction=100 / 450,
        warmup_fraction=0.0,
        dropout=None,
    ),
    # the same shape as a fixed number of epochs (90 ≈ 450k × 256 / 1.28M; lr /10 every 20 epochs)
    "paper-epochs": dict(
        schedule="epochs",
        epochs=90,
        iterations=None,
        batch_size=256,
        lr=0.01,
        momentum=0.9,
        weight_decay=5e-4,
        decay="step",
        step_fraction=20 / 90,
        warmup_fraction=0.0,
        dropout=None,
    ),
    # the embedded world on 2 CPU cores within the 3-minute default job: `small` at 32 px, 400 x 64 images
    # (half an epoch of the default world; lr 0.025 did best at this length); accuracies in bench/README.md
    "world": dict(
        schedule="iterations",
        iterations=400,
        epochs=None,
        batch_size=64,
        lr=0.025,
        momentum=0.9,
        weight_decay=5e-4,
        decay="cosine",
        step_fraction=None,
        warmup_fraction=0.02,
        dropout=0.0,
        resolution=32,
    ),
    # pre-training that transfers on the embedded world: 8000 x 64 (~11 epochs), 20x the `world` recipe's time;
    # accuracies in bench/README.md
    "world-long": dict(
        schedule="iterations",
        iterations=8000,
        epochs=None,
        batch_size=64,
        lr=0.05,
        momentum=0.9,
        weight_decay=5e-4,
        decay="cosine",
        step_fraction=None,
        warmup_fraction=0.02,
        dropout=0.0,
        resolution=32,
    ),
    # a few steps, for tests and smoke runs
    "smoke": dict(
        schedule="iterations",
        iterations=4,
        epochs=None,
        batch_size=16,
        lr=0.02,
        momentum=0.9,
        weight_decay=5e-4,
        decay="cosine",
        step_fraction=None,
        warmup_fraction=0.0,
        dropout=0.3,
    ),
}
SCHEDULES = ("epochs", "iterations")
DECAYS = ("cosine", "step")
COARSE_LEVELS = ("top-down-127", "top-down-10", "bottom-up-79", "bottom-up-9")
Recipe = Literal[tuple(RECIPES)]
Arch = Literal[tuple(ARCHITECTURES)]


class PretrainConfig(Settings):
    """Every knob of a pre-training. None means "the recipe's value" (or the architecture's default).
    The `pretrain` command's options and the MLproject entry point's parameters are these fields."""

    subset: str = "full"  # preset name, spec .yaml, subset folder or manifest.parquet
    source: str = ""  # where presets/specs take images from; "" = the embedded world
    arch: Arch = "small"
    resolution: int | None = Field(None, ge=1)
    recipe: Recipe = "world"
    schedule: Literal[SCHEDULES] | None = None
    epochs: int | None = Field(None, ge=1)
    iterations: int | None = Field(None, ge=1)
    batch_size: int | None = Field(None, ge=1)  # the global batch: each of N processes takes batch_size / N
    lr: float | None = Field(None, gt=0)
    momentum: float | None = Field(None, ge=0)
    weight_decay: float | None = Field(None, ge=0)
    decay: Literal[DECAYS] | None = None
    step_fraction: float | None = Field(None, gt=0, le=1)  # step decay: lr x0.1 every this fraction of the run
    warmup_fraction: float | None = Field(None, ge=0, lt=1)
    dropout: float | None = Field(None, ge=0, lt=1)
    seed: int = Field(0, ge=0)
    workers: int | None = Field(None, ge=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    gpus: int = Field(1, ge=1)
    compile: bool = False
    coarse_level: Literal[COARSE_LEVELS] = "top-down-127"
    checkpoint_dir: str = ""
    checkpoint_minutes: float = Field(5.0, ge=0)
    max_skipped_fraction: float = Field(0.001, ge=0, le=1)
    input_pipeline: Literal["auto", "loader", "shards"] = "auto"  # auto: shards on CUDA when prepared
    shards: str = ""  # a prepared shard folder; "" = looked up in the cache by the subset's digest
    model_name: str = ""
    register: bool = True

    # Fields that do not change what is trained: excluded from the checkpoint key, so that a rerun with other values
    # resumes the same training (pretrain tags the run `resumed.<field>` with the new value). `device` is here as the
    # option (auto and cuda that pick the same device are one training) but the device type it resolves to is part
    # of the key (CPU and CUDA/bf16 differ in numerics); `gpus` splits the same global batch over more processes;
    # `max_skipped_fraction` only decides when unreadable images stop the training. Every other field, `compile` and
    # `coarse_level` included (compiled kernels' numerics, the val metric's meaning), is part of the key.
    OPERATIONAL: ClassVar[tuple[str, ...]] = (
        "workers",
        "device",
        "gpus",
        "checkpoint_dir",
        "checkpoint_minutes",
        "max_skipped_fraction",
        "register",
        "model_name",
        "input_pipeline",
        "shards",
    )

    @classmethod
    def from_file(cls, path: Path, **overrides: Any) -> PretrainConfig:
        """The options of a YAML file, with `overrides` (the CLI's, None = not given) on top."""
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise UserError(f"config file {path} cannot be read ({err}); expected YAML of pretrain options") from None
        if not isinstance(data, dict):
            raise UserError(f"config file {path}: expected a mapping of pretrain options")
        try:
            return cls(**{**data, **{k: v for k, v in overrides.items() if v is not None}})
        except UserError as err:
            raise UserError(f"config file {path}: {err}") from None

    def resolve(self) -> PretrainConfig:
        """Apply the recipe and the architecture's defaults, and check what the recipe left open."""
        from imagenet_transfer.models import architecture, check_resolution, default_resolution

        values = self.to_dict()
        for key, value in RECIPES[self.recipe].items():
            if values[key] is None:
                values[key] = value
        spec = architecture(self.arch)
        if self.resolution is None and not spec.min_resolution <= (values["resolution"] or 0) <= (
            spec.max_resolution or 10**6
        ):
            values["resolution"] = None  # a recipe's resolution that this architecture cannot take: its default
        if values["schedule"] == "epochs" and self.epochs is None and self.iterations is not None:
            values["schedule"] = "iterations"  # --iterations alone switches a recipe to an iteration budget
        if values["schedule"] == "iterations" and self.iterations is None and self.epochs is not None:
            values["schedule"] = "epochs"
        values["resolution"] = check_resolution(self.arch, values["resolution"] or default_resolution(self.arch))
        config = PretrainConfig(**values)
        if (config.epochs if config.schedule == "epochs" else config.iterations) is None:
            raise UserError(
                f"pretrain option schedule={config.schedule!r} needs {config.schedule}: expected a positive "
                f"integer (recipe {config.recipe!r} has none)"
            )
        if config.decay == "step" and config.step_fraction is None:
            raise UserError("pretrain option step_fraction: expected a fraction in (0, 1] with decay=step")
        return config

    def key(self, upstream: str) -> str:
        """Identity of the training (config minus operational fields, plus the data, the code and the store it is
        logged in): names checkpoints, so a checkpoint resumes only the same training into the same store."""
        from imagenet_transfer.provenance import cache_key

        content = {k: v for k, v in self.to_dict().items() if k not in self.OPERATIONAL}
        return cache_key("pretrain", content, upstream, length=16)


def lr_lambda(config: PretrainConfig, total_steps: int) -> Callable[[int], float]:
    """The learning-rate multiplier after `step` steps: linear warm-up, then cosine or step decay."""
    warmup = int(total_steps * (config.warmup_fraction or 0))
    step_every = max(1, round(total_steps * (config.step_fraction or 1)))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if config.decay == "cosine":
            progress = (step - warmup) / max(1, total_steps - warmup)
            return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        return 0.1 ** (step // step_every)

    return factor
