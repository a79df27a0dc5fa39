"""`reproduce --scale real --plan` on a catalog shaped like ILSVRC-2012: every step of E1–E7 resolved, checked
against PAPER.md's recipe and protocols, with an estimate of its cost; a step that cannot run is named, exit 2."""

import pytest
import yaml
from conftest import REPO, cli

from imagenet_transfer.catalog import ilsvrc_shaped_catalog, write_catalog
from imagenet_transfer.grid import load_grid
from imagenet_transfer.grid_plan import describe, make_plan
from imagenet_transfer.transfer.voc07_det import Config as DetectionConfig

DATA = {"voc07_det": "/data/VOCdevkit", "voc12_action": "/data/VOCdevkit", "sun397": "/data/sun397"}


@pytest.fixture(scope="module")
def ilsvrc(tmp_path_factory):
    return write_catalog(ilsvrc_shaped_catalog(), tmp_path_factory.mktemp("ilsvrc") / "catalog.parquet")


@pytest.fixture(scope="module")
def plan(ilsvrc):
    return make_plan(load_grid(REPO / "configs" / "paper.yaml"), scale="real", source=str(ilsvrc), data=DATA)


def test_every_pretraining_is_the_papers_caffenet_recipe(plan):
    for unit in plan.units:
        c = unit.pretrain
        assert (c.arch, c.resolution, c.schedule, c.iterations, c.batch_size) == (
            "caffe_alexnet",
            227,
            "iterations",
            450_000,
            256,
        )
        assert (c.lr, c.momentum, c.weight_decay, c.decay) == (0.01, 0.9, 5e-4, "step")
        assert c.step_fraction * c.iterations == pytest.approx(100_000)


def test_the_variants_are_the_papers(plan):
    by_experiment = {}
    for unit in plan.units:
        by_experiment.setdefault(unit.experiment, {})[unit.variant.preset] = unit.subset
    e1 = by_experiment["E1"]
    assert list(e1) == ["full", "e1-500", "e1-250", "e1-125", "e1-50"]
    assert e1["full"].train_images == 1_281_167 and e1["e1-50"].train_images == 50_000
    assert [s.num_labels for s in by_experiment["E2"].values()] == [1000, 918, 753, 486, 79, 9]
    assert by_experiment["E3"]["e3-127"].num_labels == 127
    e5 = by_experiment["E5"]
    assert {s.num_fine_classes: s.train_images for s in e5.values()} == dict.fromkeys((1000, 500, 250, 128), 128000)
    assert by_experiment["E6"]["e6-pascal-removed"].num_fine_classes == 771
    assert {s.num_fine_classes for s in by_experiment["E7"].values()} == {500, 1000}


def test_the_benchmarks_follow_the_published_protocols(plan):
    for unit in plan.units:
        for name, config in unit.benchmarks.items():
            if name == "voc07_det":  # py-faster-rcnn's end-to-end ZF recipe on VOC2007 trainval
                assert config == DetectionConfig.real(data=DATA["voc07_det"])
                assert (config.iterations, config.lr, config.lr_drop * config.iterations) == (70_000, 1e-3, 50_000)
                assert (config.batch_size, config.min_size, config.max_size, config.flip) == (1, 600, 1000, True)
            if name == "sun397":  # the paper fine-tunes, on all ten partitions
                assert config.protocol == "finetune" and config.partitions == tuple(range(1, 11))
            if name == "voc12_action":
                assert config.context is False and config.evaluate_on == "test"
    assert {b.backbone for b in plan.baselines} == {"random:caffe_alexnet@227"}


def test_the_plan_estimates_gpu_hours_and_counts_shared_steps_once(plan):
    rows = describe(plan, gpus=8)
    pretrain = [r for r in rows if r["step"] == "pretrain"]  # the distinct pre-trainings
    # E1 5, E2 5 more, E3 1, E5 4, E6 1, E7 2 (A+B is every class: `full`'s), E4 none
    assert len(pretrain) == 18
    assert all(r["images"] == 450_000 * 256 for r in pretrain)
    assert sum(r["gpu_hours"] for r in rows if "shared" in r["step"]) == 0
    assert all(r["hours_on_8"] == pytest.approx(r["gpu_hours"] / 8) for r in rows)


def test_the_cli_prints_the_plan_and_runs_nothing(ilsvrc, capsys):
    import mlflow

    before = len(mlflow.search_runs(search_all_experiments=True))
    args = ["reproduce", "--scale", "real", "--plan", "--only", "E6", "--source", str(ilsvrc)]
    assert cli(*args, *[f"--data={k}={v}" for k, v in DATA.items()]) == 0
    out = capsys.readouterr().out
    assert "e6-pascal-removed" in out and "450,000 iterations of 256 (global)" in out and "GPU-hours" in out
    assert len(mlflow.search_runs(search_all_experiments=True)) == before


def test_a_step_that_cannot_run_is_named_before_anything_runs(ilsvrc, tmp_path, capsys):
    grid = yaml.safe_load((REPO / "configs" / "paper.yaml").read_text())
    grid["experiments"]["E1"]["variants"]["real"] = ["full", "e1-1500", "e1-800"]
    (tmp_path / "grid.yaml").write_text(yaml.safe_dump(grid))
    args = ["reproduce", "--grid", str(tmp_path / "grid.yaml"), "--scale", "real", "--plan", "--only", "E1"]
    assert cli(*args, "--source", str(ilsvrc), *[f"--data={k}={v}" for k, v in DATA.items()]) == 2
    err = capsys.readouterr().err
    assert "2 step(s) cannot run" in err and "e1-1500" in err and "e1-800" in err
