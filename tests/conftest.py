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
    for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(var, raising=False)
    yield
    import mlflow

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
