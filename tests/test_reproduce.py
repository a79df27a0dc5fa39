"""The paper grid: validation of the shipped grid, a smoke grid run twice (the second does nothing), an
interrupted grid that resumes, and bad input (exit 2, nothing left RUNNING)."""

import shutil
import time

import mlflow
import pytest
import yaml
from conftest import REPO, cli

from imagenet_transfer.errors import UserError
from imagenet_transfer.grid import load_grid
from imagenet_transfer.grid_plan import expand, make_plan
from imagenet_transfer.reproduce import reproduce

PAPER = REPO / "configs" / "paper.yaml"


@pytest.fixture(scope="session")
def grid_tracking_uri(tmp_path_factory):
    return f"sqlite:///{tmp_path_factory.mktemp('grid-mlruns') / 'mlflow.db'}"


@pytest.fixture(autouse=True)
def grid_store(isolated, monkeypatch, tracking_uri, grid_tracking_uri):
    """Grid tests write to a store of their own: they make many runs that other modules' searches must not see."""
    from imagenet_transfer import tracking

    monkeypatch.setenv("MLFLOW_TRACKING_URI", grid_tracking_uri)
    tracking.configure()
    yield
    mlflow.set_tracking_uri(tracking_uri)


def write_grid(tmp_path, experiments, name="test-grid", **scales):
    """A grid file whose every scale profile uses the same variants (the tests run its smoke profile)."""
    profiles = {
        "world": {"archs": ["small"]},
        "smoke": {"archs": ["small"], "recipe": "smoke"},
        "real": {"archs": ["small"]},
    }
    profiles.update(scales)
    body = {"name": name, "seeds": 1, "scales": profiles, "experiments": {}}
    for exp_id, (benchmarks, variants) in experiments.items():
        body["experiments"][exp_id] = {
            "question": f"question of {exp_id}",
            "benchmarks": benchmarks,
            "variants": dict.fromkeys(("world", "smoke", "real"), variants),
        }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def runs(stage, extra=""):
    return mlflow.search_runs(
        search_all_experiments=True, filter_string=f"tags.stage = '{stage}'{extra}", output_format="list"
    )


def running():
    return mlflow.search_runs(
        search_all_experiments=True, filter_string="attributes.status = 'RUNNING'", output_format="list"
    )


def test_the_shipped_grid_validates_and_expands_at_every_scale(tiny_world):
    from imagenet_transfer.subsets import preset
    from imagenet_transfer.synthetic import SIZES
    from imagenet_transfer.transfer.runner import BENCHMARKS

    grid = load_grid(PAPER)
    assert list(grid.experiments) == [f"E{i}" for i in range(1, 8)]
    for exp in grid.experiments.values():  # the smoke scale exercises what the real scale runs
        assert exp.benchmarks["smoke"] == exp.benchmarks["real"]
        assert exp.benchmarks["real"] and set(exp.benchmarks["real"]) <= set(BENCHMARKS)
    main = ("E1", "E3", "E6")  # the paper's main metric at real scale; the world cannot train a detector
    assert all("voc07_det" in grid.experiments[e].benchmarks["real"] for e in main)
    assert not any("voc07_det" in exp.benchmarks["world"] for exp in grid.experiments.values())
    assert list(grid.experiments["E4"].benchmarks["real"]) == ["probe"]
    size = SIZES["default"]
    for scale, smoke in (("world", False), ("world", True), ("real", False)):
        profile, entries = expand(grid, scale=scale, smoke=smoke, seeds=2)
        assert {e.experiment for e in entries} == set(grid.experiments) and {e.seed for e in entries} == {0, 1}
        if profile == "world":  # every variant fits the default world: 200 classes x 240 train images
            assert len({e.variant.preset for e in entries}) == 12 and {e.recipe for e in entries} == {"world"}
            for entry in entries:
                spec = preset(entry.variant.preset)
                per_class = spec.images_per_class or (spec.budget // spec.num_classes if spec.budget else size.train)
                assert per_class <= size.train and (spec.num_classes or 0) <= size.classes
    e1 = {v.preset: v.paper for v in grid.experiments["E1"].variants["world"]}
    assert e1 == {"full": "full", "e1-120": "e1-500", "e1-60": "e1-250"}
    plan = make_plan(grid, smoke=True, world=tiny_world)  # every smoke subset builds from the tiny world
    assert len({u.pretrain_key for u in plan.units}) < len(plan.units)  # `full` is pre-trained once for all
    assert {u.pretrain.recipe for u in plan.units} == {"smoke"}


def test_a_smoke_grid_run_twice_does_no_work_the_second_time(tiny_world, tmp_path, one_thread):
    grid = write_grid(
        tmp_path,
        {"EA": (["voc12_action"], ["full", "e3-127"]), "EB": (["voc12_action"], ["full"])},
        smoke={"archs": ["small"], "pretrain": {"iterations": 3}, "baselines": True},
    )
    before = {stage: len(runs(stage)) for stage in ("subset", "pretrain", "transfer")}
    started = time.monotonic()
    first = reproduce(grid, smoke=True, world=tiny_world, device="cpu")
    first_seconds = time.monotonic() - started
    made = {stage: len(runs(stage)) - before[stage] for stage in before}
    # `full`, its benchmark and the random-init benchmark run once for EA and EB
    assert made == {"subset": 2, "pretrain": 2, "transfer": 3}
    steps = first["records"]
    assert [(r["experiment"], r["variant"], r["stage"]) for r in steps if r["reused"]] == [
        ("EB", "full", "pretrain"),
        ("EB", "full", "transfer"),
        ("EB", "random", "transfer"),
    ]
    baseline = mlflow.get_run(next(r["run_id"] for r in steps if r["variant"] == "random"))
    trained = mlflow.get_run(next(r["run_id"] for r in steps if r["stage"] == "pretrain")).data.params["resolution"]
    assert baseline.data.tags["backbone"] == f"random:small@{trained}"  # the architecture as the grid pre-trains it
    assert baseline.data.tags["mlflow.parentRunId"] == first["run_id"]
    assert [r["variant"] for r in steps][-2:] == ["random", "random"]  # after every pre-trained step
    grid_run = mlflow.get_run(first["run_id"])
    assert grid_run.info.status == "FINISHED" and grid_run.data.tags["stage"] == "reproduce"
    assert grid_run.data.params["seeds"] == "1"
    assert grid_run.data.params["varied"] == grid_run.data.tags["varied"] == "pretrain,finetune"
    assert {r["seed"] for r in steps} == {0}  # the baselines' too
    assert grid_run.data.metrics["seconds_pretrain"] > 0 and grid_run.data.metrics["steps_run"] == 7
    child = mlflow.get_run(next(r["run_id"] for r in steps if r["stage"] == "transfer" and r["variant"] == "e3-127"))
    tags = child.data.tags
    assert tags["mlflow.parentRunId"] == first["run_id"] and tags["grid"] == "test-grid"
    assert (tags["experiment"], tags["variant"], tags["seed"]) == ("EA", "e3-127", "0") and tags["step_key"]
    assert child.data.metrics["voc12_action_map"] >= 0

    shutil.rmtree(tmp_path / "cache" / "subsets")  # a lost cache does not make finished steps run again
    started = time.monotonic()
    second = reproduce(grid, smoke=True, world=tiny_world, device="cpu")
    second_seconds = time.monotonic() - started
    assert {stage: len(runs(stage)) - before[stage] for stage in before} == made  # no new subset, pretrain, transfer
    assert all(r["reused"] for r in second["records"]) and second["steps_run"] == 0
    assert [r["run_id"] for r in second["records"]] == [r["run_id"] for r in steps]
    assert second_seconds < first_seconds / 3
    assert not running()


def test_an_interrupted_grid_resumes_where_it_stopped(tiny_world, tmp_path, one_thread):
    grid = write_grid(
        tmp_path,
        {"EC": (["voc12_action"], ["e1-6", "e2-79"])},
        name="interrupted",
        smoke={"archs": ["small"], "pretrain": {"iterations": 2}},
    )

    def stop_after_first_pretrain(record):
        if record["stage"] == "pretrain":
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        reproduce(grid, smoke=True, world=tiny_world, device="cpu", on_step=stop_after_first_pretrain)
    failed = runs("reproduce", " and tags.grid = 'interrupted'")
    assert [r.info.status for r in failed] == ["FAILED"] and not running()
    done = mlflow.artifacts.load_dict(f"runs:/{failed[0].info.run_id}/steps.json")
    assert [(r["variant"], r["stage"]) for r in done] == [("e1-6", "subset"), ("e1-6", "pretrain")]

    resumed = reproduce(grid, smoke=True, world=tiny_world, device="cpu")
    rows = {(r["variant"], r["stage"]): r for r in resumed["records"]}
    assert rows[("e1-6", "subset")]["reused"] and rows[("e1-6", "pretrain")]["reused"]
    assert rows[("e1-6", "pretrain")]["run_id"] == done[1]["run_id"]
    assert not any(
        rows[k]["reused"]
        for k in [("e1-6", "transfer"), ("e2-79", "subset"), ("e2-79", "pretrain"), ("e2-79", "transfer")]
    )
    assert len(runs("pretrain", " and tags.variant = 'e1-6'")) == 1


@pytest.mark.parametrize(
    "experiments, message",
    [
        ({"EX": (["voc12_action"], ["full", "e1-nope"])}, "unknown preset 'e1-nope'"),
        ({"EX": (["voc99"], ["full"])}, "unknown benchmark 'voc99'"),
        ({"EX": ({"voc12_action": {"epochz": 3}}, ["full"])}, "unknown config key(s) epochz"),
        ({"EX": ({"voc12_action": {"loss": "hinge"}}, ["full"])}, "loss = 'hinge': expected 'softmax' or 'bce'"),
        ({"EX": ({"sun397": {"partitions": [1, 1]}}, ["full"])}, "partitions = (1, 1): expected distinct partition"),
        ({"EX": (["voc12_action"], ["e5-budget-99999-classes-10"])}, "train images in each, and only 0 of"),
        ({"EX": ({"voc12_action": {"seed": 3}}, ["full"])}, "seed is set per step by the grid"),
        (
            {"EX": ({"world": ["voc12_action"], "smoke": ["voc12_action"]}, ["full"])},
            "EX, benchmarks: no benchmarks for scale 'real'",
        ),
        ({"EX": ({scale: ["probe"] for scale in ("world", "smoke", "real", "tiny")}, ["full"])}, "unknown key(s) tiny"),
        ({"EX": ({"world": ["probe"], "smoke": ["voc99"], "real": ["probe"]}, ["full"])}, "unknown benchmark 'voc99'"),
        (
            {"EX": ({"world": ["probe"], "smoke": {"voc12_action": {"epochz": 3}}, "real": ["probe"]}, ["full"])},
            "unknown config key(s) epochz",
        ),
    ],
)
def test_bad_grids_exit_2_naming_the_entry_and_leave_nothing_running(
    tiny_world, tmp_path, capsys, experiments, message
):
    grid = write_grid(tmp_path, experiments, name="bad")
    before = len(runs("reproduce"))
    assert cli("reproduce", "--grid", grid, "--smoke", "--world", tiny_world) == 2
    err = capsys.readouterr().err
    assert message in err and str(grid) in err.replace("\n", "") and "EX" in err
    assert len(runs("reproduce")) == before and not running()


def test_other_bad_input_exits_2(tiny_world, tmp_path, capsys):
    grid = write_grid(tmp_path, {"EX": (["voc12_action"], ["full"])}, name="other", real={"archs": ["vgg"]})
    assert cli("reproduce", "--grid", grid) == 2
    assert "unknown backbone/arch 'vgg'" in capsys.readouterr().err
    grid = write_grid(
        tmp_path,
        {"EX": (["voc12_action"], ["full"])},
        name="options",
        smoke={"archs": ["small"], "pretrain": {"epochz": 1}},
    )
    assert cli("reproduce", "--grid", grid, "--smoke", "--world", tiny_world) == 2
    assert "scales.smoke.pretrain: expected a mapping of pretrain options" in capsys.readouterr().err
    grid = write_grid(
        tmp_path, {"EX": (["voc12_action"], ["full"])}, name="baselines", smoke={"archs": ["small"], "baselines": "yes"}
    )
    assert cli("reproduce", "--grid", grid, "--smoke", "--world", tiny_world) == 2
    assert "scales.smoke.baselines: expected true or false, got 'yes'" in capsys.readouterr().err
    from imagenet_transfer.synthetic import generate

    partial = generate(tmp_path / "partial", size="tiny", progress=False, parts=("imagenet",))
    assert cli("reproduce", "--grid", PAPER, "--smoke", "--world", partial) == 2
    assert "holds only the part(s) imagenet; expected a complete world" in capsys.readouterr().err
    assert cli("reproduce", "--grid", PAPER, "--smoke", "--world", tiny_world, "--only", "E1,E9") == 2
    assert "--only E9" in capsys.readouterr().err
    assert cli("reproduce", "--grid", PAPER, "--scale", "real") == 2
    assert "needs --source" in capsys.readouterr().err
    assert cli("reproduce", "--grid", tmp_path / "missing.yaml") == 2
    assert "cannot be read" in capsys.readouterr().err
    (tmp_path / "typo.yaml").write_text(PAPER.read_text().replace("experiments:", "experimentz:"))
    assert cli("reproduce", "--grid", tmp_path / "typo.yaml") == 2
    assert "unknown key(s) experimentz" in capsys.readouterr().err
    with pytest.raises(UserError, match="--data"):
        from imagenet_transfer.grid_plan import parse_data

        parse_data(["voc07_det"])
    assert not running()


def test_the_entry_point_takes_mlproject_style_arguments(capsys):
    from imagenet_transfer.cli import run_entrypoint

    argv = [
        "--grid",
        str(PAPER),
        "--scale",
        "world",
        "--smoke",
        "true",
        "--seeds",
        "",
        "--vary-subset",
        "true",
        "--only",
        "E1,E9",
        "--source",
        "",
        "--data",
        "voc07_det=/a,sun397=/b",
        "--device",
        "auto",
    ]
    with pytest.raises(SystemExit) as exit_:
        run_entrypoint(["reproduce"], argv)
    assert exit_.value.code == 2 and "--only E9" in capsys.readouterr().err  # every argument parsed, --only refused
    with pytest.raises(SystemExit) as exit_:
        run_entrypoint(["reproduce"], ["--grid", str(PAPER), "--smoke", "false", "--only", "E1", "--data", "voc99=/x"])
    assert exit_.value.code == 2 and "--data 'voc99=/x'" in capsys.readouterr().err
