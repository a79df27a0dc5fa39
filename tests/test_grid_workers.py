"""Grid workers: several `reproduce` of one grid share one grid run and run each step once (two commands started
together, `--parallel`), a SIGKILLed worker's step is taken over, and SIGTERM ends the runs KILLED and resumes."""

import os
import signal
import subprocess
import sys
import time

import mlflow
from conftest import cli
from test_reproduce import grid_store, grid_tracking_uri, running, write_grid  # noqa: F401 (fixtures)


def command(grid, world, *extra):
    return [sys.executable, "-m", "imagenet_transfer.cli", "reproduce", "--grid", str(grid), "--smoke"] + [
        "--world",
        str(world),
        "--device",
        "cpu",
        *extra,
    ]


def grid_runs(name):
    return mlflow.search_runs(
        search_all_experiments=True,
        filter_string=f"tags.stage = 'reproduce' and tags.grid = '{name}'",
        output_format="list",
    )


def step_runs(key):
    return mlflow.search_runs(
        search_all_experiments=True, filter_string=f"tags.step_key = '{key}'", output_format="list"
    )


def assert_each_step_ran_once(table):
    for record in table:
        found = step_runs(record["step_key"])
        assert [r.info.status for r in found] == ["FINISHED"], record


def test_two_commands_started_together_share_one_grid_run(tiny_world, tmp_path, grid_tracking_uri):
    grid = write_grid(
        tmp_path,
        {"ED": (["voc12_action"], ["e1-12", "e1-6", "e2-79"])},
        name="together",
        smoke={"archs": ["small"], "recipe": "smoke", "pretrain": {"iterations": 20}},
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_TRACKING_URI": grid_tracking_uri}
    workers = [
        subprocess.Popen(command(grid, tiny_world), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [w.communicate(timeout=400) for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    (run,) = grid_runs("together")  # the second joined the first one's grid run
    assert run.info.status == "FINISHED"
    table = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/steps.json")
    assert len(table) == 9 and not any(r["reused"] for r in table)
    assert len({r["worker"] for r in table}) == 2  # both did work
    assert sum("joining grid run" in err for _, err in outputs) == 1
    assert_each_step_ran_once(table)
    for record in table:
        assert mlflow.get_run(record["run_id"]).data.tags["mlflow.parentRunId"] == run.info.run_id
    assert run.data.metrics["workers"] == 2 and run.data.metrics["steps_run"] == 9
    assert not running()


def test_parallel_workers_split_a_grid(tiny_world, tmp_path, grid_tracking_uri, monkeypatch):
    grid = write_grid(
        tmp_path,
        {"EP": (["voc12_action"], ["e1-12", "e1-6", "e2-79"])},
        name="parallel",
        smoke={"archs": ["small"], "recipe": "smoke", "pretrain": {"iterations": 19}},  # not the steps above
    )
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert cli(*command(grid, tiny_world, "--parallel", "2")[3:]) == 0
    (run,) = grid_runs("parallel")
    table = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/steps.json")
    assert run.info.status == "FINISHED" and len(table) == 9
    ran = [r for r in table if not r["reused"]]
    assert {r["stage"] for r in table if r["reused"]} <= {"subset"}  # the test above may have made them
    workers = {r["worker"] for r in ran}
    assert len(workers) == 2 and any("worker 2/2" in w for w in workers)
    assert_each_step_ran_once(table)
    assert not running()


def wait_for(predicate, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            found = predicate()
        except Exception:  # the store is being created
            found = None
        if found:
            return found
        time.sleep(0.3)
    raise AssertionError("timed out")


def pretraining():
    return mlflow.search_runs(
        search_all_experiments=True,
        filter_string="tags.stage = 'pretrain' and attributes.status = 'RUNNING' and metrics.epoch >= 0",
        output_format="list",
    )


def test_a_killed_workers_step_is_taken_over_and_sigterm_resumes(tiny_world, tmp_path, grid_tracking_uri):
    grid = write_grid(
        tmp_path,
        {"EK": (["voc12_action"], ["e1-12"])},
        name="killed",
        smoke={"archs": ["small"], "recipe": "smoke", "pretrain": {"iterations": 60, "checkpoint_minutes": 60}},
    )
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MLFLOW_TRACKING_URI": grid_tracking_uri,
        "IMAGENET_TRANSFER_CLAIM_TTL": "4",
    }
    pipe = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    # SIGTERM mid-pre-training: the runs end KILLED, exit 143
    first = subprocess.Popen(command(grid, tiny_world), env=env, **pipe)
    wait_for(pretraining)
    first.send_signal(signal.SIGTERM)
    _, err = first.communicate(timeout=120)
    assert first.returncode == 143, err[-3000:]
    (grid_run,) = grid_runs("killed")
    assert grid_run.info.status == "KILLED" and not running()
    (stopped,) = pretraining_runs()
    assert stopped.info.status == "KILLED"

    # SIGKILL mid-pre-training: nothing can end the runs; the next worker takes the grid and the step over
    second = subprocess.Popen(command(grid, tiny_world), env=env, **pipe)
    wait_for(pretraining)
    second.kill()
    second.stderr = second.communicate(timeout=60)[1]
    third = subprocess.run(command(grid, tiny_world), env=env, timeout=400, **pipe)
    assert third.returncode == 0, third.stderr[-3000:]
    runs = sorted(grid_runs("killed"), key=lambda r: r.info.start_time)
    # the killed leader's run was adopted
    assert [r.info.status for r in runs] == ["KILLED", "FINISHED"], second.stderr[-2000:] + third.stderr[-3000:]
    table = mlflow.artifacts.load_dict(f"runs:/{runs[-1].info.run_id}/steps.json")
    (pretrain,) = [r for r in table if r["stage"] == "pretrain"]
    assert pretrain["run_id"] == stopped.info.run_id  # resumed from its checkpoint, not trained again
    finished = [r for r in pretraining_runs() if r.info.status == "FINISHED"]
    assert [r.info.run_id for r in finished] == [stopped.info.run_id]
    assert_each_step_ran_once(table)
    assert not running()


def pretraining_runs():
    return mlflow.search_runs(
        search_all_experiments=True,
        filter_string="tags.stage = 'pretrain' and tags.grid = 'killed'",
        output_format="list",
    )
