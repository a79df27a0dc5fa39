"""The GPU acceptance kit (bench/gpu_acceptance.sh) at toy size on the CPU: every step it runs on a device runs
here first, so that a device call can fail only for reasons of the device."""

import os
import re
import subprocess
import sys
from pathlib import Path

from conftest import REPO


def test_the_kit_runs_every_step_at_toy_size_on_cpu(tmp_path):
    venv = str(Path(sys.executable).parent)
    env = dict(os.environ, PATH=f"{venv}:{os.environ['PATH']}", OMP_NUM_THREADS="1")
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    done = subprocess.run(
        ["bash", str(REPO / "bench" / "gpu_acceptance.sh"), "run", "--toy", "--device", "cpu", "--out", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = (tmp_path / "acceptance.md").read_text()
    rows = dict(re.findall(r"^\| (\w+) \| \d+ \| (\d+) \|$", report, flags=re.M))
    steps = ("input_pipeline", "pretrain", "transfer_pretrained", "transfer_random", "reproduce")
    assert rows == dict.fromkeys(steps, "0"), report + "".join(
        (tmp_path / f"{s}.log").read_text()[-1500:] for s in steps if rows.get(s) != "0"
    )
    assert "| small" in (tmp_path / "input_pipeline.md").read_text()  # the pipeline table was written
