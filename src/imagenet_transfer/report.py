"""The report: the paper grid's numbers from MLflow, shaped like the paper's tables, beside its published ones.

    imagenet-transfer report                       # the newest finished reproduce run -> reports/<UTC time>/
    imagenet-transfer report --out reports/paper --grid-run 4f1c...

Input: MLflow only (no files on the side): the newest FINISHED reproduce run (tag stage=reproduce) or
`--grid-run` (a FINISHED one), its step table `steps.json`, the metrics of the transfer runs it lists, and any
budget-study trial runs (tag stage=trial, params `num_classes`, metric `objective`, tag `study_name`). A newer
grid run that did not finish (FAILED, KILLED, RUNNING: some steps only) is skipped and named; with no finished
grid run, or a `--grid-run` that is none, the report exits with code 2 before it writes anything.
Output (a folder, written whole or not at all, and the same files as artifacts of a run tagged stage=report):
    report.md, report.html      the findings: a verdict per published finding of the paper (`findings`: derived
                                from paired bootstrap intervals by explicit rules, listed in the report); one
                                table per experiment: rows = data variant, columns = benchmark metrics, cells =
                                mean ± std over seeds and the 95 % interval of that mean (`findings.cell_intervals`:
                                from the runs' prediction tables; else a single run's logged `<metric>_ci_low`/
                                `_ci_high`; none for several runs without tables), Δ to the full-data baseline (and
                                relative to it), the paper's number where PAPER.md knows it (absolute at real
                                scale; at world and smoke scale its effect relative to its full set, as absolute
                                numbers are not comparable) and "not published" elsewhere, and a "random init" row
                                where the grid ran its no-pre-training baselines; the paired comparisons (every
                                variant vs full and vs random init, with interval and significance); the plots (error
                                bars on every curve, random init as a band); the HTML is self-contained (images
                                embedded as base64)
    tables/E<n>.csv             the same tables as numbers (mean, std, n, interval of the mean, delta)
    tables/comparisons.csv      the paired comparisons (`findings.comparisons`)
    tables/findings.csv         the verdicts (`findings.verdicts`)
    plots/*.png                 transfer vs images per class (and relative to full, beside the paper's relative
                                effect), vs number of classes, budget study C vs objective
"""

from __future__ import annotations

import base64
import html
import math
import os
import re
import shutil
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from imagenet_transfer import findings
from imagenet_transfer.errors import UserError
from imagenet_transfer.findings import BASELINE, PUBLISHED
from imagenet_transfer.grid_plan import RANDOM  # the variant of the grid's no-pre-training rows

# The metrics a table shows per benchmark (all in %).
MAIN_METRICS = {
    "voc07_det": ("voc07_map",),
    "voc12_action": ("voc12_action_map",),
    "sun397": ("sun397_acc",),
    "probe": ("probe_knn_top1", "probe_linear_top1", "probe_coarse_top1"),
}
NOT_PUBLISHED = "not published"
RESULT_COLUMNS = [
    "experiment",
    "variant",
    "paper_variant",
    "seed",
    "arch",
    "benchmark",
    "num_classes",
    "images_per_class",
    "run_id",
    "metric",
    "value",
    "ci_low",
    "ci_high",
]
RANDOM_LABEL = "random init (no pre-training)"
PROCEDURE = (
    "Intervals: percentile bootstrap over the test images (persons for PASCAL-ACT-CLS) with 1,000 resamples, "
    "95 %; a comparison is paired: the same resampled images score both backbones, and the differences are "
    "averaged over the seeds (seed s of a variant against seed s of its reference). A difference is significant "
    "when its 95 % interval excludes 0."
)


# -- reading MLflow ----------------------------------------------------------------------------------------
def find_grid_run(grid_run_id: str | None = None) -> tuple:
    """The grid run to report and the newer grid runs skipped for it: `grid_run_id`, which must be a FINISHED
    reproduce run, else the newest FINISHED reproduce run of the store (any experiment); UserError otherwise.
    A grid run that did not finish (FAILED, KILLED, still RUNNING) holds some steps' results only."""
    import mlflow

    uri = mlflow.get_tracking_uri()
    if grid_run_id:
        try:
            run = mlflow.get_run(grid_run_id)
        except mlflow.exceptions.MlflowException:
            run = None
        if run is None or run.info.lifecycle_stage == "deleted":
            raise UserError(
                f"--grid-run {grid_run_id}: no such run in the tracking store {uri}; expected the id of a "
                "FINISHED reproduce run (tag stage=reproduce)"
            )
        if run.data.tags.get("stage") != "reproduce":
            raise UserError(
                f"--grid-run {grid_run_id} is a {run.data.tags.get('stage', 'untagged')} run; expected a "
                "reproduce run (tag stage=reproduce, from `imagenet-transfer reproduce`)"
            )
        if run.info.status != "FINISHED":
            raise UserError(
                f"--grid-run {grid_run_id} is a reproduce run with status {run.info.status}; expected a "
                "FINISHED one (it holds some steps' results only: `imagenet-transfer reproduce` with the "
                "same grid resumes it)"
            )
        return run, []
    runs = mlflow.search_runs(
        search_all_experiments=True,
        filter_string="tags.stage = 'reproduce'",
        order_by=["attributes.start_time DESC"],
        output_format="list",
    )
    for position, run in enumerate(runs):
        if run.info.status == "FINISHED":
            return run, runs[:position]
    unfinished = f"; found {len(runs)} that did not finish ({_describe(runs)})" if runs else ""
    raise UserError(
        f"no grid run to report: expected a run tagged stage=reproduce with status FINISHED in the "
        f"tracking store {uri} (any experiment){unfinished}; run `imagenet-transfer reproduce` first (it "
        "resumes an unfinished grid), or pass --grid-run ID"
    )


def _describe(runs: list, most: int = 5) -> str:
    """`id (STATUS), ...` of the first `most` runs."""
    listed = ", ".join(f"{r.info.run_id} ({r.info.status})" for r in runs[:most])
    return listed + (f" and {len(runs) - most} more" if len(runs) > most else "")


def grid_results(run) -> pd.DataFrame:
    """One row per (transfer step, metric) of the grid run: experiment, variant, paper_variant, seed, arch,
    benchmark, num_classes, images_per_class, metric, value; read from `steps.json` and the runs' metrics."""
    import mlflow

    try:
        steps = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/steps.json")
    except Exception:  # a grid run that stopped before its first step
        steps = []
    transfer = [s for s in steps if s.get("stage") == "transfer" and s.get("run_id")]
    ids = sorted({s["run_id"] for s in transfer})
    metrics: dict[str, dict[str, float]] = {}
    for start in range(0, len(ids), 100):
        chunk = ", ".join(f"'{i}'" for i in ids[start : start + 100])
        for found in mlflow.search_runs(
            search_all_experiments=True, filter_string=f"attributes.run_id IN ({chunk})", output_format="list"
        ):
            metrics[found.info.run_id] = found.data.metrics
    rows = []
    for step in transfer:
        logged = metrics.get(step["run_id"], {})
        for metric in MAIN_METRICS.get(step.get("benchmark"), ()):
            value = logged.get(metric)
            if value is not None:
                rows.append(
                    {
                        k: step.get(k)
                        for k in (
                            "experiment",
                            "variant",
                            "paper_variant",
                            "seed",
                            "arch",
                            "benchmark",
                            "num_classes",
                            "images_per_class",
                            "run_id",
                        )
                    }
                    | {
                        "metric": metric,
                        "value": float(value),
                        "ci_low": float(logged.get(f"{metric}_ci_low", math.nan)),
                        "ci_high": float(logged.get(f"{metric}_ci_high", math.nan)),
                    }
                )
    return pd.DataFrame(rows, columns=RESULT_COLUMNS)


def trial_results() -> pd.DataFrame:
    """Budget-study trials: study_name, trial_number, budget, num_classes, images_per_class, objective."""
    import mlflow

    runs = mlflow.search_runs(search_all_experiments=True, filter_string="tags.stage = 'trial'", output_format="list")
    rows = []
    for run in runs:
        objective = run.data.metrics.get("objective")
        classes = run.data.params.get("num_classes")
        if objective is None or classes in (None, ""):
            continue
        rows.append(
            {
                "study_name": run.data.tags.get("study_name", ""),
                "trial_number": run.data.tags.get("trial_number", ""),
                "budget": run.data.params.get("budget", ""),
                "num_classes": float(classes),
                "images_per_class": run.data.params.get("images_per_class", ""),
                "objective": float(objective),
            }
        )
    return pd.DataFrame(
        rows, columns=["study_name", "trial_number", "budget", "num_classes", "images_per_class", "objective"]
    )


# -- tables (pure) -----------------------------------------------------------------------------------------
def experiment_table(results: pd.DataFrame, intervals: pd.DataFrame | None = None) -> pd.DataFrame:
    """Rows = variant (and arch) of one experiment's `results`, per metric: mean, std (sample, over seeds), n, the
    95 % interval of the mean (`ci_low`/`ci_high`, from `intervals`: `findings.cell_intervals` of these results;
    by default without prediction tables, so a single run's logged interval alone), delta to the full variant and
    that delta in % of full's mean."""
    if results.empty:
        return pd.DataFrame()
    if intervals is None:
        intervals = findings.cell_intervals(results)
    multi_arch = results["arch"].nunique() > 1
    results = results.assign(row=results["variant"] + (" (" + results["arch"] + ")" if multi_arch else ""))
    order = list(dict.fromkeys(results["row"]))
    groups = results.groupby(["row", "arch", "metric"], sort=False)
    stats = groups["value"].agg(["mean", "std", "count"]).reset_index()
    variant = results.drop_duplicates("row").set_index("row")["variant"]
    bounds = intervals.drop_duplicates(["variant", "arch", "metric"]).set_index(["variant", "arch", "metric"])
    cells = [(variant[r], a, m) for r, a, m in zip(stats["row"], stats["arch"], stats["metric"])]
    for side in ("ci_low", "ci_high"):
        stats[side] = [bounds[side].get(c, math.nan) for c in cells]
    first = results.drop_duplicates("row").set_index("row")
    table = pd.DataFrame({"row": order})
    for key in ("variant", "paper_variant", "arch", "num_classes", "images_per_class"):
        table[key] = [first.loc[r, key] for r in order]
    for metric in dict.fromkeys(results["metric"]):
        part = stats[stats["metric"] == metric].set_index("row")
        table[f"{metric}_mean"] = [part["mean"].get(r, math.nan) for r in order]
        table[f"{metric}_std"] = [part["std"].get(r, math.nan) for r in order]
        table[f"{metric}_n"] = [int(part["count"].get(r, 0)) for r in order]
        table[f"{metric}_ci_low"] = [part["ci_low"].get(r, math.nan) for r in order]
        table[f"{metric}_ci_high"] = [part["ci_high"].get(r, math.nan) for r in order]
        base = table.loc[table["variant"] == BASELINE]
        deltas, relative = [], []
        for _, row in table.iterrows():
            same_arch = base[base["arch"] == row["arch"]]
            full = same_arch[f"{metric}_mean"].iloc[0] if len(same_arch) else math.nan
            deltas.append(row[f"{metric}_mean"] - full)
            relative.append(100 * deltas[-1] / full if full else math.nan)
        table[f"{metric}_delta"] = deltas
        table[f"{metric}_delta_pct"] = relative
    return table


def experiment_results(results: pd.DataFrame, experiment: str) -> pd.DataFrame:
    """The experiment's rows; when it has no `full` variant (E5, E7 at real scale), the grid's `full` runs
    of the same metrics come first, so its deltas are to the full-data baseline too."""
    part = results[results["experiment"] == experiment]
    if (part["variant"] == BASELINE).any():
        return part
    base = results[(results["variant"] == BASELINE) & results["metric"].isin(set(part["metric"]))]
    base = base.drop_duplicates(["run_id", "metric"]).assign(experiment=experiment)
    return pd.concat([base, part], ignore_index=True) if not base.empty else part


def published(paper_variant: str | None, metric: str, *, absolute: bool = True) -> str:
    """What PAPER.md publishes for this variant and metric, or "not published": its number (`absolute`, for a
    real-scale grid) or its effect relative to the paper's full set (world and smoke grids, whose absolute
    numbers are not comparable with AlexNet on ImageNet)."""
    value = PUBLISHED.get((paper_variant, metric)) if paper_variant else None
    if value is None:
        return NOT_PUBLISHED
    if not absolute:
        return findings.paper_effect_text(paper_variant, metric) or NOT_PUBLISHED
    if isinstance(value, float):
        base = PUBLISHED.get((BASELINE, metric))
        return f"{value:.1f}" if paper_variant == BASELINE or base is None else f"{value:.1f} (Δ {value - base:+.1f})"
    return value


def _missing(*values) -> bool:
    return any(v is None or (isinstance(v, float) and math.isnan(v)) for v in values)


def cell(mean: float, std: float, n: int, low: float = math.nan, high: float = math.nan) -> str:
    """`mean ± std` over seeds (the value alone for one seed), then the 95 % interval `[low, high]` if known."""
    if n == 0 or math.isnan(mean):
        return "—"
    text = f"{mean:.2f}" if n < 2 or math.isnan(std) else f"{mean:.2f} ± {std:.2f}"
    return text if _missing(low, high) else f"{text} [{low:.2f}, {high:.2f}]"


def display_rows(
    table: pd.DataFrame, metrics: list[str], *, absolute: bool = True
) -> tuple[list[str], list[list[str]]]:
    """Header and string cells of a table as the report shows it (`absolute`: see `published`)."""
    header = ["variant", "classes", "images / class"]
    for metric in metrics:
        header += [metric, f"Δ {metric} vs {BASELINE}", f"paper {metric}"]
    rows = []
    for _, row in table.iterrows():
        if row["variant"] == RANDOM:
            label = RANDOM_LABEL + str(row["row"])[len(RANDOM) :]  # keeps " (arch)" of a multi-arch table
            cells = [label, "—", "0"]
        else:
            cells = [str(row["row"]), f"{int(row['num_classes'])}", f"{row['images_per_class']:.0f}"]
        for metric in metrics:
            delta, pct = row[f"{metric}_delta"], row.get(f"{metric}_delta_pct", math.nan)
            low, high = row.get(f"{metric}_ci_low", math.nan), row.get(f"{metric}_ci_high", math.nan)
            cells.append(cell(row[f"{metric}_mean"], row[f"{metric}_std"], row[f"{metric}_n"], low, high))
            if row["variant"] == BASELINE or math.isnan(delta):
                cells.append("—")
            else:
                cells.append(f"{delta:+.2f}" + ("" if _missing(pct) else f" ({pct:+.1f} %)"))
            cells.append(published(row["paper_variant"], metric, absolute=absolute))
        rows.append(cells)
    return header, rows


def _interval(diff: float, low: float, high: float, scale: float = 1.0, unit: str = "", digits: int = 2) -> str:
    """`+d [low, high]` (times `scale`), or `+d (no interval)`."""
    if _missing(diff):
        return "—"
    text = f"{scale * diff:+.{digits}f}{unit}"
    if _missing(low, high):
        return f"{text} (no interval)"
    return f"{text} [{scale * low:+.{digits}f}, {scale * high:+.{digits}f}]"


def comparison_rows(comparisons: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """Header and string cells of the paired comparisons (`findings.comparisons`)."""
    header = ["experiment", "variant", "vs", "metric", "seeds", "Δ [95 % interval]", "Δ in % of full", "significant"]
    header.append("note")
    rows = []
    for _, row in comparisons.iterrows():
        reference = RANDOM_LABEL if row["reference"] == RANDOM else row["reference"]
        variant = row["variant"] + (f" ({row['arch']})" if comparisons["arch"].nunique() > 1 else "")
        flag = row["significant"]
        significant = "—" if flag is None or pd.isna(flag) else ("yes" if flag else "no")
        relative = _interval(row["relative"], row["relative_low"], row["relative_high"], 100, " %", 1)
        if row["relative_to"] != BASELINE and not _missing(row["relative"]):
            relative += f" (of {row['relative_to']})"
        note = row["note"] if str(row["note"]).startswith("no interval") else ""
        rows.append(
            [
                row["experiment"],
                variant,
                reference,
                row["metric"],
                str(row["pairs"]),
                _interval(row["diff"], row["low"], row["high"]),
                relative,
                significant,
                note,
            ]
        )
    return header, rows


def finding_rows(verdicts: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """Header and string cells of the verdict table (`findings.verdicts`)."""
    header = ["experiment", "paper's finding", "comparison here", "Δ [95 % interval]", "Δ in % of full"]
    header.append("paper's effect")
    header += ["verdict", "note"]
    rows = []
    for _, row in verdicts.iterrows():
        compared = f"{row['comparison']}, {row['metric']} ({row['pairs']:.0f} seed(s))" if row["comparison"] else "—"
        rows.append(
            [
                row["experiment"],
                row["claim"],
                compared,
                _interval(row["diff"], row["low"], row["high"]),
                _interval(row["relative"], row["relative_low"], row["relative_high"], 100, " %", 1),
                row["paper_effect"],
                row["verdict"],
                row["note"],
            ]
        )
    return header, rows


# -- plots -------------------------------------------------------------------------------------------------
def _bars(part: pd.DataFrame, by: str, load=None) -> pd.DataFrame:
    """Per value of `by`: the mean over runs and an error bar `low`..`high`: the 95 % interval of that mean
    (`findings.seed_interval`: from the runs' prediction tables, or a single run's logged interval) where every
    point has one (`bar` "interval"), else mean ± std over seeds ("std")."""
    if "ci_low" not in part.columns:
        part = part.assign(ci_low=math.nan, ci_high=math.nan)
    groups = part.groupby(by)
    stats = groups["value"].agg(["mean", "std"])
    bounds = {}
    for key, runs in groups:
        found = findings.seed_interval(runs["metric"].iloc[0], runs, load)
        bounds[key] = (found["ci_low"], found["ci_high"])
    low = pd.Series({k: b[0] for k, b in bounds.items()}, dtype=float)
    high = pd.Series({k: b[1] for k, b in bounds.items()}, dtype=float)
    interval = bool(len(part)) and bool(low.notna().all() and high.notna().all())
    if interval:
        stats["low"], stats["high"] = low.reindex(stats.index), high.reindex(stats.index)
    else:
        spread = stats["std"].fillna(0.0)
        stats["low"], stats["high"] = stats["mean"] - spread, stats["mean"] + spread
    stats["bar"] = "interval" if interval else "std"
    return stats.reset_index().sort_values(by)


def _series(results: pd.DataFrame, x: str, keep, load=None) -> dict[str, pd.DataFrame]:
    """Per metric, the points (x, mean, low, high) of a curve over the variants `keep` accepts."""
    picked = results[results["variant"].map(keep).astype(bool)].drop_duplicates(["run_id", "metric"])
    out = {}
    for metric, part in picked.groupby("metric", sort=False):
        stats = _bars(part, x, load)
        if len(stats) >= 2:  # a metric measured at one point only (e.g. on `full` alone) makes no curve
            out[metric] = stats
    return out


def _bar_words(*series: dict[str, pd.DataFrame]) -> str:
    kinds = {kind for s in series for stats in s.values() for kind in stats["bar"]}
    words = {"interval": "95 % bootstrap interval (test images; the mean over seeds)", "std": "± std over seeds"}
    return " or ".join(words[k] for k in ("interval", "std") if k in kinds)


def _relative_panel(
    ax, per_class: dict[str, pd.DataFrame], full_x: dict[str, float], comparisons: pd.DataFrame | None
) -> None:
    """E1 relative to full: the grid's change in % of full's score against images per class as a fraction of
    full's (`full_x`: full's images per class per metric; error bars: the paired 95 % intervals where known, else
    the variant's own bar), beside the paper's relative effects (its 1000 / 500 / 250 images per class as 1, 0.5,
    0.25)."""
    x_col = "images_per_class"
    for metric, stats in per_class.items():
        if metric not in full_x or not (stats[x_col] == full_x[metric]).any():
            continue
        full = stats.loc[stats[x_col] == full_x[metric]].iloc[0]
        paired = {}
        if comparisons is not None and not comparisons.empty:
            rows = comparisons[
                (comparisons["metric"] == metric)
                & (comparisons["reference"] == BASELINE)
                & comparisons["variant"].str.match(r"e1-\d+$")
                & comparisons["relative_low"].notna()
            ]
            paired = {r["images_per_class"]: (r["relative_low"], r["relative_high"]) for _, r in rows.iterrows()}
        xs, ys, below, above = [], [], [], []
        for _, point in stats.iterrows():
            y = 100 * (point["mean"] - full["mean"]) / full["mean"]
            if point[x_col] == full_x[metric]:
                low, high = y, y
            elif point[x_col] in paired:
                low, high = (100 * v for v in paired[point[x_col]])
            else:
                low, high = (100 * (point[k] - full["mean"]) / full["mean"] for k in ("low", "high"))
            xs.append(point[x_col] / full_x[metric])
            ys.append(y)
            below.append(max(y - low, 0.0))
            above.append(max(high - y, 0.0))
        ax.errorbar(xs, ys, yerr=[below, above], capsize=3, marker="o", label=f"{metric} (here)")
    for metric in dict.fromkeys(m for _, m in findings.PUBLISHED):
        points = sorted(
            (1.0 if v == BASELINE else int(v.split("-")[1]) / 1000, 100 * findings.paper_relative(v, metric))
            for v, m in findings.PUBLISHED
            if m == metric and (v == BASELINE or re.fullmatch(r"e1-\d+", v))
        )
        if len(points) >= 2:
            ax.plot(*zip(*points), "kD--", label=f"{metric}, paper (AlexNet, ImageNet)")
    ax.axhline(0, color="0.6", linewidth=0.8, gid="zero")
    ax.set(
        xscale="log",
        xlabel="images per class, fraction of full's (paper: of 1000)",
        ylabel="change vs full (% of full's score)",
        title="E1 relative to full",
    )


def plot_results(
    results: pd.DataFrame,
    trials: pd.DataFrame,
    folder: Path,
    label: str = "",
    comparisons: pd.DataFrame | None = None,
    load=None,
) -> dict[str, str]:
    """PNG files in `folder` (`label`, e.g. the grid and scale, goes into the titles); returns file name -> caption.
    Every curve has error bars (the 95 % interval of the mean over seeds, from the runs' prediction tables that
    `load` reads, else ± std over seeds), random init is a band; `comparisons` (`findings.comparisons`) give the
    paired intervals of the E1 relative panel.
    Drawn on `matplotlib.figure.Figure` objects: no pyplot state, nothing to close."""
    from matplotlib.figure import Figure

    made = {}
    random_part = results[results["variant"] == RANDOM].drop_duplicates(["run_id", "metric"])
    random = _bars(random_part, "metric", load).set_index("metric") if not random_part.empty else pd.DataFrame()

    def curve(ax, stats, x: str, label: str, **style) -> None:
        below = (stats["mean"] - stats["low"]).clip(lower=0)
        above = (stats["high"] - stats["mean"]).clip(lower=0)
        ax.errorbar(stats[x], stats["mean"], yerr=[below, above], capsize=3, label=label, **style)

    def reference(ax, metrics: list[str]) -> None:
        """A band per metric over random init's interval (or ± std over seeds; a line for a single run without
        one): what no pre-training gives, in its curve's colour."""
        colours = {}
        for container in ax.containers:  # errorbar: the label is the container's, the colour its data line's
            colours.setdefault(container.get_label().split(" (")[0], container.lines[0].get_color())
        for metric in metrics:
            if metric in random.index:
                r, colour = random.loc[metric], colours.get(metric, "0.45")
                name = f"{metric}, {RANDOM_LABEL}"
                if r["high"] > r["low"]:
                    ax.axhspan(r["low"], r["high"], color=colour, alpha=0.15, linewidth=0, gid=RANDOM, label=name)
                    name = "_nolegend_"
                ax.axhline(r["mean"], color=colour, linestyle=":", linewidth=1.2, gid=RANDOM, label=name)

    def finish_axes(ax) -> None:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        ax.grid(alpha=0.3)

    def save(fig, name: str, caption: str) -> None:
        for ax in fig.axes:  # the measured x values as plain numbers on the log axis
            xs = sorted({x for line in ax.get_lines() if line.get_gid() is None for x in line.get_xdata()})
            if xs:
                ax.set_xticks(xs, [f"{x:g}" for x in xs])
                ax.minorticks_off()
        fig.tight_layout()
        fig.savefig(folder / name, dpi=110)
        made[name] = caption

    per_class = _series(results, "images_per_class", lambda v: v == BASELINE or v.startswith("e1-"), load)
    if per_class:
        fig = Figure(figsize=(13, 4.2))
        ax, relative = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
        for metric, stats in per_class.items():
            curve(ax, stats, "images_per_class", metric, marker="o")
        reference(ax, list(per_class))
        ax.set(
            xscale="log",
            xlabel="pre-training images per class",
            ylabel="transfer metric (%)",
            title=f"E1: transfer vs images per class{label}",
        )
        finish_axes(ax)
        full = results[results["variant"] == BASELINE]
        _relative_panel(relative, per_class, full.groupby("metric")["images_per_class"].first().to_dict(), comparisons)
        finish_axes(relative)
        save(
            fig,
            "transfer_vs_images_per_class.png",
            f"Transfer vs images per class (E1 and the full set; mean over seeds, error bars: "
            f"{_bar_words(per_class)}; random init: a band), and the change relative to full beside the paper's "
            "relative effect (error bars: paired 95 % intervals where the runs have prediction tables).",
        )
    by_classes = _series(results, "num_classes", lambda v: v == BASELINE or v.startswith(("e2-", "e3-")), load)
    budget = _series(results, "num_classes", lambda v: v.startswith("e5-"), load)
    if by_classes or budget:
        fig = Figure(figsize=(8.5, 4.5))
        ax = fig.subplots()
        for metric, stats in by_classes.items():
            curve(ax, stats, "num_classes", f"{metric} (E2/E3 labels)", marker="o")
        for metric, stats in budget.items():
            curve(ax, stats, "num_classes", f"{metric} (E5 fixed budget)", marker="s", linestyle="--")
        reference(ax, list(dict.fromkeys([*by_classes, *budget])))
        ax.set(
            xscale="log",
            xlabel="number of pre-training classes (labels)",
            ylabel="transfer metric (%)",
            title=f"E2/E3/E5: transfer vs number of classes{label}",
        )
        finish_axes(ax)
        save(
            fig,
            "transfer_vs_num_classes.png",
            "Transfer vs number of classes: coarser labels (E2, E3) and a fixed image budget (E5); mean over seeds, "
            f"error bars: {_bar_words(by_classes, budget)}; random init: a band.",
        )
    if not trials.empty:
        fig = Figure(figsize=(8.5, 4))
        ax = fig.subplots()
        for study, part in trials.groupby("study_name"):
            ax.scatter(part["num_classes"], part["objective"], label=study or "study")
        ax.set(
            xscale="log",
            xlabel="number of classes C (images per class = B / C)",
            ylabel="objective",
            title="Budget study: C vs objective",
        )
        finish_axes(ax)
        save(fig, "budget_study_classes_vs_objective.png", "Budget-study trials: number of classes C vs the objective.")
    return made


# -- writing -----------------------------------------------------------------------------------------------
def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def build_report(
    folder: Path,
    run,
    results: pd.DataFrame,
    trials: pd.DataFrame,
    questions: dict[str, str],
    skipped: list | None = None,
    comparisons: pd.DataFrame | None = None,
    load: findings.Loader | None = None,
) -> None:
    """Write report.md, report.html, tables/*.csv and plots/*.png into `folder` (`skipped`: newer grid runs
    that did not finish, named in the introduction; `comparisons`: `findings.comparisons` of `results`, by
    default from `load`; `load`: a loader of the runs' prediction tables for the intervals, None: none read)."""
    (folder / "tables").mkdir(parents=True)
    (folder / "plots").mkdir()
    params = run.data.params if run is not None else {}
    profile = params.get("profile") or params.get("scale", "")
    absolute = profile == "real"  # only a real-scale grid's numbers stand beside the paper's
    label = f" ({params.get('grid_name', '')}, {profile})" if run is not None else ""
    if comparisons is None:
        comparisons = findings.comparisons(results, load)
    verdicts = findings.verdicts(results, comparisons)
    plots = plot_results(results, trials, folder / "plots", label, comparisons, load)
    seeds = results["seed"].map(findings.seed_number).nunique() if not results.empty else 0
    title = "imagenet-transfer report"
    intro = []
    if run is not None:
        intro.append(
            f"Grid `{params.get('grid_name', '')}` at scale `{profile}` — reproduce run "
            f"`{run.info.run_id}` ({run.info.status}), {seeds} seed(s) per variant."
        )
    intro.append(f"What the seeds varied: {params.get('varied') or 'pretrain'}.")
    if skipped:
        intro.append(f"Not reported: {len(skipped)} newer grid run(s) that did not finish, {_describe(skipped)}.")
    paper = (
        "“paper”: the value PAPER.md publishes for the paper's variant this row stands for (AlexNet on ImageNet)"
        if absolute
        else "“paper”: the paper's effect relative to its full set (AlexNet on ImageNet), to compare by direction "
        "and relative size with Δ % here; absolute numbers of this scale are not comparable with the paper's"
    )
    intro += [
        "Cells: mean ± std over seeds (sample std; a single seed shows the value alone), then [the 95 % interval "
        "of that mean]: a percentile bootstrap over the test images, each seed's run resampled on its own and the "
        "scores averaged over the seeds (a single run: the interval it logged); no interval where a run of a "
        f"several-seed cell has no prediction table. Δ: difference to the `{BASELINE}` variant's mean, same "
        f"backbone (in % of it in brackets). {paper}; “{NOT_PUBLISHED}” where none is known.",
        PROCEDURE,
    ]
    md = [f"# {title}", "", *(line for text in intro for line in (text, ""))]
    body = [f"<h1>{title}</h1>", *(f"<p>{html.escape(t)}</p>" for t in intro)]

    def section(heading: str, header: list[str], rows: list[list[str]], *notes: str) -> None:
        md.extend([f"## {heading}", "", _markdown_table(header, rows), "", *(n for note in notes for n in (note, ""))])
        body.extend([f"<h2>{html.escape(heading)}</h2>", _html_table(header, rows)])
        body.extend(f"<p>{html.escape(note)}</p>" for note in notes)

    verdicts.to_csv(folder / "tables" / "findings.csv", index=False)
    comparisons.to_csv(folder / "tables" / "comparisons.csv", index=False)
    rules = [f"{finding}: {rule}." for finding, rule in findings.RULES.items()]
    section(
        "Findings",
        *finding_rows(verdicts),
        "Each verdict is derived from the comparison's 95 % interval by these rules (Δ % of full: the difference "
        f"divided by `{BASELINE}`'s score; “{findings.NOT_RUN}”: the grid did not run the experiment or the variant "
        f"the rule needs; “{findings.NO_INTERVAL}”: its runs have no prediction tables):",
        *rules,
    )
    for exp_id in dict.fromkeys(results["experiment"]) if not results.empty else []:
        part = experiment_results(results, exp_id)
        table = experiment_table(part, findings.cell_intervals(part, load))
        metrics = list(dict.fromkeys(part["metric"]))
        table.to_csv(folder / "tables" / f"{exp_id}.csv", index=False)
        heading = f"{exp_id}: {questions.get(exp_id, '')}".rstrip(": ")
        finding = findings.FINDINGS.get(exp_id, ("", NOT_PUBLISHED))[1]
        section(heading, *display_rows(table, metrics, absolute=absolute), f"Paper's finding: {finding}")
    if results.empty:
        md += ["No transfer results in the grid run: none of its transfer steps has a metric.", ""]
        body.append("<p>No transfer results in the grid run: none of its transfer steps has a metric.</p>")
    else:
        section(
            "Comparisons",
            *comparison_rows(comparisons),
            "Every pre-trained variant against full and random init (E5: against the most classes at the same "
            "budget; E7: A+B against each half), paired by seed; significant: the 95 % interval excludes 0.",
        )
    md += ["## Plots", ""]
    body.append("<h2>Plots</h2>")
    for name, caption in plots.items():
        md += [f"![{caption}](plots/{name})", "", caption, ""]
        data = base64.b64encode((folder / "plots" / name).read_bytes()).decode()
        text = html.escape(caption)
        body.append(
            f'<figure><img src="data:image/png;base64,{data}" alt="{text}"><figcaption>{text}</figcaption></figure>'
        )
    if trials.empty:
        md += ["No budget-study trials (stage=trial) in this tracking store.", ""]
        body.append("<p>No budget-study trials (stage=trial) in this tracking store.</p>")
    (folder / "report.md").write_text("\n".join(md))
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #bbb;padding:3px 8px;font-size:13px}th{background:#eee}img{max-width:100%}"
    )
    (folder / "report.html").write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title>"
        f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n"
    )


def write_report(out: str | Path | None = None, *, grid_run_id: str | None = None) -> Path:
    """Build the report from MLflow into `out` (default `reports/<UTC timestamp>`) and log it as a run.
    Every input is checked (UserError) before the report run starts or any file is written."""
    import mlflow

    from imagenet_transfer import tracking

    uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path('mlruns').resolve() / 'mlflow.db'}"  # configure's
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():  # reading would create it
        raise UserError(
            f"no grid run to report: expected a run tagged stage=reproduce with status FINISHED in the "
            f"tracking store {uri}, which does not exist; run `imagenet-transfer reproduce` first, or set "
            "MLFLOW_TRACKING_URI to the store the grid ran in"
        )
    tracking.configure()
    run, skipped = find_grid_run(grid_run_id)
    trials = trial_results()
    results = grid_results(run)
    try:
        questions = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/experiments.json")
    except Exception:
        questions = {}
    out = Path(out) if out else Path("reports") / datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out {out} exists and is not an empty folder; expected a new folder for the report")
    params = run.data.params
    note = f"; skipped {len(skipped)} newer grid run(s) that did not finish: {_describe(skipped)}" if skipped else ""
    print(
        f"reporting grid run {run.info.run_id} (grid {params.get('grid_name', '')}, scale {params.get('profile', '')}, "
        f"{run.info.status}, {len(results)} metric value(s)){note}",
        file=sys.stderr,
    )
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        tmp.chmod(0o755)  # mkdtemp's 0700 would stay on the report folder
    except OSError as err:
        raise UserError(f"--out {out} cannot be written ({err.strerror}); expected a writable folder") from None
    load = findings.cached(findings.run_predictions)  # each table read once, for comparisons and cells
    comparisons = findings.comparisons(results, load)
    try:
        build_report(tmp, run, results, trials, questions, skipped, comparisons, load)
        tags = {"grid_run_id": run.info.run_id}
        with tracking.start_run("report", params={"out": str(out), **tags}, tags=tags, run_name="report"):
            mlflow.log_artifacts(str(tmp))
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
