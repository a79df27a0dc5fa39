"""The one place that knows the project's MLflow conventions.

- Tracking URI: `MLFLOW_TRACKING_URI` when set (a team server, or the URI `mlflow run` hands over),
  else `sqlite:///<cwd>/mlruns/mlflow.db`. Experiments the project creates in a local SQLite store keep
  their artifacts beside it (`mlruns/artifacts/<experiment>/`) and are tagged as model training
  (`mlflow.experimentKind`), so the UI opens on their runs. `configure` checks the store once per process: a new
  SQLite store is created whole under a lock (processes starting together on it all work), a file that is not
  an MLflow SQLite store or a folder that does not exist is refused (UserError naming it), and a tracking server
  must answer `GET /health` within seconds (MLflow's HTTP retries are then bounded to tens of seconds).
- Experiment: `MLFLOW_EXPERIMENT_NAME` / `MLFLOW_EXPERIMENT_ID` when set, else `imagenet-transfer`.
- One run per command: under `mlflow run` (`MLFLOW_RUN_ID`), the first run a command starts *is* the run
  `mlflow run` made; every later one is started inside it or inside a driver (study, grid) nested in it.
  `start_run` always ends its run: FINISHED, FAILED on an error, KILLED on Ctrl-C — never left RUNNING.
- Params: a run's params are what was asked (`mlflow run` logs its `-P` values before the command starts;
  they are never logged again), and `resolved.<key>` what ran (a recipe's lr, the device `auto` chose).
- Drivers (a study trial, a grid step) wrap the stages they call in `nested_under(run_id, tags)`: every run
  started inside becomes a child of that run (`mlflow.parentRunId`) and carries those tags.
- Backbones: registered as pyfunc models from code (`backbone_model.py`) holding `state_dict.pt` and
  `backbone.json`; nothing in the registry is a pickle. `load_backbone(uri)` rebuilds the module from them
  (weights_only), `mlflow.pyfunc.load_model(uri).predict(batch)` gives its features.
"""

from __future__ import annotations

import contextlib
import contextvars
import fcntl
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
_CHECKED: set[str] = set()  # stores `configure` checked (and created) in this process
_BUSY_TIMEOUT: list = []  # the SQLite busy-timeout hook, once installed
SQLITE_HEADER = b"SQLite format 3\x00"
HEALTH_TIMEOUT_S = 5  # a tracking server must answer GET /health within this
HTTP_RETRY_BUDGET = {  # MLflow's defaults (7 retries, 120 s per request) wait ~4 min for a server that is gone
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",  # backoff 0 + 4 + 8 s (+ jitter)
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",  # seconds without an answer (connect, or between bytes read)
}


def configure() -> str:
    """Point MLflow at the project's store (unless the user chose one), check it once per process, and return
    the URI. A local SQLite store that does not exist yet is created whole under a lock (see `_sqlite_store`); a
    tracking server must answer (see `_check_server`). UserError naming the store when it is unusable."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        root = Path("mlruns").resolve()
        root.mkdir(parents=True, exist_ok=True)
        uri = f"sqlite:///{root / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    path = _sqlite_path(uri)
    key = str(path) if path else uri
    if key not in _CHECKED:
        if path:
            _wait_when_busy()
            _sqlite_store(uri, path)
        elif uri.lower().startswith(("http://", "https://")):
            _check_server(uri)
        _CHECKED.add(key)
    return uri


def _wait_when_busy() -> None:
    """SQLite connections of this process wait up to a minute for another writer (several workers on one local
    store) instead of failing at once with `database is locked`. MLflow gives its engine no timeout of its own."""
    import sqlite3

    import sqlalchemy

    def busy_timeout(connection, record) -> None:
        if isinstance(connection, sqlite3.Connection):
            connection.execute("PRAGMA busy_timeout = 60000")

    if not _BUSY_TIMEOUT:  # once per process
        sqlalchemy.event.listen(sqlalchemy.engine.Engine, "connect", busy_timeout)
        _BUSY_TIMEOUT.append(busy_timeout)


def _sqlite_path(uri: str) -> Path | None:
    """The file of a local `sqlite:///` store (relative to the working directory, as SQLAlchemy reads it)."""
    if not uri.startswith("sqlite:///"):
        return None
    raw = uri.removeprefix("sqlite:///").split("?", 1)[0]
    return None if raw in ("", ":memory:") or raw.startswith("file:") else Path(raw).resolve()


def _sqlite_store(uri: str, path: Path) -> None:
    """Check the SQLite store `path` and open it once, creating it if it does not exist.

    MLflow creates a new store by running its migrations, and two processes doing that at once break it for
    good; so a new store is built in a temporary file under an exclusive lock beside it (`mlflow.db.lock`) and
    moved into place whole: the others wait, then open it. A file that is not an MLflow SQLite store (an empty
    file, other bytes, another program's database) is refused before MLflow touches it. The folder must exist,
    except the project's own `mlruns/`."""
    folder = path.parent
    if not folder.is_dir():
        if folder != Path("mlruns").resolve():  # the default, also as `make` exports it (relative)
            raise UserError(
                f"tracking store {uri}: folder {folder} does not exist; expected the folder of an MLflow SQLite "
                "store (create it, or unset MLFLOW_TRACKING_URI to use ./mlruns/mlflow.db)"
            )
        folder.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        try:
            lock = open(path.with_name(path.name + ".lock"), "a")  # noqa: SIM115 (held until the store exists)
        except OSError as err:
            raise UserError(f"tracking store {path} cannot be created in {folder} ({err.strerror})") from None
        with lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the block ends, or when the process dies
            if not path.exists():  # not made by another process while this one waited
                _create_sqlite_store(path)
    _check_sqlite_file(path)
    from sqlalchemy.exc import SQLAlchemyError

    try:
        mlflow.MlflowClient().search_experiments(max_results=1)  # MLflow opens (and keeps) the store
    except (mlflow.exceptions.MlflowException, SQLAlchemyError) as err:
        first = str(getattr(err, "message", err)).strip().splitlines()[0]
        raise UserError(
            f"tracking store {path} cannot be opened ({first}); expected an MLflow SQLite store of this MLflow "
            f"version (`mlflow db upgrade {uri}` upgrades an older one), or move it aside"
        ) from None


def _create_sqlite_store(path: Path) -> None:
    """Make a new MLflow store at `path` (tables and default experiment) in a temporary file, then link it into
    place: a process stopped midway leaves no half-made store, and the next one removes its temporary file."""
    from mlflow.store.tracking import DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    for stale in path.parent.glob(f"{path.name}.new-*"):  # left by a creator that was stopped (we hold the lock)
        stale.unlink(missing_ok=True)
    tmp = path.with_name(f"{path.name}.new-{os.getpid()}")
    tmp_uri = f"sqlite:///{tmp}"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            store = SqlAlchemyStore(tmp_uri, DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH)  # what MLflow itself would pass
        store.engine.dispose()
        getattr(SqlAlchemyStore, "_engine_map", {}).pop(tmp_uri, None)
        try:
            os.link(tmp, path)  # never replaces a store another program made meanwhile
        except FileExistsError:
            pass
        except OSError:  # a file system without hard links
            os.replace(tmp, path)
    finally:
        for leftover in (tmp, tmp.with_name(tmp.name + "-journal")):
            leftover.unlink(missing_ok=True)


def _check_sqlite_file(path: Path) -> None:
    """UserError unless `path` is an SQLite database holding an MLflow store (or no table yet)."""
    import sqlite3

    if path.is_dir():
        raise UserError(f"tracking store {path} is a folder; expected an MLflow SQLite store (a file)")
    with open(path, "rb") as handle:
        header = handle.read(len(SQLITE_HEADER))
    if not header:
        raise UserError(
            f"tracking store {path} is an empty file, not an MLflow SQLite store; delete the empty file to start "
            "a new store there"
        )
    if header != SQLITE_HEADER:
        raise UserError(
            f"tracking store {path} is not an SQLite database; expected an MLflow SQLite store, or move it aside"
        )
    try:
        with contextlib.closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as db:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as err:
        raise UserError(
            f"tracking store {path} cannot be read as SQLite ({err}); expected an MLflow SQLite store, or move it aside"
        ) from None
    if tables and "experiments" not in tables:
        raise UserError(
            f"tracking store {path} is an SQLite database without MLflow's tables (it has "
            f"{', '.join(sorted(tables)[:5])}); expected an MLflow SQLite store, or move it aside"
        )


def _check_server(uri: str) -> None:
    """UserError unless the tracking server `uri` answers `GET /health` within HEALTH_TIMEOUT_S (credentials from
    MLFLOW_TRACKING_USERNAME/PASSWORD or MLFLOW_TRACKING_TOKEN are sent if it asks for them); any answer but a
    gateway's 502/503/504 will do. Also sets MLflow's HTTP retry budget (HTTP_RETRY_BUDGET) where the user has
    not, so that a server that goes away during a run fails the command in tens of seconds, not minutes."""
    import base64
    import http.client
    import socket
    import ssl
    import urllib.error
    import urllib.request
    from urllib.parse import urlsplit, urlunsplit

    for key, value in HTTP_RETRY_BUDGET.items():
        os.environ.setdefault(key, value)
    parts = urlsplit(uri)
    try:
        port = parts.port
    except ValueError:
        raise UserError(
            f"MLFLOW_TRACKING_URI (a server on {parts.hostname}) has no valid port; expected http(s)://HOST[:PORT]"
        ) from None
    netloc = parts.hostname or ""
    netloc = f"[{netloc}]" if ":" in netloc else netloc
    netloc = f"{netloc}:{port}" if port else netloc
    shown = urlunsplit((parts.scheme, netloc, parts.path, "", "")).rstrip("/")  # no credentials, no query
    url = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/") + "/health", "", ""))
    headers = {}
    username = os.environ.get("MLFLOW_TRACKING_USERNAME") or parts.username
    password = os.environ.get("MLFLOW_TRACKING_PASSWORD") or parts.password
    if username and password:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()
    elif os.environ.get("MLFLOW_TRACKING_TOKEN"):
        headers["Authorization"] = "Bearer " + os.environ["MLFLOW_TRACKING_TOKEN"]

    def status(with_credentials: bool) -> int:
        request = urllib.request.Request(url, headers=headers if with_credentials else {})
        try:
            with urllib.request.urlopen(request, timeout=HEALTH_TIMEOUT_S) as response:
                return response.status
        except urllib.error.HTTPError as err:
            return err.code

    try:
        code = status(False)  # /health is normally open to all
        if code in (401, 403) and headers:
            code = status(True)
    except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
        reason = getattr(err, "reason", err)
        if isinstance(reason, ssl.SSLError):  # something answers: MLflow's own TLS settings decide the rest
            return
        if isinstance(reason, ConnectionRefusedError):
            why = "connection refused"
        elif isinstance(reason, TimeoutError | socket.timeout):
            why = f"no answer within {HEALTH_TIMEOUT_S} s"
        elif isinstance(reason, socket.gaierror):
            why = f"host {parts.hostname} not found"
        elif isinstance(reason, http.client.HTTPException):
            why = f"what answers is not HTTP: {type(reason).__name__}"
        else:
            why = getattr(reason, "strerror", None) or str(reason)
        raise UserError(
            f"tracking server {shown} does not answer ({why}); expected a running `mlflow server` — see README Team use"
        ) from None
    if code in (502, 503, 504):
        raise UserError(
            f"tracking server {shown} does not answer (HTTP {code} from {shown}/health: the server behind it is "
            "down); expected a running `mlflow server` — see README Team use"
        )


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
BACKBONE_MODEL_CODE = Path(__file__).with_name("backbone_model.py")  # not imported here: it calls set_model


def log_backbone(model, info: Mapping[str, Any], *, name: str | None, tags: Mapping[str, str]) -> str | None:
    """Log `model` as the MLflow model `backbone` of the active run and register it as `name` (a new version,
    tagged, alias `current`) unless `name` is None. Returns the version.

    The model holds no pickle: it is a pyfunc model from code (`backbone_model.py`) whose artifacts are the
    weights, `state_dict.pt` (read with `torch.load(weights_only=True)`), and `backbone.json`: `info`, whose
    `info["backbone"]` is what `models.rebuild` needs and the rest records the data the backbone saw. Ways in:
    `load_backbone(uri)` (the module) or `mlflow.pyfunc.load_model(uri).predict(batch)` (its features).
    Requirements are given, not inferred (inference would load the model in a subprocess)."""
    import tempfile

    import numpy as np
    import torch
    from mlflow.models import ModelSignature
    from mlflow.types import ParamSchema, ParamSpec, Schema, TensorSpec

    model = model.cpu().eval()
    layer = model.feature_layers[-1]
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 3, -1, -1))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, model.feature_dims()[layer]))]),
        params=ParamSchema([ParamSpec("layer", "string", layer)]),
    )
    with tempfile.TemporaryDirectory() as tmp:
        weights, meta = Path(tmp) / "state_dict.pt", Path(tmp) / "backbone.json"
        torch.save(model.state_dict(), weights)
        meta.write_text(json.dumps(dict(info), indent=2) + "\n")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            logged = mlflow.pyfunc.log_model(
                name="backbone",
                python_model=str(BACKBONE_MODEL_CODE),  # a path: the model is its code, not a pickled object
                artifacts={"state_dict": str(weights), "backbone_json": str(meta)},  # backbone_model.py's names
                signature=signature,
                pip_requirements=backbone_requirements(),
                tags=dict(tags),
            )
    if name is None:
        return None
    version = mlflow.register_model(logged.model_uri, name, tags=dict(tags))
    mlflow.MlflowClient().set_registered_model_alias(name, BACKBONE_ALIAS, version.version)
    return str(version.version)


def backbone_requirements() -> list[str]:
    """What a logged backbone needs to load: torch, torchvision and this project (its `models.rebuild`)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        project = [f"imagenet-transfer=={version('imagenet-transfer')}"]
    except PackageNotFoundError:  # run from a source tree that is not installed
        project = []
    return [*BACKBONE_REQUIREMENTS, *project]


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
