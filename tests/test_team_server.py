"""Team mode: an MLflow server on PostgreSQL with proxied artifacts. The platform's commands run against it (the
backbone's files go to the server, not to the client's disk), its database is an Optuna storage, and the `server`
command starts, answers, refuses unauthenticated requests with --auth and stops cleanly on SIGTERM."""

import base64
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import mlflow
import psutil
import pytest
from conftest import cli

from imagenet_transfer.errors import UserError
from imagenet_transfer.team_server import check_postgres, free_port


def test_a_pretraining_and_a_benchmark_run_against_the_team_server(team_server, tiny_world, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", team_server.tracking_uri)
    client_dir = tmp_path / "client"
    client_dir.mkdir()
    monkeypatch.chdir(client_dir)
    name = f"small-team-{uuid.uuid4().hex[:6]}"
    assert (
        cli(
            "pretrain",
            "--source",
            tiny_world / "imagenet",
            "--recipe",
            "smoke",
            "--iterations",
            "3",
            "--batch-size",
            "8",
            "--resolution",
            "32",
            "--workers",
            "0",
            "--device",
            "cpu",
            "--checkpoint-dir",
            tmp_path / "ckpt",
            "--model-name",
            name,
        )
        == 0
    )
    mlflow.set_tracking_uri(team_server.tracking_uri)
    client = mlflow.MlflowClient()
    version = client.get_model_version_by_alias(name, "current")
    run = client.get_run(version.run_id)
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/"), run.info.artifact_uri
    on_server = list(Path(team_server.artifacts).rglob("state_dict.pt"))
    assert on_server, f"no backbone under the server's artifacts folder {team_server.artifacts}"
    assert not list(client_dir.rglob("*")), "the client wrote files to its working folder"
    assert not list(tmp_path.rglob("state_dict.pt")), "the backbone's weights landed on the client's disk"

    from imagenet_transfer.tracking import load_backbone_with_info

    _net, info = load_backbone_with_info(f"models:/{name}@current")  # downloaded through the server's proxy
    assert info["model_version"] == str(version.version)

    args = ["transfer", "run", "probe", "--backbone", f"models:/{name}@current", "--quick", "--device", "cpu"]
    assert cli(*args, "--set", f"data={tiny_world / 'imagenet'}") == 0
    runs = mlflow.search_runs(search_all_experiments=True)
    assert set(runs["tags.stage"]) >= {"pretrain", "transfer"}
    assert set(runs["status"]) == {"FINISHED"}, runs[["tags.stage", "status"]]
    transfer = runs[runs["tags.stage"] == "transfer"].iloc[0]
    assert transfer["artifact_uri"].startswith("mlflow-artifacts:/")


def test_the_server_database_holds_optuna_studies_and_text_stays_text(team_server, postgres_db):
    import optuna
    import sqlalchemy

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for url in (team_server.db_url, postgres_db):
        engine = sqlalchemy.create_engine(url)
        with engine.connect() as conn:  # a SQL_ASCII database would hand back bytes here
            assert conn.execute(sqlalchemy.text("SHOW server_encoding")).scalar() == "UTF8"
            assert conn.execute(sqlalchemy.text("SELECT 'Zürich ✓'")).scalar() == "Zürich ✓"
        engine.dispose()
        name = f"study-{uuid.uuid4().hex[:6]}"
        study = optuna.create_study(storage=url, study_name=name)
        study.set_user_attr("note", "coarse → fine")
        study.optimize(lambda t: t.suggest_float("x", 0, 1) + len(t.suggest_categorical("l", ["fine", "top-down"])), 2)
        again = optuna.load_study(study_name=name, storage=url)
        assert len(again.trials) == 2 and again.user_attrs["note"] == "coarse → fine"
        assert {t.params["l"] for t in again.trials} <= {"fine", "top-down"}


def _lines(stream, into: queue.Queue) -> None:
    for line in stream:
        into.put(line)
    into.put(None)


def _read_until(lines: queue.Queue, prefix: str, seen: list[str], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            break
        if line is None:
            break
        seen.append(line)
        if line.startswith(prefix):
            return line.strip()
    raise AssertionError(f"no line starting with {prefix!r} in the server's output:\n{''.join(seen)}")


def _get(url: str, auth: tuple[str, str] | None = None) -> int:
    request = urllib.request.Request(url)
    if auth:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status
    except urllib.error.HTTPError as err:
        return err.code


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_the_server_command_serves_with_auth_and_stops_cleanly_on_sigterm():
    try:
        check_postgres()
    except UserError as err:
        pytest.skip(f"no PostgreSQL server here: {err}")
    # not under pytest's basetemp (private to its user; as root the cluster runs as `postgres`)
    folder = Path(tempfile.mkdtemp(prefix="imagenet-transfer-team-"))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_AUTH_", "MLFLOW_TRACKING_"))}
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    command = [sys.executable, "-m", "imagenet_transfer.cli", "server", "--folder", str(folder), "--port", str(port)]
    command += ["--postgres-port", str(free_port()), "--workers", "1", "--auth"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_lines, args=(process.stdout, lines), daemon=True).start()
    seen: list[str] = []
    try:
        tracking = _read_until(lines, "export MLFLOW_TRACKING_URI=", seen, timeout=240)
        assert tracking == f"export MLFLOW_TRACKING_URI=http://127.0.0.1:{port}"
        db = _read_until(lines, "export IMAGENET_TRANSFER_DB=", seen, timeout=5).split("=", 1)[1]
        assert db.startswith("postgresql+psycopg://postgres@127.0.0.1:") and db.endswith("/optuna")
        user = _read_until(lines, "export MLFLOW_TRACKING_USERNAME=", seen, timeout=5).split("=", 1)[1]
        password = _read_until(lines, "export MLFLOW_TRACKING_PASSWORD=", seen, timeout=5).split("=", 1)[1]
        url = f"http://127.0.0.1:{port}"
        assert _get(f"{url}/health") == 200
        search = f"{url}/api/2.0/mlflow/experiments/search?max_results=1"
        assert _get(search) == 401
        assert _get(search, (user, "wrong-password-123")) == 401
        assert _get(search, (user, password)) == 200

        import psycopg

        with psycopg.connect(db.replace("+psycopg", ""), connect_timeout=10) as conn:
            assert conn.execute("SHOW server_encoding").fetchone()[0] == "UTF8"
        postmaster = int((folder / "postgres" / "data" / "postmaster.pid").read_text().split()[0])
        children = [p.pid for p in psutil.Process(process.pid).children(recursive=True)]
        assert children, "mlflow server runs as a child of the command"

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=90) == 0, "".join(seen)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not all(_gone(pid) for pid in [postmaster, *children]):
            time.sleep(0.2)
        left = [pid for pid in [postmaster, *children] if not _gone(pid)]
        assert not left, f"processes left running: {left}"
        assert not (folder / "postgres" / "data" / "postmaster.pid").exists()
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", port)) != 0, "something still listens on the server's port"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        from imagenet_transfer.team_server import stop_postgres

        stop_postgres(folder / "postgres")
        shutil.rmtree(folder, ignore_errors=True)


def test_a_port_in_use_exits_2_naming_it(tmp_path, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert cli("server", "--folder", tmp_path / "team", "--port", port) == 2
    err = capsys.readouterr().err
    assert f"--port {port} on 127.0.0.1 is not available" in err and "expected a free port" in err
    assert not (tmp_path / "team").exists()


def test_an_unreachable_database_url_exits_2_naming_it(tmp_path, capsys):
    closed = free_port()  # nothing listens there
    url = f"postgresql://postgres:secret@127.0.0.1:{closed}"
    assert cli("server", "--folder", tmp_path / "team", "--port", free_port(), "--database-url", url) == 2
    err = capsys.readouterr().err
    assert f"cannot connect to PostgreSQL at postgresql://postgres:***@127.0.0.1:{closed}" in err
    assert "expected a running PostgreSQL server" in err and "secret" not in err
    assert not (tmp_path / "team").exists()
    assert cli("server", "--folder", tmp_path / "team", "--port", free_port(), "--database-url", "mysql://x@h/db") == 2
    assert "expected postgresql://USER[:PASSWORD]@HOST:PORT[/NAME]" in capsys.readouterr().err
