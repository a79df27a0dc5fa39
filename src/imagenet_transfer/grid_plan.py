"""The plan: a grid at one scale expanded into every step (subset, pre-training, benchmarks), each with its key.

    imagenet-transfer reproduce --smoke                  # the plan of configs/paper.yaml's smoke profile, then run
    imagenet-transfer reproduce --only E1,E3 --seeds 3
    imagenet-transfer reproduce --only E5 --seeds 3 --vary-subset --plan

Input: a `Grid` (`grid.load_grid`), the scale (world, or real with a source and `--data NAME=PATH` paths), smoke,
seeds, whether the subsets vary with the seed, and the experiments to run. Output: a `Plan`: one `Unit` per
(experiment, variant, arch, seed), holding its subset (built in memory, so that a variant that does not fit the
source fails before anything runs), its resolved `PretrainConfig` and the configs of the benchmarks its experiment
lists for the profile; and, where the scale sets `baselines: true`, one `Baseline` per (experiment, arch, seed):
the same benchmarks on the architecture randomly initialised (`random:ARCH@RES[:SEED]`, variant `random`). At
world scale the world is generated (or the one given is checked) first.

Seeds. Seed s pre-trains with seed s, and every benchmark of its unit fine-tunes with seed s (the benchmark
config's `seed`); the baseline of seed s draws its random weights with seed s (`random:ARCH@RES:s`; seed 0 has no
suffix) and fine-tunes with seed s. The subset is drawn with the preset's seed (0) for every seed, unless
`vary_subset`: then seed s draws the subsets whose selection is random (E1's images per class, E5's classes and
budget, E7's random halves) with seed s; the other presets are the same for every seed. Units with the same
(preset, subset seed) share one subset step. Seed 0 gives the same steps and keys whatever the number of seeds.

A step's key is the hash of the stage, its normalised config, its upstream input (the subset digest and the
source's content digest for a subset or pre-training, the model version or random backbone for a benchmark) and
the code version (`provenance.code_version`); a world's folder enters a key as its content hash, so the same
world found at another path gives the same keys. `reproduce` reuses a FINISHED run that carries the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imagenet_transfer.errors import UserError
from imagenet_transfer.grid import SCALES, Grid, Variant

RANDOM = "random"  # the variant name of the no-pre-training baseline (`random:ARCH@RES[:SEED]` backbones)
VARIED = ("pretrain", "finetune")  # what differs between a grid's seeds; with `vary_subset`, also "subset"


@dataclass(frozen=True)
class SubsetPlan:
    preset: str
    spec: Any  # SubsetSpec
    digest: str
    num_labels: int
    num_fine_classes: int
    train_images: int
    key: str

    @property
    def seed(self) -> int:
        """The seed the subset is drawn with (the spec's)."""
        return self.spec.seed

    @property
    def images_per_class(self) -> float:
        return self.train_images / max(1, self.num_fine_classes)


@dataclass(frozen=True)
class Unit:
    """One pre-training (a variant of an experiment, an arch, a seed) and the benchmarks run on it."""

    experiment: str
    variant: Variant
    arch: str
    seed: int
    subset: SubsetPlan
    pretrain: Any  # PretrainConfig (subset filled in when the subset folder exists)
    pretrain_key: str
    benchmarks: dict[str, Any]  # name -> benchmark Config (its experiment's at the profile), its `seed` the unit's


@dataclass(frozen=True)
class Baseline:
    """The benchmarks of an experiment on a randomly initialised backbone of an arch (no pre-training), for one
    seed: the weights are drawn and the benchmarks fine-tuned with it."""

    experiment: str
    arch: str
    seed: int
    backbone: str  # random:ARCH@RES[:SEED] (`random_backbone`), RES the resolution the grid pre-trains this arch at
    benchmarks: dict[str, Any]  # name -> benchmark Config, the experiment's at the profile, its `seed` the baseline's

    @property
    def resolution(self) -> int:
        return int(self.backbone.split("@", 1)[1].split(":", 1)[0])


@dataclass(frozen=True)
class Plan:
    grid: Grid
    scale: str
    profile: str  # world, smoke or real
    smoke: bool
    seeds: int
    source: str
    world: str  # the world root ("" at real scale)
    world_hash: str  # its content hash (keys do not depend on where the world lies)
    units: tuple[Unit, ...] = field(default_factory=tuple)
    baselines: tuple[Baseline, ...] = field(default_factory=tuple)
    vary_subset: bool = False  # seed s draws the random subsets with seed s (else every seed uses the preset's)

    @property
    def varied(self) -> str:
        """What differs between the plan's seeds: "pretrain,finetune", or "pretrain,finetune,subset"."""
        return ",".join((*VARIED, "subset") if self.vary_subset else VARIED)

    @property
    def steps(self) -> int:
        return (
            len({u.subset.key for u in self.units})
            + sum(1 + len(u.benchmarks) for u in self.units)
            + sum(len(b.benchmarks) for b in self.baselines)
        )

    def transfer_key(self, benchmark: str, config, backbone: str) -> str:
        """The step key of `benchmark` with `config` on `backbone` (a model URI, or `random:ARCH@RES[:SEED]`)."""
        return step_key(f"transfer:{benchmark}", _normalised(config, self.world, self.world_hash), backbone)


def step_key(stage: str, config: dict[str, Any], upstream: str) -> str:
    """hash(stage, normalised config, upstream digests or model version, code version)."""
    from imagenet_transfer.provenance import cache_key

    return cache_key(stage, config, upstream)


def random_backbone(arch: str, resolution: int, seed: int) -> str:
    """The URI of `arch` at `resolution` randomly initialised with `seed`: `random:ARCH@RES`, `:SEED` after it for
    a seed other than 0 (so seed 0 names the same backbone, and keys, as a grid of one seed)."""
    return f"random:{arch}@{resolution}" + (f":{seed}" if seed else "")


def draws_at_random(spec) -> bool:
    """Whether the selection of a `SubsetSpec` depends on its seed: random classes (E5), a random half (E7's A or
    B), or a sample of each class's train images (E1's images per class, E5's budget)."""
    return (
        spec.classes == "random"
        or (spec.classes == "half" and spec.split == "random" and spec.half != "ab")
        or spec.images_per_class is not None
        or spec.budget is not None
    )


@dataclass(frozen=True)
class Entry:
    """One pre-training of the expanded grid, before any data is read."""

    experiment: str
    variant: Variant
    arch: str
    seed: int
    recipe: str


def expand(
    grid: Grid, *, scale: str = "world", smoke: bool = False, seeds: int | None = None, only: list[str] | None = None
) -> tuple[str, list[Entry]]:
    """The scale profile (world, smoke or real) and every (experiment, variant, arch, seed) of the grid."""
    if scale not in SCALES:
        raise UserError(f"--scale {scale!r}: expected one of {', '.join(SCALES)}")
    if seeds is not None and (isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1):
        raise UserError(f"--seeds {seeds}: expected a positive integer")
    profile = "smoke" if smoke and scale == "world" else scale
    settings = grid.scales[profile]
    chosen = list(grid.experiments) if not only else list(only)
    unknown = [e for e in chosen if e not in grid.experiments]
    if unknown:
        raise UserError(
            f"--only {','.join(unknown)}: not in grid {grid.path}; expected some of {', '.join(grid.experiments)}"
        )
    recipe = "smoke" if smoke else settings.get("recipe", "world")
    entries = [
        Entry(exp_id, variant, arch, seed, recipe)
        for exp_id in chosen
        for variant in grid.experiments[exp_id].variants[profile]
        for arch in grid.experiments[exp_id].archs or settings["archs"]
        for seed in range(seeds or grid.seeds)
    ]
    return profile, entries


def make_plan(
    grid: Grid,
    *,
    scale: str = "world",
    smoke: bool = False,
    seeds: int | None = None,
    only: list[str] | None = None,
    source: str = "",
    data: dict[str, str] | None = None,
    world: str | Path | None = None,
    vary_subset: bool = False,
) -> Plan:
    """Resolve the grid at a scale into units; builds every subset in memory (no run) so that a variant
    that does not fit the source fails here, before anything starts. `vary_subset`: seed s draws the subsets whose
    selection is random with seed s (`draws_at_random`); otherwise every seed uses the preset's."""
    from imagenet_transfer.catalog import load_catalog, source_digest
    from imagenet_transfer.pretrain_config import PretrainConfig
    from imagenet_transfer.subsets import build_subset, preset
    from imagenet_transfer.transfer.runner import make_config

    profile, entries = expand(grid, scale=scale, smoke=smoke, seeds=seeds, only=only)
    settings = grid.scales[profile]
    world_root, world_hash = "", ""
    if scale == "world":
        from imagenet_transfer.synthetic import PARTS, generate, present_parts, read_world

        root = Path(world) if world else generate(size=settings.get("world", "default"), progress=False)
        manifest = read_world(root)  # raises on a folder that is not a world
        if present_parts(manifest) != set(PARTS):
            raise UserError(
                f"world {root} holds only the part(s) {', '.join(sorted(present_parts(manifest)))}; "
                f"expected a complete world (`imagenet-transfer synth --out {root}` adds the rest)"
            )
        world_hash = manifest["content_sha256"]
        world_root = str(Path(root).absolute())
        source = source or str(Path(world_root) / "imagenet")
    else:
        source = source or settings.get("source") or ""
        if not source:
            raise UserError(
                "--scale real needs --source: the ImageNet folder (train/<wnid>/, val/) or a catalog .parquet"
            )
    paths = {**(settings.get("data") or {}), **(data or {})}
    catalog = load_catalog(source)
    content = source_digest(source)

    configs: dict[str, dict[str, Any]] = {}  # experiment -> benchmark -> Config
    for exp_id in dict.fromkeys(e.experiment for e in entries):
        experiment = grid.experiments[exp_id]
        configs[exp_id] = {}
        for name, own in experiment.benchmarks[profile].items():
            overrides = {**settings["benchmarks"].get(name, {}), **own}
            config = make_config(name, quick=smoke or bool(settings.get("quick")), real=profile == "real")
            target = paths.get(name) or (
                str(Path(world_root) / "imagenet") if name == "probe" and world_root else world_root
            )
            if name == "probe" and not target:
                target = source  # the probes read the pre-training source's fine classes
            if not target:
                raise UserError(f"benchmark {name} of {exp_id} at scale {scale} needs its data: --data {name}=PATH")
            overrides = {"data": target, **{k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}}
            try:
                configs[exp_id][name] = config.replace(**overrides)
            except UserError as err:
                raise UserError(f"grid file {grid.path}, experiment {exp_id}, benchmark {name}: {err}") from None

    tuned: dict[tuple[str, int], dict[str, Any]] = {}  # (experiment, seed) -> its benchmark configs

    def seeded(exp_id: str, seed: int) -> dict[str, Any]:
        """The experiment's benchmark configs, fine-tuning with `seed`."""
        if (exp_id, seed) not in tuned:
            tuned[exp_id, seed] = {name: config.replace(seed=seed) for name, config in configs[exp_id].items()}
        return tuned[exp_id, seed]

    specs: dict[str, Any] = {}  # preset -> its SubsetSpec
    subsets: dict[tuple[str, int], SubsetPlan] = {}  # (preset, subset seed) -> its subset, shared by units
    failed: dict[str, str] = {}  # preset -> why its subset cannot be built (every one is named, then nothing runs)
    units = []
    for entry in entries:
        name = entry.variant.preset
        if name in failed:
            continue
        if name not in specs:
            specs[name] = preset(name)
        spec = specs[name]
        if vary_subset and draws_at_random(spec):
            spec = spec.with_seed(entry.seed)
        drawn = (name, spec.seed)
        if drawn not in subsets:
            try:
                built = build_subset(catalog, spec)
            except UserError as err:
                failed[name] = f"experiment {entry.experiment}, variant {name} at scale {profile}: {err}"
                continue
            summary = built.summary()
            subsets[drawn] = SubsetPlan(
                name,
                spec,
                built.digest,
                summary["num_labels"],
                summary["num_fine_classes"],
                summary["train_images"],
                step_key("subset", spec.params(), f"{built.digest}:{content}"),
            )
            del built  # a real-scale manifest is large; it is rebuilt when the subset step runs
        try:
            config = PretrainConfig(
                subset=name,
                source=source,
                arch=entry.arch,
                recipe=entry.recipe,
                seed=entry.seed,
                model_name=f"{grid.name}-{entry.arch}-{name}-s{entry.seed}",
                **settings["pretrain"],
            ).resolve()
        except (TypeError, UserError) as err:
            raise UserError(f"grid file {grid.path}, scales.{profile}.pretrain: {err}") from None
        trained = {
            k: v for k, v in config.to_dict().items() if k not in (*PretrainConfig.OPERATIONAL, "subset", "source")
        }
        units.append(
            Unit(
                entry.experiment,
                entry.variant,
                entry.arch,
                entry.seed,
                subsets[drawn],
                config,
                step_key("pretrain", trained, f"{subsets[drawn].digest}:{content}"),
                seeded(entry.experiment, entry.seed),
            )
        )
    if failed:
        raise UserError(
            f"grid file {grid.path}: {len(failed)} step(s) cannot run on {source}:\n  " + "\n  ".join(failed.values())
        )
    baselines: dict[tuple[str, str, int], Baseline] = {}
    if settings.get("baselines", False):  # a random backbone per experiment, arch and seed, at the unit's resolution
        for unit in units:
            if (unit.experiment, unit.arch, unit.seed) not in baselines:
                baselines[unit.experiment, unit.arch, unit.seed] = Baseline(
                    unit.experiment,
                    unit.arch,
                    unit.seed,
                    random_backbone(unit.arch, unit.pretrain.resolution, unit.seed),
                    seeded(unit.experiment, unit.seed),
                )
    seeds_used = seeds or grid.seeds
    return Plan(
        grid,
        scale,
        profile,
        smoke,
        seeds_used,
        source,
        world_root,
        world_hash,
        tuple(units),
        tuple(baselines.values()),
        vary_subset,
    )


def _normalised(config, world_root: str, world_hash: str) -> dict[str, Any]:
    """A benchmark config as a plain dict with the world's folder replaced by its content hash, so the
    same world found at another path gives the same key."""
    values = config.to_dict()
    if world_root and isinstance(values.get("data"), str) and values["data"].startswith(world_root):
        values["data"] = f"world:{world_hash}" + values["data"][len(world_root) :]
    return values


def parse_data(items: list[str] | None) -> dict[str, str]:
    """`--data NAME=PATH` items as a mapping, checked against the benchmarks."""
    from imagenet_transfer.transfer.runner import BENCHMARKS

    out = {}
    for item in items or []:
        name, sep, path = item.partition("=")
        if not sep or name not in BENCHMARKS or not path:
            raise UserError(f"--data {item!r}: expected BENCHMARK=PATH with BENCHMARK one of {', '.join(BENCHMARKS)}")
        out[name] = path
    return out


# Training images/s of one H200 with the input pipeline, batch 256, bf16 (bench/README.md, `throughput.py`).
H200_IMAGES_PER_S = {"caffe_alexnet": 9217, "alexnet": 7808, "resnet18": 7615, "resnet50": 4510, "small": 42723}
# Images a benchmark sees, where its data folder cannot be read at plan time (the real datasets' sizes).
REAL_SIZES = {"voc07_det_test": 4952, "voc12_action_train": 2296, "voc12_action_val": 2292, "sun397_train": 397 * 50}


def describe(plan: Plan, *, gpus: int = 8) -> list[dict[str, Any]]:
    """Every step of `plan` as a row: what it trains, with which settings, how many images it processes and an
    estimate of its GPU-hours on one H200 and on `gpus` of them.

    The estimate divides the images a step processes (training images, each weighted by its pixels relative to
    the architecture's resolution; evaluation and frozen features at a third of a training image) by the
    architecture's training throughput in `H200_IMAGES_PER_S`; `gpus` GPUs are assumed to scale linearly. It is
    a guide for booking machines, not a measurement."""
    rows = []
    seen: set = set()  # steps shared between experiments run once: later mentions cost nothing
    for unit in plan.units:
        if unit.subset.key not in seen:
            seen.add(unit.subset.key)
            s = unit.subset
            what = f"{s.num_fine_classes} classes, {s.num_labels} labels, {s.train_images:,} train images"
            rows.append(_row(unit, "subset", what, 0, gpus))
        c = unit.pretrain
        steps = c.iterations if c.schedule == "iterations" else -(-c.epochs * unit.subset.train_images // c.batch_size)
        settings = (
            f"{c.recipe}: {steps:,} iterations of {c.batch_size} (global), lr {c.lr:g} {c.decay}, "
            f"momentum {c.momentum:g}, decay {c.weight_decay:g}, {c.resolution} px"
        )
        rows.append(_row(unit, "pretrain", settings, steps * c.batch_size, gpus, unit.pretrain_key in seen))
        seen.add(unit.pretrain_key)
        for name, config in unit.benchmarks.items():
            settings, images = _benchmark_cost(name, config, c.resolution)
            shared = (unit.pretrain_key, name, repr(config)) in seen
            rows.append(_row(unit, f"transfer {name}", settings, images, gpus, shared))
            seen.add((unit.pretrain_key, name, repr(config)))
    for base in plan.baselines:
        for name, config in base.benchmarks.items():
            settings, images = _benchmark_cost(name, config, base.resolution)
            shared = (base.backbone, name, repr(config)) in seen
            seen.add((base.backbone, name, repr(config)))
            row = {"experiment": base.experiment, "variant": "random init", "arch": base.arch, "seed": base.seed}
            rows.append({**row, **_cost(f"transfer {name}", settings, images, base.arch, gpus, shared)})
    return rows


def _row(unit: Unit, step: str, settings: str, images: float, gpus: int, shared: bool = False) -> dict[str, Any]:
    row = {"experiment": unit.experiment, "variant": unit.variant.preset, "arch": unit.arch, "seed": unit.seed}
    return {**row, **_cost(step, settings, images, unit.arch, gpus, shared)}


def _cost(step: str, settings: str, images: float, arch: str, gpus: int, shared: bool) -> dict[str, Any]:
    if shared:
        step, images = f"{step} (shared: runs once)", 0.0
    hours = images / H200_IMAGES_PER_S[arch] / 3600
    return {"step": step, "settings": settings, "images": images, "gpu_hours": hours, f"hours_on_{gpus}": hours / gpus}


def _listed(path: Path, default: int) -> int:
    return len(path.read_text().split("\n")) - 1 if path.is_file() else default


def _benchmark_cost(name: str, config, resolution: int) -> tuple[str, float]:
    """(the settings that decide its cost, training-image equivalents it processes)."""
    data = Path(config.data) if config.data else Path()
    if name == "voc07_det":
        side = config.min_size or resolution
        pixels = side * side * 4 / 3 / resolution**2  # VOC photos are ~4:3
        test = _listed(data / "VOC2007" / "ImageSets" / "Main" / "test.txt", REAL_SIZES["voc07_det_test"])
        settings = (
            f"{config.iterations:,} iterations of {config.batch_size}, lr {config.lr:g} (x0.1 at "
            f"{config.lr_drop:.0%}), shorter side {config.min_size or 'auto'}, {config.box_batch_size} ROIs"
        )
        return settings, (config.iterations * config.batch_size + test / 3) * pixels
    if name == "voc12_action":
        root = data / "VOC2012" / "ImageSets" / "Action"
        train = _listed(root / "train.txt", REAL_SIZES["voc12_action_train"])
        val = _listed(root / "val.txt", REAL_SIZES["voc12_action_val"])
        context = 2 if config.context else 1
        settings = f"{config.epochs} epochs of {config.batch_size}, lr {config.lr:g}, context {config.context}"
        return settings, (config.epochs * train + val / 3) * context
    if name == "sun397":
        train = _listed(data / "Partitions" / "Training_01.txt", REAL_SIZES["sun397_train"])
        parts = len(config.partitions)
        if config.protocol == "finetune":
            settings = f"finetune, {parts} partitions, {config.epochs} epochs of {config.train_batch_size}"
            return settings, parts * (config.epochs * train * (1 - config.val_fraction) + train / 3)
        return f"linear on frozen features, {parts} partitions", parts * 2 * train / 3
    # probe: frozen features of a sample of the source's classes (at most ILSVRC's 1000, 50 val images each)
    images = 1000 * (config.train_per_class + (config.val_per_class or 50))
    return f"kNN (k={config.k}) and linear probe, {config.train_per_class} train images a class", images / 3
