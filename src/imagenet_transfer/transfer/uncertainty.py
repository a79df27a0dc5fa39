"""How sure a transfer number is: the headline metric recomputed from its per-unit prediction table, its
percentile-bootstrap interval, and paired bootstrap comparisons of two backbones on the same test units.

    score("voc07_map", table)                          # the metric as the benchmark logs it (%)
    low, high = interval("voc07_map", table)           # 95 % percentile bootstrap over the test units
    low, high = interval_of_mean("voc07_map", [t0, t1])  # of the mean score over runs (one table per seed)
    c = paired("voc07_map", [(a0, b0), (a1, b1)])      # backbone a vs b, one pair of runs per seed
    c.diff, c.low, c.high, c.significant               # mean of score(a) - score(b), its interval, 0 outside?

A benchmark returns one table per headline metric in `Result.predictions`; the runner logs it as
`predictions/<metric>.parquet`. Every table names every resampling unit in a column `unit`, including units
with nothing predicted. The tables, by kind (`KINDS` maps each metric to its kind):

- detection (`voc07_map`; units: images): rows of two sorts. Ground truth: `unit`, `cls` (class index), `gt`=1,
  `score`=NaN, `tp`=NaN, one row per non-difficult box. Detections: `unit`, `cls`, `gt`=0, `score`, `tp` (1 true,
  0 false positive, as the benchmark's own matching at IoU 0.5 decided), detections matched to a difficult box
  left out. An image with neither: one row with `cls`=-1. The metric: 11-point VOC07 AP per class, mean over the
  classes with ground truth. Matching happens within an image, so an image drawn k times brings k copies of its
  detections and its boxes, and the AP recomputed on a resample is the AP of the resampled test set. Tied
  scores keep the table's row order (the benchmark writes its detections in its own tie order).
- multilabel (`voc12_action_map`; units: persons): one row per person, `unit`, `target_<c>` (0/1) and
  `score_<c>` for each class c. The metric: mean over the classes with a positive of the VOC2012 action AP
  (tied scores form one threshold, so copies of a person are exact).
- class_mean (`sun397_acc`; units: images within a partition, keyed by (`stratum`, `unit`)): `unit`, `stratum`
  (the partition), `label`, `pred`. The metric: mean over partitions of the mean per-class accuracy (classes
  absent from a resample are left out of its mean). Resampling draws within each partition.
- accuracy (probe metrics; units: images): `unit`, `label`, `pred`. The metric: top-1 accuracy.

A resample is a vector of counts per unit (how often each unit was drawn), never a copied table: every metric
above is a weighted sum over units, computed for a block of resamples at once. Draws come from
`numpy.random.default_rng(seed)`, so a seeded interval is reproducible. numpy and pandas only.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

KINDS: dict[str, str] = {
    "voc07_map": "detection",
    "voc12_action_map": "multilabel",
    "sun397_acc": "class_mean",
    "probe_knn_top1": "accuracy",
    "probe_linear_top1": "accuracy",
    "probe_coarse_top1": "accuracy",
}
RECALL_POINTS = np.arange(11) / 10  # VOC07's 11 recall thresholds, exactly k/10
BLOCK_CELLS = 4_000_000  # resamples scored together: at most this many (resample x unit-or-row) cells


@dataclass(frozen=True)
class Comparison:
    """Paired bootstrap comparison of a vs b: `diff` = mean over pairs of score(a) - score(b), (`low`, `high`)
    its percentile interval, from `pairs` pairs of tables and `resamples` resamples."""

    diff: float
    low: float
    high: float
    pairs: int
    resamples: int

    @property
    def significant(self) -> bool:
        """True when the interval excludes 0."""
        return bool(self.low > 0 or self.high < 0)


@dataclass(frozen=True)
class _Scorer:
    """A table made ready for resampling: its unit keys (sorted (stratum, unit) pairs), the positions of each
    stratum's units, and `scores(weights)`: the metric for each row of a (resamples, units) count matrix."""

    keys: pd.MultiIndex
    strata: tuple[np.ndarray, ...]
    width: int  # the widest per-resample array `scores` builds (units or rows)
    scores: Callable[[np.ndarray], np.ndarray]


def score(metric: str, table: pd.DataFrame) -> float:
    """The metric (in %, as the benchmark logs it) computed from its prediction table."""
    scorer = _scorer(metric, table)
    return float(scorer.scores(np.ones((1, len(scorer.keys))))[0])


def interval(
    metric: str, table: pd.DataFrame, *, resamples: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval (low, high) of the metric at `level`: the test units resampled with
    replacement (within each stratum) `resamples` times. Resamples where the metric is undefined (NaN, e.g. no
    positive left) are left out; (NaN, NaN) if all are."""
    _check(resamples, level)
    scorer = _scorer(metric, table)
    values = _resampled([scorer], np.random.default_rng(seed), resamples)[0]
    return _percentiles(values, level)


def interval_of_mean(
    metric: str, tables: list[pd.DataFrame], *, resamples: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval (low, high) at `level` of the metric's mean over `tables` (one run each, a
    seed say). Each resample draws units for each table on its own (the runs are independent), scores each
    table on its draw and averages the scores over the tables; the interval is the percentile interval of these
    averages. The tables take their draws from one generator in turn, so one table gives exactly
    `interval(metric, table, ...)`. A resample where any table's metric is undefined is left out; (NaN, NaN) if
    all are. ValueError when no table is given."""
    _check(resamples, level)
    if not tables:
        raise ValueError(f"interval_of_mean {metric}: no tables given; expected at least one")
    scorers = [_scorer(metric, table) for table in tables]
    rng = np.random.default_rng(seed)
    totals = sum(_resampled([scorer], rng, resamples)[0] for scorer in scorers)
    return _percentiles(totals / len(tables), level)


def paired(
    metric: str,
    pairs: list[tuple[pd.DataFrame, pd.DataFrame]],
    *,
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> Comparison:
    """Paired bootstrap of score(a) - score(b), averaged over `pairs` (one pair of runs per seed, say).

    Each resample draws one set of units per pair and scores both tables of the pair on it (the same test
    images, each backbone's predictions); the per-pair differences of a resample are averaged over the pairs,
    and the interval is the percentile interval of these averages. ValueError when a and b of a pair do not
    hold the same units."""
    _check(resamples, level)
    if not pairs:
        raise ValueError("paired: no pairs of tables given; expected at least one (a, b)")
    rng = np.random.default_rng(seed)
    diffs, totals = [], np.zeros(resamples)
    for n, (a, b) in enumerate(pairs):
        sa, sb = _scorer(metric, a), _scorer(metric, b)
        if not sa.keys.equals(sb.keys):
            only_a, only_b = sa.keys.difference(sb.keys), sb.keys.difference(sa.keys)
            raise ValueError(
                f"paired {metric}: pair {n} holds different units ({len(sa.keys)} in a, {len(sb.keys)} in b; "
                f"only in a e.g. {list(only_a[:3])}, only in b e.g. {list(only_b[:3])}); expected both "
                "tables scored on the same test units"
            )
        ones = np.ones((1, len(sa.keys)))
        diffs.append(sa.scores(ones)[0] - sb.scores(ones)[0])
        va, vb = _resampled([sa, sb], rng, resamples)
        totals += va - vb
    low, high = _percentiles(totals / len(pairs), level)
    return Comparison(float(np.mean(diffs)), low, high, len(pairs), resamples)


# -- resampling ---------------------------------------------------------------------------------------------
def _check(resamples: int, level: float) -> None:
    if resamples < 1:
        raise ValueError(f"resamples={resamples}; expected at least 1")
    if not 0 < level < 1:
        raise ValueError(f"level={level}; expected a fraction between 0 and 1")


def _resampled(scorers: list[_Scorer], rng: np.random.Generator, resamples: int) -> list[np.ndarray]:
    """The metric of each scorer on the same `resamples` draws of units (all scorers share the first's units).
    The draws depend on the units only; each block of draws is scored in slices that keep the scorers' arrays
    within BLOCK_CELLS cells."""
    units = len(scorers[0].keys)
    block = max(1, min(resamples, BLOCK_CELLS // max(units, 1)))
    step = max(1, BLOCK_CELLS // max(max(s.width for s in scorers), 1))
    out: list[list[np.ndarray]] = [[] for _ in scorers]
    for start in range(0, resamples, block):
        weights = _draw(rng, scorers[0].strata, units, min(block, resamples - start))
        for values, scorer in zip(out, scorers):
            values.extend(scorer.scores(weights[i : i + step]) for i in range(0, len(weights), step))
    return [np.concatenate(values) for values in out]


def _draw(rng: np.random.Generator, strata: tuple[np.ndarray, ...], units: int, count: int) -> np.ndarray:
    """(count, units) float counts: each row draws, within each stratum, as many units as it holds, with
    replacement."""
    offsets = (np.arange(count) * units)[:, None]
    flat = [(m[rng.integers(0, len(m), size=(count, len(m)))] + offsets).ravel() for m in strata]
    return np.bincount(np.concatenate(flat), minlength=count * units).reshape(count, units).astype(np.float64)


def _percentiles(values: np.ndarray, level: float) -> tuple[float, float]:
    values = values[np.isfinite(values)]
    if not len(values):
        return float("nan"), float("nan")
    low, high = np.percentile(values, [50 * (1 - level), 50 * (1 + level)])
    return float(low), float(high)


# -- tables -------------------------------------------------------------------------------------------------
def _scorer(metric: str, table: pd.DataFrame) -> _Scorer:
    if metric not in KINDS:
        raise ValueError(f"unknown metric {metric!r}; expected one of: {', '.join(KINDS)}")
    kind = KINDS[metric]
    build = {"detection": _detection, "multilabel": _multilabel, "class_mean": _class_mean, "accuracy": _accuracy}
    return build[kind](table, f"{metric} ({kind} table)")


def _columns(table: pd.DataFrame, needed: tuple[str, ...], what: str) -> None:
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise ValueError(f"{what}: missing column(s) {', '.join(missing)}; expected {', '.join(needed)}")
    if table.empty:
        raise ValueError(f"{what}: no rows; expected one per test unit at least")


def _units(table: pd.DataFrame, stratum: pd.Series | None = None) -> tuple[pd.MultiIndex, np.ndarray, tuple]:
    """Sorted unique (stratum, unit) keys, the key position of each row, and each stratum's key positions."""
    stratum = pd.Series(0, index=table.index) if stratum is None else stratum
    rows = pd.MultiIndex.from_arrays([stratum.to_numpy(), table["unit"].to_numpy()], names=["stratum", "unit"])
    keys = rows.unique().sort_values()
    codes = keys.get_indexer(rows)
    levels = keys.get_level_values("stratum")
    strata = tuple(np.flatnonzero(levels == s) for s in levels.unique())
    return keys, codes, strata


def _once_each(codes: np.ndarray, keys: pd.MultiIndex, what: str) -> None:
    if len(codes) != len(keys):
        counts = np.bincount(codes, minlength=len(keys))
        twice = [keys[i] for i in np.flatnonzero(counts > 1)[:3]]
        raise ValueError(f"{what}: {len(codes) - len(keys)} unit(s) listed more than once, e.g. {twice}")


def _accuracy(table: pd.DataFrame, what: str) -> _Scorer:
    _columns(table, ("unit", "label", "pred"), what)
    keys, codes, strata = _units(table)
    _once_each(codes, keys, what)
    correct = np.zeros(len(keys))
    correct[codes] = table["label"].to_numpy() == table["pred"].to_numpy()

    def scores(weights: np.ndarray) -> np.ndarray:
        return 100 * (weights @ correct) / weights.sum(axis=1)

    return _Scorer(keys, strata, len(keys), scores)


def _class_mean(table: pd.DataFrame, what: str) -> _Scorer:
    _columns(table, ("unit", "stratum", "label", "pred"), what)
    keys, codes, strata = _units(table, table["stratum"])
    _once_each(codes, keys, what)
    label, correct = np.empty(len(keys), dtype=object), np.zeros(len(keys))
    label[codes] = table["label"].to_numpy()
    correct[codes] = table["label"].to_numpy() == table["pred"].to_numpy()
    parts = []  # per stratum: its units ordered by label, and where each label starts
    for members in strata:
        codes_of_label, _ = pd.factorize(label[members], sort=True)
        order = np.argsort(codes_of_label, kind="stable")
        starts = np.flatnonzero(np.r_[True, np.diff(codes_of_label[order]) != 0])
        parts.append((members[order], starts))

    def scores(weights: np.ndarray) -> np.ndarray:
        means = []
        for members, starts in parts:
            w = weights[:, members]
            seen = np.add.reduceat(w, starts, axis=1)
            right = np.add.reduceat(w * correct[members], starts, axis=1)
            with np.errstate(invalid="ignore", divide="ignore"):
                accuracy = np.where(seen > 0, right / seen, np.nan)
            means.append(_nanmean(accuracy))
        return 100 * np.mean(means, axis=0)

    return _Scorer(keys, strata, len(keys), scores)


def _multilabel(table: pd.DataFrame, what: str) -> _Scorer:
    classes = [c.removeprefix("target_") for c in table.columns if str(c).startswith("target_")]
    _columns(table, ("unit", *(f"target_{c}" for c in classes), *(f"score_{c}" for c in classes)), what)
    if not classes:
        raise ValueError(f"{what}: no target_<class> columns; expected target_<c> and score_<c> per class")
    keys, codes, strata = _units(table)
    _once_each(codes, keys, what)
    ranked = []  # per class: units by descending score, positive flags, last position of each tied score
    for c in classes:
        s, positive = table[f"score_{c}"].to_numpy(float), table[f"target_{c}"].to_numpy() > 0
        if not np.isfinite(s).all():
            raise ValueError(f"{what}: non-finite score_{c}")
        order = np.argsort(-s, kind="stable")
        last = np.r_[s[order][1:] != s[order][:-1], True]
        ranked.append((codes[order], positive[order].astype(float), np.flatnonzero(last)))

    def scores(weights: np.ndarray) -> np.ndarray:
        aps = np.stack([_action_ap(weights[:, units], positive, last) for units, positive, last in ranked], axis=1)
        return 100 * _nanmean(aps)

    return _Scorer(keys, strata, len(keys), scores)


def _action_ap(w: np.ndarray, positive: np.ndarray, last: np.ndarray) -> np.ndarray:
    """VOC2012 action AP (as `metrics.average_precision`) for each row of weights `w` over the ranked persons."""
    tp = np.cumsum(w * positive, axis=1)[:, last]
    seen = np.cumsum(w, axis=1)[:, last]
    npos = tp[:, -1:]
    count = len(w)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.hstack([np.zeros((count, 1)), tp / npos, np.ones((count, 1))])
    precision = np.hstack([np.zeros((count, 1)), tp / np.maximum(seen, 1), np.zeros((count, 1))])
    envelope = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
    ap = np.sum(np.diff(recall, axis=1) * envelope[:, 1:], axis=1)
    return np.where(npos[:, 0] > 0, ap, np.nan)


def _detection(table: pd.DataFrame, what: str) -> _Scorer:
    _columns(table, ("unit", "cls", "gt", "score", "tp"), what)
    keys, codes, strata = _units(table)
    cls, gt = table["cls"].to_numpy(int), table["gt"].to_numpy() == 1
    detected = ~gt & (cls >= 0)
    score_, tp = table["score"].to_numpy(float), table["tp"].to_numpy(float)
    if not np.isfinite(score_[detected]).all() or not np.isin(tp[detected], (0, 1)).all():
        raise ValueError(f"{what}: detection rows (gt=0, cls>=0) need a finite score and tp 0 or 1")
    classes = np.unique(cls[cls >= 0])
    per_class = []  # per class: units of its counted boxes, of its true positives and of the false ones above them
    for c in classes:
        rows = np.flatnonzero(detected & (cls == c))
        order = rows[np.argsort(-score_[rows], kind="stable")]
        hit = tp[order] == 1
        above = int(np.flatnonzero(hit)[-1]) + 1 if hit.any() else 0  # false positives below every hit never count
        misses = order[:above][~hit[:above]]
        per_class.append((codes[gt & (cls == c)], codes[order[hit]], codes[misses], np.cumsum(~hit)[hit]))
    width = max([len(hits) + len(misses) for _, hits, misses, _ in per_class] + [len(keys)])

    def scores(weights: np.ndarray) -> np.ndarray:
        aps = [
            _voc07_ap(weights[:, boxes].sum(axis=1), weights[:, hits], weights[:, misses], misses_above)
            for boxes, hits, misses, misses_above in per_class
        ]
        return 100 * _nanmean(np.stack(aps, axis=1)) if aps else np.full(len(weights), np.nan)

    return _Scorer(keys, strata, width, scores)


def _voc07_ap(npos: np.ndarray, hits: np.ndarray, misses: np.ndarray, misses_above: np.ndarray) -> np.ndarray:
    """11-point VOC07 AP (as `metrics.voc07_ap` over the PR curve) for each row of weights: `npos` positives,
    `hits` the weights of the true positives in rank order, `misses` those of the false positives ranked above
    the last true positive, `misses_above[j]` how many of those rank above true positive j.

    Only the points after true positives can set an interpolated precision: a false positive keeps the recall
    of the point before it and lowers the precision (before any true positive both are 0). A detection drawn
    k times is k consecutive equal outcomes, of which only the point after the last can count, so the point of
    one detection with weight k is exact."""
    count, n = hits.shape
    if n == 0:
        return np.where(npos > 0, 0.0, np.nan)
    ctp = np.cumsum(hits, axis=1)
    cfp = np.hstack([np.zeros((count, 1)), np.cumsum(misses, axis=1)])[:, misses_above]
    precision = ctp / np.maximum(ctp + cfp, 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = ctp / npos[:, None]
    envelope = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]  # best precision from here on
    rows = np.arange(count)
    total = np.zeros(count)
    for t in RECALL_POINTS:
        first = (recall < t).sum(axis=1)  # recall never falls, so recall >= t from `first` on
        total += np.where(first < n, envelope[rows, np.minimum(first, n - 1)], 0.0)
    return np.where(npos > 0, total / len(RECALL_POINTS), np.nan)


def _nanmean(values: np.ndarray) -> np.ndarray:
    """Mean of each row over its defined (non-NaN) entries; NaN for a row with none."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(values, axis=1)


__all__ = ["KINDS", "Comparison", "interval", "interval_of_mean", "paired", "score"]
