"""The report: tables from MLflow with mean ± std over seeds and the interval of that mean (checked by hand), deltas,
the paper's numbers (absolute at real scale, relative at world scale) or "not published", paired comparisons and
the findings' verdicts from prediction tables, plots, Markdown + self-contained HTML, a report run; the newest
FINISHED grid run (one that did not finish is skipped, alone it exits 2), grid runs with steps, metrics or
prediction tables missing (made by hand); bad input."""

import math
import shutil
import statistics
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from conftest import cli
from test_reproduce import grid_store, grid_tracking_uri, running, write_grid  # noqa: F401 (fixtures)

from imagenet_transfer import tracking
from imagenet_transfer.findings import seed_number
from imagenet_transfer.report import NOT_PUBLISHED, published
from imagenet_transfer.reproduce import reproduce
from imagenet_transfer.transfer.runner import load_predictions
from imagenet_transfer.transfer.uncertainty import interval_of_mean


def test_published_numbers_are_the_papers_and_nothing_else():
    assert published("full", "voc07_map") == "58.3"
    assert published("e1-500", "voc07_map") == "57.0 (Δ -1.3)" and published("e1-250", "voc07_map") == "54.6 (Δ -3.7)"
    assert "−2.8" in published("e3-127", "voc07_map")
    assert published("e1-125", "voc07_map") == NOT_PUBLISHED  # the paper's table value was never recovered
    assert published("full", "voc12_action_map") == NOT_PUBLISHED and published(None, "voc07_map") == NOT_PUBLISHED


def test_at_world_scale_the_paper_column_holds_the_papers_relative_effect_not_its_numbers():
    relative = {v: published(v, "voc07_map", absolute=False) for v in ("full", "e1-500", "e1-250", "e3-127")}
    assert relative == {
        "full": "reference",
        "e1-500": "-2.2 % vs full",
        "e1-250": "-6.3 % vs full",
        "e3-127": "≈ -4.8 % vs full",
    }
    assert published("e6-pascal-removed", "voc07_map", absolute=False) == "≈ 0 % vs full"
    assert published("e1-125", "voc07_map", absolute=False) == NOT_PUBLISHED
    assert published("full", "voc12_action_map", absolute=False) == NOT_PUBLISHED


def shown(values: list[float], low: float = math.nan, high: float = math.nan) -> str:
    """A table cell from the values of its seeds and the interval of their mean, by hand: mean ± std, then
    [low, high] where known."""
    text = f"{statistics.mean(values):.2f}" + (f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else "")
    return text if math.isnan(low) else f"{text} [{low:.2f}, {high:.2f}]"


def mean_interval(metric: str, run_ids: list[str]) -> tuple[float, float]:
    """The interval of the mean over runs (ordered by seed) from their logged prediction tables."""
    return interval_of_mean(metric, [load_predictions(run_id, metric) for run_id in run_ids])


@pytest.fixture(scope="module")
def grid_run(tiny_world, tmp_path_factory, tracking_uri, grid_tracking_uri):
    """A 2-seed smoke grid and one budget-study trial, in the tests' store (set here: module scope runs
    before the per-test isolation)."""
    import torch

    folder = tmp_path_factory.mktemp("grid")
    grid = write_grid(
        folder,
        {"ER": (["voc12_action"], ["full", "e3-127"])},
        name="report-grid",
        smoke={"archs": ["small"], "recipe": "smoke", "baselines": True},
    )
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("IMAGENET_TRANSFER_CACHE", str(folder / "cache"))
        mp.setenv("MLFLOW_TRACKING_URI", grid_tracking_uri)
        for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
            mp.delenv(var, raising=False)
        torch.set_num_threads(1)
        try:
            summary = reproduce(grid, smoke=True, seeds=2, world=tiny_world, device="cpu")
        finally:
            torch.set_num_threads(threads)
        with tracking.start_run(
            "trial",
            params={"budget": 240, "num_classes": 20, "images_per_class": 12},
            tags={"study_name": "budget-240", "trial_number": "0"},
        ):
            mlflow.log_metric("objective", 41.5)
    mlflow.set_tracking_uri(tracking_uri)
    return summary


def test_the_report_holds_the_runs_numbers_as_mean_and_std_over_seeds(grid_run, tmp_path):
    assert cli("report", "--out", tmp_path / "rep", "--grid-run", grid_run["run_id"]) == 0
    values, seeds, ids = {}, {}, {}
    for record in sorted(grid_run["records"], key=lambda r: seed_number(r.get("seed"))):
        if record["stage"] == "transfer":
            logged = mlflow.get_run(record["run_id"]).data.metrics
            values.setdefault(record["variant"], []).append(logged["voc12_action_map"])
            seeds.setdefault(record["variant"], []).append(record["seed"])
            ids.setdefault(record["variant"], []).append(record["run_id"])
    assert {v: len(x) for v, x in values.items()} == {"full": 2, "e3-127": 2, "random": 2}  # random init per seed too
    # each cell's interval: of the mean over its two seeds, from the two runs' prediction tables
    bounds = {v: mean_interval("voc12_action_map", ids[v]) for v in values}
    assert all(low <= high for low, high in bounds.values())
    mean = {v: statistics.mean(x) for v, x in values.items()}
    std = {v: statistics.stdev(x) for v, x in values.items() if len(x) > 1}
    markdown = (tmp_path / "rep" / "report.md").read_text()
    assert "## ER: question of ER" in markdown
    assert f"| full | 40 | 24 | {shown(values['full'], *bounds['full'])} | — | {NOT_PUBLISHED} |" in markdown
    delta = mean["e3-127"] - mean["full"]
    relative = f"{delta:+.2f} ({100 * delta / mean['full']:+.1f} %)"
    assert (
        f"| e3-127 | 10 | 24 | {shown(values['e3-127'], *bounds['e3-127'])} | {relative} | {NOT_PUBLISHED} |"
        in markdown
    )
    below = mean["random"] - mean["full"]
    relative = f"{below:+.2f} ({100 * below / mean['full']:+.1f} %)"
    assert (
        f"| random init (no pre-training) | — | 0 | {shown(values['random'], *bounds['random'])} | {relative} | "
        f"{NOT_PUBLISHED} |" in markdown
    )
    assert "What the seeds varied: pretrain,finetune." in markdown

    # paired by seed: seed s of e3-127 against seed s of full and of random init
    compared = pd.read_csv(tmp_path / "rep" / "tables" / "comparisons.csv").set_index(["variant", "reference"])
    assert set(compared.index) == {("full", "random"), ("e3-127", "full"), ("e3-127", "random")}
    by_seed = {v: dict(zip(seeds[v], values[v])) for v in values}
    for (variant, reference), row in compared.iterrows():
        logged = statistics.mean(by_seed[variant][s] - by_seed[reference][s] for s in (0, 1))
        assert row["diff"] == pytest.approx(logged, abs=1e-3) and row["pairs"] == 2
        if not math.isnan(row["low"]):  # runs that logged their prediction tables
            assert row["low"] <= row["high"] and row["significant"] == (row["low"] > 0 or row["high"] < 0)
    verdicts = pd.read_csv(tmp_path / "rep" / "tables" / "findings.csv")
    assert list(verdicts["finding"]) == ["E1", "E3", "E4", "E5", "E6", "E7"]
    assert set(verdicts["verdict"]) == {"not run"}  # the grid ran none of the paper's experiments
    assert "## Findings" in markdown and "## Comparisons" in markdown and "percentile bootstrap" in markdown
    table = pd.read_csv(tmp_path / "rep" / "tables" / "ER.csv").set_index("variant")
    assert table.loc["e3-127", "voc12_action_map_mean"] == pytest.approx(mean["e3-127"])
    assert table.loc["full", "voc12_action_map_std"] == pytest.approx(std["full"])
    assert table.loc["e3-127", "voc12_action_map_n"] == 2
    assert (table.loc["full", "voc12_action_map_ci_low"], table.loc["full", "voc12_action_map_ci_high"]) == (
        pytest.approx(bounds["full"])
    )
    assert "interval of that mean" in markdown and "averaged over seeds]" not in markdown

    plots = {p.name for p in (tmp_path / "rep" / "plots").iterdir()}
    assert plots == {
        "transfer_vs_num_classes.png",
        "budget_study_classes_vs_objective.png",
    }  # no E1 variant: no E1 curve
    page = (tmp_path / "rep" / "report.html").read_text()
    assert page.count("data:image/png;base64,") == len(plots) and 'src="plots/' not in page  # self-contained
    assert shown(values["e3-127"], *bounds["e3-127"]) in page and "<h2>Findings</h2>" in page

    (report_run,) = mlflow.search_runs(
        search_all_experiments=True,
        output_format="list",
        filter_string=f"tags.stage = 'report' and tags.grid_run_id = '{grid_run['run_id']}'",
    )
    assert report_run.info.status == "FINISHED"
    logged = {a.path for a in mlflow.artifacts.list_artifacts(run_id=report_run.info.run_id)}
    assert {"report.md", "report.html", "plots", "tables"} <= logged
    assert not running()


def test_a_report_into_a_non_empty_folder_or_of_a_wrong_run_exits_2(grid_run, tmp_path, capsys):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file.txt").write_text("x")
    before = len(mlflow.search_runs(search_all_experiments=True, filter_string="tags.stage = 'report'"))
    assert cli("report", "--out", tmp_path / "taken") == 2
    assert "not an empty folder" in capsys.readouterr().err
    pretrain_run = next(r["run_id"] for r in grid_run["records"] if r["stage"] == "pretrain")
    assert cli("report", "--out", tmp_path / "r2", "--grid-run", pretrain_run) == 2
    assert "expected a reproduce run" in capsys.readouterr().err
    assert len(mlflow.search_runs(search_all_experiments=True, filter_string="tags.stage = 'report'")) == before
    assert not (tmp_path / "r2").exists() and not running()


def test_an_experiment_without_the_full_variant_is_compared_to_the_grids_full_runs():
    from imagenet_transfer.report import RESULT_COLUMNS, display_rows, experiment_results, experiment_table

    def row(experiment, variant, seed, value, run_id, metric="voc12_action_map"):
        return dict(
            zip(
                RESULT_COLUMNS,
                [
                    experiment,
                    variant,
                    variant if variant == "full" else None,
                    seed,
                    "small",
                    "voc12_action",
                    200,
                    240,
                    run_id,
                    metric,
                    value,
                ],
            )
        )

    results = pd.DataFrame(
        [
            row("E1", "full", 0, 50.0, "a", "voc07_map"),
            row("E2", "full", 0, 60.0, "b"),
            row("E2", "full", 1, 64.0, "c"),
            row("E7", "full", 0, 60.0, "b"),  # the same run listed by two experiments counts once
            row("E5", "e5-budget-12000-classes-50", 0, 55.0, "d"),
            row("E5", "e5-budget-12000-classes-50", 1, 57.0, "e"),
        ]
    )
    part = experiment_results(results, "E5")
    table = experiment_table(part).set_index("variant")
    assert table.loc["full", "voc12_action_map_mean"] == 62.0 and table.loc["full", "voc12_action_map_n"] == 2
    assert table.loc["e5-budget-12000-classes-50", "voc12_action_map_delta"] == pytest.approx(-6.0)
    assert "voc07_map_mean" not in table.columns  # only the experiment's own metrics
    _header, rows = display_rows(experiment_table(part), ["voc12_action_map"])
    assert rows[1][3:6] == [f"56.00 ± {statistics.stdev([55.0, 57.0]):.2f}", "-6.00 (-9.7 %)", NOT_PUBLISHED]

    e1 = pd.DataFrame(
        [
            row("E1", "full", 0, 50.0, "f", "voc07_map"),
            row("E1", "e1-60", 0, 47.0, "g", "voc07_map") | {"paper_variant": "e1-250", "images_per_class": 60},
        ]
    )
    real = display_rows(experiment_table(e1), ["voc07_map"], absolute=True)[1]  # a real-scale grid: the numbers
    world = display_rows(experiment_table(e1), ["voc07_map"], absolute=False)[1]  # else the relative effect
    assert [r[3:6] for r in real] == [["50.00", "—", "58.3"], ["47.00", "-3.00 (-6.0 %)", "54.6 (Δ -3.7)"]]
    assert [r[5] for r in world] == ["reference", "-6.3 % vs full"]


# -- grid runs made by hand (a store of their own per test) -------------------------------------------------
@pytest.fixture(scope="module")
def empty_store(tmp_path_factory) -> Path:
    """An empty SQLite store's file, its tables created once (copies of it are new stores, fast)."""
    path = tmp_path_factory.mktemp("empty-store") / "mlflow.db"
    mlflow.MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def hand_store(empty_store, tmp_path, monkeypatch):
    """An empty store of this test's own: its grid runs are made by hand and must not meet the smoke grid."""
    (tmp_path / "hand").mkdir()
    shutil.copy(empty_store, tmp_path / "hand" / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'hand' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    tracking.configure()
    return uri


def hand_run(stage, start, status="FINISHED", metrics=None, params=None, steps=None, predictions=None):
    """A run tagged `stage`, started at `start` (ms), ended with `status`; `steps` becomes its steps.json,
    `predictions` (metric -> table) its predictions/<metric>.parquet."""
    client = mlflow.MlflowClient()
    run_id = client.create_run(tracking.experiment_id(), start_time=start, tags={"stage": stage}).info.run_id
    for name, value in (metrics or {}).items():
        client.log_metric(run_id, name, value)
    for name, value in (params or {}).items():
        client.log_param(run_id, name, value)
    if steps is not None:
        client.log_dict(run_id, steps, "steps.json")
    with tempfile.TemporaryDirectory() as folder:
        for metric, table in (predictions or {}).items():
            table.to_parquet(Path(folder) / f"{metric}.parquet", index=False)
            client.log_artifact(run_id, str(Path(folder) / f"{metric}.parquet"), "predictions")
    client.set_terminated(run_id, status, end_time=start + 1000)
    return run_id


def step(stage, variant="full", seed=0, run_id="", benchmark=""):
    """A row of a grid run's step table, as `run_grid` writes it."""
    return {
        "experiment": "ER",
        "variant": variant,
        "paper_variant": "full" if variant == "full" else None,
        "seed": seed,
        "num_classes": 40 if variant == "full" else 10,
        "num_fine_classes": 40,
        "train_images": 960,
        "images_per_class": 24.0,
        "arch": "small",
        "stage": stage,
        "benchmark": benchmark,
        "step_key": f"{stage}-{variant}-{seed}-{benchmark}",
        "reused": False,
        "seconds": 0.1,
        "run_id": run_id,
    }


def transfer_step(variant, seed, run_id):
    return step("transfer", variant, seed, run_id, "voc12_action")


def report_runs():
    return mlflow.search_runs(search_all_experiments=True, filter_string="tags.stage = 'report'", output_format="list")


T0 = 1_700_000_000_000  # ms: the hand-made runs' start times, oldest first


def test_a_grid_run_that_did_not_finish_is_not_reported_and_alone_exits_2(hand_store, tmp_path, capsys):
    pretrain = hand_run("pretrain", T0)
    failed = hand_run("reproduce", T0 + 1000, "FAILED", steps=[step("subset"), step("pretrain", run_id=pretrain)])
    killed = hand_run("reproduce", T0 + 2000, "KILLED", steps=[step("subset")])
    assert cli("report", "--out", tmp_path / "rep") == 2
    message = capsys.readouterr().err
    assert "stage=reproduce with status FINISHED" in message and hand_store in message
    assert f"{killed} (KILLED), {failed} (FAILED)" in message and "imagenet-transfer reproduce" in message

    for grid_run, expected in (
        (failed, f"--grid-run {failed} is a reproduce run with status FAILED; expected a FINISHED one"),
        (killed, "status KILLED; expected a FINISHED one"),
        (pretrain, f"--grid-run {pretrain} is a pretrain run; expected a reproduce run"),
        ("0" * 32, f"--grid-run {'0' * 32}: no such run in the tracking store {hand_store}"),
    ):
        assert cli("report", "--out", tmp_path / "rep", "--grid-run", grid_run) == 2
        assert expected in capsys.readouterr().err
    assert not (tmp_path / "rep").exists() and not report_runs() and not running()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".rep")] == []  # no temporary folder left


def test_a_newer_unfinished_grid_run_is_skipped_for_the_newest_finished_one(hand_store, tmp_path, capsys):
    ok = [hand_run("transfer", T0 + i, metrics={"voc12_action_map": v}) for i, v in enumerate((60.0, 64.0, 50.0))]
    lost = hand_run("transfer", T0 + 10, "FAILED")  # a transfer run that failed: no metric
    older = hand_run(
        "reproduce",
        T0 + 100,
        params={"grid_name": "old-grid", "profile": "smoke"},
        steps=[transfer_step("full", 0, ok[0])],
    )
    finished = hand_run(
        "reproduce",
        T0 + 200,
        params={"grid_name": "hand-grid", "profile": "smoke"},
        steps=[
            step("subset"),
            step("pretrain"),
            transfer_step("full", 0, ok[0]),
            transfer_step("full", 1, ok[1]),
            step("subset", "e3-127"),
            step("pretrain", "e3-127"),
            transfer_step("e3-127", 0, ok[2]),
            transfer_step("e3-127", 1, lost),
            transfer_step("e3-127", 2, ""),
        ],
    )
    failed = hand_run("reproduce", T0 + 300, "FAILED", steps=[step("subset"), transfer_step("full", 0, lost)])
    assert cli("report", "--out", tmp_path / "rep") == 0
    err = capsys.readouterr().err
    assert f"reporting grid run {finished} (grid hand-grid" in err and older not in err
    assert f"skipped 1 newer grid run(s) that did not finish: {failed} (FAILED)" in err
    markdown = (tmp_path / "rep" / "report.md").read_text()
    assert f"reproduce run `{finished}` (FINISHED)" in markdown and f"{failed} (FAILED)" in markdown
    assert f"| full | 40 | 24 | 62.00 ± {statistics.stdev([60.0, 64.0]):.2f} | — | {NOT_PUBLISHED} |" in markdown
    assert f"| e3-127 | 10 | 24 | 50.00 | -12.00 (-19.4 %) | {NOT_PUBLISHED} |" in markdown  # no metric: not counted
    table = pd.read_csv(tmp_path / "rep" / "tables" / "ER.csv").set_index("variant")
    assert table.loc["e3-127", "voc12_action_map_n"] == 1
    (report_run,) = report_runs()
    assert report_run.data.tags["grid_run_id"] == finished and report_run.info.status == "FINISHED"

    assert cli("report", "--out", tmp_path / "old", "--grid-run", older) == 0  # an older finished one, by id
    assert "reporting grid run " + older in capsys.readouterr().err
    assert "skipped" not in (tmp_path / "old" / "report.md").read_text() and not running()


def test_a_finished_grid_run_without_transfer_results_gives_a_report_that_says_so(hand_store, tmp_path):
    lost = hand_run("transfer", T0, "FAILED")
    hand_run("reproduce", T0 + 100, steps=[step("subset"), step("pretrain"), transfer_step("full", 0, lost)])
    hand_run("trial", T0 + 200, metrics={"objective": 41.5}, params={"num_classes": 20, "budget": 240})
    assert cli("report", "--out", tmp_path / "rep") == 0
    markdown = (tmp_path / "rep" / "report.md").read_text()
    assert "No transfer results in the grid run: none of its transfer steps has a metric." in markdown
    assert [p.name for p in (tmp_path / "rep" / "plots").iterdir()] == ["budget_study_classes_vs_objective.png"]
    assert sorted(p.name for p in (tmp_path / "rep" / "tables").iterdir()) == ["comparisons.csv", "findings.csv"]
    assert set(pd.read_csv(tmp_path / "rep" / "tables" / "findings.csv")["verdict"]) == {"not run"}


def test_a_report_without_a_tracking_store_exits_2_and_creates_none(tmp_path, monkeypatch, capsys):
    missing = f"sqlite:///{tmp_path / 'nowhere' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", missing)
    assert cli("report", "--out", tmp_path / "rep") == 2
    message = capsys.readouterr().err
    assert f"stage=reproduce with status FINISHED in the tracking store {missing}, which does not exist" in message
    assert "imagenet-transfer reproduce" in message
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.chdir(tmp_path)
    assert cli("report") == 2  # the default store, ./mlruns/mlflow.db
    assert "mlruns/mlflow.db, which does not exist" in capsys.readouterr().err
    assert not {"nowhere", "mlruns", "reports", "rep"} & {p.name for p in tmp_path.iterdir()}  # no store, no report


def test_a_world_grid_with_prediction_tables_gets_paired_comparisons_verdicts_and_relative_paper_effects(
    hand_store, tmp_path
):
    """E4 (probes, prediction tables and intervals logged, as grids log them now) and E1 (metrics only, as
    older grids logged them), two seeds each, at world scale."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 400)
    units = [f"img{i:04d}" for i in range(len(labels))]
    steps, runs, tables, start = [], {}, {}, T0

    def transfer(experiment, variant, seed, benchmark, metric, value, *, classes, images, paper=None, right=None):
        nonlocal start
        start += 10
        metrics, predictions = {metric: value}, None
        if right is not None:  # an accuracy table right that often; the logged metric and interval are its own
            pred = np.where(rng.random(len(labels)) < right, labels, (labels + 1) % 10)
            predictions = {metric: pd.DataFrame({"unit": units, "label": labels, "pred": pred})}
            tables[experiment, variant, seed] = predictions[metric]
            metrics = {metric: 100 * float((pred == labels).mean())}
            metrics |= {f"{metric}_ci_low": metrics[metric] - 4.0, f"{metric}_ci_high": metrics[metric] + 4.0}
        run_id = hand_run("transfer", start, metrics=metrics, predictions=predictions)
        runs[experiment, variant, seed] = metrics
        row = step("transfer", variant, seed, run_id, benchmark)
        steps.append(
            row
            | {
                "experiment": experiment,
                "paper_variant": paper,
                "num_classes": classes,
                "images_per_class": images,
                "stage": "transfer",
            }
        )

    for seed in (0, 1):
        transfer("E4", "full", seed, "probe", "probe_knn_top1", 0, classes=40, images=24, paper="full", right=0.8)
        transfer("E4", "e3-127", seed, "probe", "probe_knn_top1", 0, classes=10, images=24, paper="e3-127", right=0.65)
        transfer("E4", "random", seed, "probe", "probe_knn_top1", 0, classes=0, images=0, right=0.12)
        transfer("E1", "full", seed, "voc07_det", "voc07_map", 40.0 + 2 * seed, classes=40, images=24, paper="full")
        transfer("E1", "e1-6", seed, "voc07_det", "voc07_map", 37.0 + seed, classes=40, images=6, paper="e1-250")
    params = {"grid_name": "hand-grid", "profile": "world", "scale": "world", "varied": "pretrain,finetune"}
    hand_run("reproduce", start + 100, params=params, steps=steps)
    assert cli("report", "--out", tmp_path / "rep") == 0
    folder = tmp_path / "rep"
    markdown = (folder / "report.md").read_text()

    compared = pd.read_csv(folder / "tables" / "comparisons.csv").set_index(["experiment", "variant", "reference"])
    coarse = compared.loc[("E4", "e3-127", "random")]  # paired bootstrap over the 400 images, 2 seeds
    score = {k: next(iter(v.values())) for k, v in runs.items()}  # each run's headline metric
    assert coarse["diff"] == pytest.approx(
        statistics.mean(score["E4", "e3-127", s] - score["E4", "random", s] for s in (0, 1))
    )
    assert coarse["low"] > 0 and coarse["significant"] and coarse["note"] == "1000 resamples"
    below = compared.loc[("E4", "e3-127", "full")]
    assert below["high"] < 0 and below["significant"]
    assert below["relative"] == pytest.approx(below["diff"] / statistics.mean(score["E4", "full", s] for s in (0, 1)))
    fewer = compared.loc[("E1", "e1-6", "full")]  # no prediction tables: the logged difference, no interval
    assert fewer["diff"] == pytest.approx(-3.5) and math.isnan(fewer["low"]) and fewer["note"].startswith("no interval")

    verdicts = pd.read_csv(folder / "tables" / "findings.csv").set_index("finding")
    assert verdicts["verdict"].to_dict() == {
        "E1": "no interval",
        "E3": "not run",
        "E4": "reproduced",
        "E5": "not run",
        "E6": "not run",
        "E7": "not run",
    }
    assert verdicts.loc["E4", "low"] == pytest.approx(coarse["low"])
    assert verdicts.loc["E1", "diff"] == pytest.approx(-3.5) and verdicts.loc["E1", "relative"] == pytest.approx(
        -3.5 / 41
    )

    assert "## Findings" in markdown and "## Comparisons" in markdown
    assert "What the seeds varied: pretrain,finetune." in markdown and "1,000 resamples" in markdown
    e4 = next(line for line in markdown.splitlines() if line.startswith("| E4 | Features"))
    assert f"{coarse['diff']:+.2f} [{coarse['low']:+.2f}, {coarse['high']:+.2f}]" in e4 and "| reproduced |" in e4
    full = [score["E4", "full", s] for s in (0, 1)]  # the interval of the mean of the two runs, not the logged ±4
    low, high = interval_of_mean("probe_knn_top1", [tables["E4", "full", s] for s in (0, 1)])
    assert f"| full | 40 | 24 | {shown(full, low, high)} | — | {NOT_PUBLISHED} |" in markdown
    e4 = pd.read_csv(folder / "tables" / "E4.csv").set_index("variant")
    assert (e4.loc["full", "probe_knn_top1_ci_low"], e4.loc["full", "probe_knn_top1_ci_high"]) == pytest.approx(
        (low, high)
    )
    assert (
        f"| e1-6 | 40 | 6 | {shown([37.0, 38.0])} | -3.50 (-8.5 %) | -6.3 % vs full |" in markdown
    )  # two seeds without prediction tables: no interval; the paper's relative effect, not its 54.6, at world scale
    e1 = markdown.split("## E1")[1].split("Paper's finding")[0]  # the E1 table
    assert "| full | 40 | 24 | 41.00 ± 1.41 | — | reference |" in e1 and "54.6" not in e1 and "58.3" not in e1
    assert "| E4 | e3-127 | random init (no pre-training) | probe_knn_top1 | 2 |" in markdown
    plots = {p.name for p in (folder / "plots").iterdir()}
    assert plots == {"transfer_vs_images_per_class.png", "transfer_vs_num_classes.png"}
    assert "beside the paper's relative effect" in markdown and not running()
