"""The one place that knows the project's MLflow conventions.

- Tracking URI: `MLFLOW_TRACKING_URI` when set (a team server, or the URI `mlflow run` hands over),
  else `sqlite:///<cwd>/mlruns/mlflow.db`, with artifacts in `<cwd>/mlruns/<experiment id>/` (MLflow's
  default artifact root beside a SQLite store started in that folder).
- Experiment: `MLFLOW_EXPERIMENT_NAME` / `MLFLOW_EXPERIMENT_ID` when set, else `imagenet-transfer`.
- Every run carries the tag `stage` (subset, pretrain, transfer, ...) and its config as params;
  `start_run` resumes the run `mlflow run` created (`MLFLOW_RUN_ID`) and always ends the run:
  FINISHED, FAILED on an error, KILLED on Ctrl-C — never left RUNNING.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.entities import RunStatus

DEFAULT_EXPERIMENT = "imagenet-transfer"
MAX_PARAM_LENGTH = 6000


def configure() -> str:
    """Point MLflow at the project's store (unless the user chose one) and return the URI."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        root = Path("mlruns").resolve()
        root.mkdir(parents=True, exist_ok=True)
        uri = f"sqlite:///{root / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    return uri


def experiment_id(name: str | None = None) -> str:
    """The id of the experiment runs go to, created if needed."""
    if name is None and os.environ.get("MLFLOW_EXPERIMENT_ID"):
        return os.environ["MLFLOW_EXPERIMENT_ID"]
    name = name or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    return mlflow.create_experiment(name)


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config → MLflow params `a.b = str(value)`; None becomes the empty string."""
    params = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            params.update(flatten(value, f"{name}."))
        else:
            params[name] = "" if value is None else str(value)[:MAX_PARAM_LENGTH]
    return params


@contextlib.contextmanager
def start_run(
    stage: str,
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, str] | None = None,
    run_name: str | None = None,
    nested: bool = False,
) -> Iterator[mlflow.ActiveRun]:
    """Start (or resume, under `mlflow run`) a run of `stage`, and end it with an honest status."""
    configure()
    run_id = None if nested else os.environ.get("MLFLOW_RUN_ID")
    if run_id:
        run = mlflow.start_run(run_id=run_id)
    else:
        run = mlflow.start_run(experiment_id=experiment_id(), run_name=run_name, nested=nested)
    status = RunStatus.to_string(RunStatus.FAILED)
    try:
        mlflow.set_tags({"stage": stage, **(tags or {})})
        if params:
            log_params(params)
        yield run
        status = RunStatus.to_string(RunStatus.FINISHED)
    except KeyboardInterrupt:
        status = RunStatus.to_string(RunStatus.KILLED)
        raise
    finally:
        mlflow.end_run(status=status)


def log_params(params: Mapping[str, Any]) -> None:
    """Log a (nested) config as params, skipping keys the run already has with the same value."""
    flat = flatten(params)
    existing = mlflow.get_run(mlflow.active_run().info.run_id).data.params
    mlflow.log_params({k: v for k, v in flat.items() if existing.get(k) != v})


def log_dataset(
    frame: pd.DataFrame, *, name: str, source: str, digest: str, context: str, tags: Mapping[str, str] | None = None
) -> None:
    """Record `frame` (a manifest) as a dataset input of the active run."""
    with warnings.catch_warnings():  # MLflow's hints on source schemes and integer columns
        warnings.simplefilter("ignore", UserWarning)
        dataset = mlflow.data.from_pandas(frame, source=source, name=name, digest=digest, targets="label")
        mlflow.log_input(dataset, context=context, tags=dict(tags or {}))
