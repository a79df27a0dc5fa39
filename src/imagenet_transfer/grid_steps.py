"""The steps of a grid: what each one needs, how it is found finished in the tracking store, and how it is run.

    step = Step("pretrain", unit, index=1)
    step.inputs()                       # the step keys it needs first (the subset)
    step.key(plan, done)                # its step key, once its inputs are done
    find(step, key, client)             # its FINISHED run (and registered model) in the current store, or None
    execute(step, plan, done, device)   # run it; returns its outputs (run id, model URI)

A subset step builds the subset (and its run), a pretrain step trains and registers the backbone, a transfer step
scores one benchmark on a backbone (a pre-trained one, or `random:ARCH@RES[:SEED]` for a baseline). `reproduce`
decides which worker runs which step; this module only runs one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imagenet_transfer.errors import UserError
from imagenet_transfer.grid_plan import RANDOM, Baseline, Plan, SubsetPlan, Unit


@dataclass(frozen=True)
class Step:
    stage: str  # subset, pretrain or transfer
    unit: Unit | Baseline
    index: int  # position in the plan's order
    benchmark: str = ""
    config: Any = field(default=None, compare=False)

    def inputs(self) -> tuple[str, ...]:
        """The step keys that must be done before this step can run."""
        if self.stage == "pretrain":
            return (self.unit.subset.key,)
        if self.stage == "transfer" and isinstance(self.unit, Unit):
            return (self.unit.pretrain_key,)
        return ()

    def backbone(self, done: dict[str, dict[str, Any]]) -> str:
        return self.unit.backbone if isinstance(self.unit, Baseline) else done[self.unit.pretrain_key]["model_uri"]

    def key(self, plan: Plan, done: dict[str, dict[str, Any]]) -> str:
        if self.stage == "subset":
            return self.unit.subset.key
        if self.stage == "pretrain":
            return self.unit.pretrain_key
        return plan.transfer_key(self.benchmark, self.config, self.backbone(done))

    def tags(self, plan: Plan) -> dict[str, str]:
        """The tags of the step's runs (besides `step_key`)."""
        if isinstance(self.unit, Baseline):
            return {
                "grid": plan.grid.name,
                "experiment": self.unit.experiment,
                "variant": RANDOM,
                "seed": str(self.unit.seed),
            }
        return {
            "grid": plan.grid.name,
            "experiment": self.unit.experiment,
            "variant": self.unit.variant.preset,
            "seed": str(self.unit.seed),
        }

    def describe(self) -> dict[str, Any]:
        """The step's columns of the step table."""
        unit = self.unit
        if isinstance(unit, Baseline):
            variant = {
                "variant": RANDOM,
                "paper_variant": None,
                "seed": unit.seed,
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
        return {"experiment": unit.experiment, **variant, "arch": unit.arch, "stage": self.stage}


def plan_steps(plan: Plan) -> list[Step]:
    """Every step of the plan in its order: per unit its subset (the first time it appears), pre-training and
    benchmarks; the random-init baselines last."""
    steps: list[Step] = []
    subsets: set[str] = set()
    for unit in plan.units:
        if unit.subset.key not in subsets:
            subsets.add(unit.subset.key)
            steps.append(Step("subset", unit, len(steps)))
        steps.append(Step("pretrain", unit, len(steps)))
        for name, config in unit.benchmarks.items():
            steps.append(Step("transfer", unit, len(steps), name, config))
    for baseline in plan.baselines:
        for name, config in baseline.benchmarks.items():
            steps.append(Step("transfer", baseline, len(steps), name, config))
    return steps


# -- finding a step's result in the tracking store ------------------------------------------------------------------
def find_finished(key: str):
    """The newest FINISHED run tagged with step key `key`, or None."""
    import mlflow

    runs = mlflow.search_runs(
        search_all_experiments=True,
        filter_string=f"tags.step_key = '{key}' and attributes.status = 'FINISHED'",
        max_results=1,
        order_by=["attributes.start_time DESC"],
        output_format="list",
    )
    return runs[0] if runs else None


def find(step: Step, key: str, client, done: dict[str, dict[str, Any]]) -> tuple[Any, dict[str, Any]] | None:
    """The step's FINISHED run and its outputs, when it exists in this store (a pre-training: with its model
    version), else None."""
    found = find_finished(key)
    if found is None:
        return None
    if step.stage == "subset":
        return found, {"run_id": found.info.run_id, "subset_digest": step.unit.subset.digest}
    if step.stage == "pretrain":
        uri = registered_uri(client, found.info.run_id)  # the model version must exist in this store
        return (found, {"run_id": found.info.run_id, "model_uri": uri}) if uri else None
    return found, {"run_id": found.info.run_id, "model_uri": step.backbone(done)}


def registered_uri(client, run_id: str) -> str | None:
    versions = client.search_model_versions(f"run_id = '{run_id}'")
    return f"models:/{versions[0].name}/{versions[0].version}" if versions else None


# -- running a step -------------------------------------------------------------------------------------------------
def subset_folder(subset: SubsetPlan) -> Path:
    from imagenet_transfer.paths import cache_dir

    return cache_dir() / "subsets" / f"{subset.spec.name}-{subset.digest}"


def execute(step: Step, key: str, plan: Plan, done: dict, client, device: str, links: dict[str, str]) -> dict:
    """Run `step` (its runs tagged `step_key`), returning its outputs."""
    from imagenet_transfer import tracking

    if step.stage == "subset":
        from imagenet_transfer.subsets import make_subset

        with tracking.nested_under(None, {"step_key": key}):
            _, _, run_id = make_subset(step.unit.subset.spec, plan.source, subset_folder(step.unit.subset))
        return {"run_id": run_id, "subset_digest": step.unit.subset.digest}
    if step.stage == "pretrain":
        return _pretrain(step.unit, key, client, device, links)
    from imagenet_transfer.transfer.runner import run_benchmark

    backbone = step.backbone(done)
    with tracking.nested_under(None, {"step_key": key}):
        run_benchmark(step.benchmark, backbone, step.config, device=device)
    found = find_finished(key)
    return {"run_id": found.info.run_id if found else "", "model_uri": backbone}


def _pretrain(unit: Unit, key: str, client, device: str, links: dict[str, str]) -> dict:
    from imagenet_transfer import tracking
    from imagenet_transfer.pretrain import run_pretrain

    folder = subset_folder(unit.subset)
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
    return {"run_id": summary["run_id"], "model_uri": summary["model_uri"]}


def _materialise(subset: SubsetPlan, source: str, folder: Path) -> None:
    """Write the subset folder when its run exists but this machine's cache lacks it (another worker made it, or
    the cache was cleared): same digest, no new run."""
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
