"""The chain against a team server (PostgreSQL + `mlflow server` with proxied artifacts): two `reproduce` workers with
separate caches, as on two machines, share one smoke grid over every benchmark; afterwards the store holds exactly
one FINISHED run per step, one registered version per backbone and no RUNNING run."""

import os
import subprocess
import sys
from collections import Counter

import mlflow
from test_reproduce import write_grid


def test_two_machines_share_a_grid_through_the_team_server(team_server, tiny_world, tmp_path, monkeypatch):
    grid = write_grid(
        tmp_path,
        {"ET": (["voc12_action", "sun397", "voc07_det", "probe"], ["e1-12", "e1-6"])},
        name="team",
        smoke={"archs": ["small"], "recipe": "smoke", "pretrain": {"iterations": 4}},
    )
    command = [sys.executable, "-m", "imagenet_transfer.cli", "reproduce", "--grid", str(grid), "--smoke"]
    command += ["--world", str(tiny_world), "--device", "cpu"]
    workers = []
    for machine in ("a", "b"):
        env = {
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "MLFLOW_TRACKING_URI": team_server.tracking_uri,
            "IMAGENET_TRANSFER_DB": team_server.db_url,
            "IMAGENET_TRANSFER_CACHE": str(tmp_path / f"cache-{machine}"),
        }
        workers.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [w.communicate(timeout=600) for w in workers]
    assert [w.returncode for w in workers] == [0, 0], [err[-3000:] for _, err in outputs]

    monkeypatch.setenv("MLFLOW_TRACKING_URI", team_server.tracking_uri)
    mlflow.set_tracking_uri(team_server.tracking_uri)
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    (grid_run,) = [r for r in runs if r.data.tags.get("stage") == "reproduce"]
    assert grid_run.info.status == "FINISHED"
    table = mlflow.artifacts.load_dict(f"runs:/{grid_run.info.run_id}/steps.json")
    assert len(table) == 2 + 2 + 8 and not any(r["reused"] for r in table)
    steps = Counter(r.data.tags["step_key"] for r in runs if "step_key" in r.data.tags)
    assert steps == Counter(r["step_key"] for r in table)  # exactly one run per step, none twice
    assert all(r.info.status == "FINISHED" for r in runs)  # no RUNNING run
    assert len({r["worker"] for r in table}) == 2  # both machines did work
    benchmarks = {r.data.tags.get("benchmark") for r in runs if r.data.tags.get("stage") == "transfer"}
    assert {"voc12_action", "sun397", "voc07_det", "probe"} <= benchmarks
    client = mlflow.MlflowClient()
    models = client.search_registered_models()
    versions = {m.name: len(client.search_model_versions(f"name = '{m.name}'")) for m in models}
    assert versions == {"team-small-e1-12-s0": 1, "team-small-e1-6-s0": 1}
    artifact_uri = client.get_run(table[1]["run_id"]).info.artifact_uri
    assert artifact_uri.startswith("mlflow-artifacts:")  # proxied: stored by the server, not on the workers' disks


def test_two_study_workers_share_a_study_through_the_team_server(team_server, tiny_world, tmp_path, monkeypatch):
    from test_study import settings
    from test_study_workers import check_the_end, command

    config = settings(tiny_world, tmp_path, study_name="team", n_trials=4, pruner="none", storage=team_server.db_url)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", team_server.tracking_uri)
    mlflow.set_tracking_uri(team_server.tracking_uri)
    workers = []
    for machine in ("a", "b"):
        env = {
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "IMAGENET_TRANSFER_DB": team_server.db_url,
            "IMAGENET_TRANSFER_CACHE": str(tmp_path / f"cache-{machine}"),
        }
        workers.append(subprocess.Popen(command(config), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    outputs = [w.communicate(timeout=600)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], [o[-3000:] for o in outputs]
    check_the_end(config)  # 4 trials, one run each under one study run, one final test, nothing RUNNING
