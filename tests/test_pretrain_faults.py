"""Pre-training's faults, each reproduced: two identical pretrain processes at once (the checkpoint folder's lock),
kill -9 before and after the first checkpoint (no run left RUNNING; the rerun resumes), a resume with other
operational options, a full disk while saving a checkpoint, corrupt JPEGs among the train and val images.

The subprocesses run the CLI through GATED, which holds image decoding at a gate file: a training stops exactly
where a test wants it (blocked, not busy), and goes on when the test opens the gate."""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import torch
from conftest import cli

from imagenet_transfer.pretrain import LOCK_FILE, load_checkpoint

GATED = """# run `imagenet-transfer ARGV[1:]` with the code version CODE_VERSION; with GATE_AFTER, image decoding passes
# that many images, then each one waits until the file GATE exists (or SIGTERM arrived), having created
# GATE.waiting: the training stops there
import os, sys, time
from pathlib import Path

from imagenet_transfer import data, preemption, provenance
from imagenet_transfer.cli import main

provenance.code_version = lambda: os.environ["CODE_VERSION"]
gate, count, decode = Path(os.environ["GATE"]), [0], data.decode


def gated(path):
    count[0] += 1
    if count[0] > int(os.environ["GATE_AFTER"]) and not gate.exists():
        Path(f"{gate}.waiting").touch()
        while not gate.exists() and not preemption.requested():
            time.sleep(0.02)
    return decode(path)


if os.environ["GATE_AFTER"]:
    data.decode = gated
main(sys.argv[1:])
"""
CODE_VERSION = "test-pretrain-faults"  # checkpoint keys hold the code version: pinned, so that edits of the source
# tree while a test runs (another checkout's work) never split one training over two checkpoint folders

ITERATIONS, BATCH = 40, 8  # the first checkpoint comes after 1/20 of the steps: step 2


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A tracking store of this test's own, shared by its subprocesses and its in-process commands (which run with
    the subprocesses' pinned code version)."""
    from imagenet_transfer import provenance

    monkeypatch.setattr(provenance, "code_version", lambda: CODE_VERSION)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    return uri


def pretrain_args(tiny_world, tmp_path, *extra) -> list[str]:
    args = ["pretrain", "--source", tiny_world / "imagenet", "--recipe", "smoke", "--iterations", ITERATIONS]
    args += ["--batch-size", BATCH, "--resolution", 32, "--device", "cpu", "--checkpoint-dir", tmp_path / "ckpt"]
    return [str(a) for a in [*args, *extra]]


class Command:
    """`imagenet-transfer ARGS` in a subprocess through GATED (its gate after `gate_after` images; none if None),
    its output in `tmp_path/<name>.log`."""

    def __init__(self, tmp_path: Path, name: str, args: list[str], *, gate_after: int | None = None) -> None:
        self.gate, self.log = tmp_path / f"{name}.gate", tmp_path / f"{name}.log"
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", GATE=str(self.gate))
        env.update(GATE_AFTER="" if gate_after is None else str(gate_after), CODE_VERSION=CODE_VERSION)
        script = tmp_path / "gated.py"
        script.write_text(GATED)
        with open(self.log, "w") as log:
            self.process = subprocess.Popen([sys.executable, script, *args], env=env, stdout=log, stderr=log)

    def output(self) -> str:
        return self.log.read_text()

    def at_gate(self) -> bool:
        return Path(f"{self.gate}.waiting").exists()

    def wait_until(self, condition, what: str, timeout: float = 120.0) -> None:
        """Poll `condition()` until it is true; fail when the process exits first or time runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return
            if self.process.poll() is not None:
                raise AssertionError(f"exit {self.process.returncode} before {what}:\n{self.output()[-3000:]}")
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}:\n{self.output()[-3000:]}")

    def finish(self, timeout: float = 180.0) -> int:
        """Open the gate and wait for the exit code."""
        self.gate.touch()
        try:
            return self.process.wait(timeout=timeout)
        finally:
            self.stop()

    def stop(self) -> None:
        """kill -9, if it still runs."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def pretrain_runs(**filters):
    runs = mlflow.search_runs(
        search_all_experiments=True, filter_string="tags.stage = 'pretrain'", output_format="list"
    )
    return [r for r in runs if all(getattr(r.info, k) == v for k, v in filters.items())]


def running_runs():
    return mlflow.search_runs(
        search_all_experiments=True, filter_string="attributes.status = 'RUNNING'", output_format="list"
    )


def test_a_second_identical_pretrain_waits_for_the_first_and_returns_its_model(tiny_world, tmp_path, store):
    args = pretrain_args(tiny_world, tmp_path, "--workers", "0", "--model-name", "small-lock")
    first = Command(tmp_path, "first", args, gate_after=0)  # holds the lock, stopped at its first batch
    second = None
    try:
        first.wait_until(first.at_gate, "the first one trains")
        (lock,) = (tmp_path / "ckpt").glob(f"*/{LOCK_FILE}")
        assert json.loads(lock.read_text())["pid"] == first.process.pid
        second = Command(tmp_path, "second", args)
        waiting = f"the same pre-training is running in another process (pid {first.process.pid} on host"
        second.wait_until(lambda: waiting in second.output(), "the second one waits")
        assert not (lock.parent / "checkpoint.pt").exists()  # the first one has not saved yet
        assert first.finish() == 0, first.output()[-3000:]
        assert second.finish() == 0, second.output()[-3000:]
    finally:
        for command in (first, second):
            if command is not None:
                command.stop()
    (run,) = pretrain_runs()
    assert run.info.status == "FINISHED" and "resumed" not in run.data.tags
    assert len(mlflow.MlflowClient().search_model_versions("name = 'small-lock'")) == 1
    out = second.output()
    assert f"already trained: models:/small-lock/1 (run {run.info.run_id})" in out
    assert "guessing scores" not in out  # it never prepared a training of its own


def test_kill_9_before_and_after_the_first_checkpoint_leaves_no_run_running(
    tiny_world, tmp_path, store, one_thread, capsys
):
    args = pretrain_args(tiny_world, tmp_path, "--workers", "0", "--no-register")  # checkpoint_minutes: 5

    # killed at its first batch, before any checkpoint: an orphan RUNNING run that nothing can resume
    first = Command(tmp_path, "orphan", args, gate_after=0)
    first.wait_until(first.at_gate, "its training")
    first.stop()
    (orphan,) = pretrain_runs(status="RUNNING")
    folder = Path(orphan.data.tags["checkpoint_dir"])
    assert not (folder / "checkpoint.pt").exists()

    # the rerun ends the orphan KILLED, starts a new run, and checkpoints early: killed after 4 of 40 steps
    second = Command(tmp_path, "killed", args, gate_after=4 * BATCH)
    try:
        second.wait_until(second.at_gate, "4 steps")
        assert (folder / "checkpoint.pt").exists(), f"no checkpoint after 4 of {ITERATIONS} steps:\n{second.output()}"
    finally:
        second.stop()
    ended = mlflow.get_run(orphan.info.run_id)
    assert ended.info.status == "KILLED" and "its process died" in ended.data.tags["killed_reason"]
    assert f"run {orphan.info.run_id} was RUNNING without a process or a checkpoint: ended KILLED" in second.output()
    (killed,) = pretrain_runs(status="RUNNING")
    saved = load_checkpoint(folder)
    assert saved["run_id"] == killed.info.run_id and saved["step"] == 2

    # the same command resumes that run from its checkpoint and finishes it
    capsys.readouterr()
    assert cli(*args) == 0
    assert f"run {killed.info.run_id} is RUNNING but its process is gone: resuming it" in capsys.readouterr().out
    resumed = mlflow.get_run(killed.info.run_id)
    assert resumed.info.status == "FINISHED" and resumed.data.tags["resumed"] == "true"
    assert resumed.data.tags["resumed_from_status"] == "RUNNING"
    assert not running_runs() and len(pretrain_runs()) == 2
    steps = [m.step for m in mlflow.MlflowClient().get_metric_history(killed.info.run_id, "train_loss")]
    assert steps == [ITERATIONS]


def test_a_resume_with_other_operational_options_finishes_the_same_run(tiny_world, tmp_path, store, one_thread):
    """checkpoint_minutes, workers and max_skipped_fraction do not change what is trained: a rerun with other values
    resumes the run, keeps its params as they were and tags the new values."""
    args = pretrain_args(tiny_world, tmp_path, "--no-register")
    first = Command(tmp_path, "first", args, gate_after=4 * BATCH)  # default workers: the gate may be in a worker
    try:
        first.wait_until(first.at_gate, "4 steps")
        first.process.send_signal(signal.SIGTERM)  # recorded: a checkpoint after the step under way, then exit 143
        time.sleep(0.5)
        assert first.finish(timeout=120) == 143, first.output()[-3000:]
    finally:
        first.stop()
    (run,) = pretrain_runs()
    assert run.info.status == "KILLED"

    other = ["--checkpoint-minutes", "1", "--workers", "0", "--max-skipped-fraction", "0.01"]
    assert cli(*args, *other) == 0
    resumed = mlflow.get_run(run.info.run_id)
    assert resumed.info.status == "FINISHED" and resumed.data.tags["resumed"] == "true"
    assert resumed.data.params["checkpoint_minutes"] == "5.0" and resumed.data.params["workers"] == ""
    tags = resumed.data.tags
    changed = tags["resumed.checkpoint_minutes"], tags["resumed.workers"], tags["resumed.max_skipped_fraction"]
    assert changed == ("1.0", "0", "0.01") and "resumed.device" not in tags
    assert len(pretrain_runs()) == 1
    steps = [m.step for m in mlflow.MlflowClient().get_metric_history(run.info.run_id, "train_loss")]
    assert steps == [ITERATIONS]


def test_a_full_disk_while_checkpointing_fails_the_run_and_keeps_the_previous_checkpoint(
    tiny_world, tmp_path, store, one_thread, monkeypatch, capsys
):
    real_save, saves = torch.save, []

    def save(obj, file, *args, **kwargs):  # the second save runs out of space halfway
        saves.append(file)
        if len(saves) == 2:
            if isinstance(file, (str, os.PathLike)):
                Path(file).write_bytes(b"half a checkpoint")
            else:
                file.write(b"half a checkpoint")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, file, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    args = pretrain_args(tiny_world, tmp_path, "--workers", "0", "--no-register", "--checkpoint-minutes", "0")
    assert cli(*args) == 2
    (folder,) = (tmp_path / "ckpt").iterdir()
    err = capsys.readouterr().err
    assert f"checkpoint folder {folder}" in err and "No space left on device" in err and "MiB free" in err
    assert load_checkpoint(folder)["step"] == 1  # the previous checkpoint, whole
    assert not [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]
    (run,) = pretrain_runs()
    assert run.info.status == "FAILED"


def test_corrupt_train_and_val_jpegs_are_counted_named_and_stop_a_strict_run(
    tiny_world, tmp_path, store, one_thread, capsys
):
    source = tmp_path / "imagenet"
    shutil.copytree(tiny_world / "imagenet", source)
    val_victim = sorted((source / "val").rglob("*.JPEG"))[0]
    val_victim.write_bytes(val_victim.read_bytes()[:200])  # truncated
    args = ["pretrain", "--source", source, "--recipe", "smoke", "--epochs", "1", "--batch-size", "64"]
    args += ["--resolution", "32", "--workers", "0", "--device", "cpu", "--no-register"]

    assert cli(*args, "--max-skipped-fraction", "0", "--checkpoint-dir", tmp_path / "strict") == 2
    err = capsys.readouterr().err
    assert "images could not be read (1 distinct files of the val split)" in err and str(val_victim) in err
    (strict,) = pretrain_runs()
    assert strict.info.status == "FAILED"

    train_victim = sorted((source / "train").rglob("*.JPEG"))[0]
    data = train_victim.read_bytes()
    train_victim.write_bytes(data[:2] + bytes(200) + data[202:])  # its header garbled
    assert cli(*args, "--max-skipped-fraction", "0.01", "--checkpoint-dir", tmp_path / "lenient") == 0
    out = capsys.readouterr().out
    assert f"warning: 1 train image(s) could not be read and were skipped: {train_victim} (" in out
    assert f"warning: 1 val image(s) could not be read and were skipped: {val_victim} (" in out
    (run,) = pretrain_runs(status="FINISHED")
    metrics = run.data.metrics
    assert (metrics["skipped_images"], metrics["val_skipped_images"], metrics["val_images"]) == (1, 1, 239)
    listing = mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/skipped_images.tsv")
    assert str(train_victim) in listing and str(val_victim) in listing
