"""Budget studies on the tiny world: trials nested under one study run, a second process joining, a restart
continuing, a dead worker's trial retried, pruning, validation splits that never touch test data, bad input."""

import os
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import optuna
import pytest
from conftest import REPO, cli

from imagenet_transfer.errors import UserError
from imagenet_transfer.study import run_study
from imagenet_transfer.study_config import StudyConfig
from imagenet_transfer.study_storage import create_study, open_storage


def settings(tiny_world, tmp_path, **changes):
    base = dict(
        budget=240,
        n_trials=1,
        study_name="tiny",
        storage=f"sqlite:///{tmp_path / 'optuna.db'}",
        objective=("sun397",),
        source=str(tiny_world / "imagenet"),
        recipe="smoke",
        iterations=2,
        batch_size=8,
        workers=0,
        device="cpu",
        quick=True,
        benchmark_settings=(f"sun397.data={tiny_world}", "sun397.partitions=1"),
    )
    return StudyConfig(**{**base, **changes})


def cli_args(config: StudyConfig) -> list[str]:
    args = [
        "budget-study",
        "--budget",
        config.budget,
        "--n-trials",
        config.n_trials,
        "--study-name",
        config.study_name,
        "--storage",
        config.storage,
        "--objective",
        ",".join(config.objective),
        "--source",
        config.source,
        "--recipe",
        config.recipe,
        "--iterations",
        config.iterations,
        "--batch-size",
        config.batch_size,
        "--workers",
        config.workers,
        "--device",
        config.device,
        "--quick",
    ]
    for item in config.benchmark_settings:
        args += ["--set", item]
    return [str(a) for a in args]


def runs(**tags):
    query = " and ".join(f"tags.{k} = '{v}'" for k, v in tags.items())
    return mlflow.search_runs(search_all_experiments=True, filter_string=query)


def nothing_running():
    return mlflow.search_runs(search_all_experiments=True, filter_string="attributes.status = 'RUNNING'").empty


def test_validation_splits_are_carved_from_training_data_only(tiny_world):
    from imagenet_transfer.datasets.sun397 import find_sun397, read_class_names, read_partition
    from imagenet_transfer.datasets.voc import read_image_set
    from imagenet_transfer.transfer.sun397.data import load_partition
    from imagenet_transfer.transfer.voc12_action import Config as ActionConfig
    from imagenet_transfer.transfer.voc12_action.data import scored_persons, voc2012_root

    layout = find_sun397(tiny_world)
    classes = read_class_names(layout.partitions / "ClassName.txt")
    part = load_partition(
        layout, 1, classes, val_fraction=0.2, seed=0, max_missing_fraction=0.0, evaluate_on="val", eval_fraction=0.25
    )
    training, testing = (
        set(read_partition(layout.partitions / "Training_01.txt")),
        set(read_partition(layout.partitions / "Testing_01.txt")),
    )
    assert set(part.frame["entry"]) <= training and not set(part.frame["entry"]) & testing
    roles = {role: set(part.part(role)["entry"]) for role in ("train", "val", "test")}
    assert all(roles.values()) and not (roles["train"] & roles["test"]) and not (roles["val"] & roles["test"])
    assert part.part("test")["label"].nunique() == len(classes)  # every scene is scored

    root = voc2012_root(str(tiny_world / "VOCdevkit" / "VOC2012"))
    config = ActionConfig.quick(evaluate_on="val")
    train, scored = scored_persons(root, config)
    test_ids = set(read_image_set(root / "ImageSets" / "Action" / "val.txt"))
    train_ids, scored_ids = {p.image_id for p in train}, {p.image_id for p in scored}
    assert scored_ids and not scored_ids & test_ids and not train_ids & test_ids and not train_ids & scored_ids
    _train_t, scored_t = scored_persons(root, ActionConfig.quick())
    assert {p.image_id for p in scored_t} == test_ids  # the default still scores the benchmark's test split


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_a_study_runs_is_joined_by_a_second_process_and_resumes(tiny_world, tmp_path, one_thread):
    config = settings(tiny_world, tmp_path, heartbeat_interval=1, grace_period=2)
    first = run_study(config)  # trial 0, then the one final test of the chosen configuration: trial 0's
    assert first["complete"] == 1 and first["best_trial"] == 0
    (tested,) = (row for _, row in runs(study_role="final_test", study_name="tiny").iterrows())
    testing = (tiny_world / "Partitions" / "Testing_01.txt").read_text().split()
    chance = 100 / len((tiny_world / "Partitions" / "ClassName.txt").read_text().split())
    # scored on the benchmark's Testing list (the trial scored a split held out from its training lists) ...
    assert tested["tags.evaluate_on"] == "test" and tested["metrics.sun397_test_images"] == len(testing)
    # ... and what it scored is what the study reports and logs, above chance
    assert first["test"]["sun397_acc"] == pytest.approx(tested["metrics.sun397_acc"])
    assert mlflow.get_run(first["run_id"]).data.metrics["test_sun397_acc"] == pytest.approx(first["test"]["sun397_acc"])
    assert first["test"]["sun397_acc"] > chance
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    joined = subprocess.run(
        [sys.executable, "-m", "imagenet_transfer.cli", *cli_args(settings(tiny_world, tmp_path, n_trials=2))],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert joined.returncode == 0, joined.stderr[-3000:]
    assert "1 finished trial(s), running up to 1 more" in joined.stdout

    # a worker dies in the middle of trial 2: its heartbeat stops, the next worker fails and retries it
    study, _ = create_study(config)
    study.enqueue_trial({"num_classes": 12})
    dead = study.ask()
    dead.suggest_int("num_classes", 10, 40, log=True)  # the enqueued value, stored with the trial
    storage, _ = open_storage(config)  # the study's RDB storage, through which a worker sends heartbeats
    storage.record_heartbeat(
        storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name("tiny"), dead.number)
    )
    client = mlflow.MlflowClient()
    orphan = client.create_run(mlflow.get_run(first["run_id"]).info.experiment_id, tags={"stage": "trial"}).info.run_id
    dead.set_user_attr("mlflow_run_id", orphan)  # the dead worker's trial run, left RUNNING
    time.sleep(3.5)  # SQLite stores heartbeats to the second: 3.5 s is always more than the 2 s grace period
    resumed = run_study(settings(tiny_world, tmp_path, n_trials=3, heartbeat_interval=1, grace_period=2))
    study = optuna.load_study(study_name="tiny", storage=config.storage)
    states = [t.state.name for t in study.trials]
    assert states[:3] == ["COMPLETE", "COMPLETE", "FAIL"] and states[3] == "COMPLETE" and len(states) == 4
    assert study.trials[3].params["num_classes"] == 12 and resumed["complete"] == 3
    orphan_run = client.get_run(orphan)
    assert orphan_run.info.status == "FAILED" and orphan_run.data.tags["worker_died"] == "true"

    (study_run,) = runs(stage="study", study_name="tiny")["run_id"]
    trials = runs(stage="trial", study_name="tiny").sort_values("tags.trial_number")
    assert list(trials["tags.trial_number"]) == ["0", "1", "3"] and set(trials["status"]) == {"FINISHED"}
    assert set(trials["tags.mlflow.parentRunId"]) == {study_run}  # both processes' trials under one study run
    assert trials.iloc[2]["tags.retry_of_trial"] == "2"
    for _, row in trials.iterrows():
        c = int(row["params.num_classes"])
        assert 10 <= c <= 40 and float(row["params.images_per_class"]) == pytest.approx(240 / c)
        assert row["params.budget"] == "240" and row["metrics.objective"] == row["metrics.sun397_acc"]
        children = runs(**{"mlflow.parentRunId": row["run_id"]})
        assert set(children["tags.stage"]) >= {"transfer"} and set(children["tags.study_name"]) == {"tiny"}
        transfer = children[children["tags.stage"] == "transfer"]
        assert set(transfer["tags.evaluate_on"]) == {"val"} and set(transfer["params.config.evaluate_on"]) == {"val"}
    best = study.best_trial
    run = mlflow.get_run(study_run)
    assert run.info.status == "FINISHED" and run.data.tags["stage"] == "study"
    assert run.data.metrics["best_num_classes"] == best.params["num_classes"]
    assert run.data.metrics["best_objective"] == pytest.approx(best.value)
    final = runs(study_role="final_test", study_name="tiny")
    assert set(final["tags.evaluate_on"]) == {"test"} and set(final["tags.mlflow.parentRunId"]) == {study_run}
    assert run.data.metrics["test_sun397_acc"] == pytest.approx(
        final.sort_values("start_time")["metrics.sun397_acc"].iloc[-1]
    )
    artifacts = {a.path for a in mlflow.artifacts.list_artifacts(run_id=study_run, artifact_path="plots")}
    assert {"plots/optimization_history.png", "plots/num_classes_vs_objective.png"} <= artifacts
    assert nothing_running()


def test_a_pruned_trial_ends_its_runs_and_leaves_nothing_running(tiny_world, tmp_path, one_thread):
    summary = run_study(settings(tiny_world, tmp_path, study_name="tiny-pruned", pruner="threshold:101"))
    assert summary["complete"] == 0
    study = optuna.load_study(study_name="tiny-pruned", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert [t.state.name for t in study.trials] == ["PRUNED"] and study.trials[0].intermediate_values
    (trial,) = (row for _, row in runs(stage="trial", study_name="tiny-pruned").iterrows())
    pretrain = runs(stage="pretrain", study_name="tiny-pruned")
    assert trial["status"] == "FAILED" and trial["tags.pruned"] == "true"
    assert list(pretrain["status"]) == ["FAILED"] and list(pretrain["tags.pruned"]) == ["true"]
    assert not Path(pretrain["tags.checkpoint_dir"].iloc[0]).exists()  # the same trial again trains afresh
    assert runs(stage="transfer", study_name="tiny-pruned").empty  # a pruned trial runs no benchmark
    assert mlflow.get_run(summary["run_id"]).info.status == "FINISHED"
    assert nothing_running()


def test_bad_input_exits_2_and_leaves_nothing_running(tiny_world, tmp_path, capsys):
    base = settings(tiny_world, tmp_path, study_name="tiny-bad")
    before = len(mlflow.search_runs(search_all_experiments=True))
    assert cli(*cli_args(settings(tiny_world, tmp_path, budget=5000))) == 2
    assert "larger than the source's 960 train images" in capsys.readouterr().err
    missing = f"sqlite:///{tmp_path / 'no' / 'such' / 'optuna.db'}"
    assert cli(*cli_args(settings(tiny_world, tmp_path, storage=missing))) == 2
    assert f"storage {missing} cannot be reached" in capsys.readouterr().err
    server = "postgresql://study:secret@127.0.0.1:9/optuna"
    assert cli(*cli_args(settings(tiny_world, tmp_path, storage=server))) == 2
    err = capsys.readouterr().err
    assert "storage postgresql://study:***@127.0.0.1:9/optuna cannot be reached" in err and "secret" not in err
    args = cli_args(base)
    args[args.index("--objective") + 1] = "voc07_det"
    assert cli(*args) == 2
    assert "objective.0 = 'voc07_det': expected 'voc12_action' or 'sun397'" in capsys.readouterr().err
    assert len(mlflow.search_runs(search_all_experiments=True)) == before  # refused before any run

    assert cli(*cli_args(base), "--create-only") == 0
    assert cli(*cli_args(base), "--max-classes", "20") == 2
    assert "exists with another search space" in capsys.readouterr().err
    with pytest.raises(UserError, match="labels 'coarse'"):
        run_study(settings(tiny_world, tmp_path, labels=("coarse",)))
    with pytest.raises(UserError, match="min_classes=2"):
        run_study(settings(tiny_world, tmp_path, min_classes=2))
    assert nothing_running()


def test_a_journal_file_holds_a_study_that_workers_share(tiny_world, tmp_path, capsys):
    journal = tmp_path / "study.journal"
    config = settings(tiny_world, tmp_path, study_name="tiny-journal", storage=str(journal))
    assert cli(*cli_args(config), "--create-only") == 0 and journal.stat().st_size > 0
    assert cli(*cli_args(config), "--create-only") == 0  # a second worker loads it
    study = optuna.load_study(
        study_name="tiny-journal",
        storage=optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal))),
    )
    assert '"num_classes": [10, 40, true]' in study.user_attrs["search_space"]
    assert len(runs(stage="study", study_name="tiny-journal")) == 1  # one study run, resumed by the second
    assert cli(*cli_args(settings(tiny_world, tmp_path, storage=str(tmp_path / "study.db")))) == 2
    assert "expected an RDB URL" in capsys.readouterr().err


def test_multi_objective_choice_and_plots(tmp_path):
    from optuna.distributions import CategoricalDistribution, IntDistribution

    from imagenet_transfer import tracking
    from imagenet_transfer.study import chosen_trial
    from imagenet_transfer.study_plots import log_plots

    study = optuna.create_study(directions=["maximize", "maximize"])
    space = {
        "num_classes": IntDistribution(10, 40, log=True),
        "labels": CategoricalDistribution(["fine", "top-down-127"]),
    }
    for c, labels, values in [
        (10, "fine", (50, 10)),
        (20, "fine", (40, 30)),
        (40, "top-down-127", (10, 50)),
        (30, "top-down-127", (20, 20)),
    ]:
        study.add_trial(
            optuna.create_trial(params={"num_classes": c, "labels": labels}, distributions=space, values=values)
        )
    assert chosen_trial(study).number == 1  # on the Pareto front, the best mean (35)
    config = StudyConfig(budget=240, objective=("voc12_action", "sun397"), labels=("fine", "top-down-127"))
    with tracking.start_run("study", run_name="plots") as run:
        log_plots(study, config)
    logged = {a.path for a in mlflow.artifacts.list_artifacts(run_id=run.info.run_id, artifact_path="plots")}
    assert {
        "plots/optimization_history_0.png",
        "plots/optimization_history_1.png",
        "plots/num_classes_vs_objective_0.png",
        "plots/param_importances_1.png",
        "plots/contour_0.png",
    } <= logged, logged


def test_the_mlproject_entry_point_splits_settings_and_drops_empty_values(tiny_world, tmp_path, capsys):
    import yaml

    from imagenet_transfer.cli import run_entrypoint

    entry = yaml.safe_load((REPO / "MLproject").read_text())["entry_points"]["budget_study"]
    assert {"budget", "n_trials", "study_name", "storage", "objective"} <= set(entry["parameters"])
    with pytest.raises(SystemExit) as exit_:  # MLproject-style arguments, empty ones dropped, --set split
        run_entrypoint(
            ["budget-study"],
            [
                "--budget",
                "5000",
                "--source",
                str(tiny_world / "imagenet"),
                "--min-classes",
                "",
                "--set",
                f"sun397.data={tiny_world},sun397.partitions=1",
                "--quick",
                "true",
                "--objective",
                "sun397",
                "--storage",
                f"sqlite:///{tmp_path / 'o.db'}",
            ],
        )
    assert exit_.value.code == 2 and "budget=5000 is larger than" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # the second setting was split off: its bad value is seen
        run_entrypoint(
            ["budget-study"],
            ["--budget", "240", "--objective", "sun397", "--set", f"sun397.data={tiny_world},sun397.partitions=one"],
        )
    assert "'one' is not a valid int" in capsys.readouterr().err
