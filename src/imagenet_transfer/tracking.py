"""The one place that knows the project's MLflow conventions.

- Tracking URI: `MLFLOW_TRACKING_URI` when set (a team server, or the URI `mlflow run` hands over),
  else `sqlite:///<cwd>/mlruns/mlflow.db`. Experiments the project creates in a local SQLite store keep
  their artifacts beside it (`mlruns/artifacts/<experiment>/`) and are tagged as model training
  (`mlflow.experimentKind`), so the UI opens on their runs.
- Experiment: `MLFLOW_EXPERIMENT_NAME` / `MLFLOW_EXPERIMENT_ID` when set, else `imagenet-transfer`.
- One run per command: under `mlflow run` (`MLFLOW_RUN_ID`), the first run a command starts *is* the run
  `mlflow run` made; every later one is started inside it or inside a driver (study, grid) nested in it.
  `start_run` always ends its run: FINISHED, FAILED on an error, KILLED on Ctrl-C — never left RUNNING.
- Params: a run's params are what was asked (`mlflow run` logs its `-P` values before the command starts;
  they are never logged again), and `resolved.<key>` what ran (a recipe's lr, the device `auto` chose).
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
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}  # the UI opens on runs, not traces
MAX_PARAM_LENGTH = 6000
_PARENT: contextvars.ContextVar[tuple[str | None, dict[str, str]]] = contextvars.ContextVar(
    "parent", default=(None, {})
)
_COMMAND_RUN = {"taken": False}  # the run `mlflow run` made is adopted once per process


def configure() -> str:
    """Point MLflow at the project's store (unless the user chose one) and return the URI."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        root = Path("mlruns").resolve()
        root.mkdir(parents=True, exist_ok=True)
        uri = f"sqlite:///{root / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    return uri


def store_id() -> str:
    """The tracking store results are registered in (a local database by its absolute path, a server by its
    URL without credentials): part of every cache key, so nothing is reused from another store."""
    from urllib.parse import urlsplit, urlunsplit

    uri = configure()
    if uri.startswith("sqlite:///"):
        return "sqlite:///" + str(Path(uri.removeprefix("sqlite:///")).resolve())
    parts = urlsplit(uri)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def experiment_id(name: str | None = None) -> str:
    """The id of the experiment runs go to, created if needed (tagged as model training)."""
    client = mlflow.MlflowClient()
    if name is None and os.environ.get("MLFLOW_EXPERIMENT_ID"):
        found = os.environ["MLFLOW_EXPERIMENT_ID"]
        _mark_kind(client, client.get_experiment(found))
        return found
    name = name or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        _mark_kind(client, experiment)
        return experiment.experiment_id
    uri = mlflow.get_tracking_uri()
    local = uri.startswith("sqlite:///") and Path(uri.removeprefix("sqlite:///")).parent
    location = (local / "artifacts" / name).resolve().as_uri() if local else None  # beside a local store
    return mlflow.create_experiment(name, artifact_location=location, tags=EXPERIMENT_KIND)


def _mark_kind(client, experiment) -> None:
    """Tag an experiment the project writes to as model training, unless someone chose its kind."""
    if experiment is not None and not any(k in experiment.tags for k in EXPERIMENT_KIND):
        for key, value in EXPERIMENT_KIND.items():
            client.set_experiment_tag(experiment.experiment_id, key, value)


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


def command_run_id() -> str | None:
    """The run `mlflow run` made for this command, while no run of this process has taken it."""
    return None if _COMMAND_RUN["taken"] else os.environ.get("MLFLOW_RUN_ID") or None


@contextlib.contextmanager
def start_run(
    stage: str,
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, str] | None = None,
    run_name: str | None = None,
    *,
    resolved: Mapping[str, Any] | None = None,
    run_id: str | None = None,
    system_metrics: bool = False,
) -> Iterator[mlflow.ActiveRun]:
    """Start a run of `stage` (or resume `run_id`) and end it honestly.

    Under `mlflow run`, the first run of the process that is neither resumed nor nested under a driver is
    the run `mlflow run` made; a resumed run takes that one as its child instead (it holds the results).
    `params` are logged as given, `resolved` under `resolved.`.
    """
    configure()
    parent, inherited = _PARENT.get()
    active = mlflow.active_run()  # a run started inside another one of this process is its child
    nested = active is not None
    parent = active.info.run_id if active else parent
    command_run = command_run_id()
    if command_run and (nested or parent) and not run_id:
        command_run = None  # a driver's step: a run of its own under the driver
    if command_run:
        _COMMAND_RUN["taken"] = True
    env_run = os.environ.pop("MLFLOW_RUN_ID", None)  # mlflow.start_run would otherwise always take it
    try:
        if run_id and command_run and command_run != run_id:  # results continue in `run_id`: link the two
            follow(command_run, run_id, stage, run_name or stage)
            command_run = None
        run_id = run_id or command_run
        if run_id:
            run = mlflow.start_run(run_id=run_id, nested=nested, log_system_metrics=system_metrics or None)
        else:
            run = mlflow.start_run(
                experiment_id=_experiment_for(parent),
                run_name=run_name,
                parent_run_id=parent,
                nested=nested,
                log_system_metrics=system_metrics or None,
            )
    finally:
        if env_run is not None:
            os.environ["MLFLOW_RUN_ID"] = env_run
    status = RunStatus.to_string(RunStatus.FAILED)
    try:
        mlflow.set_tags(
            {
                **inherited,
                "stage": stage,
                **(tags or {}),
                **({"mlflow.runName": run_name} if run_name and run_id == command_run else {}),
            }
        )
        if resolved:
            log_params(resolved, prefix="resolved.")
        if params:
            log_params(params)
        yield run
        status = RunStatus.to_string(RunStatus.FINISHED)
    except KeyboardInterrupt:
        status = RunStatus.to_string(RunStatus.KILLED)
        raise
    finally:
        mlflow.end_run(status=status)


def _experiment_for(parent: str | None) -> str:
    """A child run goes to its parent's experiment (the UI nests runs within one experiment)."""
    if parent:
        try:
            return mlflow.MlflowClient().get_run(parent).info.experiment_id
        except mlflow.exceptions.MlflowException:
            pass
    return experiment_id()


def follow(command_run: str, run_id: str, stage: str, name: str) -> None:
    """The run `mlflow run` made becomes a child of `run_id`, where the command's results are (a resumed or
    finished pre-training, a study that another worker started), named after it."""
    client = mlflow.MlflowClient()
    for key, value in {
        "mlflow.parentRunId": run_id,
        "stage": stage,
        "continued_in_run": run_id,
        "mlflow.runName": f"{name} (results in {run_id[:8]})",
    }.items():
        client.set_tag(command_run, key, value)


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


def log_params(params: Mapping[str, Any], prefix: str = "") -> None:
    """Log a (nested) config as params of the active run. A key the run already has keeps its value (under
    `mlflow run`, the `-P` value as typed); where the new value means something else, it goes under
    `resolved.<key>` instead."""
    flat = flatten(params, prefix)
    existing = mlflow.get_run(mlflow.active_run().info.run_id).data.params
    new = {}
    for key, value in flat.items():
        if key not in existing:
            new[key] = value
        elif not same_value(existing[key], value) and not key.startswith("resolved."):
            new.setdefault(f"resolved.{key}", value)
    new = {k: v for k, v in new.items() if k not in existing}
    if new:
        mlflow.log_params(new)


def same_value(a: str, b: str) -> bool:
    """Whether two param strings say the same (`true`/`True`, `0.10`/`0.1`, `''`/`None`; `mlflow run` logs an
    empty `-P` value as the two characters `''`)."""
    a, b = str(a).strip(), str(b).strip()
    if a == b or {a.lower(), b.lower()} <= {"", "none", "''", '""'}:
        return True
    if a.lower() in ("true", "false") and b.lower() in ("true", "false"):
        return a.lower() == b.lower()
    try:
        return float(a) == float(b)
    except ValueError:
        return False


def log_dataset(
    frame: pd.DataFrame, *, name: str, source: str, digest: str, context: str, tags: Mapping[str, str] | None = None
) -> None:
    """Record `frame` (a manifest) as a dataset input of the active run.

    What lands in MLflow is what `mlflow.log_input(mlflow.data.from_pandas(frame, ..., targets="label"))` logs:
    name, digest, source and source type, MLflow's schema and profile JSON, the extra tags and
    `mlflow.data.context`. Only the schema is inferred differently: MLflow types each column from the few rows
    that stand for all of them (a categorical's categories, one value of a column of strings, no value where
    the dtype decides) and `required` comes from `hasnans`, instead of MLflow reading every value in Python
    (~14 s for an ImageNet-sized manifest; this way, well under a second).
    """
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.types import ColSpec, Schema
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    def typical(column: pd.Series) -> pd.Series:
        """Rows of `column` that MLflow types as it types the whole column (every row when unsure)."""
        if isinstance(column.dtype, pd.CategoricalDtype):  # MLflow reads the values: they are the categories
            categories = pd.Series(column.dtype.categories)
            return typical(categories) if len(categories) else column
        if column.dtype.kind != "O":  # typed by the dtype alone
            return column.iloc[:1]
        if pd.api.types.infer_dtype(column, skipna=True) == "string":  # strings and missing values only
            return column.dropna().iloc[:1]
        return column

    with warnings.catch_warnings():  # MLflow's hints on source schemes and integer columns
        warnings.simplefilter("ignore", UserWarning)
        dataset = mlflow.data.from_pandas(frame, source=source, name=name, digest=digest, targets="label")
        columns = []
        for col in frame.columns:
            part = mlflow.data.from_pandas(typical(frame[col]).to_frame(col), source=dataset.source, digest=digest)
            if part.schema is None:  # MLflow cannot type this column: no schema, as from_pandas gives then
                columns = None
                break
            columns.append(ColSpec(part.schema.inputs[0].type, name=col, required=not frame[col].hasnans))
    schema = json.dumps({"mlflow_colspec": Schema(columns).to_dict()}) if columns else None
    entity = Dataset(
        name=dataset.name,
        digest=dataset.digest,
        source_type=dataset.source._get_source_type(),
        source=dataset.source.to_json(),
        schema=schema,
        profile=json.dumps(dataset.profile),
    )
    input_tags = [InputTag(key, value) for key, value in dict(tags or {}).items()]
    input_tags.append(InputTag(MLFLOW_DATASET_CONTEXT, context))
    mlflow.MlflowClient().log_inputs(mlflow.active_run().info.run_id, datasets=[DatasetInput(entity, tags=input_tags)])


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
                model,
                name="backbone",
                serialization_format="pickle",
                pip_requirements=BACKBONE_REQUIREMENTS,
                extra_files=[str(weights), str(meta)],
                tags=dict(tags),
            )
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
        raise UserError(
            f"backbone {uri} cannot be found ({err.message}); expected models:/NAME@ALIAS or models:/NAME/VERSION"
        ) from None
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
            version = (
                tail
                if tail.isdigit()
                else max(int(v.version) for v in client.search_model_versions(f"name = '{name}'"))
            )
        info = {**info, "model_name": name, "model_version": str(version)}
    return net, info


def runtime_params(device, prefix: str = "") -> dict[str, str]:
    """What a run ran on: the torch version, and the GPU's name and count on CUDA ("none" otherwise)."""
    import torch

    device = torch.device(device)
    cuda = device.type == "cuda"
    return {
        f"{prefix}torch_version": torch.__version__,
        f"{prefix}gpu": torch.cuda.get_device_name(device) if cuda else "none",
        f"{prefix}gpu_count": str(torch.cuda.device_count() if cuda else 0),
    }
