"""SIGTERM (preemption) during a pre-training: a checkpoint at the next step, the run KILLED, exit 143; the same
command afterwards resumes that run from the checkpoint and finishes it."""

import os
import signal
import subprocess
import sys
import time

import mlflow
import torch


def test_sigterm_checkpoints_ends_the_run_killed_and_the_same_command_resumes(tiny_world, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = dict(os.environ, OMP_NUM_THREADS="1", MLFLOW_TRACKING_URI=uri)
    command = [sys.executable, "-m", "imagenet_transfer.cli", "pretrain", "--source", str(tiny_world / "imagenet")]
    command += ["--recipe", "smoke", "--iterations", "80", "--resolution", "32", "--workers", "0"]
    command += ["--device", "cpu", "--checkpoint-minutes", "60", "--checkpoint-dir", str(tmp_path / "ckpt")]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    mlflow.set_tracking_uri(uri)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:  # until the first epoch's metrics are logged
        time.sleep(0.5)
        try:
            runs = mlflow.search_runs(search_all_experiments=True, filter_string="tags.stage = 'pretrain'")
        except Exception:  # the store is still being created
            continue
        if not runs.empty and "metrics.epoch" in runs and runs["metrics.epoch"].notna().any():
            break
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 143, err[-3000:]
    (run,) = mlflow.search_runs(search_all_experiments=True, filter_string="tags.stage = 'pretrain'").itertuples()
    assert run.status == "KILLED"
    (checkpoint,) = (tmp_path / "ckpt").glob("*/checkpoint.pt")
    saved = torch.load(checkpoint, weights_only=True)
    assert 0 < saved["step"] < 80 and saved["run_id"] == run.run_id

    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    resumed = mlflow.get_run(run.run_id)
    assert resumed.info.status == "FINISHED" and resumed.data.metrics["epoch"] >= 2
    steps = [m.step for m in mlflow.MlflowClient().get_metric_history(run.run_id, "train_loss")]
    assert steps[-1] == 80 and len(steps) == len(set(steps))  # no step trained twice


def test_damaged_checkpoint_files_are_moved_aside_and_never_block_a_rerun(tiny_world, tmp_path, capsys):
    from conftest import cli

    args = ["pretrain", "--source", str(tiny_world / "imagenet"), "--recipe", "smoke", "--iterations", "3"]
    args += ["--resolution", "32", "--workers", "0", "--device", "cpu", "--no-register"]
    args += ["--checkpoint-minutes", "0", "--checkpoint-dir", str(tmp_path / "ckpt")]
    assert cli(*args) == 0
    (folder,) = (tmp_path / "ckpt").iterdir()
    (folder / "done.json").write_text('{"run_id": "trunc')  # a save cut short
    checkpoint = folder / "checkpoint.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:100])
    stale = folder / ".checkpoint.pt.999999999.tmp"  # a save whose process was killed
    stale.write_bytes(b"partial")
    capsys.readouterr()
    assert cli(*args) == 0
    out = capsys.readouterr().out
    assert f"{folder / 'done.json'} is damaged" in out and f"{checkpoint} is damaged" in out
    assert (folder / "done.json.corrupt").exists() and (folder / "checkpoint.pt.corrupt").exists()
    assert not stale.exists() and torch.load(checkpoint, weights_only=True)["step"] == 3  # trained again
