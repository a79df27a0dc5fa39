"""Budget studies (E5 searched): for a fixed budget of B pre-training images, how should they be spent?

    imagenet-transfer budget-study --budget 12000 --n-trials 3 --iterations 1000 --set voc12_action.epochs=10
    imagenet-transfer budget-study --budget 12000 --n-trials 20 --objective voc12_action,sun397 \\
        --labels fine,top-down-127 --class-rules random,pascal-removed --storage postgresql://lab/optuna
    mlflow run . -e budget_study --env-manager local -P budget=12000 -P n_trials=3

Optuna searches the number of classes C (images per class are derived, B/C, never sampled), and optionally the
label granularity (`fine`, `bottom-up-K`, `top-down-K`) and the class-selection rule (`random`: C random classes
of the source; `pascal-removed`: C random classes among those below no PASCAL synset). Each trial builds its
E5-style subset (`SubsetSpec(classes="random", num_classes=C, budget=B)`), pre-trains on it (reporting `val_top1`
after every epoch, so a pruner can stop it), and runs the chosen benchmark(s) with `evaluate_on=val`: trained on
part of the benchmark's training data and scored on the held-out rest, never on its test split. The objective is
maximised (several benchmarks: a multi-objective study). The test metrics of the chosen configuration (the best
trial; multi-objective: the Pareto trial with the best mean objective) are computed once, at the end.

Input: the `StudyConfig`. Output, in MLflow: one study run (tag `stage=study`, `study_name`; the config as
params; metrics `best_objective`, `best_num_classes`, `best_images_per_class`, `test_<metric>`; artifacts
`plots/optimization_history*.png`, `plots/param_importances.png`, `plots/num_classes_vs_objective*.png`,
`trials.csv`); under it one run per trial (tag `stage=trial`, `study_name`, `trial_number`; params `budget`,
`num_classes`, `images_per_class` and the other sampled params; metrics `objective` (`objective_<i>` with several)
and the benchmark metric under its own name), and under each trial its subset, pretrain and transfer runs.
In Optuna's storage: the study (user attrs `search_space`, `mlflow_run_id`, `final_test`).

Storages: an RDB URL (default `sqlite:///mlruns/optuna.db`, beside the project's MLflow store; PostgreSQL or
MySQL for a lab) with heartbeats, so a trial whose worker died is failed and retried; or a journal file (a path
ending in .log or .journal) for many workers on one shared file system (no heartbeat there). The same study name
joins the study (a second worker) or continues it (a restart): `n_trials` counts the study's finished trials.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import mlflow
from pydantic import Field, model_validator

from imagenet_transfer import tracking
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
    storage: str = ""  # Optuna RDB URL, or a .log/.journal file; "" = sqlite beside the MLflow store
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
    heartbeat_interval: int = Field(60, ge=1)  # RDB storages: seconds between a running trial's heartbeats
    grace_period: int = Field(180, ge=1)  # a running trial without a heartbeat for this long is failed (and retried)
    max_retry: int = Field(2, ge=0)  # retries of a trial whose worker died
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


def _check_pretrain(config: StudyConfig) -> None:
    pretrain_config(config, "unused").resolve()


def pretrain_config(config: StudyConfig, subset: str, source: str = ""):
    from imagenet_transfer.pretrain import PretrainConfig

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


# -- Optuna: storage, sampler, pruner, study --------------------------------------------------------------------
def default_storage() -> str:
    """`sqlite:///…/optuna.db` beside the project's MLflow SQLite store (else `mlruns/optuna.db`)."""
    uri = tracking.configure()
    folder = Path(uri.removeprefix("sqlite:///")).parent if uri.startswith("sqlite:///") else Path("mlruns").resolve()
    return f"sqlite:///{folder / 'optuna.db'}"


def open_storage(config: StudyConfig):
    """The Optuna storage `config.storage` names; UserError saying which one cannot be reached, and why."""
    import optuna

    location = config.storage or default_storage()
    if "://" not in location:
        if not location.endswith((".log", ".journal")):
            raise UserError(
                f"storage {location!r}: expected an RDB URL (sqlite:///…, postgresql://…) or a journal "
                "file path ending in .log or .journal"
            )
        from optuna.storages.journal import JournalFileBackend

        path = Path(location).expanduser()
        if not path.parent.is_dir():
            raise UserError(f"storage {location} cannot be reached: folder {path.parent} does not exist")
        try:
            return optuna.storages.JournalStorage(JournalFileBackend(str(path))), str(path)
        except OSError as err:
            raise UserError(f"storage {location} cannot be reached ({err.strerror})") from None
    shown = _redact(location)
    if location.startswith("sqlite:///"):
        folder = Path(location.removeprefix("sqlite:///")).parent
        if location == default_storage():
            folder.mkdir(parents=True, exist_ok=True)
        if not folder.is_dir():
            raise UserError(f"storage {shown} cannot be reached: folder {folder} does not exist")
    try:
        with warnings.catch_warnings():  # heartbeats are "experimental" since Optuna 2.8
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = _rdb_storage(location, config)
    except Exception as err:
        why = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
        raise UserError(
            f"storage {shown} cannot be reached ({type(err).__name__}: {why}); expected a reachable "
            "database URL or a .log/.journal file"
        ) from None
    return storage, shown


def _rdb_storage(location: str, config: StudyConfig):
    import optuna
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    return optuna.storages.RDBStorage(
        location,
        heartbeat_interval=config.heartbeat_interval,
        grace_period=config.grace_period,
        heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=config.max_retry),
        engine_kwargs={"connect_args": {"timeout": 30}} if location.startswith("sqlite") else None,
    )


def _redact(url: str) -> str:
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


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


def make_sampler(config: StudyConfig, finished: int):
    """TPE (constant liar, for parallel workers) or random, seeded by the study seed, the trials already finished
    and the process, so that two workers started together do not draw the same points. The points drawn are
    recorded with each trial; the subsets and pre-trainings they lead to are seeded by `seed` alone."""
    import optuna

    seed = int(hashlib.sha256(f"{config.seed}/{finished}/{os.getpid()}".encode()).hexdigest()[:8], 16)
    if config.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(5, config.n_trials), constant_liar=True)


def create_study(config: StudyConfig, pools: Pools | None = None):
    """Create the study in its storage, or load it when it exists with the same search space (else UserError).

    Call once before starting many workers: parallel first-time creation of a SQLite study can fail."""
    import optuna

    pools = pools or check(config)
    storage, shown = open_storage(config)
    space = config.search_space(pools.low, pools.high)
    directions = ["maximize"] * len(config.objective)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        existing = optuna.load_study(study_name=config.study_name, storage=storage)
    except KeyError:
        existing = None
    if existing is not None:
        stored, asked = json.loads(existing.user_attrs.get("search_space", "null")), json.loads(json.dumps(space))
        if stored is not None and stored != asked:
            diff = {k: (stored.get(k), v) for k, v in asked.items() if stored.get(k) != v}
            raise UserError(
                f"study {config.study_name!r} in {shown} exists with another search space "
                f"(stored vs asked: {diff}); expected the same settings, or another --study-name"
            )
        if [d.name.lower() for d in existing.directions] != directions:
            raise UserError(
                f"study {config.study_name!r} in {shown} has {len(existing.directions)} objective(s); "
                f"asked for {len(directions)} ({','.join(config.objective)})"
            )
    finished = len(existing.get_trials(deepcopy=False, states=_finished_states())) if existing is not None else 0
    study = optuna.create_study(
        storage=storage,
        study_name=config.study_name,
        directions=directions,
        sampler=make_sampler(config, finished),
        pruner=make_pruner(config.pruner),
        load_if_exists=True,
    )
    if "search_space" not in study.user_attrs:
        study.set_user_attr("search_space", json.dumps(space))
    return study, shown


def _finished_states():
    from optuna.trial import TrialState

    return (TrialState.COMPLETE, TrialState.PRUNED)


# -- the study run --------------------------------------------------------------------------------------------------
def run_study(config: StudyConfig, *, create_only: bool = False) -> dict[str, Any]:
    """Create or join the study, run trials until it holds `n_trials` finished ones, then (once) report the
    chosen configuration's test metrics on the study run. Returns a summary."""
    import optuna

    pools = check(config)
    study, shown = create_study(config, pools)
    run_id = _study_run_id(study)
    params = {k: (",".join(v) if isinstance(v, tuple) else v) for k, v in config.to_dict().items()}
    params["storage"] = shown
    params.update({"search.num_classes_low": pools.low, "search.num_classes_high": pools.high})
    # the first worker records the config as params; a joining or restarted one (whose n_trials, heartbeat or
    # device may differ) only updates the tag n_trials: params cannot change in MLflow
    with tracking.start_run(
        "study",
        params=None if run_id else params,
        run_name=f"study {config.study_name}",
        tags={"study_name": config.study_name, "storage": shown, "n_trials": str(config.n_trials)},
        run_id=run_id,
    ) as run:
        run_id = run.info.run_id
        study.set_user_attr("mlflow_run_id", run_id)
        if create_only:
            return {"study_name": config.study_name, "storage": shown, "run_id": run_id, "trials": 0}
        done = len(study.get_trials(deepcopy=False, states=_finished_states()))
        remaining = config.n_trials - done
        if remaining > 0:
            print(f"study {config.study_name} ({shown}): {done} finished trial(s), running up to {remaining} more")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.optimize(
                    lambda trial: run_trial(trial, config, pools, run_id),
                    n_trials=remaining,
                    callbacks=[optuna.study.MaxTrialsCallback(config.n_trials, states=_finished_states())],
                    gc_after_trial=True,
                )
        else:
            print(f"study {config.study_name} ({shown}) already holds {done} finished trial(s); nothing to run")
        summary = finish(study, config, run_id)
    return {"study_name": config.study_name, "storage": shown, "run_id": run_id, **summary}


def _study_run_id(study) -> str | None:
    """The MLflow run of the study (shared by its workers), when it exists in this tracking store."""
    run_id = study.user_attrs.get("mlflow_run_id")
    if not run_id:
        return None
    tracking.configure()
    try:
        mlflow.get_run(run_id)
    except mlflow.exceptions.MlflowException:
        return None  # another tracking store: this one gets a study run of its own
    return run_id


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
    retried = trial.study._storage.get_trial(trial._trial_id).system_attrs.get("failed_trial")  # a retry of it
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


def end_runs_of_dead_workers(study) -> list[str]:
    """End FAILED (tag `worker_died=true`) the MLflow runs still RUNNING of trials Optuna failed: their worker
    stopped sending heartbeats (a trial that raised has ended its runs itself). Returns the run ids ended."""
    from optuna.trial import TrialState

    client, ended = mlflow.MlflowClient(), []
    pending = [
        t.user_attrs["mlflow_run_id"]
        for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
        if t.user_attrs.get("mlflow_run_id") and t.user_attrs.get("mlflow_run_id") not in _ENDED
    ]
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


# -- the end: plots, the chosen configuration, its test metrics -------------------------------------------------
def chosen_trial(study):
    """The best trial (multi-objective: of the Pareto front, the one with the best mean objective)."""
    if len(study.directions) == 1:
        return study.best_trial
    return max(study.best_trials, key=lambda t: (sum(t.values) / len(t.values), -t.number))


def finish(study, config: StudyConfig, study_run_id: str) -> dict[str, Any]:
    """Log the plots and trials table; once the study is complete, test the chosen configuration once."""
    from optuna.trial import TrialState

    from imagenet_transfer.transfer.runner import run_benchmark

    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    counts = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
    mlflow.log_metrics({f"trials_{k}": v for k, v in counts.items()})
    mlflow.log_text(study.trials_dataframe().to_csv(index=False), "trials.csv")
    log_plots(study, config)
    if not complete:
        mlflow.set_tag("note", "no trial completed: nothing to test")
        return {"trials": len(trials), "complete": 0}
    best = chosen_trial(study)
    images = config.budget / best.params["num_classes"]
    best_values = best.values
    mlflow.log_metrics(
        {
            "best_objective": sum(best_values) / len(best_values),
            "best_trial_number": best.number,
            "best_num_classes": best.params["num_classes"],
            "best_images_per_class": images,
        }
    )
    mlflow.set_tags(
        {
            "best_trial_number": str(best.number),
            "best_params": json.dumps(
                {"num_classes": best.params["num_classes"], "images_per_class": images, **best.params}
            ),
        }
    )
    summary = {
        "trials": len(trials),
        "complete": len(complete),
        "best_trial": best.number,
        "best_params": dict(best.params),
        "best_values": list(best_values),
    }
    running = [t for t in trials if t.state == TrialState.RUNNING]
    finished = counts["complete"] + counts["pruned"]
    final = study.user_attrs.get("final_test") or {}
    if finished < config.n_trials or running:
        mlflow.set_tag("final_test", f"not yet: {finished}/{config.n_trials} finished, {len(running)} running")
        return summary
    if final.get("trial") == best.number:
        mlflow.log_metrics({f"test_{k}": v for k, v in final["metrics"].items()})
        return {**summary, "test": final["metrics"]}
    tested = {}
    with tracking.nested_under(
        study_run_id, {"study_name": config.study_name, "trial_number": str(best.number), "study_role": "final_test"}
    ):
        for bench, metric in zip(config.objective, config.metrics):
            result = run_benchmark(
                bench, best.user_attrs["model_uri"], benchmark_config(config, bench, "test"), device=config.device
            )
            tested[metric] = float(result[metric])
    mlflow.log_metrics({f"test_{k}": v for k, v in tested.items()})
    mlflow.set_tag("final_test", f"trial {best.number}")
    study.set_user_attr("final_test", {"trial": best.number, "metrics": tested})
    return {**summary, "test": tested}


def log_plots(study, config: StudyConfig) -> None:
    """Optuna's matplotlib plots, as PNGs under `plots/` of the active (study) run; skipped ones say why."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.trial import TrialState
    from optuna.visualization import matplotlib as ovm

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    notes = []
    if not complete:
        mlflow.set_tag("plots", "none: no completed trial")
        return
    targets = (
        [(None, "objective")]
        if len(config.objective) == 1
        else [(lambda t, i=i: t.values[i], f"objective_{i}") for i in range(len(config.objective))]
    )
    searched = sorted({p for t in complete for p in t.params})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for target, label in targets:
            suffix = "" if target is None else f"_{label.split('_')[1]}"
            name = config.metrics[0] if target is None else config.metrics[int(label.split("_")[1])]
            kwargs = {"target_name": f"{name} (val)", **({} if target is None else {"target": target})}
            plots = {
                f"optimization_history{suffix}": functools.partial(ovm.plot_optimization_history, study, **kwargs),
                f"num_classes_vs_objective{suffix}": functools.partial(
                    ovm.plot_slice, study, params=["num_classes"], **kwargs
                ),
            }
            if len(searched) >= 2:
                plots[f"contour{suffix}"] = functools.partial(ovm.plot_contour, study, params=searched[:2], **kwargs)
            if len(searched) >= 2 and len(complete) >= 3:
                plots[f"param_importances{suffix}"] = functools.partial(ovm.plot_param_importances, study, **kwargs)
            else:
                notes.append(
                    f"param_importances{suffix}: skipped ({len(searched)} searched param(s), "
                    f"{len(complete)} completed trial(s); needs >= 2 and >= 3)"
                )
            for file_name, draw in plots.items():
                try:
                    axes = draw()
                except (ValueError, RuntimeError, ZeroDivisionError, optuna.exceptions.OptunaError) as err:
                    notes.append(f"{file_name}: skipped ({err})")
                    continue
                first = axes.flat[0] if hasattr(axes, "flat") else axes
                mlflow.log_figure(first.figure, f"plots/{file_name}.png")
                plt.close(first.figure)
    if notes:
        mlflow.log_text("\n".join(notes) + "\n", "plots/skipped.txt")
