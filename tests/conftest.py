"""Shared fixtures: every test gets its own cache dir; MLflow goes to one temporary SQLite store."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REALDATA = Path(os.environ.get("REALDATA_DIR", REPO.parent / "shared" / "realdata"))


def realdata(*parts: str) -> Path:
    """A path under the real-data samples, or skip the test when they are absent."""
    path = REALDATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data sample {path} is absent (set REALDATA_DIR to the shared realdata folder)")
    return path


@pytest.fixture(scope="session")
def tracking_uri(tmp_path_factory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('mlruns') / 'mlflow.db'}"


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path, tracking_uri):
    """Keep tests out of the user's cache and tracking store, and out of any outer `mlflow run`."""
    monkeypatch.setenv("IMAGENET_TRANSFER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    for var in (
        "MLFLOW_RUN_ID",
        "MLFLOW_EXPERIMENT_ID",
        "MLFLOW_EXPERIMENT_NAME",
        "IMAGENET_TRANSFER_DB",
        "IMAGENET_TRANSFER_CLAIM_TTL",
        "IMAGENET_TRANSFER_WORKER",
    ):
        monkeypatch.delenv(var, raising=False)
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)  # not the store an earlier test of this process pointed MLflow at
    yield

    while mlflow.active_run():
        mlflow.end_run()


def cli(*args: str) -> int:
    """Run `imagenet-transfer ARGS` in-process and return its exit code."""
    from imagenet_transfer.cli import main

    try:
        main([str(a) for a in args])
    except SystemExit as exit_:
        return exit_.code or 0
    return 0


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory) -> Path:
    """The tiny embedded world, generated once per test session."""
    from imagenet_transfer.synthetic import generate

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("IMAGENET_TRANSFER_CACHE", str(tmp_path_factory.mktemp("world-cache")))
        return generate(tmp_path_factory.mktemp("world") / "tiny", size="tiny", seed=0, progress=False)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors run faster on one torch thread, and far faster than on two on a busy 2-core machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- PostgreSQL and the team server (imagenet_transfer.team_server) ---------------------------------------------
@pytest.fixture(scope="session")
def postgres_server():
    """A throwaway PostgreSQL cluster on a free port for the session; yields its SQLAlchemy URL
    `postgresql+psycopg://postgres@127.0.0.1:PORT/` (append a database). Skips when PostgreSQL is absent."""
    import shutil
    import tempfile

    pytest.importorskip("psycopg", reason="psycopg (a dependency) is not installed")
    from imagenet_transfer.errors import UserError
    from imagenet_transfer.team_server import check_postgres, free_port, init_postgres, stop_postgres

    try:
        check_postgres()
    except UserError as err:
        pytest.skip(f"no PostgreSQL server here: {err}")
    # Not under pytest's basetemp: as root the cluster runs as `postgres`, which must traverse the folders above
    # it, and pytest makes /tmp/pytest-of-<user> private again whenever any session starts.
    root = Path(tempfile.mkdtemp(prefix="imagenet-transfer-pg-"))
    try:
        url = init_postgres(root / "cluster", free_port())
        yield url
    finally:
        stop_postgres(root / "cluster")
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres_db(postgres_server):
    """A fresh, uniquely named database on `postgres_server`: its SQLAlchemy URL (dropped afterwards)."""
    import uuid

    from imagenet_transfer.team_server import create_databases, drop_database, sqlalchemy_url

    name = f"test_{uuid.uuid4().hex[:12]}"
    create_databases(postgres_server, [name])
    yield sqlalchemy_url(postgres_server, name)
    drop_database(postgres_server, name)


@pytest.fixture(scope="module")
def team_server(postgres_server, tmp_path_factory):
    """An MLflow team server (`running_server`) on databases of its own on `postgres_server`, artifacts proxied to
    a temporary folder: `.tracking_uri` (http://127.0.0.1:PORT), `.db_url` (its Optuna/coordination database)."""
    import uuid

    from imagenet_transfer.team_server import Databases, drop_database, running_server

    databases = Databases.prefixed(f"team_{uuid.uuid4().hex[:8]}")
    folder = tmp_path_factory.mktemp("team-server")
    with running_server(folder, database_url=postgres_server, databases=databases) as server:
        yield server
    for name in (databases.mlflow, databases.optuna, databases.auth):
        drop_database(postgres_server, name)
