"""The tracking conventions: runs are always ended, drivers nest the runs of the stages they call, and backbones
are registered without a pickle."""

from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
import yaml

from imagenet_transfer import tracking
from imagenet_transfer.models import build_backbone


def test_runs_inside_nested_under_are_children_with_the_drivers_tags():
    with tracking.start_run("study", run_name="driver") as driver:
        driver_id = driver.info.run_id
    with (
        tracking.nested_under(driver_id, {"trial": "3"}),
        tracking.nested_under(None, {"experiment": "E1"}),
        tracking.start_run("pretrain", tags={"arch": "small"}) as child,
    ):
        child_id = child.info.run_id
    with tracking.start_run("transfer") as outside:
        outside_id = outside.info.run_id
    tags = mlflow.get_run(child_id).data.tags
    assert tags["mlflow.parentRunId"] == driver_id
    assert (tags["trial"], tags["experiment"], tags["stage"], tags["arch"]) == ("3", "E1", "pretrain", "small")
    assert "mlflow.parentRunId" not in mlflow.get_run(outside_id).data.tags
    assert "trial" not in mlflow.get_run(outside_id).data.tags


def test_a_run_started_inside_an_active_run_is_its_child_and_both_end():
    with tracking.start_run("trial") as outer:
        with tracking.start_run("pretrain") as inner:
            inner_id = inner.info.run_id
        assert mlflow.active_run().info.run_id == outer.info.run_id
    assert mlflow.get_run(inner_id).data.tags["mlflow.parentRunId"] == outer.info.run_id
    assert mlflow.get_run(inner_id).info.status == "FINISHED"
    assert mlflow.get_run(outer.info.run_id).info.status == "FINISHED"
    assert mlflow.active_run() is None


def test_a_failing_stage_ends_its_run_failed():
    with pytest.raises(RuntimeError), tracking.start_run("pretrain") as run:
        raise RuntimeError("boom")
    assert mlflow.get_run(run.info.run_id).info.status == "FAILED"


# -- backbones in the registry: no pickle anywhere ------------------------------------------------------------
def test_a_registered_backbone_holds_no_pickle_and_loads_as_pyfunc_and_as_a_module(tmp_path, monkeypatch):
    torch.manual_seed(0)
    net = build_backbone("small", 5).eval()
    with tracking.start_run("pretrain") as run:
        version = tracking.log_backbone(net, {"backbone": net.config(), "seed": 0}, name="small-safe", tags={"a": "b"})
    uri = "models:/small-safe@current"
    registered = mlflow.MlflowClient().get_model_version_by_alias("small-safe", tracking.BACKBONE_ALIAS)
    assert str(registered.version) == version and registered.run_id == run.info.run_id and registered.tags["a"] == "b"

    root = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(tmp_path / "model")))
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    assert {"MLmodel", "backbone_model.py", "artifacts/state_dict.pt", "artifacts/backbone.json"} <= set(files)
    assert not [f for f in files if f.endswith((".pkl", ".pickle", ".pth", ".cloudpickle"))]
    assert not [f for f in files if (root / f).read_bytes()[:1] == b"\x80"]  # no bare pickle stream (protocol 2+)
    pyfunc = yaml.safe_load((root / "MLmodel").read_text())["flavors"]
    assert list(pyfunc) == ["python_function"]  # no pytorch flavor (a pickled module)
    assert pyfunc["python_function"]["loader_module"] == "mlflow.pyfunc.loaders.code_model"
    assert "python_model" not in pyfunc["python_function"]  # the model is code, not a cloudpickled object
    assert set(tracking.backbone_requirements()) <= set((root / "requirements.txt").read_text().split())

    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")  # MLflow refuses to unpickle anything
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        expected = net.features(torch.from_numpy(x), ("pool5", "fc7"))
    model = mlflow.pyfunc.load_model(uri)
    features = model.predict(x)
    assert features.shape == (3, net.feature_dims()["fc7"]) and features.dtype == np.float32
    torch.testing.assert_close(torch.from_numpy(features), expected["fc7"])
    torch.testing.assert_close(torch.from_numpy(model.predict(x, params={"layer": "pool5"})), expected["pool5"])

    loaded, info = tracking.load_backbone_with_info(uri)
    assert info["backbone"] == net.config() and info["model_version"] == version
    assert loaded.state_dict().keys() == net.state_dict().keys()
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in net.state_dict().items())
    weights = torch.load(tracking.backbone_files(uri)[1], weights_only=True)
    assert all(torch.equal(weights[k], v) for k, v in net.state_dict().items())


def test_an_unregistered_backbone_is_logged_in_its_run_only():
    net = build_backbone("small", 3).eval()
    with tracking.start_run("pretrain") as run:
        assert tracking.log_backbone(net, {"backbone": net.config()}, name=None, tags={}) is None
    net_back = tracking.load_backbone(f"runs:/{run.info.run_id}/backbone")
    assert all(torch.equal(net_back.state_dict()[k], v) for k, v in net.state_dict().items())
