"""Run a planned grid: every step of the plan under one grid run, reusing each step that already has a result.

    imagenet-transfer reproduce                              # configs/paper.yaml, E1-E7, the embedded world
    imagenet-transfer reproduce --smoke                      # a toy size of every step (tiny world)
    imagenet-transfer reproduce --only E1,E3 --seeds 3       # pre-training repeated with seeds 0, 1, 2
    imagenet-transfer reproduce --scale real --source /data/imagenet \
        --data voc07_det=/data/VOCdevkit --data voc12_action=/data/VOCdevkit --data sun397=/data/sun

Input: a grid file, read by `grid` and expanded by `grid_plan` into the plan (every check passes before any run
starts). Output: one MLflow run (tag stage=reproduce, `grid`) with every step's run nested under it (tags `grid`,
`experiment`, `variant`, `seed`, `step_key`), the grid file and `experiments.json` (each experiment's question)
as its artifacts, the step table `steps.json` (experiment, variant, seed, arch, stage, benchmark, run id, reused
or not, seconds; written after every step) and the wall time per stage as metrics (`seconds_subset`,
`seconds_pretrain`, `seconds_transfer`). Baselines (random init) run after every pre-trained step.

A step is skipped when a FINISHED run in the current tracking store carries its `step_key` (see `grid_plan`):
a pre-training reuses the registered model version (when it still exists in the store), a benchmark the
metrics. So an interrupted grid resumes where it stopped, and a finished one costs nothing to rerun. Each step
runs under an exclusive file lock named by its key (in the cache folder): a second `reproduce` on the same
machine and store waits for a step the first is running and then reuses its result, so two grids that overlap
never train the same thing twice.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from imagenet_transfer.errors import UserError
from imagenet_transfer.grid import load_grid
from imagenet_transfer.grid_plan import RANDOM, Baseline, Plan, SubsetPlan, Unit, make_plan

STAGES = ("subset", "pretrain", "transfer")


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
                    key = plan.transfer_key(name, config, model_uri)
                    t_outputs, reused, took = _transfer_step(name, model_uri, config, key, done, device)
                    record(unit, "transfer", key, t_outputs, reused, took, benchmark=name)
        for baseline in plan.baselines:  # after every pre-trained result: the reference lines of the report
            tags = {"grid": plan.grid.name, "experiment": baseline.experiment, "variant": RANDOM, "seed": "0"}
            with tracking.nested_under(grid_id, tags):
                for name, config in baseline.benchmarks.items():
                    key = plan.transfer_key(name, config, baseline.backbone)
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


def print_plan(grid_path: str | Path, *, gpus: int = 8, **options: Any) -> list[dict[str, Any]]:
    """Plan a grid (every step checked, nothing run) and print its steps, settings and estimated GPU-hours."""
    from rich.console import Console
    from rich.table import Table

    from imagenet_transfer.grid_plan import describe

    plan = make_plan(load_grid(grid_path), **options)
    rows = describe(plan, gpus=gpus)
    table = Table(title=f"{plan.grid.name} at scale {plan.profile}: {len(rows)} steps", show_lines=False)
    for column in ("experiment", "variant", "arch", "seed", "step", "settings", "GPU-h (1 H200)", f"on {gpus}"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(
            row["experiment"],
            row["variant"],
            row["arch"],
            str(row["seed"]),
            row["step"],
            row["settings"],
            f"{row['gpu_hours']:.2f}",
            f"{row[f'hours_on_{gpus}']:.2f}",
        )
    total = sum(r["gpu_hours"] for r in rows)
    console = Console(width=200)
    console.print(table)
    console.print(
        f"total: {total:,.1f} GPU-hours on one H200, {total / gpus:,.1f} hours on {gpus} "
        "(training throughput from bench/README.md, linear scaling assumed; steps shared between experiments run "
        "once; fine-tuning steps of one image a batch are latency-bound, so their figures are lower bounds)"
    )
    return rows
