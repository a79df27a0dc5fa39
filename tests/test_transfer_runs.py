"""The transfer stage as MLflow runs: config settings, tags that link a number to its pre-training data,
bad input, and the MLproject entry point."""

import os
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import torch
from conftest import REPO, cli

from imagenet_transfer.errors import UserError
from imagenet_transfer.transfer.runner import make_config, run_benchmark


def test_settings_are_parsed_by_the_config_field_types():
    config = make_config("sun397", ["partitions=1,2", "protocol=linear", "layers=fc6, fc7", "l2_grid=1e-3"], quick=True)
    assert config.partitions == (1, 2) and config.protocol == "linear"
    assert config.layers == ("fc6", "fc7") and config.l2_grid == (1e-3,)
    voc12 = make_config("voc12_action", ["context=true", "epochs=3", "lr=0.1"])
    assert voc12.context is True and voc12.epochs == 3 and voc12.lr == 0.1
    assert make_config("voc07_det", ["anchor_sizes=", "flip=no"]).anchor_sizes == ()
    with pytest.raises(UserError, match="KEY one of: data"):
        make_config("probe", ["bogus=1"])
    with pytest.raises(UserError, match="--set epochs=many: 'many' is not a valid int"):
        make_config("voc12_action", ["epochs=many"])
    with pytest.raises(UserError, match="--set partitions=1,one: 'one' is not a valid int"):
        make_config("sun397", ["partitions=1,one"])
    with pytest.raises(UserError, match="--set context=maybe: 'maybe' is not a valid bool"):
        make_config("voc12_action", ["context=maybe"])
    with pytest.raises(UserError, match="--set partitions=1,1: expected distinct partition numbers"):
        make_config("sun397", ["partitions=1,1"])
    with pytest.raises(UserError, match="unknown benchmark 'imagenet'"):
        make_config("imagenet")


@pytest.mark.parametrize(
    "setting, expected",
    [
        ("epochz=3", "--set 'epochz=3': expected KEY=VALUE with KEY one of: data, context, margin"),
        ("loss=hinge", "--set loss=hinge: expected 'softmax' or 'bce'"),
        ("evaluate_on=train", "--set evaluate_on=train: expected 'test' or 'val'"),
        ("holdout=0.7", "--set holdout=0.7: expected less than 0.5"),
        ("epochs=0", "--set epochs=0: expected greater than or equal to 1"),
    ],
)
def test_a_bad_setting_exits_2_naming_the_field_and_the_allowed_values(setting, expected, capsys):
    before = len(mlflow.search_runs(search_all_experiments=True))
    assert (
        cli(
            "transfer",
            "run",
            "voc12_action",
            "--backbone",
            "random:small@32",
            "--quick",
            "--set",
            setting,
            "--device",
            "cpu",
        )
        == 2
    )
    assert expected in capsys.readouterr().err.replace("\n", "")
    assert len(mlflow.search_runs(search_all_experiments=True)) == before


def test_a_comma_separated_setting_is_a_tuple(monkeypatch):
    import imagenet_transfer.transfer.runner as runner

    seen = {}
    monkeypatch.setattr(
        runner, "run_benchmark", lambda name, backbone, config, device: seen.update(config=config) or {}
    )
    assert (
        cli(
            "transfer",
            "run",
            "sun397",
            "--backbone",
            "random:small@32",
            "--quick",
            "--set",
            "partitions=1,2",
            "--set",
            "protocol=finetune",
            "--device",
            "cpu",
        )
        == 0
    )
    assert seen["config"].partitions == (1, 2) and seen["config"].protocol == "finetune"


def test_a_transfer_run_is_tagged_with_its_backbone_and_logs_results(tiny_world):
    config = make_config("voc12_action", [f"data={tiny_world}"], quick=True)
    metrics = run_benchmark("voc12_action", "random:small@32", config, device="cpu")
    (run_id,) = mlflow.search_runs(search_all_experiments=True, filter_string="tags.benchmark = 'voc12_action'")[
        "run_id"
    ]
    run = mlflow.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["stage"] == "transfer"
    assert run.data.tags["backbone"] == "random:small@32" and run.data.tags["subset_name"] == "none"
    assert run.data.metrics["voc12_action_map"] == pytest.approx(metrics["voc12_action_map"])
    assert run.data.params["config.epochs"] == str(config.epochs)
    assert run.data.params["torch_version"] == torch.__version__ and run.data.params["gpu"] == "none"
    artifacts = {a.path for a in mlflow.artifacts.list_artifacts(run_id=run_id)}
    assert {"action_ap.png", "voc12_action_ap.csv", "predictions"} <= artifacts
    ci = run.data.metrics["voc12_action_map_ci_low"], run.data.metrics["voc12_action_map_ci_high"]
    assert ci[0] <= run.data.metrics["voc12_action_map"] <= ci[1]


def test_a_registered_backbone_links_its_model_version_and_subset(tiny_world, tmp_path):
    from imagenet_transfer.pretrain import run_pretrain
    from imagenet_transfer.pretrain_config import PretrainConfig

    summary = run_pretrain(
        PretrainConfig(
            source=str(tiny_world / "imagenet"),
            recipe="smoke",
            iterations=2,
            batch_size=8,
            workers=0,
            device="cpu",
            model_name="small-tiny",
            checkpoint_dir=str(tmp_path / "ckpt"),
        )
    )
    config = make_config("probe", [f"data={tiny_world / 'imagenet'}"], quick=True)
    run_benchmark("probe", "models:/small-tiny@current", config, device="cpu")
    run = mlflow.get_run(
        mlflow.search_runs(search_all_experiments=True, filter_string="tags.benchmark = 'probe'")["run_id"][0]
    )
    pretrain_run = mlflow.get_run(summary["run_id"])
    assert run.data.tags["model_name"] == "small-tiny" and run.data.tags["model_version"] == summary["model_version"]
    assert run.data.tags["subset_digest"] == pretrain_run.data.tags["subset_digest"]
    assert "probe_knn_top1" in run.data.metrics and "probe_coarse_top1" in run.data.metrics


def test_bad_input_exits_2_before_any_run(tiny_world, capsys):
    before = len(mlflow.search_runs(search_all_experiments=True))
    assert cli("transfer", "run", "sun397", "--backbone", "models:/no-such-model@current") == 2
    assert "cannot be found" in capsys.readouterr().err
    assert cli("transfer", "run", "sun397", "--backbone", "resnet9") == 2
    assert cli("transfer", "run", "detection", "--backbone", "random:small") == 2
    assert "unknown benchmark" in capsys.readouterr().err
    assert len(mlflow.search_runs(search_all_experiments=True)) == before


@pytest.mark.parametrize("benchmark", ["voc07_det", "voc12_action", "sun397", "probe"])
def test_bad_data_exits_2_before_any_run(benchmark, tmp_path, capsys):
    before = len(mlflow.search_runs(search_all_experiments=True))
    assert (
        cli(
            "transfer",
            "run",
            benchmark,
            "--backbone",
            "random:small@32",
            "--quick",
            "--set",
            f"data={tmp_path}",
            "--device",
            "cpu",
        )
        == 2
    )
    assert str(tmp_path) in capsys.readouterr().err
    assert len(mlflow.search_runs(search_all_experiments=True)) == before


def test_mlproject_transfer_entry_point(tiny_world, tmp_path):
    started = int(time.time() * 1000)
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "MLFLOW_EXPERIMENT_NAME": "imagenet-transfer",
    }
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "run",
        str(REPO),
        "-e",
        "probe",
        "--env-manager",
        "local",
        "-P",
        "backbone=random:small@32",
        "-P",
        "quick=true",
        "-P",
        f"set=data={tiny_world / 'imagenet'},k=3",
        "-P",
        "device=cpu",
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    recent = mlflow.search_runs(search_all_experiments=True, filter_string=f"attributes.start_time >= {started}")
    assert recent["status"].tolist() == ["FINISHED"] and recent["params.config.k"].tolist() == ["3"]
