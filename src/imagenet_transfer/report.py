"""The report: the paper grid's numbers from MLflow, shaped like the paper's tables, beside its published ones.

    imagenet-transfer report                       # the newest finished reproduce run -> reports/<UTC time>/
    imagenet-transfer report --out reports/paper --grid-run 4f1c...

Input: MLflow only (no files on the side): the newest FINISHED reproduce run (tag stage=reproduce) or
`--grid-run` (a FINISHED one), its step table `steps.json`, the metrics of the transfer runs it lists, and any
budget-study trial runs (tag stage=trial, params `num_classes`, metric `objective`, tag `study_name`). A newer
grid run that did not finish (FAILED, KILLED, RUNNING: some steps only) is skipped and named; with no finished
grid run, or a `--grid-run` that is none, the report exits with code 2 before it writes anything.
Output (a folder, written whole or not at all, and the same files as artifacts of a run tagged stage=report):
    report.md, report.html      one table per experiment: rows = data variant, columns = benchmark metrics,
                                cells = mean ± std over seeds, Δ to the full-data baseline, the paper's number
                                where PAPER.md knows it and "not published" elsewhere, and a "random init" row
                                where the grid ran its no-pre-training baselines; the plots (random init as a
                                dotted line); the HTML is self-contained (images embedded as base64)
    tables/E<n>.csv             the same tables as numbers (mean, std, n, delta)
    plots/*.png                 transfer vs images per class, vs number of classes, budget study C vs objective
"""

from __future__ import annotations

import base64
import html
import math
import os
import shutil
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from imagenet_transfer.errors import UserError
from imagenet_transfer.grid_plan import RANDOM  # the variant of the grid's no-pre-training rows

# The metrics a table shows per benchmark (all in %).
MAIN_METRICS = {
    "voc07_det": ("voc07_map",),
    "voc12_action": ("voc12_action_map",),
    "sun397": ("sun397_acc",),
    "probe": ("probe_knn_top1", "probe_linear_top1", "probe_coarse_top1"),
}
# PAPER.md "Published results": (paper variant, metric) -> what is known. Nothing else is published.
PUBLISHED = {
    ("full", "voc07_map"): 58.3,
    ("e1-500", "voc07_map"): 57.0,
    ("e1-250", "voc07_map"): 54.6,
    ("e3-127", "voc07_map"): "≈ −2.8 vs full",
    ("e6-pascal-removed", "voc07_map"): "≈ full (nearly the same)",
}
FINDINGS = {
    "E1": "PASCAL-DET mAP 58.3 / 57.0 / 54.6 with 1000 / 500 / 250 images per class.",
    "E3": "127 classes instead of 1000: about −2.8 mAP on PASCAL-DET; for some tasks fewer classes did better.",
    "E4": "Features learned without fine-grained labels still separate fine-grained classes well.",
    "E5": "Same budget: fewer classes with more images each is slightly better than more classes with fewer.",
    "E6": "771 classes (PASCAL classes removed): nearly the same PASCAL-DET mAP as all 1000.",
    "E7": "Adding more data (A+B vs A) does not always help and can hurt.",
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
]
BASELINE = "full"
RANDOM_LABEL = "random init (no pre-training)"


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
        for metric in MAIN_METRICS.get(step.get("benchmark"), ()):
            value = metrics.get(step["run_id"], {}).get(metric)
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
                    | {"metric": metric, "value": float(value)}
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
def experiment_table(results: pd.DataFrame) -> pd.DataFrame:
    """Rows = variant (and arch), per metric: mean, std (sample, over seeds), n, delta to the full variant."""
    if results.empty:
        return pd.DataFrame()
    multi_arch = results["arch"].nunique() > 1
    results = results.assign(row=results["variant"] + (" (" + results["arch"] + ")" if multi_arch else ""))
    order = list(dict.fromkeys(results["row"]))
    stats = results.groupby(["row", "arch", "metric"], sort=False)["value"].agg(["mean", "std", "count"]).reset_index()
    first = results.drop_duplicates("row").set_index("row")
    table = pd.DataFrame({"row": order})
    for key in ("variant", "paper_variant", "arch", "num_classes", "images_per_class"):
        table[key] = [first.loc[r, key] for r in order]
    for metric in dict.fromkeys(results["metric"]):
        part = stats[stats["metric"] == metric].set_index("row")
        table[f"{metric}_mean"] = [part["mean"].get(r, math.nan) for r in order]
        table[f"{metric}_std"] = [part["std"].get(r, math.nan) for r in order]
        table[f"{metric}_n"] = [int(part["count"].get(r, 0)) for r in order]
        base = table.loc[table["variant"] == BASELINE]
        deltas = []
        for _, row in table.iterrows():
            same_arch = base[base["arch"] == row["arch"]]
            deltas.append(row[f"{metric}_mean"] - same_arch[f"{metric}_mean"].iloc[0] if len(same_arch) else math.nan)
        table[f"{metric}_delta"] = deltas
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


def published(paper_variant: str | None, metric: str) -> str:
    """What PAPER.md publishes for this variant and metric, or "not published"."""
    value = PUBLISHED.get((paper_variant, metric)) if paper_variant else None
    if value is None:
        return NOT_PUBLISHED
    if isinstance(value, float):
        base = PUBLISHED.get((BASELINE, metric))
        return f"{value:.1f}" if paper_variant == BASELINE or base is None else f"{value:.1f} (Δ {value - base:+.1f})"
    return value


def cell(mean: float, std: float, n: int) -> str:
    if n == 0 or math.isnan(mean):
        return "—"
    return f"{mean:.2f}" if n < 2 or math.isnan(std) else f"{mean:.2f} ± {std:.2f}"


def display_rows(table: pd.DataFrame, metrics: list[str]) -> tuple[list[str], list[list[str]]]:
    """Header and string cells of a table as the report shows it."""
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
            delta = row[f"{metric}_delta"]
            cells.append(cell(row[f"{metric}_mean"], row[f"{metric}_std"], row[f"{metric}_n"]))
            cells.append("—" if row["variant"] == BASELINE or math.isnan(delta) else f"{delta:+.2f}")
            cells.append(published(row["paper_variant"], metric))
        rows.append(cells)
    return header, rows


# -- plots -------------------------------------------------------------------------------------------------
def _series(results: pd.DataFrame, x: str, keep) -> dict[str, pd.DataFrame]:
    picked = results[results["variant"].map(keep).astype(bool)].drop_duplicates(["run_id", "metric"])
    out = {}
    for metric, part in picked.groupby("metric", sort=False):
        stats = part.groupby(x)["value"].agg(["mean", "std"]).reset_index().sort_values(x)
        if len(stats) >= 2:  # a metric measured at one point only (e.g. on `full` alone) makes no curve
            out[metric] = stats
    return out


def plot_results(results: pd.DataFrame, trials: pd.DataFrame, folder: Path, label: str = "") -> dict[str, str]:
    """PNG files in `folder` (`label`, e.g. the grid and scale, goes into the titles); returns file name -> caption.
    Drawn on `matplotlib.figure.Figure` objects: no pyplot state, nothing to close."""
    from matplotlib.figure import Figure

    made = {}
    random = (
        results[results["variant"] == RANDOM].drop_duplicates(["run_id", "metric"]).groupby("metric")["value"].mean()
    )

    def curve(ax, stats, x: str, label: str, **style) -> None:
        ax.errorbar(stats[x], stats["mean"], yerr=stats["std"].fillna(0), capsize=3, label=label, **style)

    def reference(ax, metrics: list[str]) -> None:
        """A dotted line per metric at its random-init value (what no pre-training gives), in its curve's colour."""
        colours = {}
        for container in ax.containers:  # errorbar: the label is the container's, the colour its data line's
            colours.setdefault(container.get_label().split(" (")[0], container.lines[0].get_color())
        for metric in metrics:
            if metric in random.index:
                ax.axhline(
                    random[metric],
                    color=colours.get(metric, "0.45"),
                    linestyle=":",
                    linewidth=1.5,
                    gid=RANDOM,
                    label=f"{metric}, {RANDOM_LABEL}",
                )

    def finish_axes(ax) -> None:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        ax.grid(alpha=0.3)

    def save(fig, name: str, caption: str) -> None:
        for ax in fig.axes:  # the measured x values as plain numbers on the log axis
            xs = sorted({x for line in ax.get_lines() if line.get_gid() != RANDOM for x in line.get_xdata()})
            if xs:
                ax.set_xticks(xs, [f"{x:g}" for x in xs])
                ax.minorticks_off()
        fig.tight_layout()
        fig.savefig(folder / name, dpi=110)
        made[name] = caption

    per_class = _series(results, "images_per_class", lambda v: v == BASELINE or v.startswith("e1-"))
    if per_class:
        fig = Figure(figsize=(8.5, 4))
        ax = fig.subplots()
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
        save(
            fig,
            "transfer_vs_images_per_class.png",
            "Transfer vs images per class (E1 and the full set; mean ± std over seeds).",
        )
    by_classes = _series(results, "num_classes", lambda v: v == BASELINE or v.startswith(("e2-", "e3-")))
    budget = _series(results, "num_classes", lambda v: v.startswith("e5-"))
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
            "Transfer vs number of classes: coarser labels (E2, E3) and a fixed image budget (E5).",
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
) -> None:
    """Write report.md, report.html, tables/*.csv and plots/*.png into `folder` (`skipped`: newer grid runs
    that did not finish, named in the introduction)."""
    (folder / "tables").mkdir(parents=True)
    (folder / "plots").mkdir()
    label = (
        f" ({run.data.params.get('grid_name', '')}, {run.data.params.get('profile', '')})" if run is not None else ""
    )
    plots = plot_results(results, trials, folder / "plots", label)
    seeds = results["seed"].nunique() if not results.empty else 0
    title = "imagenet-transfer report"
    intro = []
    if run is not None:
        params = run.data.params
        intro.append(
            f"Grid `{params.get('grid_name', '')}` at scale `{params.get('profile', '')}` — reproduce run "
            f"`{run.info.run_id}` ({run.info.status}), {seeds} seed(s) per variant."
        )
    if skipped:
        intro.append(f"Not reported: {len(skipped)} newer grid run(s) that did not finish, {_describe(skipped)}.")
    intro.append(
        "Cells: mean ± std over seeds (sample std; a single seed shows the value alone); Δ: difference to the "
        f"`{BASELINE}` variant's mean, same backbone. “paper”: the value PAPER.md publishes for the paper's "
        "variant this row stands for (AlexNet on ImageNet — not comparable in absolute terms to the embedded "
        f"world), “{NOT_PUBLISHED}” where none is known."
    )
    md, body = [f"# {title}", "", *intro, ""], [f"<h1>{title}</h1>", *(f"<p>{html.escape(t)}</p>" for t in intro)]
    for exp_id in dict.fromkeys(results["experiment"]) if not results.empty else []:
        part = experiment_results(results, exp_id)
        table = experiment_table(part)
        metrics = list(dict.fromkeys(part["metric"]))
        table.to_csv(folder / "tables" / f"{exp_id}.csv", index=False)
        header, rows = display_rows(table, metrics)
        heading = f"{exp_id}: {questions.get(exp_id, '')}".rstrip(": ")
        finding = FINDINGS.get(exp_id, NOT_PUBLISHED)
        md += [f"## {heading}", "", _markdown_table(header, rows), "", f"Paper's finding: {finding}", ""]
        body += [
            f"<h2>{html.escape(heading)}</h2>",
            _html_table(header, rows),
            f"<p>Paper's finding: {html.escape(finding)}</p>",
        ]
    if results.empty:
        md += ["No transfer results in the grid run: none of its transfer steps has a metric.", ""]
        body.append("<p>No transfer results in the grid run: none of its transfer steps has a metric.</p>")
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
    try:
        build_report(tmp, run, results, trials, questions, skipped)
        tags = {"grid_run_id": run.info.run_id}
        with tracking.start_run("report", params={"out": str(out), **tags}, tags=tags, run_name="report"):
            mlflow.log_artifacts(str(tmp))
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
