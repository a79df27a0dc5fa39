"""The subset stage end to end: CLI and MLproject entry point, MLflow records, bad input."""

import os
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from conftest import REPO, cli


def runs(stage="subset"):
    return mlflow.search_runs(search_all_experiments=True, filter_string=f"tags.stage = '{stage}'")


def test_build_writes_the_folder_and_records_the_run(tmp_path, capsys):
    before = len(runs())
    assert (
        cli("subset", "build", "--preset", "e1-30", "--seed", "4", "--source", "builtin:demo", "--out", tmp_path / "s")
        == 0
    )
    assert "1000 labels over 1000 classes, 30000 train" in capsys.readouterr().out
    after = runs()
    assert len(after) == before + 1
    run = mlflow.get_run(after.iloc[0]["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["subset.images_per_class"] == "30" and run.data.params["subset.seed"] == "4"
    summary = pd.read_json(tmp_path / "s" / "subset.json", typ="series")
    assert run.data.tags["subset_digest"] == summary["digest"] and run.data.metrics["train_images"] == 30000
    (dataset_input,) = run.inputs.dataset_inputs
    assert dataset_input.dataset.digest == summary["digest"] and dataset_input.dataset.name == "e1-30"
    artifacts = {a.path for a in mlflow.artifacts.list_artifacts(run_id=run.info.run_id, artifact_path="subset")}
    assert "subset/manifest.parquet" in artifacts and "subset/classes.tsv" in artifacts


@pytest.mark.parametrize(
    "args, message",
    [
        (["--preset", "e1-100", "--source", "builtin:demo"], "needs more train images than"),
        (["--preset", "nope"], "unknown preset 'nope'"),
        (["--preset", "full", "--catalog", "c.parquet", "--source", "d"], "contradict"),
        (["--preset", "full", "--source", "/no/such/dir"], "does not exist"),
    ],
)
def test_bad_input_exits_2_without_a_run_or_files(tmp_path, capsys, args, message):
    before = len(runs())
    assert cli("subset", "build", *args, "--out", tmp_path / "s") == 2
    assert message in capsys.readouterr().err
    assert len(runs()) == before and not (tmp_path / "s").exists()


def mlflow_run(tmp_path, *params):
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "MLFLOW_EXPERIMENT_NAME": "imagenet-transfer",
    }
    command = [sys.executable, "-m", "mlflow", "run", str(REPO), "-e", "subset", "--env-manager", "local"]
    command += [arg for p in params for arg in ("-P", p)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)


def test_mlproject_entry_point_runs_and_fails_cleanly(tmp_path):
    started = int(time.time() * 1000)
    done = mlflow_run(tmp_path, "preset=e3-127", "source=builtin:demo", f"out={tmp_path / 'e3'}")
    assert done.returncode == 0, done.stderr
    assert pd.read_parquet(tmp_path / "e3" / "manifest.parquet")["label"].nunique() == 127
    failed = mlflow_run(tmp_path, "preset=e1-5000", "source=builtin:demo")
    assert failed.returncode != 0 and "needs more train images" in failed.stderr
    recent = mlflow.search_runs(search_all_experiments=True, filter_string=f"attributes.start_time >= {started}")
    assert sorted(recent["status"]) == ["FAILED", "FINISHED"]
