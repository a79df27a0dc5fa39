"""The paper grid end to end: subsets -> pre-training -> transfer benchmarks, skipping what already exists.

    imagenet-transfer reproduce                              # configs/paper.yaml, E1-E7, the embedded world
    imagenet-transfer reproduce --smoke                      # a toy size of every step (tiny world), minutes
    imagenet-transfer reproduce --only E1,E3 --seeds 3       # pre-training repeated with seeds 0, 1, 2
    imagenet-transfer reproduce --scale real --source /data/imagenet \
        --data voc07_det=/data/VOCdevkit --data voc12_action=/data/VOCdevkit --data sun397=/data/sun

Input: a grid file (`configs/paper.yaml`: scales, and experiments with their variants = subset presets per
scale, benchmarks with config overrides). Output: one MLflow run (tag stage=reproduce, `grid`) with every
step's run nested under it (tags `grid`, `experiment`, `variant`, `seed`, `step_key`), the step table
`steps.json` as its artifact (experiment, variant, seed, arch, stage, benchmark, run id, reused or not,
seconds), and the wall time per stage as metrics (`seconds_subset`, `seconds_pretrain`, `seconds_transfer`).
Where the scale sets `baselines: true`, every experiment's benchmarks also run once on its architecture
randomly initialised (`random:ARCH@RES`, variant `random`), after the pre-trained steps: the report's
reference for "better than no pre-training at all".

A step is skipped when a FINISHED run in the current tracking store carries its `step_key`: the hash of the
stage, its normalised config, its upstream input (the subset digest and the source's content digest for a
subset or pre-training, the model version for a benchmark) and the code version (`provenance.code_version`).
A pre-training reuses the registered model version (when it still exists in the store), a benchmark the
metrics. So an interrupted grid resumes where it stopped, and a finished one costs nothing to rerun. Each step
runs under an exclusive file lock named by its key (in the cache folder): a second `reproduce` on the same
machine and store waits for a step the first is running and then reuses its result, so two grids that overlap
never train the same thing twice.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from imagenet_transfer.errors import UserError

SCALES = ("world", "real")
GRID_KEYS = ("name", "description", "seeds", "scales", "experiments")
SCALE_KEYS = ("world", "source", "archs", "recipe", "quick", "data", "benchmarks", "pretrain", "baselines")
GRID_OWNED = ("subset", "source", "arch", "recipe", "seed", "model_name", "register")  # set per step by the grid
EXPERIMENT_KEYS = ("question", "benchmarks", "variants", "archs")
STAGES = ("subset", "pretrain", "transfer")
RANDOM = "random"  # the variant name of the no-pre-training baseline (`random:ARCH@RES` backbones)


# -- the grid file ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Variant:
    preset: str  # the subset preset at this scale
    paper: str | None  # the paper's variant it stands for (published numbers are looked up by it)


@dataclass(frozen=True)
class Experiment:
    id: str
    question: str
    benchmarks: dict[str, dict[str, Any]]  # name -> config overrides
    variants: dict[str, tuple[Variant, ...]]  # scale profile (world, smoke, real) -> variants
    archs: tuple[str, ...] | None = None  # None: the scale's


@dataclass(frozen=True)
class Grid:
    name: str
    path: str
    seeds: int
    scales: dict[str, dict[str, Any]]  # profile (world, smoke, real) -> settings
    experiments: dict[str, Experiment]


def load_grid(path: str | Path) -> Grid:
    """Read and check a grid file: unknown keys, presets, benchmarks and architectures raise UserError
    naming the file, the entry and the valid choices."""
    from imagenet_transfer.models import ARCHITECTURES
    from imagenet_transfer.pretrain import PretrainConfig
    from imagenet_transfer.subsets import PAPER_PRESETS, preset
    from imagenet_transfer.transfer.runner import BENCHMARKS

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as err:
        raise UserError(
            f"grid file {path} cannot be read ({err.strerror}); expected a YAML grid like configs/paper.yaml"
        ) from None
    except yaml.YAMLError as err:
        raise UserError(f"grid file {path} is not valid YAML ({err})") from None

    def fail(where: str, why: str) -> None:
        raise UserError(f"grid file {path}, {where}: {why}")

    def keys(where: str, value: Any, valid: tuple[str, ...]) -> dict:
        if not isinstance(value, dict):
            fail(where, f"expected a mapping, got {type(value).__name__}")
        unknown = sorted(set(value) - set(valid))
        if unknown:
            fail(where, f"unknown key(s) {', '.join(map(str, unknown))}; valid: {', '.join(valid)}")
        return value

    def archs(where: str, value: Any) -> tuple[str, ...]:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not value:
            fail(where, "archs: expected a list of architectures")
        for arch in value:
            if arch not in ARCHITECTURES:
                fail(where, f"unknown backbone/arch {arch!r}; expected one of {', '.join(ARCHITECTURES)}")
        return tuple(value)

    def benchmarks(where: str, value: Any) -> dict[str, dict[str, Any]]:
        if isinstance(value, list):
            value = {name: {} for name in value}
        if not isinstance(value, dict):
            fail(where, "benchmarks: expected a list of names or a mapping name -> config overrides")
        out = {}
        for name, overrides in value.items():
            if name not in BENCHMARKS:
                fail(where, f"unknown benchmark {name!r}; expected one of {', '.join(BENCHMARKS)}")
            overrides = overrides or {}
            if not isinstance(overrides, dict):
                fail(f"{where}, benchmark {name}", "expected a mapping of config fields")
            valid = list(_config_class(name).field_names())
            unknown = sorted(set(overrides) - set(valid))
            if unknown:
                fail(
                    f"{where}, benchmark {name}",
                    f"unknown config key(s) {', '.join(unknown)}; valid: {', '.join(valid)}",
                )
            out[name] = dict(overrides)
        return out

    top = keys("top level", data, GRID_KEYS)
    seeds = top.get("seeds", 1)
    if not isinstance(seeds, int) or isinstance(seeds, bool) or seeds < 1:
        fail("seeds", f"expected a positive integer, got {seeds!r}")
    scales = {}
    for profile, settings in keys("scales", top.get("scales") or {}, (*SCALES, "smoke")).items():
        settings = dict(keys(f"scales.{profile}", settings or {}, SCALE_KEYS))
        settings["archs"] = archs(f"scales.{profile}", settings.get("archs", ["small"]))
        settings["benchmarks"] = benchmarks(f"scales.{profile}", settings.get("benchmarks") or {})
        if "world" in settings and settings["world"] not in ("tiny", "default", "large"):
            fail(
                f"scales.{profile}.world", f"unknown world size {settings['world']!r}; expected tiny, default or large"
            )
        pretrain = settings.get("pretrain") or {}
        valid = [name for name in PretrainConfig.field_names() if name not in GRID_OWNED]
        if not isinstance(pretrain, dict) or set(pretrain) - set(valid):
            fail(f"scales.{profile}.pretrain", f"expected a mapping of pretrain options among {', '.join(valid)}")
        settings["pretrain"] = dict(pretrain)
        if not isinstance(settings.get("baselines", False), bool):
            fail(f"scales.{profile}.baselines", f"expected true or false, got {settings['baselines']!r}")
        data_paths = settings.get("data") or {}
        if not isinstance(data_paths, dict) or any(name not in BENCHMARKS for name in data_paths):
            fail(
                f"scales.{profile}.data",
                f"expected a mapping benchmark -> path with benchmarks among {', '.join(BENCHMARKS)}",
            )
        scales[profile] = settings
    missing = [p for p in (*SCALES, "smoke") if p not in scales]
    if missing:
        fail("scales", f"missing profile(s) {', '.join(missing)}; expected world, smoke and real")

    experiments = {}
    for exp_id, entry in keys("experiments", top.get("experiments") or {}, tuple(top.get("experiments") or {})).items():
        where = f"experiment {exp_id}"
        entry = keys(where, entry, EXPERIMENT_KEYS)
        chosen = benchmarks(where, entry.get("benchmarks"))
        if not chosen:
            fail(where, "benchmarks: expected at least one")
        variants = {}
        for profile in scales:
            listed = (entry.get("variants") or {}).get(profile)
            if not listed:
                fail(
                    f"{where}, variants",
                    f"no variants for scale {profile!r}; expected variants for {', '.join(scales)}",
                )
            if not isinstance(listed, (list, dict)):
                fail(f"{where}, variants.{profile}", "expected a list of presets or a mapping preset -> paper preset")
            # a list entry that is one of the paper's presets stands for itself
            pairs = (
                listed.items() if isinstance(listed, dict) else ((n, n if n in PAPER_PRESETS else None) for n in listed)
            )
            out = []
            for name, paper in pairs:
                for which, preset_name in (("variant", name), ("paper variant", paper)):
                    if preset_name is not None:
                        try:
                            preset(str(preset_name))
                        except UserError as err:
                            fail(f"{where}, variants.{profile}, {which} {preset_name!r}", str(err))
                out.append(Variant(str(name), None if paper is None else str(paper)))
            variants[profile] = tuple(out)
        unknown_profiles = sorted(set(entry.get("variants") or {}) - set(scales))
        if unknown_profiles:
            fail(f"{where}, variants", f"unknown scale(s) {', '.join(unknown_profiles)}; expected {', '.join(scales)}")
        experiments[str(exp_id)] = Experiment(
            str(exp_id),
            str(entry.get("question", "")),
            chosen,
            variants,
            archs(where, entry["archs"]) if "archs" in entry else None,
        )
    if not experiments:
        fail("experiments", "expected at least one experiment")
    return Grid(str(top.get("name") or path.stem), str(path), seeds, scales, experiments)


def _config_class(benchmark: str):
    from imagenet_transfer.transfer.runner import benchmark_module

    return benchmark_module(benchmark).Config


# -- the plan: every step, with its inputs resolved ------------------------------------------------------
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
    benchmarks: dict[str, Any]  # name -> benchmark Config


@dataclass(frozen=True)
class Baseline:
    """The benchmarks of an experiment on a randomly initialised backbone of an arch (no pre-training)."""

    experiment: str
    arch: str
    backbone: str  # random:ARCH@RES, RES the resolution the grid pre-trains this arch at
    benchmarks: dict[str, Any]  # name -> benchmark Config, the experiment's


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

    @property
    def steps(self) -> int:
        return (
            len({u.subset.key for u in self.units})
            + sum(1 + len(u.benchmarks) for u in self.units)
            + sum(len(b.benchmarks) for b in self.baselines)
        )


def step_key(stage: str, config: dict[str, Any], upstream: str) -> str:
    """hash(stage, normalised config, upstream digests or model version, code version)."""
    from imagenet_transfer.provenance import cache_key

    return cache_key(stage, config, upstream)


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
) -> Plan:
    """Resolve the grid at a scale into units; builds every subset in memory (no run) so that a variant
    that does not fit the source fails here, before anything starts."""
    from imagenet_transfer.catalog import load_catalog, source_digest
    from imagenet_transfer.pretrain import PretrainConfig
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
        for name in experiment.benchmarks:
            overrides = {**settings["benchmarks"].get(name, {}), **experiment.benchmarks[name]}
            config = make_config(name, quick=smoke or bool(settings.get("quick")))
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

    subsets: dict[str, SubsetPlan] = {}
    units = []
    for entry in entries:
        name = entry.variant.preset
        if name not in subsets:
            spec = preset(name)
            try:
                built = build_subset(catalog, spec)
            except UserError as err:
                raise UserError(
                    f"grid file {grid.path}, experiment {entry.experiment}, variant {name} at scale {profile}: {err}"
                ) from None
            summary = built.summary()
            subsets[name] = SubsetPlan(
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
                subsets[name],
                config,
                step_key("pretrain", trained, f"{subsets[name].digest}:{content}"),
                configs[entry.experiment],
            )
        )
    baselines = []
    if settings.get("baselines", False):  # one random backbone per experiment and arch, at the unit's resolution
        for unit in units:
            if not any(b.experiment == unit.experiment and b.arch == unit.arch for b in baselines):
                baselines.append(
                    Baseline(
                        unit.experiment,
                        unit.arch,
                        f"random:{unit.arch}@{unit.pretrain.resolution}",
                        configs[unit.experiment],
                    )
                )
    seeds_used = seeds or grid.seeds
    return Plan(grid, scale, profile, smoke, seeds_used, source, world_root, world_hash, tuple(units), tuple(baselines))


def _normalised(config, world_root: str, world_hash: str) -> dict[str, Any]:
    """A benchmark config as a plain dict with the world's folder replaced by its content hash, so the
    same world found at another path gives the same key."""
    values = config.to_dict()
    if world_root and isinstance(values.get("data"), str) and values["data"].startswith(world_root):
        values["data"] = f"world:{world_hash}" + values["data"][len(world_root) :]
    return values


# -- running ----------------------------------------------------------------------------------------------
def step_lock(key: str):
    """The lock of step `key`: whoever holds it runs the step, others wait and then find its result."""
    from imagenet_transfer.paths import cache_lock

    return cache_lock(f"step-{key}", f"step {key} is being run by another process: waiting for it")


def _find_finished(key: str):
    """The newest FINISHED run tagged with `key`, or None."""
    import mlflow

    runs = mlflow.search_runs(
        search_all_experiments=True,
        filter_string=f"tags.step_key = '{key}' and attributes.status = 'FINISHED'",
        max_results=1,
        order_by=["attributes.start_time DESC"],
        output_format="list",
    )
    return runs[0] if runs else None


def run_grid(
    plan: Plan,
    *,
    device: str = "auto",
    on_step: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run the plan's steps under one grid run, reusing finished ones; returns the step table and times.

    `on_step(record)` is called after every step (a test interrupts the grid there)."""
    import mlflow
    from rich.console import Console

    from imagenet_transfer import tracking

    console = Console(stderr=True)
    tracking.configure()
    client = mlflow.MlflowClient()
    params = {
        "grid": plan.grid.path,
        "grid_name": plan.grid.name,
        "scale": plan.scale,
        "profile": plan.profile,
        "smoke": plan.smoke,
        "seeds": plan.seeds,
        "only": ",".join(dict.fromkeys(u.experiment for u in plan.units)),
        "source": plan.source,
        "world": plan.world,
        "steps": plan.steps,
    }
    records: list[dict[str, Any]] = []
    seconds = dict.fromkeys(STAGES, 0.0)
    done: dict[str, dict[str, Any]] = {}  # step key -> outputs, within this grid run
    started = time.monotonic()
    with tracking.start_run(
        "reproduce",
        params=params,
        tags={"grid": plan.grid.name, "scale": plan.profile},
        run_name=f"reproduce {plan.grid.name} {plan.profile}",
    ) as grid_run:
        grid_id = grid_run.info.run_id
        client.log_artifact(grid_id, plan.grid.path)  # the grid file as run, and what each experiment asks
        client.log_dict(
            grid_id, {e: plan.grid.experiments[e].question for e in params["only"].split(",") if e}, "experiments.json"
        )

        def record(
            unit: Unit | Baseline,
            stage: str,
            key: str,
            outputs: dict[str, Any],
            reused: bool,
            took: float,
            benchmark: str = "",
        ) -> None:
            seconds[stage] += took
            if isinstance(unit, Baseline):
                variant = {
                    "variant": RANDOM,
                    "paper_variant": None,
                    "seed": 0,
                    "num_classes": 0,
                    "num_fine_classes": 0,
                    "train_images": 0,
                    "images_per_class": 0.0,
                }
            else:
                variant = {
                    "variant": unit.variant.preset,
                    "paper_variant": unit.variant.paper,
                    "seed": unit.seed,
                    "num_classes": unit.subset.num_labels,
                    "num_fine_classes": unit.subset.num_fine_classes,
                    "train_images": unit.subset.train_images,
                    "images_per_class": round(unit.subset.images_per_class, 3),
                }
            row = {
                "experiment": unit.experiment,
                **variant,
                "arch": unit.arch,
                "stage": stage,
                "benchmark": benchmark,
                "step_key": key,
                "reused": reused,
                "seconds": round(took, 3),
                **outputs,
            }
            records.append(row)
            client.log_dict(grid_id, records, "steps.json")  # written as it goes: an interrupted grid keeps it
            what = f"{stage} {benchmark}".strip()
            state = "reused" if reused else f"ran in {took:.1f} s"
            console.print(
                f"[{len(records)}/{plan.steps}] {unit.experiment} {row['variant']} {unit.arch} "
                f"seed {row['seed']} {what}: {state}"
            )
            if on_step is not None:
                on_step(row)

        subsets_seen: set[str] = set()
        for unit in plan.units:
            tags = {
                "grid": plan.grid.name,
                "experiment": unit.experiment,
                "variant": unit.variant.preset,
                "seed": str(unit.seed),
            }
            with tracking.nested_under(grid_id, tags):
                folder, outputs, reused, took = _subset_step(unit.subset, plan.source, done)
                if unit.subset.key not in subsets_seen:
                    subsets_seen.add(unit.subset.key)
                    record(unit, "subset", unit.subset.key, outputs, reused, took)
                links = {**tags, "mlflow.parentRunId": grid_id}
                outputs, reused, took = _pretrain_step(unit, folder, done, client, device, links)
                record(unit, "pretrain", unit.pretrain_key, outputs, reused, took)
                model_uri = outputs["model_uri"]
                for name, config in unit.benchmarks.items():
                    key = step_key(f"transfer:{name}", _normalised(config, plan.world, plan.world_hash), model_uri)
                    t_outputs, reused, took = _transfer_step(name, model_uri, config, key, done, device)
                    record(unit, "transfer", key, t_outputs, reused, took, benchmark=name)
        for baseline in plan.baselines:  # after every pre-trained result: the reference lines of the report
            tags = {"grid": plan.grid.name, "experiment": baseline.experiment, "variant": RANDOM, "seed": "0"}
            with tracking.nested_under(grid_id, tags):
                for name, config in baseline.benchmarks.items():
                    key = step_key(
                        f"transfer:{name}", _normalised(config, plan.world, plan.world_hash), baseline.backbone
                    )
                    t_outputs, reused, took = _transfer_step(name, baseline.backbone, config, key, done, device)
                    record(baseline, "transfer", key, t_outputs, reused, took, benchmark=name)
        total = time.monotonic() - started
        metrics = {f"seconds_{stage}": value for stage, value in seconds.items()}
        metrics.update(
            seconds_total=total,
            steps_run=sum(not r["reused"] for r in records),
            steps_reused=sum(r["reused"] for r in records),
        )
        mlflow.log_metrics(metrics)
    return {"run_id": grid_id, "records": records, **metrics}


def _subset_step(subset: SubsetPlan, source: str, done: dict) -> tuple[Path, dict, bool, float]:
    from imagenet_transfer import tracking
    from imagenet_transfer.paths import cache_dir
    from imagenet_transfer.subsets import make_subset

    folder = cache_dir() / "subsets" / f"{subset.spec.name}-{subset.digest}"
    started = time.monotonic()
    if subset.key in done:
        return folder, done[subset.key], True, 0.0
    with step_lock(subset.key):
        found = _find_finished(subset.key)
        if found is not None:  # the folder is written again only if a pre-training needs it (_materialise)
            outputs = {"run_id": found.info.run_id, "subset_digest": subset.digest}
            reused = True
        else:
            with tracking.nested_under(None, {"step_key": subset.key}):
                _, folder, run_id = make_subset(subset.spec, source, folder)
            outputs, reused = {"run_id": run_id, "subset_digest": subset.digest}, False
    done[subset.key] = outputs
    return folder, outputs, reused, time.monotonic() - started


def _pretrain_step(
    unit: Unit, folder: Path, done: dict, client, device: str, links: dict[str, str]
) -> tuple[dict, bool, float]:
    key = unit.pretrain_key
    started = time.monotonic()
    if key in done:
        return done[key], True, 0.0
    with step_lock(key):
        outputs, reused = _pretrain_locked(unit, folder, client, device, links)
    done[key] = outputs
    return outputs, reused, time.monotonic() - started


def _pretrain_locked(unit: Unit, folder: Path, client, device: str, links: dict[str, str]) -> tuple[dict, bool]:
    from imagenet_transfer import tracking
    from imagenet_transfer.pretrain import run_pretrain

    key = unit.pretrain_key
    found = _find_finished(key)
    uri = found and _registered_uri(client, found.info.run_id)  # the model version must exist in this store
    if uri:
        outputs, reused = {"run_id": found.info.run_id, "model_uri": uri}, True
    else:
        _materialise(unit.subset, unit.pretrain.source, folder)
        with tracking.nested_under(None, {"step_key": key}):
            summary = run_pretrain(unit.pretrain.replace(subset=str(folder), device=device))
        if not summary.get("model_version"):
            raise UserError(f"pre-training of {unit.variant.preset} registered no model; expected register=True")
        run_tags = client.get_run(summary["run_id"]).data.tags
        # a DDP pre-training runs in torchrun's processes, outside this grid's nesting: link it here
        for name, value in {**links, "step_key": key, "model_uri": summary["model_uri"]}.items():
            if name not in run_tags or name in ("step_key", "model_uri"):
                client.set_tag(summary["run_id"], name, value)
        outputs, reused = {"run_id": summary["run_id"], "model_uri": summary["model_uri"]}, False
    return outputs, reused


def _materialise(subset: SubsetPlan, source: str, folder: Path) -> None:
    """Write the subset folder again when its run exists but the cache lost it (same digest, no new run)."""
    from imagenet_transfer.catalog import load_catalog, source_digest
    from imagenet_transfer.subsets import build_subset, write_subset

    if not (folder / "subset.json").exists():
        built = build_subset(load_catalog(source), subset.spec)
        if built.digest != subset.digest:
            raise UserError(
                f"subset {subset.preset}: the source {source} changed while the grid ran (digest "
                f"{built.digest}, planned {subset.digest}); expected an unchanged source"
            )
        write_subset(built, folder, source=source, source_digest=source_digest(source))


def _registered_uri(client, run_id: str) -> str | None:
    versions = client.search_model_versions(f"run_id = '{run_id}'")
    return f"models:/{versions[0].name}/{versions[0].version}" if versions else None


def _transfer_step(name: str, model_uri: str, config, key: str, done: dict, device: str) -> tuple[dict, bool, float]:
    from imagenet_transfer import tracking
    from imagenet_transfer.transfer.runner import run_benchmark

    started = time.monotonic()
    if key in done:
        return done[key], True, 0.0
    with step_lock(key):
        found = _find_finished(key)
        if found is not None:
            outputs, reused = {"run_id": found.info.run_id, "model_uri": model_uri}, True
        else:
            with tracking.nested_under(None, {"step_key": key}):
                run_benchmark(name, model_uri, config, device=device)
            found = _find_finished(key)
            outputs, reused = {"run_id": found.info.run_id if found else "", "model_uri": model_uri}, False
    done[key] = outputs
    return outputs, reused, time.monotonic() - started


def reproduce(
    grid_path: str | Path,
    *,
    scale: str = "world",
    smoke: bool = False,
    seeds: int | None = None,
    only: list[str] | None = None,
    source: str = "",
    data: dict[str, str] | None = None,
    world: str | Path | None = None,
    device: str = "auto",
    on_step: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Load, plan (everything checked before any run starts) and run a grid; returns `run_grid`'s summary."""
    plan = make_plan(
        load_grid(grid_path), scale=scale, smoke=smoke, seeds=seeds, only=only, source=source, data=data, world=world
    )
    return run_grid(plan, device=device, on_step=on_step)


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
