"""The one place that knows the project's MLflow conventions.

- Tracking URI: `MLFLOW_TRACKING_URI` when set (a team server, or the URI `mlflow run` hands over),
  else `sqlite:///<cwd>/mlruns/mlflow.db`. Experiments the project creates in a local SQLite store keep
  their artifacts beside it (`mlruns/artifacts/<experiment>/`).
- Experiment: `MLFLOW_EXPERIMENT_NAME` / `MLFLOW_EXPERIMENT_ID` when set, else `imagenet-transfer`.
- Every run carries the tag `stage` (subset, pretrain, transfer, ...) and its config as params;
  `start_run` resumes the run `mlflow run` created (`MLFLOW_RUN_ID`) and always ends the run:
  FINISHED, FAILED on an error, KILLED on Ctrl-C — never left RUNNING.
- Drivers (a study trial, a grid step) wrap the stages they call in `nested_under(run_id, tags)`: every run
  started inside becomes a child of that run (`mlflow.parentRunId`) and carries those tags.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.entities import RunStatus

from imagenet_transfer.errors import UserError

DEFAULT_EXPERIMENT = "imagenet-transfer"
MAX_PARAM_LENGTH = 6000
_PARENT: contextvars.ContextVar[tuple[str | None, dict[str, str]]] = contextvars.ContextVar("parent", default=(None, {}))


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
    uri = mlflow.get_tracking_uri()
    local = uri.startswith("sqlite:///") and Path(uri.removeprefix("sqlite:///")).parent
    location = (local / "artifacts" / name).resolve().as_uri() if local else None  # beside a local store
    return mlflow.create_experiment(name, artifact_location=location)


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
    *,
    run_id: str | None = None,
    adopt_env_run: bool = True,
    system_metrics: bool = False,
) -> Iterator[mlflow.ActiveRun]:
    """Start a run of `stage` (or resume `run_id`, or the run `mlflow run` made) and end it honestly.

    `adopt_env_run=False` starts a run of its own even under `mlflow run` (e.g. a subset that a
    pre-training builds before its own run).
    """
    configure()
    env_run = os.environ.pop("MLFLOW_RUN_ID", None)  # mlflow.start_run would otherwise always take it
    try:
        run_id = run_id or (env_run if adopt_env_run else None)
        parent, inherited = _PARENT.get()
        active = mlflow.active_run()  # a run started inside another one of this process is its child
        nested = active is not None
        parent = active.info.run_id if active else parent
        if run_id:
            run = mlflow.start_run(run_id=run_id, nested=nested, log_system_metrics=system_metrics or None)
        else:
            run = mlflow.start_run(experiment_id=experiment_id(), run_name=run_name, parent_run_id=parent,
                                   nested=nested, log_system_metrics=system_metrics or None)  # fmt: skip
    finally:
        if env_run is not None:
            os.environ["MLFLOW_RUN_ID"] = env_run
    status = RunStatus.to_string(RunStatus.FAILED)
    try:
        mlflow.set_tags({**inherited, "stage": stage, **(tags or {})})
        if params:
            log_params(params)
        yield run
        status = RunStatus.to_string(RunStatus.FINISHED)
    except KeyboardInterrupt:
        status = RunStatus.to_string(RunStatus.KILLED)
        raise
    finally:
        mlflow.end_run(status=status)


@contextlib.contextmanager
def nested_under(parent_run_id: str | None, tags: Mapping[str, str] | None = None) -> Iterator[None]:
    """Runs that `start_run` creates inside this block are children of `parent_run_id` and carry `tags`
    (nested blocks add their tags to the outer ones). Resumed runs keep their parent."""
    outer_parent, outer_tags = _PARENT.get()
    token = _PARENT.set((parent_run_id or outer_parent, {**outer_tags, **dict(tags or {})}))
    try:
        yield
    finally:
        _PARENT.reset(token)


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


# -- backbones in the model registry ---------------------------------------------------------------
BACKBONE_ALIAS = "current"  # MLflow reserves "latest"; `models:/NAME@latest` is read as `models:/NAME/latest`
BACKBONE_REQUIREMENTS = ["torch==2.14.1", "torchvision==0.29.1"]


def log_backbone(model, info: Mapping[str, Any], *, name: str | None, tags: Mapping[str, str]) -> str | None:
    """Log `model` as the MLflow model `backbone` of the active run, with its weights as `state_dict.pt`
    and `info` (what `models.rebuild` needs, plus the data it saw) as `backbone.json`; register it as
    `name` (a new version, tagged, alias `current`) unless `name` is None. Returns the version.
    `info["backbone"]` is what `models.rebuild` needs; the rest records the data the backbone saw."""
    import tempfile

    import mlflow.pytorch
    import torch

    model = model.cpu().eval()
    with tempfile.TemporaryDirectory() as tmp:
        weights, meta = Path(tmp) / "state_dict.pt", Path(tmp) / "backbone.json"
        torch.save(model.state_dict(), weights)
        meta.write_text(json.dumps(dict(info), indent=2) + "\n")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            logged = mlflow.pytorch.log_model(
                model, name="backbone", serialization_format="pickle", pip_requirements=BACKBONE_REQUIREMENTS,
                extra_files=[str(weights), str(meta)], tags=dict(tags),
            )  # fmt: skip
    if name is None:
        return None
    version = mlflow.register_model(logged.model_uri, name, tags=dict(tags))
    mlflow.MlflowClient().set_registered_model_alias(name, BACKBONE_ALIAS, version.version)
    return str(version.version)


def backbone_files(uri: str) -> tuple[dict[str, Any], Path]:
    """Download a logged backbone (`models:/NAME@ALIAS`, `models:/NAME/VERSION`, `models:/NAME/latest`,
    `models:/m-ID`) and return its `backbone.json` content and the path of `state_dict.pt`."""
    from mlflow.exceptions import MlflowException

    configure()
    if uri.endswith("@latest"):
        uri = uri.removesuffix("@latest") + "/latest"
    try:
        root = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
    except MlflowException as err:
        raise UserError(f"backbone {uri} cannot be found ({err.message}); expected models:/NAME@ALIAS or models:/NAME/VERSION") from None
    found = {p.name: p for p in root.rglob("*") if p.name in ("backbone.json", "state_dict.pt")}
    if len(found) != 2:
        raise UserError(f"backbone {uri} has no state_dict.pt/backbone.json; expected a model logged by pretrain")
    return json.loads(found["backbone.json"].read_text()), found["state_dict.pt"]


def load_backbone(uri: str):
    """The backbone module of `uri` (see `backbone_files`), rebuilt from its weights (weights_only)."""
    return load_backbone_with_info(uri)[0]


def load_backbone_with_info(uri: str):
    """The backbone of `uri` and its `backbone.json`, plus `model_name`/`model_version` when registered."""
    import torch

    from imagenet_transfer.models import rebuild

    info, weights = backbone_files(uri)
    net = rebuild(info["backbone"], torch.load(weights, map_location="cpu", weights_only=True))
    if uri.startswith("models:/") and not uri.startswith("models:/m-"):
        name = uri.removeprefix("models:/").split("@")[0].split("/")[0]
        client = mlflow.MlflowClient()
        if "@" in uri and not uri.endswith("@latest"):
            version = client.get_model_version_by_alias(name, uri.split("@", 1)[1]).version
        else:
            tail = uri.rsplit("/", 1)[1] if uri.count("/") > 1 else "latest"
            version = tail if tail.isdigit() else max(int(v.version) for v in client.search_model_versions(f"name = '{name}'"))
        info = {**info, "model_name": name, "model_version": str(version)}
    return net, info
