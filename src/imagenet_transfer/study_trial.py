"""One trial of a budget study: sample a point, build its subset, pre-train on it, score the benchmark(s) on val.

    imagenet-transfer budget-study --budget 12000 --n-trials 3     # `study.run_study` calls `run_trial` per trial

Input: an Optuna trial, the `StudyConfig`, its `Pools` and the study run's id. The trial's E5-style subset spec,
`SubsetSpec(classes="random", num_classes=C, budget=B)` (images per class B/C, never sampled), is written as YAML
under the cache folder's `study/specs/`, and pre-training builds the subset from it. Pre-training reports `val_top1`
after every epoch, so a pruner can stop it (single-objective studies); the benchmarks run with `evaluate_on=val`:
trained on part of the benchmark's training data and scored on the held-out rest, never on its test split. Output,
in MLflow: a run nested under the study run (tag `stage=trial`, `study_name`, `trial_number`, `retry_of_trial` for a
retry; params `budget`, `num_classes`, `images_per_class` and the other sampled params; metrics `objective`
(`objective_<i>` with several) and the benchmark metric under its own name), with its subset, pretrain and transfer
runs under it. In Optuna: the trial's value(s) and user attrs `images_per_class`, `mlflow_run_id`, `model_uri`.

`execute` runs a trial as one worker of the study (`study_storage.Coordination`): its liveness claim and Optuna
heartbeats kept while it runs, its end told under the study's lock. A trial that raises ends FAIL (the worker stops
with the error, as `study.optimize` would); one interrupted by SIGTERM or Ctrl-C ends FAIL with its params enqueued
again (the next worker, or the same command again, runs them first: its pre-training resumes from the checkpoint
saved at the signal); a pruned one ends PRUNED.
"""

from __future__ import annotations

import math
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import mlflow

from imagenet_transfer import tracking
from imagenet_transfer.errors import UserError
from imagenet_transfer.study_config import Pools, StudyConfig, benchmark_config, label_spec, pretrain_config


def execute(trial, coordination, config: StudyConfig, pools: Pools, study_run_id: str) -> str:
    """Run `trial` (from `coordination.next_trial()`) as this worker's and record its end. Returns its state
    (COMPLETE, PRUNED; FAIL when another worker failed it meanwhile, taking it for dead)."""
    import optuna
    from optuna.trial import TrialState

    with coordination.claims.hold(coordination.key("trial", trial.number)) as claim, coordination.heartbeat(trial):
        try:
            values, state = run_trial(trial, config, pools, study_run_id), TrialState.COMPLETE
        except optuna.TrialPruned:
            values, state = None, TrialState.PRUNED
        except KeyboardInterrupt:  # SIGTERM or Ctrl-C: the runs ended KILLED; the trial is retried
            coordination.abandon(trial)
            raise
        except Exception:
            coordination.tell(trial, state=TrialState.FAIL)
            raise
        if not coordination.tell(trial, values, state):
            print(
                f"study {config.study_name}: trial {trial.number} was failed by another worker meanwhile (no "
                f"heartbeat for {config.grace_period} s): its result is dropped, its retry runs it again"
            )
            return TrialState.FAIL.name
        claim.complete({"state": state.name})
    return state.name


def run_trial(trial, config: StudyConfig, pools: Pools, study_run_id: str) -> float | tuple[float, ...]:
    """One trial: sample, build the subset, pre-train (pruned between epochs), score the benchmark(s) on val."""
    import optuna

    from imagenet_transfer.pretrain import run_pretrain
    from imagenet_transfer.subsets import SubsetSpec
    from imagenet_transfer.transfer.runner import run_benchmark

    end_runs_of_dead_workers(trial.study)
    sampled = sample(trial, config, pools)
    c = sampled["num_classes"]
    images_per_class = config.budget / c
    trial.set_user_attr("images_per_class", images_per_class)
    tags = {"study_name": config.study_name, "trial_number": str(trial.number)}
    retried = retried_trial(trial)
    params = {"budget": config.budget, "images_per_class": images_per_class, **sampled}
    with (
        tracking.nested_under(study_run_id, tags),
        tracking.start_run(
            "trial",
            params=params,
            tags={**tags, **({"retry_of_trial": str(retried)} if retried is not None else {})},
            run_name=f"{config.study_name} trial {trial.number}",
        ) as run,
    ):
        trial.set_user_attr("mlflow_run_id", run.info.run_id)
        name = f"e5-budget-{config.budget}-classes-{c}"
        name += "" if sampled["labels"] == "fine" else f"-{sampled['labels']}"
        name += "" if sampled["class_rule"] == "random" else f"-{sampled['class_rule']}"
        spec = SubsetSpec(
            name=name,
            classes="random",
            num_classes=c,
            budget=config.budget,
            seed=config.seed,
            **label_spec(sampled["labels"]),
        )
        spec_file = _write_spec(spec)
        single = len(config.objective) == 1

        pruned_checkpoint: list[str] = []

        def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
            if not single or "val_top1" not in metrics:
                return  # Optuna prunes single-objective studies only
            trial.report(metrics["val_top1"], epoch)
            if trial.should_prune():
                mlflow.set_tags({"pruned": "true", "pruned_at_epoch": str(epoch)})  # the pre-training run
                pretrain_run = mlflow.get_run(mlflow.active_run().info.run_id)
                pruned_checkpoint.append(pretrain_run.data.tags["checkpoint_dir"])
                raise optuna.TrialPruned(f"val_top1 {metrics['val_top1']:.2f} after epoch {epoch}")

        try:
            summary = run_pretrain(
                pretrain_config(config, str(spec_file), pools.sources[sampled["class_rule"]]), on_epoch=on_epoch
            )
        except optuna.TrialPruned:
            mlflow.set_tags({"pruned": "true", "state": "PRUNED"})
            # a later trial with the same parameters trains from scratch in a run of its own, instead of
            # resuming the pruned run (which belongs to this trial) from its last epoch
            for folder in pruned_checkpoint:
                shutil.rmtree(folder, ignore_errors=True)
            raise
        parent = mlflow.get_run(summary["run_id"]).data.tags.get("mlflow.parentRunId")
        mlflow.set_tags(
            {
                "model_uri": summary["model_uri"],
                "pretrain_run_id": summary["run_id"],
                "pretrain_reused": str(parent != run.info.run_id).lower(),
            }
        )  # an earlier trial's pre-training
        trial.set_user_attr("model_uri", summary["model_uri"])
        values = []
        for bench, metric in zip(config.objective, config.metrics):
            result = run_benchmark(
                bench, summary["model_uri"], benchmark_config(config, bench, "val"), device=config.device
            )
            if not math.isfinite(result.get(metric, float("nan"))):
                raise UserError(f"trial {trial.number}: {bench} gave no finite {metric}; expected a score on val")
            values.append(float(result[metric]))
            mlflow.log_metric(metric, values[-1])
        mlflow.log_metrics({"objective": values[0]} if single else {f"objective_{i}": v for i, v in enumerate(values)})
        if not single:
            mlflow.log_metric("objective", float(sum(values) / len(values)))
        if "val_top1" in summary:
            mlflow.log_metric("pretrain_val_top1", float(summary["val_top1"]))
        mlflow.set_tag("state", "COMPLETE")
    return values[0] if single else tuple(values)


def retried_trial(trial) -> int | None:
    """The number of the trial this one retries (its worker died), as Optuna's retry callback recorded it."""
    import optuna
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    frozen = next(t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number)
    with warnings.catch_warnings():  # the retry callback's functions are "experimental" since Optuna 2.8
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return RetryHeartbeatStaleTrialCallback.retried_trial_number(frozen)


def end_runs_of_dead_workers(study) -> list[str]:
    """End FAILED (tag `worker_died=true`) the MLflow runs still RUNNING of trials Optuna failed: their worker
    stopped sending heartbeats (a trial that raised has ended its runs itself). Returns the run ids ended."""
    from optuna.trial import TrialState

    return end_dead_runs(
        t.user_attrs["mlflow_run_id"]
        for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
        if t.user_attrs.get("mlflow_run_id") and t.user_attrs.get("mlflow_run_id") not in _ENDED
    )


def end_dead_runs(run_ids) -> list[str]:
    """End FAILED (tag `worker_died=true`) those of `run_ids` and their descendants still RUNNING: their worker
    died. Returns the run ids ended."""
    client, ended, pending = mlflow.MlflowClient(), [], list(run_ids)
    while pending:
        run_id = pending.pop()
        _ENDED.add(run_id)
        try:
            run = client.get_run(run_id)
        except mlflow.exceptions.MlflowException:
            continue  # another tracking store
        children = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{run_id}'")
        pending += [c.info.run_id for c in children if c.info.run_id not in _ENDED]
        if run.info.status == "RUNNING":
            client.set_tag(run_id, "worker_died", "true")
            client.set_terminated(run_id, "FAILED")
            ended.append(run_id)
    return ended


_ENDED: set[str] = set()  # runs this process has already looked at


def sample(trial, config: StudyConfig, pools: Pools) -> dict[str, Any]:
    """The trial's point: C always; labels and the class rule only when there is a choice (else fixed)."""
    out = {
        "num_classes": trial.suggest_int(
            "num_classes", pools.low, pools.high, log=config.log_classes and pools.low < pools.high
        )
    }
    for key, choices in (("labels", config.labels), ("class_rule", config.class_rules)):
        out[key] = trial.suggest_categorical(key, list(choices)) if len(choices) > 1 else choices[0]
    return out


def _write_spec(spec) -> Path:
    from imagenet_transfer.paths import cache_dir

    path = cache_dir() / "study" / "specs" / f"{spec.name}-{spec.digest}.yaml"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(spec.to_yaml())
        os.replace(tmp, path)
    return path
