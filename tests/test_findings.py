"""The findings: every verdict of every rule reached from hand-made intervals (none typed in), and paired
comparisons built from synthetic prediction tables in a results frame shaped like `report.grid_results`'."""

import math

import numpy as np
import pandas as pd
import pytest

from imagenet_transfer import findings
from imagenet_transfer.findings import (
    CONTRADICTED,
    INCONCLUSIVE,
    MARGIN,
    NO_INTERVAL,
    NOT_RUN,
    REPRODUCED,
    comparisons,
    verdicts,
)
from imagenet_transfer.report import RESULT_COLUMNS


# -- the rules on numbers ----------------------------------------------------------------------------------
def test_a_directional_rule_reads_the_side_of_zero_the_interval_lies_on():
    rule = findings.verdict_directional
    assert rule(-3.0, -0.5, -1) == REPRODUCED and rule(0.5, 3.0, +1) == REPRODUCED
    assert rule(0.5, 3.0, -1) == CONTRADICTED and rule(-3.0, -0.5, +1) == CONTRADICTED
    assert rule(-3.0, 0.5, -1) == INCONCLUSIVE and rule(-3.0, 0.0, -1) == INCONCLUSIVE  # touching 0: not excluded
    assert rule(math.nan, math.nan, -1) == NO_INTERVAL


def test_the_equivalence_rule_reads_the_margin_around_zero():
    rule = findings.verdict_equivalent
    assert rule(-0.02, 0.03) == REPRODUCED and rule(-MARGIN, MARGIN) == REPRODUCED
    assert rule(0.06, 0.09) == CONTRADICTED and rule(-0.2, -0.07) == CONTRADICTED
    assert rule(-0.02, 0.08) == INCONCLUSIVE and rule(0.01, 0.07) == INCONCLUSIVE  # significant, yet not beyond
    assert rule(math.nan, 0.01) == NO_INTERVAL


def test_the_above_random_init_rule():
    rule = findings.verdict_above
    assert rule(5.0, 1.0, 9.0) == REPRODUCED
    assert rule(-5.0, -9.0, -1.0) == CONTRADICTED and rule(-1.0, -3.0, 0.0) == CONTRADICTED  # no gain possible
    assert rule(1.0, -2.0, 4.0) == INCONCLUSIVE
    assert rule(0.0, -1.9, 1.9) == INCONCLUSIVE and rule(-0.5, -3.0, 2.0) == INCONCLUSIVE  # wide, around 0
    assert rule(1.0, math.nan, math.nan) == NO_INTERVAL


def test_the_not_always_rule_over_splits():
    rule = findings.verdict_not_always
    gain, small_none, wide_none = (1.0, 3.0, 0.06), (-1.0, 1.0, 0.02), (-1.0, 8.0, 0.16)
    assert rule([gain, gain]) == CONTRADICTED
    assert rule([gain, small_none]) == REPRODUCED and rule([(-4.0, -1.0, -0.02)]) == REPRODUCED  # A+B hurts
    assert rule([gain, wide_none]) == INCONCLUSIVE  # no significant gain, but a large one is not excluded
    assert rule([gain, (math.nan, math.nan, math.nan)]) == NO_INTERVAL and rule([]) == NOT_RUN


# -- the verdict table on hand-made comparisons -------------------------------------------------------------
FULL = 50.0  # full's score in every hand-made comparison


def comparison(experiment, variant, reference, low, high, *, metric="voc07_map", classes=200, images=240.0, paper=None):
    """A comparison row with the interval (low, high), its middle as the difference, relative to FULL."""
    diff = (low + high) / 2
    row = dict.fromkeys(findings.COMPARISON_COLUMNS, math.nan) | {
        "experiment": experiment,
        "arch": "small",
        "benchmark": "x",
        "metric": metric,
        "variant": variant,
        "paper_variant": paper,
        "num_classes": classes,
        "images_per_class": images,
        "reference": reference,
        "pairs": 2,
        "diff": diff,
        "low": low,
        "high": high,
        "significant": None if math.isnan(low) else bool(low > 0 or high < 0),
        "relative": diff / FULL,
        "relative_low": low / FULL,
        "relative_high": high / FULL,
        "relative_to": "full",
        "note": "1000 resamples" if not math.isnan(low) else "no interval: no predictions",
    }
    return row


def results_of(*experiments):
    """A results frame that ran `experiments` (the verdicts read which experiments ran from it)."""
    return pd.DataFrame([dict.fromkeys(RESULT_COLUMNS) | {"experiment": e} for e in experiments])


# Per finding: the comparison rows its rule reads, from one interval (low, high); then intervals that give
# each verdict. The verdicts come from the rules, so moving the interval moves the verdict.
CASES = {
    "E1": (
        lambda lo, hi: [
            comparison("E1", "e1-120", "full", lo + 5, hi + 5, images=120.0, paper="e1-500"),  # not the one read
            comparison("E1", "e1-60", "full", lo, hi, images=60.0, paper="e1-250"),
            comparison("E1", "e1-60", "random", 20.0, 30.0, images=60.0, paper="e1-250"),
        ],
        {REPRODUCED: (-4.0, -1.0), CONTRADICTED: (1.0, 4.0), INCONCLUSIVE: (-4.0, 1.0)},
    ),
    "E3": (
        lambda lo, hi: [comparison("E3", "e3-127", "full", lo, hi, classes=40)],
        {REPRODUCED: (-4.0, -1.0), CONTRADICTED: (1.0, 4.0), INCONCLUSIVE: (-1.0, 1.0)},
    ),
    "E4": (
        lambda lo, hi: [
            comparison("E4", "full", "random", 30.0, 40.0, metric="probe_knn_top1"),
            comparison("E4", "e3-127", "random", lo, hi, metric="probe_knn_top1", classes=40),
        ],
        {REPRODUCED: (5.0, 15.0), CONTRADICTED: (-6.0, -1.0), INCONCLUSIVE: (-2.0, 6.0)},
    ),
    "E5": (
        lambda lo, hi: [
            comparison("E5", "e5-budget-12000-classes-100", "e5-budget-12000-classes-200", -9.0, -8.0, classes=100),
            comparison("E5", "e5-budget-12000-classes-50", "e5-budget-12000-classes-200", lo, hi, classes=50),
            comparison("E5", "e5-budget-12000-classes-50", "full", -20.0, -10.0, classes=50),
        ],
        {REPRODUCED: (0.5, 2.0), CONTRADICTED: (-2.0, -0.5), INCONCLUSIVE: (-0.5, 2.0)},
    ),
    "E6": (
        lambda lo, hi: [comparison("E6", "e6-pascal-removed", "full", lo, hi, classes=166)],
        {REPRODUCED: (-2.0, 1.0), CONTRADICTED: (-8.0, -3.0), INCONCLUSIVE: (-4.0, 1.0)},  # margin: ±2.5 of 50
    ),
    "E7": (
        lambda lo, hi: [
            comparison("E7", "full", "e7-random-a", 1.0, 4.0),  # a significant gain in the random split
            comparison("E7", "full", "e7-minimal-a", lo, hi),
            comparison("E7", "e7-minimal-a", "full", -hi, -lo, classes=100),
        ],
        {REPRODUCED: (-1.0, 2.0), CONTRADICTED: (0.5, 3.0), INCONCLUSIVE: (-1.0, 6.0)},
    ),
}


@pytest.mark.parametrize("finding", list(CASES))
def test_every_finding_reaches_each_verdict_from_its_interval(finding):
    build, intervals = CASES[finding]
    seen = {}
    for expected, (low, high) in intervals.items():
        table = verdicts(results_of(*CASES), pd.DataFrame(build(low, high))).set_index("finding")
        row = table.loc[finding]
        assert row["verdict"] == expected, (finding, low, high, row.to_dict())
        if finding != "E7":  # E7 shows the comparison that decides it
            assert (row["low"], row["high"]) == (low, high) and row["relative_low"] == pytest.approx(low / FULL)
        seen[expected] = row["verdict"]
        assert row["rule"] == findings.RULES[finding] and row["experiment"] == finding
    assert set(seen.values()) == {REPRODUCED, CONTRADICTED, INCONCLUSIVE}
    build_none = pd.DataFrame(build(math.nan, math.nan))
    assert verdicts(results_of(*CASES), build_none).set_index("finding").loc[finding, "verdict"] == NO_INTERVAL


def test_the_verdict_table_has_the_six_findings_with_the_papers_effects_and_not_run_where_nothing_ran():
    build, _ = CASES["E1"]
    table = verdicts(results_of("E1", "E2", "E3"), pd.DataFrame(build(-4.0, -1.0))).set_index("finding")
    assert list(table.index) == ["E1", "E3", "E4", "E5", "E6", "E7"]
    assert table.loc["E1", "comparison"] == "e1-60 − full" and table.loc["E1", "verdict"] == REPRODUCED
    assert table.loc["E1", "paper_relative"] == pytest.approx(54.6 / 58.3 - 1)
    assert "-6.3 % vs full" in table.loc["E1", "paper_effect"]
    assert (
        table.loc["E3", "paper_relative"] == pytest.approx(-2.8 / 58.3) and "-4.8 %" in table.loc["E3", "paper_effect"]
    )
    assert table.loc["E6", "paper_relative"] == 0.0 and math.isnan(table.loc["E5", "paper_relative"])
    assert table.loc["E3", "verdict"] == NOT_RUN and "e3-" in table.loc["E3", "note"]  # ran, but without e3-*
    assert (table.loc[["E4", "E5", "E6", "E7"], "verdict"] == NOT_RUN).all()
    assert table.loc["E4", "note"] == "the grid did not run E4"


def test_without_the_250_images_variant_e1_reads_the_fewest_images():
    rows = [
        comparison("E1", "e1-12", "full", 1.0, 3.0, images=12.0),
        comparison("E1", "e1-6", "full", -3.0, -1.0, images=6.0),
    ]
    row = verdicts(results_of("E1"), pd.DataFrame(rows)).set_index("finding").loc["E1"]
    assert row["comparison"] == "e1-6 − full" and row["verdict"] == REPRODUCED


# -- paired comparisons from prediction tables -------------------------------------------------------------
UNITS = 300


def accuracy_table(rng, labels, right: float) -> pd.DataFrame:
    """An accuracy-kind prediction table: each unit predicted right with probability `right`."""
    hit = rng.random(len(labels)) < right
    pred = np.where(hit, labels, (labels + 1) % 10)
    return pd.DataFrame({"unit": [f"img{i:04d}" for i in range(len(labels))], "label": labels, "pred": pred})


def accuracy(table: pd.DataFrame) -> float:
    return 100 * float((table["label"] == table["pred"]).mean())


@pytest.fixture(scope="module")
def probe_grid():
    """E4-shaped results (probe_knn_top1; full and e3-127 with seeds 0 and 1, random init with seed 0 only, as
    an older grid ran it) and the prediction table of every run but one (e2-79's: no artifact)."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, UNITS)
    right = {("full", 0): 0.8, ("full", 1): 0.78, ("e3-127", 0): 0.7, ("e3-127", 1): 0.72, ("random", 0): 0.12}
    tables = {f"{v}-{s}": accuracy_table(rng, labels, p) for (v, s), p in right.items()}
    rows = []
    for (variant, seed), _ in right.items():
        run_id = f"{variant}-{seed}"
        rows.append(
            {
                "experiment": "E4",
                "variant": variant,
                "paper_variant": variant if variant != "random" else None,
                "seed": seed if variant != "random" else "",
                "arch": "small",
                "benchmark": "probe",
                "num_classes": {"full": 40, "e3-127": 10, "random": 0}[variant],
                "images_per_class": 24.0,
                "run_id": run_id,
                "metric": "probe_knn_top1",
                "value": accuracy(tables[run_id]),
            }
        )
    rows.append(
        rows[2] | {"variant": "e2-79", "paper_variant": "e2-79", "num_classes": 20, "run_id": "e2-79-0", "value": 60.0}
    )
    return pd.DataFrame(rows, columns=RESULT_COLUMNS), tables


def test_paired_comparisons_match_seeds_and_fall_back_to_the_baselines_lowest_seed(probe_grid):
    results, tables = probe_grid
    loaded = []

    def load(run_id, metric):
        loaded.append(run_id)
        return tables.get(run_id)

    rows = comparisons(results, load, resamples=400).set_index(["variant", "reference"])
    assert set(rows.index) == {
        ("full", "random"),
        ("e3-127", "full"),
        ("e3-127", "random"),
        ("e2-79", "full"),
        ("e2-79", "random"),
    }
    assert sorted(loaded) == sorted(set(loaded))  # each table read once
    score = {k: accuracy(t) for k, t in tables.items()}
    coarse = rows.loc[("e3-127", "full")]
    expected = ((score["e3-127-0"] - score["full-0"]) + (score["e3-127-1"] - score["full-1"])) / 2  # seed s vs s
    assert coarse["diff"] == pytest.approx(expected) and coarse["pairs"] == 2
    assert coarse["low"] < coarse["diff"] < coarse["high"] and coarse["significant"] == (coarse["high"] < 0)
    full_mean = (score["full-0"] + score["full-1"]) / 2
    assert coarse["relative"] == pytest.approx(expected / full_mean) and coarse["relative_to"] == "full"
    above = rows.loc[("e3-127", "random")]  # both seeds against random init's one run
    assert above["diff"] == pytest.approx((score["e3-127-0"] + score["e3-127-1"]) / 2 - score["random-0"])
    assert above["significant"] and above["low"] > 0 and above["note"] == "400 resamples"
    missing = rows.loc[("e2-79", "full")]  # a run without its prediction table: the logged difference only
    assert missing["diff"] == pytest.approx(60.0 - score["full-0"]) and missing["significant"] is None
    assert math.isnan(missing["low"]) and missing["note"].startswith("no interval") and "e2-79-0" in missing["note"]

    table = verdicts(results, comparisons(results, load, resamples=400)).set_index("finding")
    e4 = table.loc["E4"]  # the coarsest-label backbone (10 labels) against random init
    assert e4["comparison"] == "e3-127 − random" and e4["metric"] == "probe_knn_top1"
    assert e4["verdict"] == REPRODUCED and e4["low"] == above["low"]


def test_without_a_loader_every_comparison_keeps_the_logged_difference_and_no_interval(probe_grid):
    results, _ = probe_grid
    rows = comparisons(results)
    assert rows["low"].isna().all() and rows["significant"].isna().all()
    assert (rows["note"] == "no interval: prediction tables not read").all()


def test_a_cells_interval_is_that_of_its_mean_over_seeds_from_the_runs_tables(probe_grid):
    from imagenet_transfer.transfer.uncertainty import interval_of_mean

    results, tables = probe_grid
    logged = {"ci_low": 55.0, "ci_high": 65.0}  # e2-79's one run: no table, a logged interval
    results = results.assign(
        **{k: [v if r == "e2-79-0" else math.nan for r in results["run_id"]] for k, v in logged.items()}
    )
    second = results[results["run_id"] == "e2-79-0"].assign(experiment="E2", seed=1, run_id="e2-79-1", ci_low=50.0)
    two = pd.concat([results[results["run_id"] == "e2-79-0"].assign(experiment="E2"), second], ignore_index=True)

    def load(run_id, metric):
        return tables.get(run_id if run_id != "e2-79-1" else "full-1")

    cells = findings.cell_intervals(pd.concat([results, two]), load, resamples=400)
    cells = cells.set_index(["experiment", "variant"])
    full = cells.loc[("E4", "full")]  # two seeds: the interval of their mean, not the mean of their intervals
    assert (full["ci_low"], full["ci_high"]) == interval_of_mean(
        "probe_knn_top1", [tables["full-0"], tables["full-1"]], resamples=400
    )
    assert full["runs"] == 2 and full["note"] == "mean of 2 run(s), 400 resamples"
    random = cells.loc[("E4", "random")]  # one run with its table: that run's own interval
    assert (random["ci_low"], random["ci_high"]) == interval_of_mean(
        "probe_knn_top1", [tables["random-0"]], resamples=400
    )
    alone = cells.loc[("E4", "e2-79")]  # one run without a table: the interval it logged
    assert (alone["ci_low"], alone["ci_high"]) == (55.0, 65.0) and alone["note"] == "the run's logged interval"
    lacking = cells.loc[("E2", "e2-79")]  # two runs, one without a table: no interval
    assert math.isnan(lacking["ci_low"]) and math.isnan(lacking["ci_high"]) and lacking["runs"] == 2
    assert lacking["note"].startswith("no interval: no predictions/probe_knn_top1.parquet in 1 run(s)")

    without = findings.cell_intervals(results).set_index("variant")  # no loader: a single run's logged interval
    assert without.loc["e2-79", "ci_low"] == 55.0 and without[["ci_low", "ci_high"]].drop("e2-79").isna().all().all()


def test_budget_and_split_comparisons_are_planned_by_variant_name():
    def row(experiment, variant, seed, value, classes=100):
        return dict.fromkeys(RESULT_COLUMNS) | {
            "experiment": experiment,
            "variant": variant,
            "seed": seed,
            "arch": "small",
            "benchmark": "voc12_action",
            "num_classes": classes,
            "images_per_class": 24.0,
            "run_id": f"{experiment}-{variant}-{seed}",
            "metric": "voc12_action_map",
            "value": value,
        }

    results = pd.DataFrame(
        [
            row("E1", "full", 0, 50.0, 200),
            row("E5", "e5-budget-240-classes-40", 0, 40.0, 40),
            row("E5", "e5-budget-240-classes-10", 0, 44.0, 10),
            row("E5", "e5-budget-240-classes-20", 0, 42.0, 20),
            row("E7", "e7-random-a", 0, 45.0),
            row("E7", "e7-random-ab", 0, 47.0, 200),
            row("E7", "e7-minimal-a", 0, 46.0),
        ]
    )
    rows = comparisons(results)
    pairs = set(zip(rows["experiment"], rows["variant"], rows["reference"]))
    assert {("E5", "e5-budget-240-classes-10", "e5-budget-240-classes-40")} <= pairs
    assert ("E5", "e5-budget-240-classes-20", "e5-budget-240-classes-40") in pairs
    assert ("E5", "e5-budget-240-classes-40", "full") in pairs  # the grid's full, E5 has none of its own
    assert {("E7", "e7-random-ab", "e7-random-a"), ("E7", "full", "e7-minimal-a")} <= pairs  # A+B: full there
    budget = rows.set_index(["variant", "reference"]).loc[("e5-budget-240-classes-10", "e5-budget-240-classes-40")]
    assert budget["diff"] == 4.0 and budget["relative"] == pytest.approx(4.0 / 50.0)
    table = verdicts(results, rows).set_index("finding")
    assert table.loc["E5", "comparison"] == "e5-budget-240-classes-10 − e5-budget-240-classes-40"
    assert table.loc["E5", "verdict"] == NO_INTERVAL and table.loc["E7", "verdict"] == NO_INTERVAL
