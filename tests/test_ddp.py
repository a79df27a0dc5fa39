"""DDP under torchrun: a recipe's batch is the global batch, so N processes train what one process trains."""

import os
import subprocess
import sys

import torch
from conftest import cli

ARGS = ["--recipe", "smoke", "--arch", "alexnet", "--resolution", "64", "--dropout", "0", "--iterations", "3"]
ARGS += ["--batch-size", "8", "--device", "cpu", "--workers", "0", "--no-register"]


def final_weights(folder) -> dict[str, torch.Tensor]:
    (checkpoint,) = folder.glob("*/checkpoint.pt")
    state = torch.load(checkpoint, weights_only=True)
    assert state["step"] == 3
    return state["model"]


def test_two_processes_at_a_global_batch_train_what_one_process_trains(tiny_world, tmp_path):
    """alexnet without dropout has no per-process state (no BatchNorm), so the two runs differ only by the order
    in which the gradient sum is taken: same data in each step (the ranks' shares of the same global batch),
    same augmentation (seeded per image), same schedule. Were the batch per process, the 2-rank run would train
    on 16 images a step and end elsewhere."""
    source = ["--source", str(tiny_world / "imagenet")]
    assert cli("pretrain", *source, *ARGS, "--checkpoint-dir", str(tmp_path / "one")) == 0
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    command = [sys.executable, *launcher, "-m", "imagenet_transfer.cli", "pretrain", *source, *ARGS]
    done = subprocess.run(
        [*command, "--checkpoint-dir", str(tmp_path / "two")],
        env=dict(os.environ, OMP_NUM_THREADS="1"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = final_weights(tmp_path / "one"), final_weights(tmp_path / "two")
    assert one.keys() == two.keys()
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-4, atol=1e-5, msg=name)
