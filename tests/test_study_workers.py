"""N workers on one budget study, as `imagenet-transfer budget-study` processes on the tiny world: two started
together (SQLite and PostgreSQL storages) finish exactly n_trials trials and test once; a worker killed (SIGKILL)
mid-trial is replaced by the same command, which fails and retries its trial; SIGTERM ends a worker's runs KILLED
(exit 143) and the same command completes the study; a waiting worker retries a dead worker's trial and takes over
its final test."""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import mlflow
import optuna
import pytest
from conftest import REPO
from test_study import cli_args, nothing_running, runs, settings

from imagenet_transfer.claims import Claims
from imagenet_transfer.study import run_study
from imagenet_transfer.study_config import StudyConfig
from imagenet_transfer.study_storage import Coordination, claims_url, create_study, default_storage, open_storage


def command(config: StudyConfig) -> list[str]:
    return [
        sys.executable,
        "-m",
        "imagenet_transfer.cli",
        *cli_args(config),
        *("--pruner", config.pruner, "--heartbeat-interval", str(config.heartbeat_interval)),
        *("--grace-period", str(config.grace_period)),
    ]


@pytest.fixture
def start():
    """Start `budget-study` for a config as a worker process writing to a log file (stopped after the test)."""
    started = []

    def start(config: StudyConfig, log) -> subprocess.Popen:
        env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
        out = log.open("w")
        started.append(subprocess.Popen(command(config), env=env, stdout=out, stderr=subprocess.STDOUT, text=True))
        return started[-1]

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


def finish(process: subprocess.Popen, log, timeout: float = 300) -> str:
    process.wait(timeout=timeout)
    return log.read_text()


def wait_for(what: str, found, process: subprocess.Popen, timeout: float = 120):
    """`found()` once it is neither None nor False (polled), while `process` works."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = found()
        if value is not None and value is not False:
            return value
        assert process.poll() is None, f"the worker ended before {what}"
        time.sleep(0.1)
    raise AssertionError(f"not {what} after {timeout} s")


def running(stage: str, study_name: str):
    """The RUNNING run of `stage` of the study (a row of `runs`), or None."""
    found = runs(stage=stage, study_name=study_name)
    found = found[found["status"] == "RUNNING"] if not found.empty else found
    return None if found.empty else found.iloc[0]


def states(config: StudyConfig) -> list[str]:
    storage, _ = open_storage(config)
    return [t.state.name for t in optuna.load_study(study_name=config.study_name, storage=storage).trials]


def check_the_end(config: StudyConfig) -> None:
    """n_trials finished, none running, each trial one run, all under one FINISHED study run, one final test."""
    storage, _ = open_storage(config)
    study = optuna.load_study(study_name=config.study_name, storage=storage)
    finished = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) == config.n_trials and not [t for t in study.trials if t.state.name == "RUNNING"]
    (study_run,) = runs(stage="study", study_name=config.study_name)["run_id"]
    assert mlflow.get_run(study_run).info.status == "FINISHED"
    trials = runs(stage="trial", study_name=config.study_name)
    assert trials["tags.trial_number"].is_unique and set(trials["tags.mlflow.parentRunId"]) == {study_run}
    done = trials[trials["tags.trial_number"].astype(int).isin([t.number for t in finished])]
    assert len(done) == len(finished) and set(done["status"]) == {"FINISHED"}  # one run each
    final = runs(study_role="final_test", study_name=config.study_name)
    tested = final[final["status"] == "FINISHED"]
    assert len(tested) == 1 and set(final["tags.mlflow.parentRunId"]) == {study_run}
    assert mlflow.get_run(study_run).data.metrics["test_sun397_acc"] == pytest.approx(
        tested["metrics.sun397_acc"].iloc[0]
    )
    assert study.user_attrs["final_test"]["trial"] == int(tested["tags.trial_number"].iloc[0])
    assert nothing_running()


@pytest.fixture(params=["sqlite", "postgresql"])
def storage_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'optuna.db'}"
    return request.getfixturevalue("postgres_db")


def test_two_workers_started_together_finish_exactly_n_trials_and_test_once(tiny_world, tmp_path, storage_url, start):
    name = f"duo-{storage_url.split(':')[0].split('+')[0]}"
    config = settings(
        tiny_world, tmp_path, study_name=name, storage=storage_url, n_trials=4, pruner="none", heartbeat_interval=1
    )
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    workers = [start(config, log) for log in logs]  # no --create-only first: they race to create the study
    outputs = [finish(w, log) for w, log in zip(workers, logs)]
    assert [w.returncode for w in workers] == [0, 0], "\n\n".join(o[-3000:] for o in outputs)
    assert states(config).count("FAIL") == 0
    check_the_end(config)


def test_a_worker_killed_mid_trial_is_replaced_by_the_same_command(tiny_world, tmp_path, start):
    config = settings(
        tiny_world, tmp_path, study_name="killed", n_trials=2, pruner="none", heartbeat_interval=1, grace_period=6
    )
    first = start(config, tmp_path / "first.log")
    wait_for("pre-training", lambda: running("pretrain", "killed"), first)  # mid-trial
    first.kill()
    first.wait()
    assert states(config) == ["RUNNING"]  # left behind: no heartbeat any more, the claim about to expire
    second = start(config, tmp_path / "second.log")  # restarted at once
    out = finish(second, tmp_path / "second.log")
    assert second.returncode == 0, out[-3000:]
    assert "trial(s) 0 failed: their worker sent no heartbeat" in out
    study = optuna.load_study(study_name="killed", storage=config.storage)
    assert [t.state.name for t in study.trials] == ["FAIL", "COMPLETE", "COMPLETE"]
    # the retry is trial 1 or, when the restarted worker started a fresh trial before trial 0 was found dead, trial 2
    (retry,) = [t for t in study.trials if "failed_trial" in t.system_attrs]
    assert retry.system_attrs["failed_trial"] == 0 and retry.params == study.trials[0].params
    trials = runs(stage="trial", study_name="killed").set_index("tags.trial_number")
    assert trials.loc["0", "status"] == "FAILED" and trials.loc["0", "tags.worker_died"] == "true"
    assert trials.loc[str(retry.number), "tags.retry_of_trial"] == "0"
    check_the_end(config)


def test_sigterm_ends_the_runs_killed_and_the_same_command_completes_the_study(tiny_world, tmp_path, start):
    config = settings(
        tiny_world, tmp_path, study_name="stopped", n_trials=1, pruner="none", heartbeat_interval=1, iterations=60
    )
    first = start(config, tmp_path / "first.log")
    # mid-trial, in the training loop (its first checkpoint is written): pre-training stops at its next step
    pretrain = wait_for("pre-training", lambda: running("pretrain", "stopped"), first)
    folder = wait_for(
        "the checkpoint folder", lambda: mlflow.get_run(pretrain["run_id"]).data.tags.get("checkpoint_dir"), first
    )
    wait_for("the first checkpoint", lambda: (Path(folder) / "checkpoint.pt").exists(), first)
    first.send_signal(signal.SIGTERM)
    out = finish(first, tmp_path / "first.log")
    assert first.returncode == 143, out[-3000:]
    assert {mlflow.get_run(pretrain["run_id"]).info.status} == {"KILLED"}
    (trial_run,) = runs(stage="trial", study_name="stopped")["run_id"]
    (study_run,) = runs(stage="study", study_name="stopped")["run_id"]
    assert {mlflow.get_run(r).info.status for r in (trial_run, study_run)} == {"KILLED"}
    assert nothing_running()
    assert states(config) == ["FAIL", "WAITING"]  # its params enqueued again

    second = start(config, tmp_path / "second.log")
    out = finish(second, tmp_path / "second.log")
    assert second.returncode == 0, out[-3000:]
    study = optuna.load_study(study_name="stopped", storage=config.storage)
    assert [t.state.name for t in study.trials] == ["FAIL", "COMPLETE"]
    assert study.trials[1].params == study.trials[0].params
    retried = runs(stage="trial", study_name="stopped", trial_number="1")
    assert list(retried["tags.retry_of_trial"]) == ["0"]
    check_the_end(config)


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_a_waiting_worker_retries_a_dead_workers_trial_and_takes_over_its_final_test(
    tiny_world, tmp_path, one_thread, capsys, monkeypatch
):
    config = settings(tiny_world, tmp_path, study_name="orphans", heartbeat_interval=1, grace_period=3)
    study, _ = create_study(config)
    coordination = Coordination(study, config)
    dead = Claims(claims_url(config), owner="dead-worker", ttl=3)

    # another worker runs trial 0 and dies once this one waits for it: this one fails it then, and retries it
    study.enqueue_trial({"num_classes": 12})
    trial = study.ask()
    trial.suggest_int("num_classes", 10, 40, log=True)
    key = coordination.key("trial", trial.number)
    assert dead.claim(key).acquired
    storage, _ = open_storage(config)
    trial_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name("orphans"), 0)
    dies = threading.Event()

    def beat() -> None:  # the other worker's heartbeats, until it dies
        while not dies.wait(0.3):
            dead.renew(key)
            storage.record_heartbeat(trial_id)

    def sleep(seconds: float) -> None:
        if sys._getframe(1).f_code.co_name == "_run_trials":  # this worker waits for the running trial
            dies.set()
        real_sleep(seconds)

    real_sleep, beating = time.sleep, threading.Thread(target=beat, daemon=True)
    beating.start()
    monkeypatch.setattr(time, "sleep", sleep)
    summary = run_study(config)
    monkeypatch.setattr(time, "sleep", real_sleep)
    dies.set()
    out = capsys.readouterr().out
    assert "waiting for trial(s) 0 of other workers" in out and "trial(s) 0 failed" in out
    assert states(config) == ["FAIL", "COMPLETE"] and summary["best_params"]["num_classes"] == 12
    check_the_end(config)

    # a worker died in the final test of a second configuration: its claim expires, the next one takes it over
    better = optuna.create_trial(
        params={"num_classes": 20},
        distributions={"num_classes": optuna.distributions.IntDistribution(10, 40, log=True)},
        value=summary["best_values"][0] + 50,
        user_attrs={"model_uri": "random:small@32"},
    )
    study.add_trial(better)
    assert dead.claim(coordination.key("final_test", 2)).acquired
    (study_run,) = runs(stage="study", study_name="orphans")["run_id"]
    client = mlflow.MlflowClient()
    orphan = client.create_run(
        mlflow.get_run(study_run).info.experiment_id,
        tags={
            "mlflow.parentRunId": study_run,
            "study_name": "orphans",
            "study_role": "final_test",
            "trial_number": "2",
        },
    ).info.run_id
    summary = run_study(config.replace(n_trials=2))
    assert "runs the final test; waiting" in capsys.readouterr().out
    assert summary["best_trial"] == 2 and summary["test"]["sun397_acc"] >= 0
    final = runs(study_role="final_test", study_name="orphans", trial_number="2")
    assert sorted(final["status"]) == ["FAILED", "FINISHED"]
    assert client.get_run(orphan).data.tags["worker_died"] == "true"
    assert mlflow.get_run(study_run).data.metrics["test_sun397_acc"] == pytest.approx(summary["test"]["sun397_acc"])

    # the same command again: nothing to run, nothing tested again, the recorded test metrics returned
    again = run_study(config.replace(n_trials=2))
    assert again["test"] == summary["test"] and len(runs(study_role="final_test", study_name="orphans")) == 3
    assert nothing_running()


def test_the_default_storage_is_the_team_database_when_set(tmp_path, monkeypatch):
    url = "postgresql+psycopg://team@db.lab:5432/optuna"
    monkeypatch.setenv("IMAGENET_TRANSFER_DB", url)
    assert default_storage() == url
    assert claims_url(StudyConfig(budget=240)) == url  # the claims live in the study's own database
    monkeypatch.delenv("IMAGENET_TRANSFER_DB")
    assert default_storage() == os.environ["MLFLOW_TRACKING_URI"].replace("mlflow.db", "optuna.db")
    journal = tmp_path / "study.journal"
    assert claims_url(StudyConfig(budget=240, storage=str(journal))) == f"sqlite:///{journal}.claims.db"
