"""The grid file: read and check a declarative experiment grid (`configs/paper.yaml`) into a `Grid`.

    imagenet-transfer reproduce --grid configs/paper.yaml      # loads the grid, plans it (`grid_plan`), runs it

Input: a YAML grid file: `name`, `description`, `seeds`, `scales` (the profiles world, smoke and real: world
size, source, architectures, recipe, quick benchmarks, data paths, per-benchmark config overrides, pre-training
options, `baselines`) and `experiments` (each with its question, benchmarks with config overrides, data variants
per scale profile as subset presets, optionally its own architectures). Output: a `Grid` of frozen dataclasses.
Every unknown key, preset, benchmark, config field or architecture raises a UserError naming the file, the entry
and the valid choices, as does a field the grid sets per step (a pre-training's `seed`, subset, arch...; a
benchmark's `seed`); nothing is run or built here.

An experiment's `benchmarks` is either one list of names (or mapping name -> config overrides) used at every scale
profile, or a mapping profile -> such a list that gives each profile its own, e.g. `{world: [voc12_action], smoke:
[voc12_action], real: [voc07_det]}`; a profile missing from that mapping raises a UserError naming the experiment
and the profile. A benchmark's config is the benchmark's defaults at the scale, then
`scales.<profile>.benchmarks.<name>`, then the experiment's overrides.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from imagenet_transfer.errors import UserError

SCALES = ("world", "real")
GRID_KEYS = ("name", "description", "seeds", "scales", "experiments")
SCALE_KEYS = ("world", "source", "archs", "recipe", "quick", "data", "benchmarks", "pretrain", "baselines")
GRID_OWNED = ("subset", "source", "arch", "recipe", "seed", "model_name", "register")  # set per step by the grid
BENCHMARK_OWNED = ("seed",)  # a benchmark's fields the grid sets per step: seed s fine-tunes with s
EXPERIMENT_KEYS = ("question", "benchmarks", "variants", "archs")


@dataclass(frozen=True)
class Variant:
    preset: str  # the subset preset at this scale
    paper: str | None  # the paper's variant it stands for (published numbers are looked up by it)


@dataclass(frozen=True)
class Experiment:
    id: str
    question: str
    benchmarks: dict[str, dict[str, dict[str, Any]]]  # scale profile (world, smoke, real) -> name -> config overrides
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
    from imagenet_transfer.pretrain_config import PretrainConfig
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
            owned = sorted(set(overrides) & set(BENCHMARK_OWNED))
            if owned:
                fail(
                    f"{where}, benchmark {name}",
                    f"{', '.join(owned)} is set per step by the grid (seed s of `--seeds N` fine-tunes with seed s); "
                    "expected it left out",
                )
            valid = [f for f in _config_class(name).field_names() if f not in BENCHMARK_OWNED]
            unknown = sorted(set(overrides) - set(valid))
            if unknown:
                fail(
                    f"{where}, benchmark {name}",
                    f"unknown config key(s) {', '.join(unknown)}; valid: {', '.join(valid)}",
                )
            out[name] = dict(overrides)
        return out

    def per_scale(where: str, value: Any, profiles: tuple[str, ...]) -> dict[str, dict[str, dict[str, Any]]]:
        """An experiment's benchmarks at each of `profiles`: one list (or name -> overrides) for all of them, or a
        mapping profile -> such a list, which must name every profile."""
        shared = not (isinstance(value, dict) and set(value) & {*SCALES, "smoke"})
        if shared:
            value = dict.fromkeys(profiles, value)
        else:
            keys(f"{where}, benchmarks", value, profiles)
        out = {}
        for profile in profiles:
            if profile not in value:
                fail(
                    f"{where}, benchmarks",
                    f"no benchmarks for scale {profile!r}; expected a list for each of {', '.join(profiles)} "
                    "(or one list for every scale)",
                )
            here = where if shared else f"{where}, benchmarks.{profile}"
            out[profile] = benchmarks(here, value[profile])
            if not out[profile]:
                fail(here, "benchmarks: expected at least one")
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
            per_scale(where, entry.get("benchmarks"), tuple(p for p in ("world", "smoke", "real") if p in variants)),
            variants,
            archs(where, entry["archs"]) if "archs" in entry else None,
        )
    if not experiments:
        fail("experiments", "expected at least one experiment")
    return Grid(str(top.get("name") or path.stem), str(path), seeds, scales, experiments)


def _config_class(benchmark: str):
    from imagenet_transfer.transfer.runner import benchmark_module

    return benchmark_module(benchmark).Config
