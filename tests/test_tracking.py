"""The tracking conventions: runs are always ended, and drivers nest the runs of the stages they call."""

import mlflow
import pytest

from imagenet_transfer import tracking


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
