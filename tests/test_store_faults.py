"""Tracking stores that are new, damaged, missing or unreachable: the first command opening one either works or
exits 2 naming the store, and never leaves a broken store, a half-written file or a RUNNING run behind."""

import http.server
import os
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import mlflow
import pytest

from imagenet_transfer import tracking
from imagenet_transfer.errors import UserError
from tests.conftest import REPO, cli

OPENER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import mlflow
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore  # imported before the start signal
    from imagenet_transfer import tracking
    Path(sys.argv[1]).touch()  # ready
    while not Path(sys.argv[2]).exists():
        time.sleep(0.002)
    tracking.configure()
    print(len(mlflow.MlflowClient().search_experiments()))
    """
)


def open_together(folder: Path, processes: int = 2) -> list[subprocess.CompletedProcess]:
    """Start `processes` Pythons that open the store `folder/mlflow.db` at the same instant."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}"}
    signals = folder.parent / f"{folder.name}-signals"
    signals.mkdir()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", OPENER, str(signals / f"ready-{i}"), str(signals / "go")],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(processes)
    ]
    deadline = time.monotonic() + 120
    while len(list(signals.glob("ready-*"))) < processes and time.monotonic() < deadline:
        time.sleep(0.01)
    (signals / "go").touch()
    return [subprocess.CompletedProcess(p.args, p.wait(timeout=180), *p.communicate()) for p in procs]


def test_processes_creating_a_new_store_at_once_all_succeed_and_the_store_works(tmp_path):
    for attempt in range(3):  # without the lock, most attempts broke the store for good
        folder = tmp_path / f"store-{attempt}"
        folder.mkdir()
        results = open_together(folder)
        for result in results:
            assert result.returncode == 0, result.stderr[-2000:]
            assert result.stdout.strip() == "1"  # the default experiment, made once
        assert sorted(p.name for p in folder.iterdir()) == ["mlflow.db", "mlflow.db.lock"]  # no temporary file left
        client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}")
        experiment = client.create_experiment("after")
        run = client.create_run(experiment)
        client.set_terminated(run.info.run_id)
        assert client.get_run(run.info.run_id).info.status == "FINISHED"


def test_a_store_whose_creator_was_stopped_midway_is_made_anew(tmp_path, monkeypatch):
    folder = tmp_path / "store"
    folder.mkdir()
    (folder / "mlflow.db.new-999999").write_bytes(b"SQLite format 3\x00half")  # what a killed creator leaves
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{folder / 'mlflow.db'}")
    tracking.configure()
    assert sorted(p.name for p in folder.iterdir()) == ["mlflow.db", "mlflow.db.lock"]
    with tracking.start_run("check") as run:
        pass
    assert mlflow.get_run(run.info.run_id).info.status == "FINISHED"


def refused_store(tmp_path, monkeypatch, content: bytes | None) -> Path:
    path = tmp_path / "store" / "mlflow.db"
    path.parent.mkdir()
    if content is not None:
        path.write_bytes(content)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{path}")
    monkeypatch.chdir(tmp_path)
    return path


def assert_refused(path: Path, content: bytes, capsys, *expected: str) -> None:
    """`report` and a run both refuse the store, naming it; it is left as it was, no run is started."""
    assert cli("report", "--out", path.parent.parent / "rep") == 2
    message = capsys.readouterr().err
    assert f"tracking store {path}" in message and all(part in message for part in expected), message
    with pytest.raises(UserError, match="tracking store"), tracking.start_run("pretrain"):
        pass
    assert mlflow.active_run() is None
    assert path.read_bytes() == content
    assert [p.name for p in path.parent.iterdir()] == ["mlflow.db"]  # no lock, journal or temporary file
    assert not (path.parent.parent / "rep").exists() and not (path.parent.parent / "mlruns").exists()


def test_a_corrupt_store_is_refused_naming_the_file(tmp_path, monkeypatch, capsys):
    content = os.urandom(4096)
    path = refused_store(tmp_path, monkeypatch, content)
    assert_refused(
        path, content, capsys, "is not an SQLite database; expected an MLflow SQLite store, or move it aside"
    )


def test_an_empty_file_is_not_taken_for_a_store(tmp_path, monkeypatch, capsys):
    path = refused_store(tmp_path, monkeypatch, b"")
    assert_refused(path, b"", capsys, "is an empty file, not an MLflow SQLite store", "delete the empty file")


def test_another_programs_sqlite_database_is_not_turned_into_a_store(tmp_path, monkeypatch, capsys):
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE trials (id INTEGER)")
    content = path.read_bytes()
    path = refused_store(tmp_path, monkeypatch, content)
    assert_refused(path, content, capsys, "without MLflow's tables (it has trials)", "move it aside")


def test_a_store_in_a_missing_folder_is_refused_and_the_folder_not_made(tmp_path, monkeypatch, capsys):
    missing = tmp_path / "missing" / "dir"
    uri = f"sqlite:///{missing / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    assert cli("transfer", "run", "sun397", "--backbone", "models:/small-full@current") == 2
    assert f"tracking store {uri}: folder {missing} does not exist" in capsys.readouterr().err
    with pytest.raises(UserError) as err, tracking.start_run("pretrain"):
        pass
    assert f"folder {missing} does not exist" in str(err.value) and uri in str(err.value)
    assert mlflow.active_run() is None
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no folder, no store, no report


def test_the_projects_own_mlruns_folder_is_still_made(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///mlruns/mlflow.db")  # as the Makefile exports it
    tracking.configure()
    assert (tmp_path / "mlruns" / "mlflow.db").is_file()
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert tracking.configure() == f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    with tracking.start_run("check") as run:
        pass
    assert mlflow.get_run(run.info.run_id).info.status == "FINISHED"


# -- tracking servers -------------------------------------------------------------------------------------------
@pytest.fixture
def http_env(monkeypatch, tmp_path):
    """A clean environment for a server URI: no retry settings, credentials or proxy of the user's."""
    for var in (*tracking.HTTP_RETRY_BUDGET, "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(var, raising=False)
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    return monkeypatch


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_server_that_refuses_connections_exits_2_at_once_naming_it(http_env, tmp_path, capsys):
    uri = f"http://127.0.0.1:{closed_port()}"
    http_env.setenv("MLFLOW_TRACKING_URI", uri)
    start = time.monotonic()
    assert cli("report") == 2
    assert time.monotonic() - start < 15  # MLflow alone retried for ~4 minutes
    message = capsys.readouterr().err
    assert f"tracking server {uri} does not answer (connection refused)" in message
    assert "expected a running `mlflow server`" in message and "Team use" in message
    assert list(tmp_path.iterdir()) == []  # no report folder, no local store


def test_a_server_that_accepts_but_never_answers_exits_2_within_seconds(http_env, tmp_path, capsys):
    with socket.socket() as sock:  # connections complete in the backlog; nothing is ever read or sent
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        uri = f"http://127.0.0.1:{sock.getsockname()[1]}"
        http_env.setenv("MLFLOW_TRACKING_URI", uri)
        start = time.monotonic()
        assert cli("report") == 2
        assert time.monotonic() - start < tracking.HEALTH_TIMEOUT_S + 10
    assert f"tracking server {uri} does not answer (no answer within {tracking.HEALTH_TIMEOUT_S} s)" in (
        capsys.readouterr().err
    )
    assert list(tmp_path.iterdir()) == []


class Health(http.server.BaseHTTPRequestHandler):
    """`GET /health`: the status in `server.status`, 401 without the expected Authorization header if any."""

    def do_GET(self):
        self.server.seen.append(self.headers.get("Authorization"))
        wanted = self.server.authorization
        status = 401 if wanted and self.headers.get("Authorization") != wanted else self.server.status
        self.send_response(status)
        self.end_headers()
        self.wfile.write(b"OK")

    def log_message(self, *args):
        pass


@pytest.fixture
def health_server():
    server = http.server.HTTPServer(("127.0.0.1", 0), Health)
    server.status, server.authorization, server.seen = 200, None, []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_a_server_that_answers_passes_and_gets_a_short_retry_budget(http_env, health_server):
    uri = f"http://127.0.0.1:{health_server.server_address[1]}"
    http_env.setenv("MLFLOW_TRACKING_URI", uri)
    http_env.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "77")  # the user's setting is kept
    assert tracking.configure() == uri
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "3"  # tracking.HTTP_RETRY_BUDGET
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "77"
    tracking.configure()
    assert health_server.seen == [None]  # checked once per process


def test_credentials_are_sent_when_the_health_check_asks_for_them(http_env, health_server):
    health_server.authorization = "Basic dXNlcjpwYXNz"  # user:pass
    uri = f"http://127.0.0.1:{health_server.server_address[1]}/"
    http_env.setenv("MLFLOW_TRACKING_URI", uri)
    http_env.setenv("MLFLOW_TRACKING_USERNAME", "user")
    http_env.setenv("MLFLOW_TRACKING_PASSWORD", "pass")
    tracking.configure()
    assert health_server.seen == [None, "Basic dXNlcjpwYXNz"]


def test_a_gateway_whose_server_is_down_exits_2_naming_it(http_env, health_server, tmp_path, capsys):
    health_server.status = 503
    uri = f"http://127.0.0.1:{health_server.server_address[1]}"
    http_env.setenv("MLFLOW_TRACKING_URI", uri)
    assert cli("report") == 2
    assert f"tracking server {uri} does not answer (HTTP 503 from {uri}/health" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_server_that_goes_away_during_a_command_fails_it_in_seconds(http_env, health_server):
    uri = f"http://127.0.0.1:{health_server.server_address[1]}"
    http_env.setenv("MLFLOW_TRACKING_URI", uri)
    tracking.configure()
    health_server.shutdown()
    health_server.server_close()
    start = time.monotonic()
    with pytest.raises(mlflow.exceptions.MlflowException, match="Max retries exceeded"):
        mlflow.MlflowClient().search_experiments()
    assert time.monotonic() - start < 30  # MLflow's defaults: ~4 minutes


def test_sqlite_stores_wait_for_another_writer_instead_of_failing(tmp_path, monkeypatch):
    """Several workers on one local store: MLflow's own SQLite connections wait (busy timeout) for a writer."""
    from mlflow.store.db.utils import create_sqlalchemy_engine

    from imagenet_transfer import tracking

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    tracking.configure()
    with create_sqlalchemy_engine(uri).connect() as connection:
        assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == 60000
