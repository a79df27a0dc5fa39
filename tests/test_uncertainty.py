"""Bootstrap intervals and paired comparisons of the transfer metrics (`transfer.uncertainty`): each kind of table
scored as its benchmark scores it, resamples scored exactly as the resampled test set, seeded intervals, paired
differences, bad tables, and a transfer run logging its tables and intervals."""

import math

import mlflow
import numpy as np
import pandas as pd
import pytest

from imagenet_transfer.errors import UserError
from imagenet_transfer.transfer.metrics import (
    DetectionEvaluator,
    average_precision,
    mean_ap,
    mean_per_class_accuracy,
    top1_accuracy,
)
from imagenet_transfer.transfer.runner import load_predictions, make_config, run_benchmark
from imagenet_transfer.transfer.uncertainty import (
    KINDS,
    Comparison,
    _scorer,
    interval,
    interval_of_mean,
    paired,
    score,
)


def accuracy_table(n: int, rate: float, seed: int = 0) -> pd.DataFrame:
    """n images, each predicted right with probability `rate` (10 classes)."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 10, n)
    pred = np.where(rng.random(n) < rate, label, (label + 1) % 10)
    return pd.DataFrame({"unit": [f"img{i:05d}" for i in range(n)], "label": label, "pred": pred})


def multilabel_table(n: int, classes: int = 4, seed: int = 0) -> pd.DataFrame:
    """n persons; scores rounded to one decimal (many ties); class 0 without a positive."""
    rng = np.random.default_rng(seed)
    target = (rng.random((n, classes)) < 0.3).astype(int)
    target[:, 0] = 0
    scores = np.round(0.4 * target + rng.random((n, classes)), 1)
    table = pd.DataFrame({"unit": [f"p{i}" for i in range(n)]})
    for c in range(classes):
        table[f"target_{c}"], table[f"score_{c}"] = target[:, c], scores[:, c]
    return table


def multilabel_map(table: pd.DataFrame) -> float:
    """The benchmark's mAP (%) of a multilabel table: `average_precision` per class, `mean_ap` over them."""
    classes = [c.removeprefix("target_") for c in table.columns if c.startswith("target_")]
    return 100 * mean_ap({c: average_precision(table[f"score_{c}"], table[f"target_{c}"]) for c in classes})


def random_images(n: int, classes: int, seed: int) -> list[tuple]:
    """(image id, boxes, labels, difficult, detection boxes, scores, labels) of n random images."""
    rng = np.random.default_rng(seed)
    images = []
    for i in range(n):
        k = int(rng.integers(0, 4))
        corner = rng.uniform(1, 80, (k, 2))
        boxes = np.hstack([corner, corner + rng.uniform(10, 40, (k, 2))])
        labels, difficult = rng.integers(0, classes, k), rng.random(k) < 0.2
        m = int(rng.integers(0, 5))
        if k and m:
            near = rng.integers(0, k, m)
            found, found_labels = boxes[near] + rng.normal(0, 4, (m, 4)), labels[near]
        else:
            corner = rng.uniform(1, 80, (m, 2))
            found, found_labels = np.hstack([corner, corner + 20]), rng.integers(0, classes, m)
        images.append((f"im{i:03d}", boxes, labels, difficult, found, rng.random(m), found_labels))
    return images


def evaluator_of(images, classes: int, names=None) -> DetectionEvaluator:
    evaluator = DetectionEvaluator([f"c{c}" for c in range(classes)])
    for n, (image_id, boxes, labels, difficult, found, scores, found_labels) in enumerate(images):
        name = image_id if names is None else names[n]
        evaluator.add_ground_truth(name, boxes, labels, difficult)
        evaluator.update(name, found, scores, found_labels)
    return evaluator


# -- scores: each table gives its benchmark's number ---------------------------------------------------------
def test_detection_ap_by_hand_and_as_the_evaluator_computes_it():
    evaluator = DetectionEvaluator(["cat", "dog"])
    box, elsewhere = [1, 1, 10, 10], [50, 50, 60, 60]
    evaluator.add_ground_truth("a", [box, [20, 20, 30, 30]], ["cat", "dog"], [False, True])  # the dog: difficult
    evaluator.add_ground_truth("b", [box], ["cat"])
    evaluator.add_ground_truth("c", [], [])
    evaluator.add_ground_truth("d", [], [])  # nothing in it, nothing found
    evaluator.update("a", [box, [20, 20, 30, 30]], [0.9, 0.8], ["cat", "dog"])  # TP, and one on the difficult dog
    evaluator.update("b", [elsewhere, box], [0.7, 0.5], ["cat", "cat"])  # FP, TP
    evaluator.update("c", [box], [0.6], ["cat"])  # FP
    evaluator.update("d", [], [], [])
    table = evaluator.predictions()
    assert set(table["unit"]) == {"a", "b", "c", "d"}
    truth, found = table[table["gt"] == 1], table[(table["gt"] == 0) & (table["cls"] >= 0)]
    assert truth["unit"].tolist() == ["a", "b"] and truth["cls"].tolist() == [0, 0]  # the difficult box left out
    assert found["score"].tolist() == [0.9, 0.7, 0.6, 0.5] and found["tp"].tolist() == [1, 0, 0, 1]  # dog ignored
    assert table.loc[table["cls"] == -1, "unit"].tolist() == ["d"]
    # cat: precision 1, 1/2, 1/3, 1/2 at recall 1/2, 1/2, 1/2, 1: 1 for t <= 0.5 (6 points), 1/2 above (5 points);
    # the dog has no counted box: no AP, left out of the mean
    by_hand = 100 * (6 * 1.0 + 5 * 0.5) / 11
    assert score("voc07_map", table) == pytest.approx(by_hand, abs=1e-12)
    assert score("voc07_map", table) == pytest.approx(100 * evaluator.accumulate().mean_ap, abs=1e-12)


def test_detection_table_scores_the_evaluators_map_on_random_images_with_ties():
    for seed in range(5):
        images = random_images(80, 5, seed)
        images = [(*image[:5], np.round(image[5], 1), image[6]) for image in images]  # tied scores
        evaluator = evaluator_of(images, 5)
        assert score("voc07_map", evaluator.predictions()) == pytest.approx(
            100 * evaluator.accumulate().mean_ap, abs=1e-9
        )


def test_other_tables_score_their_benchmarks_metric():
    table = multilabel_table(300)
    assert score("voc12_action_map", table) == pytest.approx(multilabel_map(table), abs=1e-9)
    a, b = accuracy_table(200, 0.6, seed=1), accuracy_table(300, 0.4, seed=2)
    strata = pd.concat([a.assign(stratum=1), b.assign(stratum=2)], ignore_index=True)
    expected = 50 * sum(mean_per_class_accuracy(t["pred"].to_numpy(), t["label"].to_numpy()) for t in (a, b))
    assert score("sun397_acc", strata) == pytest.approx(expected, abs=1e-9)
    assert score("probe_linear_top1", a) == pytest.approx(100 * top1_accuracy(a["pred"], a["label"]), abs=1e-9)


def test_a_resample_is_scored_as_the_resampled_test_set():
    """Counts per unit give the metric of the test set with each unit copied that many times."""
    rng = np.random.default_rng(0)
    images = random_images(40, 4, seed=3)
    scorer = _scorer("voc07_map", evaluator_of(images, 4).predictions())
    persons = multilabel_table(60)
    person_scorer = _scorer("voc12_action_map", persons)
    for _ in range(10):
        draw = rng.integers(0, 40, 40)
        copies = evaluator_of([images[k] for k in draw], 4, names=[f"copy{n}" for n in range(40)])
        weights = np.bincount(draw, minlength=40)[None].astype(float)  # units sort as im000, im001, ...
        assert scorer.scores(weights)[0] == pytest.approx(100 * copies.accumulate().mean_ap, abs=1e-9, nan_ok=True)
        draw = rng.integers(0, 60, 60)
        expected = multilabel_map(persons.iloc[draw])
        order = person_scorer.keys.get_level_values("unit").get_indexer(persons["unit"])
        weights = np.zeros((1, 60))
        weights[0, order] = np.bincount(draw, minlength=60)
        assert person_scorer.scores(weights)[0] == pytest.approx(expected, abs=1e-9)


# -- intervals ----------------------------------------------------------------------------------------------
def test_interval_covers_the_estimate_and_shrinks_with_more_units():
    small, large = accuracy_table(100, 0.7), accuracy_table(5000, 0.7)
    widths = []
    for table in (small, large):
        low, high = interval("probe_knn_top1", table)
        assert low <= score("probe_knn_top1", table) <= high
        widths.append(high - low)
    assert widths[1] < widths[0] / 4  # ~1/sqrt(50)
    assert widths[1] == pytest.approx(2 * 1.96 * 100 * math.sqrt(0.7 * 0.3 / 5000), rel=0.15)
    for metric, table in (("voc12_action_map", multilabel_table(200)), ("voc07_map", None)):
        if table is None:
            table = evaluator_of(random_images(100, 4, seed=0), 4).predictions()
        low, high = interval(metric, table, resamples=300)
        assert low <= score(metric, table) <= high and low < high


def test_a_seeded_interval_is_reproducible():
    table = pd.concat(
        [accuracy_table(150, 0.5, seed=s).assign(stratum=s) for s in (1, 2)], ignore_index=True
    )  # resampled within each stratum
    assert interval("sun397_acc", table, seed=3) == interval("sun397_acc", table, seed=3)
    assert interval("sun397_acc", table, seed=3) != interval("sun397_acc", table, seed=4)
    low, high = interval("sun397_acc", table, level=0.5)
    wide_low, wide_high = interval("sun397_acc", table, level=0.99)
    assert wide_low < low < high < wide_high


# -- the interval of a mean over runs -----------------------------------------------------------------------
def test_the_interval_of_the_mean_of_one_table_is_its_interval():
    table = evaluator_of(random_images(60, 3, seed=2), 3).predictions()
    assert interval_of_mean("voc07_map", [table], seed=5) == interval("voc07_map", table, seed=5)
    strata = pd.concat([accuracy_table(80, 0.5, seed=s).assign(stratum=s) for s in (1, 2)], ignore_index=True)
    assert interval_of_mean("sun397_acc", [strata], resamples=300, level=0.9) == interval(
        "sun397_acc", strata, resamples=300, level=0.9
    )
    with pytest.raises(ValueError, match="no tables"):
        interval_of_mean("voc07_map", [])


def test_the_mean_of_three_similar_runs_is_surer_than_one_run():
    tables = [accuracy_table(300, 0.7, seed=s) for s in range(3)]
    low, high = interval_of_mean("probe_knn_top1", tables)
    alone = [interval("probe_knn_top1", t) for t in tables]
    assert high - low < min(h - lo for lo, h in alone)
    mean = np.mean([score("probe_knn_top1", t) for t in tables])
    assert low < mean < high


def test_a_seeded_interval_of_a_mean_is_reproducible():
    tables = [multilabel_table(60, seed=s) for s in range(2)]
    assert interval_of_mean("voc12_action_map", tables, seed=3) == interval_of_mean("voc12_action_map", tables, seed=3)
    assert interval_of_mean("voc12_action_map", tables, seed=3) != interval_of_mean("voc12_action_map", tables, seed=4)


# -- paired comparisons -------------------------------------------------------------------------------------
def test_a_table_against_itself_differs_by_exactly_nothing():
    table = evaluator_of(random_images(60, 3, seed=1), 3).predictions()
    same = paired("voc07_map", [(table, table.copy())])
    assert same == Comparison(diff=0.0, low=0.0, high=0.0, pairs=1, resamples=1000) and not same.significant


def test_a_clearly_better_predictor_is_significantly_better():
    truth = accuracy_table(400, 0.9, seed=0)
    worse = truth.assign(pred=np.where(np.arange(400) % 2 == 0, truth["pred"], (truth["label"] + 3) % 10))
    better = paired("probe_linear_top1", [(truth, worse)])
    assert better.diff == pytest.approx(score("probe_linear_top1", truth) - score("probe_linear_top1", worse))
    assert better.significant and 0 < better.low < better.diff < better.high
    reverse = paired("probe_linear_top1", [(worse, truth)])
    assert reverse.significant and reverse.high < 0
    # close predictors on few units: no conclusion
    noisy = accuracy_table(50, 0.6, seed=1)
    close = noisy.assign(pred=np.where(np.arange(50) == 0, -1, noisy["pred"]))
    assert not paired("probe_linear_top1", [(noisy, close)]).significant


def test_pairs_must_hold_the_same_units():
    a = accuracy_table(100, 0.5)
    with pytest.raises(ValueError, match="pair 0 holds different units"):
        paired("probe_knn_top1", [(a, a.iloc[1:])])
    with pytest.raises(ValueError, match="pair 1 holds different units"):
        paired("probe_knn_top1", [(a, a), (a, a.assign(unit=a["unit"] + "x"))])
    with pytest.raises(ValueError, match="no pairs"):
        paired("probe_knn_top1", [])


def test_combining_pairs_averages_their_differences():
    pairs = []
    for seed in range(3):
        a = accuracy_table(300, 0.6 + 0.1 * seed, seed=seed)
        pairs.append((a, a.assign(pred=np.where(np.arange(300) % 4 == 0, -1, a["pred"]))))
    alone = [paired("probe_knn_top1", [pair]) for pair in pairs]
    together = paired("probe_knn_top1", pairs)
    assert together.pairs == 3 and together.diff == pytest.approx(np.mean([c.diff for c in alone]))
    assert together.high - together.low < min(c.high - c.low for c in alone)  # three test sets say more than one
    twice = paired("probe_knn_top1", [pairs[0], pairs[0]])
    assert twice.diff == pytest.approx(alone[0].diff)


# -- bad tables ---------------------------------------------------------------------------------------------
def test_bad_tables_and_arguments_are_refused():
    table = accuracy_table(20, 0.5)
    with pytest.raises(ValueError, match="unknown metric 'top5'; expected one of: voc07_map"):
        score("top5", table)
    with pytest.raises(ValueError, match="missing column.* stratum"):
        score("sun397_acc", table)
    with pytest.raises(ValueError, match="listed more than once"):
        score("probe_knn_top1", pd.concat([table, table.iloc[:2]]))
    with pytest.raises(ValueError, match="resamples=0"):
        interval("probe_knn_top1", table, resamples=0)
    assert set(KINDS.values()) == {"detection", "multilabel", "class_mean", "accuracy"}


# -- a transfer run -----------------------------------------------------------------------------------------
def test_a_transfer_run_logs_its_predictions_and_intervals(tiny_world, one_thread):
    config = make_config("sun397", [f"data={tiny_world}"], quick=True)
    metrics = run_benchmark("sun397", "random:small@32", config, device="cpu")
    run = mlflow.get_run(mlflow.last_active_run().info.run_id)
    logged = run.data.metrics
    assert logged["sun397_acc_ci_low"] <= metrics["sun397_acc"] <= logged["sun397_acc_ci_high"]
    assert logged["sun397_acc_ci_low"] < logged["sun397_acc_ci_high"]
    assert run.data.params["ci.resamples"] == "1000" and run.data.params["ci.level"] == "0.95"
    artifacts = {a.path for a in mlflow.artifacts.list_artifacts(run_id=run.info.run_id, artifact_path="predictions")}
    assert artifacts == {"predictions/sun397_acc.parquet"}
    table = load_predictions(run.info.run_id, "sun397_acc")
    assert score("sun397_acc", table) == pytest.approx(metrics["sun397_acc"])
    assert interval("sun397_acc", table) == pytest.approx((logged["sun397_acc_ci_low"], logged["sun397_acc_ci_high"]))
    with pytest.raises(UserError, match="has no predictions/voc07_map.parquet"):
        load_predictions(run.info.run_id, "voc07_map")
