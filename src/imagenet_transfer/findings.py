"""The grid's paired comparisons and a verdict on each of the paper's six published findings.

    load = findings.cached(findings.run_predictions)  # each run's prediction table read once
    rows = findings.comparisons(results, load)        # every variant vs full, vs random init, ...
    table = findings.verdicts(results, rows)          # E1, E3, E4, E5, E6, E7: reproduced or not
    cells = findings.cell_intervals(results, load)    # the 95 % interval of each cell's mean over seeds

Input: the grid's per-run results (`report.grid_results`: one row per transfer run and headline metric, with
experiment, variant, paper_variant, seed, arch, benchmark, num_classes, images_per_class, run_id, metric, value)
and a loader of a run's prediction table (`transfer.runner.load_predictions`, or None: no intervals). Output: three
tables (pandas), nothing written, nothing drawn.

Cell intervals. Per experiment, variant, arch and metric (a cell of the report's tables, random init included),
the 95 % interval of the mean over the cell's runs (seeds): from `transfer.uncertainty.interval_of_mean` (each
run's test units resampled on their own, 1,000 resamples, the scores averaged over the runs) where every run of
the cell has a prediction table; else, for a cell of one run, the interval that run logged
(`<metric>_ci_low`/`_ci_high`, the same bootstrap); else (several runs, a table missing) none.

Comparisons. Per experiment, arch and headline metric, every pre-trained variant against
- `full` (the experiment's own `full` runs, else the grid's) and `random` (random init, no pre-training),
- in E5 (`e5-budget-B-classes-C`), the variant with the most classes C of the same budget B,
- in E7 (`e7-<split>-<a|b|ab>`), A+B (`e7-<split>-ab`, else `full`, which holds every class) against A and B.
Runs are paired by seed: seed s of the variant with seed s of the reference, or, where the reference has no
seed s (an older grid ran one baseline), the reference's lowest seed. The difference and its 95 % interval come
from `transfer.uncertainty.paired`: a percentile bootstrap over the test units (1,000 resamples), the same
resampled units for both runs of a pair, the differences averaged over the pairs. The comparison is significant
when the interval excludes 0. Where a run has no prediction table (an older grid) the row keeps the difference of
the logged metrics and has no interval. `relative` (and its interval) is the difference divided by `full`'s score
(the mean of its runs of that metric and arch; the reference's score where the grid ran no `full`).

Verdicts (`RULES`, applied by `verdict_*`; the interval is that of the comparison named in the row):
- directional findings: E1 (fewer images per class hurts: the variant standing for the paper's 250 images per
  class, else the one with the fewest images, vs full), E3 (coarser labels cost a little: the coarsest `e3-*`
  variant vs full) and E5 (at the same budget, the fewest classes vs the most classes: better). "reproduced"
  when the interval lies entirely on the paper's side of 0, "contradicted" when entirely on the other side,
  else "inconclusive at this size".
- equivalence, E6 (PASCAL classes removed vs full: nearly the same): "reproduced" when the relative interval
  lies within ±`MARGIN` (5 %) of full's score, "contradicted" when it lies entirely outside that margin,
  else "inconclusive at this size".
- E7 (A+B does not always help): per split, A+B vs A (and vs B where B ran). "contradicted" when every such
  comparison shows a significant gain; "reproduced" when at least one shows no significant gain and its
  interval excludes a gain of `MARGIN` or more (any gain there is small, or A+B hurts); else "inconclusive at
  this size" (no significant gain, but the interval still allows a large one).
- E4 (features learned without fine labels still separate fine classes): the probe (`probe_knn_top1`, else
  `probe_linear_top1`) of the coarsest-label backbone vs random init. "reproduced" when significantly above
  random init; "contradicted" when the interval lies at or below 0 (no gain is possible); else "inconclusive at
  this size".
An experiment the grid did not run, or one without the variant a rule needs, gives "not run"; a comparison
without an interval gives "no interval". Where the grid ran several archs, a verdict reads the first one listed;
where an experiment has several headline metrics, the paper's (`voc07_map`) or else the first listed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import pandas as pd

from imagenet_transfer.grid_plan import RANDOM  # the variant of the grid's no-pre-training rows

BASELINE = "full"
RESAMPLES = 1000
LEVEL = 0.95
MARGIN = 0.05  # the equivalence margin (E6, and "a small gain" in E7), a fraction of full's score

REPRODUCED, CONTRADICTED, INCONCLUSIVE = "reproduced", "contradicted", "inconclusive at this size"
NOT_RUN, NO_INTERVAL = "not run", "no interval"
VERDICTS = (REPRODUCED, CONTRADICTED, INCONCLUSIVE, NOT_RUN, NO_INTERVAL)

# PAPER.md "Published results": (paper variant, metric) -> the published value (AlexNet on ImageNet, in %) or
# what the paper says of it in words. Nothing else is published.
PUBLISHED: dict[tuple[str, str], float | str] = {
    ("full", "voc07_map"): 58.3,
    ("e1-500", "voc07_map"): 57.0,
    ("e1-250", "voc07_map"): 54.6,
    ("e3-127", "voc07_map"): "≈ −2.8 vs full",
    ("e6-pascal-removed", "voc07_map"): "≈ full (nearly the same)",
}
# The differences to full the paper states in words (mAP points; approximate): its relative effects.
STATED_DELTA = {("e3-127", "voc07_map"): -2.8, ("e6-pascal-removed", "voc07_map"): 0.0}

COMPARISON_COLUMNS = [
    "experiment",
    "arch",
    "benchmark",
    "metric",
    "variant",
    "paper_variant",
    "num_classes",
    "images_per_class",
    "reference",
    "pairs",
    "diff",
    "low",
    "high",
    "significant",
    "relative",
    "relative_low",
    "relative_high",
    "relative_to",
    "note",
]
VERDICT_COLUMNS = [
    "finding",
    "claim",
    "experiment",
    "metric",
    "comparison",
    "pairs",
    "diff",
    "low",
    "high",
    "relative",
    "relative_low",
    "relative_high",
    "paper_effect",
    "paper_relative",
    "rule",
    "verdict",
    "note",
]

INTERVAL_COLUMNS = ["experiment", "variant", "arch", "metric", "runs", "ci_low", "ci_high", "note"]

Loader = Callable[[str, str], "pd.DataFrame | None"]


def paper_relative(paper_variant: str | None, metric: str) -> float | None:
    """The paper's effect of `paper_variant` on `metric` relative to its `full` score (a fraction), or None."""
    base = PUBLISHED.get((BASELINE, metric))
    if not paper_variant or not isinstance(base, float):
        return None
    value = PUBLISHED.get((paper_variant, metric))
    if isinstance(value, float):
        return value / base - 1
    delta = STATED_DELTA.get((paper_variant, metric))
    return None if delta is None else delta / base


def paper_effect_text(paper_variant: str | None, metric: str) -> str | None:
    """The paper's relative effect in words ("-6.3 % vs full", "≈ -4.8 % vs full"), or None where unpublished."""
    relative = paper_relative(paper_variant, metric)
    if relative is None:
        return None
    approx = "≈ " if (paper_variant, metric) in STATED_DELTA else ""
    if paper_variant == BASELINE:
        return "reference"
    return f"{approx}{100 * relative:+.1f} % vs {BASELINE}" if relative else f"{approx}0 % vs {BASELINE}"


# -- the findings ------------------------------------------------------------------------------------------
FINDINGS = {  # finding -> (experiment that tests it, the paper's claim)
    "E1": ("E1", "PASCAL-DET mAP 58.3 / 57.0 / 54.6 with 1000 / 500 / 250 images per class: fewer images hurt."),
    "E3": ("E3", "127 classes instead of 1000: about −2.8 mAP on PASCAL-DET (coarser labels cost a little)."),
    "E4": ("E4", "Features learned without fine-grained labels still separate fine-grained classes well."),
    "E5": ("E5", "Same budget: fewer classes with more images each is slightly better than more classes with fewer."),
    "E6": ("E6", "771 classes (PASCAL classes removed): nearly the same PASCAL-DET mAP as all 1000."),
    "E7": ("E7", "Adding more data (A+B vs A) does not always help and can hurt."),
}
RULES = {
    "E1": "directional (paper: < 0): reproduced if the interval of (fewer images − full) lies below 0, "
    "contradicted if above 0, else inconclusive",
    "E3": "directional (paper: < 0): reproduced if the interval of (coarsest labels − full) lies below 0, "
    "contradicted if above 0, else inconclusive",
    "E4": "reproduced if the interval of (coarse-label probe − random init) lies above 0, contradicted if it "
    "lies at or below 0, else inconclusive",
    "E5": "directional (paper: > 0): reproduced if the interval of (fewest classes − most classes, same budget) "
    "lies above 0, contradicted if below 0, else inconclusive",
    "E6": f"equivalence: reproduced if the interval of (PASCAL removed − full) lies within ±{100 * MARGIN:g} % of "
    "full's score, contradicted if entirely outside that margin, else inconclusive",
    "E7": "contradicted if (A+B − A) shows a significant gain in every split (and vs B where run); reproduced if "
    f"some split shows no significant gain and its interval stays below +{100 * MARGIN:g} % of full's score; "
    "else inconclusive",
}
PAPER_EFFECTS = {  # finding -> (the paper's effect in words, its relative size or None)
    "E1": (
        f"54.6 vs 58.3 mAP (250 vs 1000 images per class): {paper_effect_text('e1-250', 'voc07_map')}",
        paper_relative("e1-250", "voc07_map"),
    ),
    "E3": (
        f"≈ −2.8 of 58.3 mAP: {paper_effect_text('e3-127', 'voc07_map')}",
        paper_relative("e3-127", "voc07_map"),
    ),
    "E4": ("not published (in words: fine classes still separated well)", None),
    "E5": ("not published (in words: slightly better)", None),
    "E6": (f"{paper_effect_text('e6-pascal-removed', 'voc07_map')} (nearly the same)", 0.0),
    "E7": ("not published (in words: does not always help, can hurt)", None),
}


# -- rules (pure) ------------------------------------------------------------------------------------------
def _missing(*values: float) -> bool:
    return any(v is None or (isinstance(v, float) and math.isnan(v)) for v in values)


def verdict_directional(low: float, high: float, sign: int) -> str:
    """Reproduced when the interval lies entirely on the paper's side of 0 (`sign` -1: below, +1: above),
    contradicted when entirely on the other side, else inconclusive; no interval when there is none."""
    if _missing(low, high):
        return NO_INTERVAL
    if sign * low > 0 and sign * high > 0:
        return REPRODUCED
    if sign * low < 0 and sign * high < 0:
        return CONTRADICTED
    return INCONCLUSIVE


def verdict_equivalent(relative_low: float, relative_high: float, margin: float = MARGIN) -> str:
    """Reproduced when the relative interval lies within ±`margin`, contradicted when it lies entirely outside
    (above +margin or below -margin), else inconclusive."""
    if _missing(relative_low, relative_high):
        return NO_INTERVAL
    if -margin <= relative_low and relative_high <= margin:
        return REPRODUCED
    if relative_low > margin or relative_high < -margin:
        return CONTRADICTED
    return INCONCLUSIVE


def verdict_above(diff: float, low: float, high: float) -> str:
    """Reproduced when significantly above 0; contradicted when the interval rules out any gain (it lies at or
    below 0); else inconclusive (a wide interval around 0 says nothing either way)."""
    if _missing(diff, low, high):
        return NO_INTERVAL
    if low > 0:
        return REPRODUCED
    if high <= 0:
        return CONTRADICTED
    return INCONCLUSIVE


def verdict_not_always(gains: list[tuple[float, float, float]], margin: float = MARGIN) -> str:
    """`gains`: per split (and reference A or B), the (low, high, relative_high) of A+B minus that half.
    Contradicted when every one is a significant gain (low > 0); reproduced when one shows no significant
    gain (low <= 0) and its relative interval stays below +`margin`; else inconclusive."""
    if not gains:
        return NOT_RUN
    if any(_missing(low, high, rel_high) for low, high, rel_high in gains):
        return NO_INTERVAL
    if all(low > 0 for low, _, _ in gains):
        return CONTRADICTED
    if any(low <= 0 and rel_high < margin for low, _, rel_high in gains):
        return REPRODUCED
    return INCONCLUSIVE


# -- comparisons -------------------------------------------------------------------------------------------
def seed_number(seed) -> int:
    """A step table's seed as a number: older grids wrote "" or "0" for their one random-init baseline."""
    try:
        return int(float(seed))
    except (TypeError, ValueError):
        return 0


def run_predictions(run_id: str, metric: str) -> pd.DataFrame | None:
    """The run's prediction table of `metric` (`predictions/<metric>.parquet`), or None where it has none."""
    from imagenet_transfer.errors import UserError
    from imagenet_transfer.transfer.runner import load_predictions

    try:
        return load_predictions(run_id, metric)
    except UserError:  # a run of an older grid, logged without the artifact: no interval
        return None


def cached(load: Loader) -> Loader:
    """`load` remembering what it returned for each (run_id, metric): each table is read once."""
    cache: dict[tuple[str, str], pd.DataFrame | None] = {}

    def loaded(run_id: str, metric: str) -> pd.DataFrame | None:
        if (run_id, metric) not in cache:
            cache[run_id, metric] = load(run_id, metric)
        return cache[run_id, metric]

    return loaded


def _runs(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per run (the first listing of a run shared by experiments), ordered by seed."""
    frame = frame.drop_duplicates("run_id").assign(seed_n=lambda f: f["seed"].map(seed_number))
    return frame.sort_values("seed_n", kind="stable")


def pair_runs(runs: pd.DataFrame, reference: pd.DataFrame) -> list[tuple[pd.Series, pd.Series]]:
    """(variant run, reference run) per run of `runs`: the reference run of the same seed, else the
    reference's lowest seed."""
    reference = _runs(reference).drop_duplicates("seed_n")
    if reference.empty:
        return []
    by_seed = {row.seed_n: row for _, row in reference.iterrows()}
    lowest = reference.iloc[0]
    return [(row, by_seed.get(row.seed_n, lowest)) for _, row in _runs(runs).iterrows()]


def compare(
    metric: str,
    pairs: list[tuple[pd.Series, pd.Series]],
    load: Callable[[str, str], pd.DataFrame | None] | None,
    *,
    resamples: int = RESAMPLES,
    seed: int = 0,
    level: float = LEVEL,
) -> dict:
    """diff (mean over pairs of variant - reference), its interval (low, high), significant and a note: from the
    prediction tables where every run of every pair has one, else the logged metrics' difference alone."""
    from imagenet_transfer.transfer import uncertainty

    logged = sum(a["value"] - b["value"] for a, b in pairs) / len(pairs)
    out = {"pairs": len(pairs), "diff": logged, "low": math.nan, "high": math.nan, "significant": None, "note": ""}
    if metric not in uncertainty.KINDS:
        return out | {"note": f"no interval: no bootstrap for {metric}"}
    if load is None:
        return out | {"note": "no interval: prediction tables not read"}
    tables = [(load(a["run_id"], metric), load(b["run_id"], metric)) for a, b in pairs]
    lacking = sorted({r["run_id"] for pair, t in zip(pairs, tables) for r, x in zip(pair, t) if x is None})
    if lacking:
        some = f"{len(lacking)} run(s), e.g. {lacking[0]}"
        return out | {"note": f"no interval: no predictions/{metric}.parquet in {some}"}
    try:
        result = uncertainty.paired(metric, tables, resamples=resamples, seed=seed, level=level)
    except ValueError as err:  # tables of different test units: no paired comparison
        return out | {"note": f"no interval: {err}"}
    return out | {
        "diff": result.diff,
        "low": result.low,
        "high": result.high,
        "significant": result.significant if not _missing(result.low, result.high) else None,
        "note": f"{result.resamples} resamples",
    }


def _budget(variant: str) -> tuple[int, int] | None:
    m = re.fullmatch(r"e5-budget-(\d+)-classes-(\d+)", variant)
    return (int(m[1]), int(m[2])) if m else None


def _references(part: pd.DataFrame, everything: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Reference name -> its runs for one experiment, arch and metric: full and random init (the experiment's
    own, else the grid's), and every variant of the experiment by name."""
    refs = {}
    for name in (BASELINE, RANDOM):
        own = part[part["variant"] == name]
        refs[name] = own if not own.empty else everything[everything["variant"] == name]
    for name in dict.fromkeys(part["variant"]):
        refs.setdefault(name, part[part["variant"] == name])
    return refs


def _planned(variants: list[str], refs: dict[str, pd.DataFrame]) -> list[tuple[str, str]]:
    """(variant, reference) pairs of names to compare within one experiment, arch and metric."""
    planned = []
    for variant in variants:
        for reference in (BASELINE, RANDOM):
            if variant != reference and not refs[reference].empty:
                planned.append((variant, reference))
    budgets: dict[int, list[tuple[int, str]]] = {}
    for variant in variants:
        if found := _budget(variant):
            budgets.setdefault(found[0], []).append((found[1], variant))
    for members in budgets.values():
        most = max(members)[1]
        planned += [(variant, most) for _, variant in sorted(members) if variant != most]
    for split in ("random", "minimal"):
        halves = [f"e7-{split}-{h}" for h in ("a", "b") if f"e7-{split}-{h}" in variants]
        whole = f"e7-{split}-ab" if f"e7-{split}-ab" in variants else BASELINE
        if halves and not refs[whole].empty:
            planned += [(whole, half) for half in halves]
    return list(dict.fromkeys(planned))


def comparisons(
    results: pd.DataFrame,
    load: Loader | None = None,
    *,
    resamples: int = RESAMPLES,
    seed: int = 0,
    level: float = LEVEL,
) -> pd.DataFrame:
    """A row per (experiment, arch, variant, metric, reference): the paired difference, its interval, whether it
    is significant, and the difference relative to full's score (see the module docstring). `load(run_id,
    metric)` gives a run's prediction table or None; each table is loaded once, and the same pairs of runs
    (a `full` vs random-init pair listed by several experiments) are compared once."""
    if results.empty:
        return pd.DataFrame(columns=COMPARISON_COLUMNS)
    load = cached(load) if load else None
    done: dict[tuple, dict] = {}
    rows = []
    for experiment in dict.fromkeys(results["experiment"]):
        own = results[results["experiment"] == experiment]
        for (arch, metric), part in own.groupby(["arch", "metric"], sort=False):
            everything = results[(results["arch"] == arch) & (results["metric"] == metric)]
            refs = _references(part, everything)
            full_runs = _runs(refs[BASELINE])
            variants = [v for v in dict.fromkeys(part["variant"]) if v != RANDOM]
            for variant, reference in _planned(variants, refs):
                runs = refs[variant]
                pairs = pair_runs(runs, refs[reference])
                if not pairs:
                    continue
                base_runs = full_runs if not full_runs.empty else _runs(refs[reference])
                base = float(base_runs["value"].mean())
                key = (metric, tuple((a["run_id"], b["run_id"]) for a, b in pairs))
                if key not in done:
                    done[key] = compare(metric, pairs, load, resamples=resamples, seed=seed, level=level)
                found = done[key]
                first = runs.iloc[0]
                rows.append(
                    {
                        "experiment": experiment,
                        "arch": arch,
                        "benchmark": first["benchmark"],
                        "metric": metric,
                        "variant": variant,
                        "paper_variant": first["paper_variant"],
                        "num_classes": first["num_classes"],
                        "images_per_class": first["images_per_class"],
                        "reference": reference,
                        **found,
                        "relative": found["diff"] / base if base else math.nan,
                        "relative_low": found["low"] / base if base else math.nan,
                        "relative_high": found["high"] / base if base else math.nan,
                        "relative_to": BASELINE if not full_runs.empty else reference,
                    }
                )
    return pd.DataFrame(rows, columns=COMPARISON_COLUMNS)


# -- cell intervals ----------------------------------------------------------------------------------------
def seed_interval(
    metric: str,
    runs: pd.DataFrame,
    load: Loader | None,
    *,
    resamples: int = RESAMPLES,
    seed: int = 0,
    level: float = LEVEL,
) -> dict:
    """The 95 % interval (ci_low, ci_high) of the mean of `metric` over `runs` (`seed`, `run_id`, and `ci_low`/
    `ci_high` as the run logged them; a run listed twice counts once) and a note saying where it comes from: the
    runs' prediction tables (`uncertainty.interval_of_mean`, in seed order) where every run has one, else the
    logged interval of a single run, else none."""
    from imagenet_transfer.transfer import uncertainty

    runs = _runs(runs)  # one row per run, by seed: the order interval_of_mean draws in
    if metric not in uncertainty.KINDS:
        why = f"no bootstrap for {metric}"
    elif load is None:
        why = "prediction tables not read"
    else:
        tables = [load(run_id, metric) for run_id in runs["run_id"]]
        lacking = [run_id for run_id, table in zip(runs["run_id"], tables) if table is None]
        why = f"no predictions/{metric}.parquet in {len(lacking)} run(s), e.g. {lacking[0]}" if lacking else ""
        if not lacking:
            try:
                low, high = uncertainty.interval_of_mean(metric, tables, resamples=resamples, seed=seed, level=level)
                note = f"mean of {len(tables)} run(s), {resamples} resamples"
                return {"ci_low": low, "ci_high": high, "note": note}
            except ValueError as err:  # a malformed table: no interval from the tables
                why = str(err)
    logged = [runs.iloc[0].get(k) for k in ("ci_low", "ci_high")] if len(runs) == 1 else [None]
    if not _missing(*logged):
        return {"ci_low": float(logged[0]), "ci_high": float(logged[1]), "note": "the run's logged interval"}
    return {"ci_low": math.nan, "ci_high": math.nan, "note": f"no interval: {why}"}


def cell_intervals(
    results: pd.DataFrame,
    load: Loader | None = None,
    *,
    resamples: int = RESAMPLES,
    seed: int = 0,
    level: float = LEVEL,
) -> pd.DataFrame:
    """A row per (experiment, variant, arch, metric) of `results` (random init included): its number of runs
    (a run listed twice counts once) and the interval of their mean from `seed_interval` (see the module
    docstring). `load(run_id, metric)` gives a run's prediction table or None; None: the logged interval of a
    one-run cell alone."""
    if results.empty:
        return pd.DataFrame(columns=INTERVAL_COLUMNS)
    rows = []
    keys = ["experiment", "variant", "arch", "metric"]
    for (experiment, variant, arch, metric), part in results.groupby(keys, sort=False, dropna=False):
        runs = _runs(part)
        found = seed_interval(metric, runs, load, resamples=resamples, seed=seed, level=level)
        rows.append(dict(zip(keys, (experiment, variant, arch, metric))) | {"runs": len(runs)} | found)
    return pd.DataFrame(rows, columns=INTERVAL_COLUMNS)


# -- verdicts ----------------------------------------------------------------------------------------------
def _metric(rows: pd.DataFrame, preferred: tuple[str, ...] = ("voc07_map",)) -> pd.DataFrame:
    """The rows of one metric: the first of `preferred` present, else the first listed."""
    if rows.empty:
        return rows
    present = list(dict.fromkeys(rows["metric"]))
    chosen = next((m for m in preferred if m in present), present[0])
    return rows[rows["metric"] == chosen]


def _first_arch(rows: pd.DataFrame) -> pd.DataFrame:
    return rows[rows["arch"] == rows["arch"].iloc[0]] if not rows.empty else rows


def _chosen(comparisons: pd.DataFrame, finding: str) -> tuple[pd.DataFrame, str]:
    """The comparison row(s) a finding's rule reads, and why there are none where there are none."""
    rows = comparisons[comparisons["experiment"] == FINDINGS[finding][0]]
    if finding == "E1":
        rows = _first_arch(_metric(rows[(rows["reference"] == BASELINE) & rows["variant"].str.match(r"e1-\d+$")]))
        if rows.empty:
            return rows, "no variant with fewer images per class compared with full"
        standing = rows[rows["paper_variant"] == "e1-250"]
        return (standing if not standing.empty else rows.sort_values("images_per_class", kind="stable")).head(1), ""
    if finding == "E3":
        rows = _first_arch(_metric(rows[(rows["reference"] == BASELINE) & rows["variant"].str.match(r"e3-\d+$")]))
        if rows.empty:
            return rows, "no coarse-label (e3-*) variant compared with full"
        return rows.sort_values("num_classes", kind="stable").head(1), ""
    if finding == "E4":
        probes = rows[(rows["reference"] == RANDOM) & (rows["variant"] != BASELINE)]
        rows = _first_arch(_metric(probes, ("probe_knn_top1", "probe_linear_top1")))
        if rows.empty or rows["metric"].iloc[0] not in ("probe_knn_top1", "probe_linear_top1"):
            return rows.head(0), "no probe of a coarse-label backbone compared with random init"
        return rows.sort_values("num_classes", kind="stable").head(1), ""
    if finding == "E5":
        budget = rows[rows["variant"].map(_budget).notna() & rows["reference"].map(_budget).notna()]
        rows = _first_arch(_metric(budget))
        if rows.empty:
            return rows, "no two class counts at the same budget"
        return rows.sort_values("num_classes", kind="stable").head(1), ""
    if finding == "E6":
        rows = _first_arch(_metric(rows[(rows["reference"] == BASELINE) & (rows["variant"] != RANDOM)]))
        removed = rows[rows["variant"] == "e6-pascal-removed"]
        if rows.empty:
            return rows, "no variant without the target's classes compared with full"
        return (removed if not removed.empty else rows).head(1), ""
    halves = rows[rows["reference"].str.match(r"e7-(random|minimal)-(a|b)$")]
    rows = _first_arch(_metric(halves))
    return rows, "" if not rows.empty else "no half (A) compared with A+B"


def _effect(row: pd.Series) -> dict:
    keys = ("pairs", "diff", "low", "high", "relative", "relative_low", "relative_high")
    return {k: row[k] for k in keys} | {
        "metric": row["metric"],
        "comparison": f"{row['variant']} − {row['reference']}",
    }


def verdicts(results: pd.DataFrame, comparisons: pd.DataFrame) -> pd.DataFrame:
    """A row per published finding: the experiment that tests it, the effect measured (the chosen comparison's
    difference, interval and relative size), the paper's effect, the rule and the verdict it gives."""
    ran = set(results["experiment"]) if not results.empty else set()
    rows = []
    for finding, (experiment, claim) in FINDINGS.items():
        paper_text, paper_rel = PAPER_EFFECTS[finding]
        row = dict.fromkeys(VERDICT_COLUMNS, math.nan) | {
            "finding": finding,
            "claim": claim,
            "experiment": experiment,
            "metric": "",
            "comparison": "",
            "paper_effect": paper_text,
            "paper_relative": math.nan if paper_rel is None else paper_rel,
            "rule": RULES[finding],
            "note": "",
        }
        chosen, why = _chosen(comparisons, finding) if experiment in ran else (comparisons.head(0), "")
        if experiment not in ran:
            row |= {"verdict": NOT_RUN, "note": f"the grid did not run {experiment}"}
        elif chosen.empty:
            row |= {"verdict": NOT_RUN, "note": why}
        elif finding == "E7":
            row |= _verdict_e7(chosen)
        else:
            first = chosen.iloc[0]
            if finding in ("E1", "E3"):
                verdict = verdict_directional(first["low"], first["high"], -1)
            elif finding == "E5":
                verdict = verdict_directional(first["low"], first["high"], +1)
            elif finding == "E6":
                verdict = verdict_equivalent(first["relative_low"], first["relative_high"])
            else:
                verdict = verdict_above(first["diff"], first["low"], first["high"])
            row |= _effect(first) | {"verdict": verdict, "note": first["note"] if verdict == NO_INTERVAL else ""}
        rows.append(row)
    return pd.DataFrame(rows, columns=VERDICT_COLUMNS)


def _verdict_e7(rows: pd.DataFrame) -> dict:
    """E7's verdict over its A+B-vs-half rows; the effect shown is that of the row that decides it."""
    gains = [(r["low"], r["high"], r["relative_high"]) for _, r in rows.iterrows()]
    verdict = verdict_not_always(gains)
    if verdict == REPRODUCED:
        decisive = next(r for _, r in rows.iterrows() if r["low"] <= 0 and r["relative_high"] < MARGIN)
    elif verdict == NO_INTERVAL:
        decisive = next(r for _, r in rows.iterrows() if _missing(r["low"], r["high"], r["relative_high"]))
    else:  # the smallest gain: the closest any split comes to "does not help"
        decisive = rows.sort_values("low", kind="stable").iloc[0]
    others = "; ".join(
        f"{r['variant']} − {r['reference']}: {r['diff']:+.2f} [{r['low']:.2f}, {r['high']:.2f}]"
        for _, r in rows.iterrows()
    )
    note = decisive["note"] if verdict == NO_INTERVAL else f"every split: {others}"
    return _effect(decisive) | {"verdict": verdict, "note": note}
