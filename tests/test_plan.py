"""`reproduce --scale real --plan` on a catalog shaped like ILSVRC-2012: every step of E1–E7 resolved, checked
against PAPER.md's recipe and protocols, with an estimate of its cost; a step that cannot run is named, exit 2.
And what `--seeds N` varies (on the tiny world's smoke plan): seed s pre-trains and fine-tunes with s, its random-init
baseline draws its weights with s, the subsets stay those of seed 0 unless `--vary-subset`, and seed 0's steps keep
the keys of a one-seed grid. And an experiment's benchmarks chosen per scale: each scale plans its own list (its
baselines too), and one list for every scale keys the same steps as that list named at each scale."""

import pytest
import torch
import yaml
from conftest import REPO, cli

from imagenet_transfer.catalog import ilsvrc_shaped_catalog, write_catalog
from imagenet_transfer.errors import UserError
from imagenet_transfer.grid import load_grid
from imagenet_transfer.grid_plan import describe, make_plan
from imagenet_transfer.grid_steps import plan_steps
from imagenet_transfer.transfer.common import resolve_backbone
from imagenet_transfer.transfer.voc07_det import Config as DetectionConfig

SCALES = ("world", "smoke", "real")  # the profiles of a grid
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


# -- seeds ----------------------------------------------------------------------------------------------------------
SEEDED = ["E1", "E5", "E7"]  # random subsets (e1-N, e5-*, e7-random-a) beside fixed ones (full, e7-minimal-a)


@pytest.fixture(scope="module")
def smoke_plans(tiny_world):
    grid = load_grid(REPO / "configs" / "paper.yaml")
    return {
        (seeds, vary): make_plan(grid, smoke=True, world=tiny_world, only=SEEDED, seeds=seeds, vary_subset=vary)
        for seeds, vary in ((1, False), (3, False), (3, True))
    }


def keys(plan, seed: int = 0) -> list[str]:
    """The step keys of `plan`'s steps of `seed`, in order (a unit's benchmarks keyed on its pretrain key, as they
    are on the model the pre-training registers)."""
    out = []
    for unit in (u for u in plan.units if u.seed == seed):
        out += [unit.subset.key, unit.pretrain_key]
        out += [plan.transfer_key(name, config, unit.pretrain_key) for name, config in unit.benchmarks.items()]
    for base in (b for b in plan.baselines if b.seed == seed):
        out += [plan.transfer_key(name, config, base.backbone) for name, config in base.benchmarks.items()]
    return out


def test_seed_s_pretrains_and_finetunes_with_s_and_has_its_own_random_baseline(smoke_plans):
    one, three = smoke_plans[1, False], smoke_plans[3, False]
    assert len(three.units) == 3 * len(one.units) and three.varied == "pretrain,finetune"
    by_variant = {}
    for unit in three.units:
        by_variant.setdefault((unit.experiment, unit.variant.preset, unit.arch), []).append(unit.seed)
        assert unit.pretrain.seed == unit.seed
        assert {config.seed for config in unit.benchmarks.values()} == {unit.seed}
    assert set(map(tuple, by_variant.values())) == {(0, 1, 2)}
    resolution = three.units[0].pretrain.resolution
    for experiment in SEEDED:
        bases = [b for b in three.baselines if b.experiment == experiment]
        assert [(b.arch, b.seed) for b in bases] == [("small", 0), ("small", 1), ("small", 2)]
        assert [b.backbone for b in bases] == [f"random:small@{resolution}" + s for s in ("", ":1", ":2")]
        assert all({c.seed for c in b.benchmarks.values()} == {b.seed} for b in bases)
    # without --vary-subset every seed trains on seed 0's subsets, with the same keys as a one-seed grid
    assert {u.subset.key for u in three.units} == {u.subset.key for u in one.units}
    assert {u.subset.seed for u in three.units} == {0}
    assert keys(three, 0) == keys(one, 0)
    assert set(keys(three, 1)) & set(keys(three, 0)) == {u.subset.key for u in one.units}  # only the subsets
    # the step table and the run tags carry each baseline's seed
    random_steps = [s for s in plan_steps(three) if s.describe()["variant"] == "random"]
    assert [s.describe()["seed"] for s in random_steps] == [b.seed for b in three.baselines for _ in b.benchmarks]
    assert {s.tags(three)["seed"] for s in random_steps} == {"0", "1", "2"}
    assert {r["seed"] for r in describe(three) if r["variant"] == "random init"} == {0, 1, 2}


def test_vary_subset_draws_each_seed_s_random_subsets_with_s(smoke_plans):
    one, fixed, varied = smoke_plans[1, False], smoke_plans[3, False], smoke_plans[3, True]
    assert varied.varied == "pretrain,finetune,subset"
    subsets = {}  # preset -> seed -> subset
    for unit in varied.units:
        subsets.setdefault(unit.variant.preset, {}).setdefault(unit.seed, set()).add(unit.subset)
    assert all(len(by_seed) == 1 for drawn in subsets.values() for by_seed in drawn.values())  # shared per seed
    for preset, drawn in subsets.items():
        (first,), (second,), (third,) = drawn.values()
        if preset in ("full", "e7-minimal-a"):  # no randomness in the selection: the same subset for every seed
            assert first == second == third and first.seed == 0
        else:  # e1-N, e5-*, e7-random-a
            assert (first.seed, second.seed, third.seed) == (0, 1, 2)
            assert len({first.key, second.key, third.key}) == len({first.digest, second.digest, third.digest}) == 3
    e5 = [u.subset for u in varied.units if u.experiment == "E5" and u.variant.preset.endswith("classes-20")]
    assert len({s.digest for s in e5}) == 3 and {s.num_fine_classes for s in e5} == {20}
    assert keys(varied, 0) == keys(one, 0)  # seed 0 draws with the presets' own seed
    assert len({u.subset.key for u in varied.units}) > len({u.subset.key for u in fixed.units})
    assert varied.steps - fixed.steps == len({u.subset.key for u in varied.units}) - len(
        {u.subset.key for u in fixed.units}
    )
    assert keys(varied, 1) != keys(fixed, 1)


def test_a_random_backbone_s_seed_draws_its_weights():
    def weights(spec):
        net, info = resolve_backbone(spec)
        return info["seed"], torch.cat([p.detach().flatten() for p in net.state_dict().values()])

    (s0, plain), (s0_again, zero), (s1, one), (_, one_again) = map(
        weights, ("random:small@32", "random:small@32:0", "random:small@32:1", "random:small@32:1")
    )
    assert (s0, s0_again, s1) == (0, 0, 1)
    assert torch.equal(plain, zero) and torch.equal(one, one_again) and not torch.equal(plain, one)
    for bad in ("random:small@32:x", "random:small@32:", "random:small@32:-1", "random:small@32:1:2"):
        with pytest.raises(UserError, match=r"random:ARCH\[@RES\]\[:SEED\]"):
            resolve_backbone(bad)


def test_the_cli_plans_a_grid_with_varied_subsets(tiny_world, capsys):
    args = ["reproduce", "--plan", "--smoke", "--world", str(tiny_world), "--only", "E5", "--seeds", "2"]
    assert cli(*args) == 0
    # 3 presets x 2 seeds: 3 subsets, 6 pre-trainings, 6 voc12_action, 2 baselines
    assert "paper at scale smoke: 17 steps" in capsys.readouterr().out
    assert cli(*args, "--vary-subset") == 0
    assert "paper at scale smoke: 20 steps" in capsys.readouterr().out  # a subset per preset and seed


# -- benchmarks per scale -------------------------------------------------------------------------------------------
def one_experiment(path, benchmarks, variants=("full",)):
    """Write at `path` configs/paper.yaml's scales with one experiment, EP, running `benchmarks` on `variants` at
    every scale."""
    grid = yaml.safe_load((REPO / "configs" / "paper.yaml").read_text())
    grid["name"] = "per-scale"
    grid["experiments"] = {
        "EP": {
            "question": "which benchmarks?",
            "benchmarks": benchmarks,
            "variants": {scale: list(variants) for scale in grid["scales"]},
        }
    }
    path.write_text(yaml.safe_dump(grid))
    return path


def test_an_experiment_can_choose_its_benchmarks_per_scale(ilsvrc, tiny_world, tmp_path):
    chosen = {"world": ["voc12_action"], "smoke": {"voc12_action": {"epochs": 3}}, "real": ["voc07_det"]}
    grid = load_grid(one_experiment(tmp_path / "grid.yaml", chosen))
    assert grid.experiments["EP"].benchmarks == {
        "world": {"voc12_action": {}},
        "smoke": {"voc12_action": {"epochs": 3}},
        "real": {"voc07_det": {}},
    }
    real = make_plan(grid, scale="real", source=str(ilsvrc), data=DATA)
    smoke = make_plan(grid, smoke=True, world=tiny_world)
    for plan, names in ((real, ["voc07_det"]), (smoke, ["voc12_action"])):
        assert plan.units and plan.baselines  # the random-init baselines run the experiment's benchmarks at the scale
        assert all(list(step.benchmarks) == names for step in (*plan.units, *plan.baselines))
    assert real.units[0].benchmarks["voc07_det"] == DetectionConfig.real(data=DATA["voc07_det"])
    assert smoke.units[0].benchmarks["voc12_action"].epochs == 3  # the experiment's overrides at the scale apply


def test_a_benchmark_list_means_every_scale_with_the_keys_of_the_same_list_per_scale(tiny_world, tmp_path):
    listed = load_grid(one_experiment(tmp_path / "listed.yaml", ["voc12_action", "probe"], variants=("full", "e1-6")))
    mapped = load_grid(
        one_experiment(
            tmp_path / "mapped.yaml", {scale: ["voc12_action", "probe"] for scale in SCALES}, variants=("full", "e1-6")
        )
    )
    per_scale = {scale: {"voc12_action": {}, "probe": {}} for scale in SCALES}
    assert listed.experiments["EP"].benchmarks == mapped.experiments["EP"].benchmarks == per_scale
    plans = [make_plan(grid, smoke=True, world=tiny_world, seeds=2) for grid in (listed, mapped)]
    assert keys(plans[0], 0) == keys(plans[1], 0) and keys(plans[0], 1) == keys(plans[1], 1)
    assert len(keys(plans[0])) == 2 + 2 * (1 + 2) + 2  # 2 subsets, 2 pre-trainings with 2 benchmarks, 2 baselines
