"""The `imagenet-transfer` command: one typer app; each command parses and calls one library function.

    imagenet-transfer taxonomy levels --method bottom-up
    imagenet-transfer subset build --preset e3-127 --out subsets/e3-127

MLproject entry points call these same commands (`entrypoints/*.py`), so every parameter is declared
once, here. Bad input (`UserError`) prints one message and exits with code 2.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from imagenet_transfer.errors import UserError

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
taxonomy_app = typer.Typer(no_args_is_help=True, help="Inspect and export WordNet label sets (E2, E3, E6, E7).")
catalog_app = typer.Typer(no_args_is_help=True, help="Scan a pre-training source into a catalog table.")
subset_app = typer.Typer(no_args_is_help=True, help="Build pre-training subsets (E1-E7) from a catalog.")
app.add_typer(taxonomy_app, name="taxonomy")
app.add_typer(catalog_app, name="catalog")
app.add_typer(subset_app, name="subset")
transfer_app = typer.Typer(
    no_args_is_help=True, help="Transfer benchmarks of a backbone (PASCAL-DET, PASCAL-ACT-CLS, SUN-CLS, E4 probes)."
)
app.add_typer(transfer_app, name="transfer")

Method = Annotated[str, typer.Option(help="bottom-up (E2) or top-down (E3)")]


# -- taxonomy -------------------------------------------------------------------------------------
@taxonomy_app.command("levels")
def taxonomy_levels(method: Method = "bottom-up") -> None:
    """List the class counts K of the label sets METHOD produces, finest first."""
    from imagenet_transfer.taxonomy import load_taxonomy

    for k in load_taxonomy().levels(method):
        print(k)


@taxonomy_app.command("labels")
def taxonomy_labels(
    method: Method = "bottom-up", classes: Annotated[int, typer.Option(help="K, see `levels`")] = 127
) -> None:
    """Print `fine_wnid<TAB>label_wnid<TAB>label_name` for every ILSVRC class, sorted by wnid."""
    from imagenet_transfer.taxonomy import load_taxonomy

    tax = load_taxonomy()
    labels = tax.labels(method, classes)
    sys.stdout.writelines(f"{w}\t{labels[w]}\t{tax.name(labels[w])}\n" for w in sorted(labels))


@taxonomy_app.command("pascal-removed")
def taxonomy_pascal_removed() -> None:
    """Print the 771 ILSVRC classes that are not below any PASCAL VOC synset (E6), sorted."""
    from imagenet_transfer.taxonomy import load_taxonomy

    sys.stdout.writelines(f"{w}\n" for w in load_taxonomy().pascal_removed())


@taxonomy_app.command("split")
def taxonomy_split(
    method: Annotated[str, typer.Option(help="random or minimal (E7)")] = "minimal",
    seed: int = 0,
) -> None:
    """Print `wnid<TAB>half` (A or B) for the 1000 ILSVRC classes, sorted by wnid."""
    from imagenet_transfer.taxonomy import load_taxonomy

    tax = load_taxonomy()
    a, _ = tax.split(tax.classes, method, seed)
    half_a = set(a)
    sys.stdout.writelines(f"{w}\t{'A' if w in half_a else 'B'}\n" for w in tax.classes)


# -- catalog --------------------------------------------------------------------------------------
@catalog_app.command("scan")
def catalog_scan(
    source: Annotated[Path, typer.Argument(help="source folder (ImageNet layout or flat <wnid>_*.JPEG)")],
    out: Annotated[Path | None, typer.Option(help="also write the catalog to this .parquet")] = None,
    refresh: Annotated[bool, typer.Option(help="re-scan even when the cached catalog is current")] = False,
) -> None:
    """Scan SOURCE once (cached; re-scanned only when it changed) and print images per split."""
    from imagenet_transfer.catalog import describe, load_catalog, write_catalog

    catalog = load_catalog(source, refresh=refresh)
    if out is not None:
        write_catalog(catalog, out, {"source": str(source)})
    print(describe(catalog).to_string())


# -- subset ---------------------------------------------------------------------------------------
@subset_app.command("build")
def subset_build(
    preset: Annotated[str | None, typer.Option(help="preset name, see `subset presets` (default: full)")] = None,
    spec: Annotated[Path | None, typer.Option(help="YAML subset spec (instead of --preset)")] = None,
    catalog: Annotated[Path | None, typer.Option(help="catalog .parquet with columns path, wnid[, split]")] = None,
    source: Annotated[
        str | None, typer.Option(help="source folder to scan, or builtin:demo (default: the embedded world)")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="output folder (default: in the cache, by digest)")] = None,
    seed: Annotated[int | None, typer.Option(help="override the spec's seed")] = None,
) -> None:
    """Write a subset (manifest.parquet, classes.tsv, counts.tsv, spec.yaml) and log it to MLflow."""
    from imagenet_transfer.subsets import load_spec, make_subset

    if catalog is not None and source is not None:
        raise UserError("--catalog and --source contradict each other: give one")
    subset_spec = load_spec(preset or (None if spec else "full"), spec).with_seed(seed)
    if catalog is None and source is None:
        from imagenet_transfer.synthetic import default_source

        source = default_source()
    subset, folder, _ = make_subset(subset_spec, catalog or source, out)
    summary = subset.summary()
    print(
        f"subset {summary['name']} ({summary['digest']}): {summary['num_labels']} labels over "
        f"{summary['num_fine_classes']} classes, {summary['train_images']} train / {summary['val_images']} val images"
    )
    print(folder)


@subset_app.command("presets")
def subset_presets() -> None:
    """List the preset patterns and the paper's presets."""
    from imagenet_transfer.subsets import PAPER_PRESETS, PRESET_PATTERNS

    for pattern, what in PRESET_PATTERNS.items():
        print(f"{pattern:32s} {what}")
    print("\npaper presets: " + " ".join(PAPER_PRESETS))


@subset_app.command("show")
def subset_show(
    preset: Annotated[str | None, typer.Option(help="preset name")] = None,
    spec: Annotated[Path | None, typer.Option(help="YAML subset spec")] = None,
    seed: Annotated[int | None, typer.Option(help="override the spec's seed")] = None,
) -> None:
    """Print the spec (YAML) a preset stands for, and its digest."""
    from imagenet_transfer.subsets import load_spec

    subset_spec = load_spec(preset, spec).with_seed(seed)
    print(subset_spec.to_yaml().rstrip())
    print(f"# digest: {subset_spec.digest}")


# -- synthetic world ------------------------------------------------------------------------------
@app.command("synth")
def synth(
    out: Annotated[Path | None, typer.Option(help="world folder (default: in the cache, by options)")] = None,
    seed: int = 0,
    size: Annotated[str, typer.Option(help="tiny, default or large")] = "default",
    resolution: Annotated[int | None, typer.Option(help="image side in px (default: the size's)")] = None,
    partitions: Annotated[int | None, typer.Option(help="SUN397 partitions (default: the size's)")] = None,
) -> None:
    """Generate the embedded synthetic world (ImageNet, VOC2007, VOC2012 action and SUN397 formats)."""
    from imagenet_transfer.synthetic import read_world, run_synth

    root = run_synth(out, seed=seed, size=size, resolution=resolution, partitions=partitions)
    counts = read_world(root).get("counts", {})
    print("\n".join(f"{k}: {v}" for k, v in counts.items() if not isinstance(v, dict)))
    print(root)


# -- pre-training ---------------------------------------------------------------------------------
@app.command("pretrain")
def pretrain(
    ctx: typer.Context,
    subset: Annotated[str, typer.Option(help="preset name, spec .yaml, subset folder or manifest.parquet")] = "full",
    source: Annotated[str, typer.Option(help="source for presets/specs (default: the embedded world)")] = "",
    arch: Annotated[str, typer.Option(help="caffe_alexnet, alexnet, resnet18, resnet50 or small")] = "small",
    recipe: Annotated[str, typer.Option(help="paper, paper-epochs, world, world-long or smoke")] = "world",
    resolution: int | None = None,
    schedule: Annotated[str | None, typer.Option(help="epochs or iterations (default: the recipe's)")] = None,
    epochs: int | None = None,
    iterations: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    momentum: float | None = None,
    weight_decay: float | None = None,
    decay: Annotated[str | None, typer.Option(help="cosine or step")] = None,
    step_fraction: float | None = None,
    warmup_fraction: float | None = None,
    dropout: float | None = None,
    seed: int = 0,
    workers: int | None = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda")] = "auto",
    gpus: Annotated[int, typer.Option(help="GPUs to train on with DDP (torchrun)")] = 1,
    compile: Annotated[bool, typer.Option("--compile/--no-compile", help="torch.compile the model")] = False,
    coarse_level: Annotated[
        str, typer.Option(help="label set of val_top1_coarse: top-down-127, top-down-10, bottom-up-79 or bottom-up-9")
    ] = "top-down-127",
    checkpoint_dir: str = "",
    checkpoint_minutes: float = 5.0,
    max_skipped_fraction: float = 0.001,
    input_pipeline: Annotated[str, typer.Option(help="auto (shards on CUDA when prepared), loader or shards")] = "auto",
    shards: Annotated[
        str, typer.Option(help="prepared shard folder (default: found in the cache by the subset's digest)")
    ] = "",
    model_name: Annotated[str, typer.Option(help="registered model name (default: <arch>-<subset>)")] = "",
    register: Annotated[bool, typer.Option("--register/--no-register")] = True,
    config: Annotated[Path | None, typer.Option(help="YAML of these options (CLI options override it)")] = None,
) -> None:
    """Pre-train a backbone on a subset, checkpointing and resuming, and register it in MLflow."""
    options = {k: v for k, v in locals().items() if k not in ("config", "ctx")}
    from imagenet_transfer.pretrain import run_pretrain
    from imagenet_transfer.pretrain_config import PretrainConfig

    if config is not None:
        given = {k: v for k, v in options.items() if ctx.get_parameter_source(k).name != "DEFAULT"}
        settings = PretrainConfig.from_file(config, **given)
    else:
        settings = PretrainConfig(**options)
    summary = run_pretrain(settings)
    shown = {k: v for k, v in summary.items() if k.startswith("val_") or k in ("model_uri", "run_id")}
    print("\n".join(f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v}" for k, v in shown.items()))


# -- prepared shards ------------------------------------------------------------------------------
@app.command("prepare")
def prepare(
    subset: Annotated[str, typer.Option(help="preset name, spec .yaml, subset folder or manifest.parquet")] = "full",
    source: Annotated[str, typer.Option(help="source for presets/specs (default: the embedded world)")] = "",
    format: Annotated[str, typer.Option(help="jpeg, raw or auto (raw when it fits in --ram-share of RAM)")] = "auto",
    short_side: Annotated[
        int | None, typer.Option(help="stored square side in px (default: round(resolution*256/227))")
    ] = None,
    resolution: Annotated[int, typer.Option(help="the crop the shards serve")] = 227,
    quality: Annotated[int, typer.Option(help="JPEG quality")] = 90,
    images_per_shard: int = 1024,
    ram_share: Annotated[float, typer.Option(help="share of RAM raw shards may take with --format auto")] = 0.5,
    out: Annotated[
        Path | None, typer.Option(help="shard folder (default: in the cache, by manifest digest + options)")
    ] = None,
    workers: Annotated[int | None, typer.Option(help="writer processes (default: one per core)")] = None,
) -> None:
    """Prepare a subset's images as shards for fast pre-training input (resumable; logged to MLflow)."""
    from imagenet_transfer.prepare import run_prepare

    summary = run_prepare(
        subset,
        source,
        format=format,
        short_side=short_side,
        resolution=resolution,
        quality=quality,
        images_per_shard=images_per_shard,
        ram_share=ram_share,
        out=out,
        workers=workers,
    )
    print(
        f"{summary['format']} {summary['side']}px: {summary['images']:.0f} images, {summary['bytes'] / 2**20:.1f} MiB, "
        f"{summary['images_per_s']:.0f} images/s{' (already prepared, verified)' if summary['reused'] else ''}"
    )
    print(summary["folder"])


# -- transfer -------------------------------------------------------------------------------------
Backbone = Annotated[
    str,
    typer.Option(help="models:/NAME@ALIAS, models:/NAME/VERSION or random:ARCH[@RES][:SEED] (e.g. random:small@32:2)"),
]
Settings = Annotated[list[str] | None, typer.Option("--set", help="KEY=VALUE of the benchmark's config (repeatable)")]


@transfer_app.command("run")
def transfer_run(
    benchmark: Annotated[str, typer.Argument(help="voc07_det, voc12_action, sun397 or probe")],
    backbone: Backbone = "models:/small-full@current",
    set_: Settings = None,
    quick: Annotated[bool, typer.Option("--quick", help="a toy size of the benchmark (smoke test)")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda")] = "auto",
) -> None:
    """Run one benchmark on one backbone and log it as an MLflow run (stage=transfer)."""
    from imagenet_transfer.transfer.runner import make_config, run_benchmark

    metrics = run_benchmark(benchmark, backbone, make_config(benchmark, set_, quick=quick), device=device)
    print("\n".join(f"{k}: {v:.4f}" for k, v in metrics.items()))


@transfer_app.command("all")
def transfer_all(
    backbone: Backbone = "models:/small-full@current",
    quick: Annotated[bool, typer.Option("--quick", help="a toy size of every benchmark")] = False,
    data: Annotated[
        str,
        typer.Option(
            help="a folder holding every benchmark's data, laid out like a world "
            "(VOCdevkit/, SUN397/ + Partitions/, imagenet/); default: the embedded world"
        ),
    ] = "",
    device: Annotated[str, typer.Option(help="auto, cpu or cuda")] = "auto",
) -> None:
    """Run every benchmark on one backbone: one MLflow run holding a child run per benchmark."""
    from imagenet_transfer.transfer.runner import run_all

    for name, metrics in run_all(backbone, quick=quick, data=data, device=device).items():
        print(
            f"{name}: "
            + ", ".join(
                f"{k} {v:.4f}" for k, v in metrics.items() if not k.startswith(("voc07_ap_", "voc12_action_ap_"))
            )
        )


# -- budget study ---------------------------------------------------------------------------------
@app.command("budget-study")
def budget_study(
    budget: Annotated[int, typer.Option(help="B: train images of every trial's pre-training subset")],
    n_trials: Annotated[int, typer.Option(help="finished trials the study should hold (all workers together)")] = 3,
    study_name: Annotated[
        str, typer.Option(help="Optuna study name (default budget-<B>); the same name joins/continues it")
    ] = "",
    storage: Annotated[
        str,
        typer.Option(
            help="Optuna RDB URL or a .log/.journal file (default $IMAGENET_TRANSFER_DB, else sqlite beside the store)"
        ),
    ] = "",
    objective: Annotated[
        str,
        typer.Option(
            help="benchmark(s) maximised on their validation split: voc12_action, sun397 "
            "(comma-separated: multi-objective)"
        ),
    ] = "voc12_action",
    min_classes: Annotated[
        int | None, typer.Option(help="smallest C (default: the smallest whose B/C images every class has)")
    ] = None,
    max_classes: Annotated[int | None, typer.Option(help="largest C (default: every class of the source)")] = None,
    log_classes: Annotated[bool, typer.Option("--log-classes/--linear-classes", help="sample C on a log scale")] = True,
    labels: Annotated[
        str, typer.Option(help="label granularities searched, comma-separated: fine, bottom-up-K, top-down-K")
    ] = "fine",
    class_rules: Annotated[
        str, typer.Option(help="class-selection rules searched, comma-separated: random, pascal-removed")
    ] = "random",
    source: Annotated[str, typer.Option(help="pre-training source (default: the embedded world)")] = "",
    arch: str = "small",
    recipe: Annotated[str, typer.Option(help="pre-training recipe of every trial")] = "world",
    iterations: int | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="BENCHMARK.KEY=VALUE of a benchmark's config (repeatable)")
    ] = None,
    quick: Annotated[bool, typer.Option("--quick", help="the benchmarks' toy size")] = False,
    seed: int = 0,
    sampler: Annotated[str, typer.Option(help="tpe or random")] = "tpe",
    pruner: Annotated[str, typer.Option(help="median, hyperband, none or threshold:<val_top1 %>")] = "median",
    heartbeat_interval: Annotated[
        int, typer.Option(help="RDB storages: seconds between heartbeats of a running trial")
    ] = 60,
    grace_period: Annotated[int, typer.Option(help="a trial without heartbeat this long is failed and retried")] = 180,
    max_retry: int = 2,
    workers: int | None = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda")] = "auto",
    create_only: Annotated[
        bool, typer.Option("--create-only", help="create the study (before starting many workers) and stop")
    ] = False,
) -> None:
    """Search how to spend a budget of B pre-training images (number of classes, labels, class rule) with Optuna."""
    from imagenet_transfer.study import run_study
    from imagenet_transfer.study_config import StudyConfig

    config = StudyConfig(
        budget=budget,
        n_trials=n_trials,
        study_name=study_name,
        storage=storage,
        objective=objective,
        min_classes=min_classes,
        max_classes=max_classes,
        log_classes=log_classes,
        labels=labels,
        class_rules=class_rules,
        source=source,
        arch=arch,
        recipe=recipe,
        iterations=iterations,
        epochs=epochs,
        batch_size=batch_size,
        benchmark_settings=tuple(set_ or ()),
        quick=quick,
        seed=seed,
        sampler=sampler,
        pruner=pruner,
        heartbeat_interval=heartbeat_interval,
        grace_period=grace_period,
        max_retry=max_retry,
        workers=workers,
        device=device,
    )
    summary = run_study(config, create_only=create_only)
    print("\n".join(f"{k}: {v}" for k, v in summary.items()))


# -- the paper grid and its report ----------------------------------------------------------------
@app.command("reproduce")
def reproduce(
    grid: Annotated[
        Path, typer.Option(help="grid file (experiments x variants x backbones x seeds x benchmarks)")
    ] = Path("configs/paper.yaml"),
    scale: Annotated[
        str, typer.Option(help="world (the embedded world) or real (--source and --data paths)")
    ] = "world",
    smoke: Annotated[
        bool, typer.Option("--smoke", help="a toy size of every step (tiny world, smoke recipe, quick benchmarks)")
    ] = False,
    seeds: Annotated[
        int | None,
        typer.Option(
            help="seeds 0..N-1 of every variant: seed s pre-trains and fine-tunes with s, and its random-init "
            "baseline draws its weights with s (default: the grid's)"
        ),
    ] = None,
    vary_subset: Annotated[
        bool,
        typer.Option(
            "--vary-subset",
            help="seed s also draws the random subsets (E1 images, E5 classes, E7 random halves) with s "
            "(default: the preset's seed for every seed)",
        ),
    ] = False,
    only: Annotated[str, typer.Option(help="comma-separated experiments, e.g. E1,E3 (default: all)")] = "",
    source: Annotated[str, typer.Option(help="pre-training source (required at --scale real)")] = "",
    data: Annotated[
        list[str] | None, typer.Option("--data", help="BENCHMARK=PATH of a benchmark's data (repeatable)")
    ] = None,
    world: Annotated[Path | None, typer.Option(help="a generated world folder instead of the scale's")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda")] = "auto",
    plan: Annotated[
        bool,
        typer.Option("--plan", help="print every step with its settings and estimated GPU-hours, and run nothing"),
    ] = False,
    parallel: Annotated[
        int,
        typer.Option(help="workers on this machine: one per GPU (CUDA_VISIBLE_DEVICES), else processes on the CPU"),
    ] = 1,
) -> None:
    """Run the paper grid end to end, skipping every step whose result already exists. Several `reproduce` of one
    grid on one tracking store (here or on other machines) share its steps."""
    from imagenet_transfer.grid_plan import parse_data
    from imagenet_transfer.reproduce import reproduce as run_reproduce

    if plan:
        from imagenet_transfer.reproduce import print_plan

        print_plan(
            grid,
            scale=scale,
            smoke=smoke,
            seeds=seeds,
            only=[e for e in only.split(",") if e] or None,
            source=source,
            data=parse_data(data),
            world=world,
            vary_subset=vary_subset,
        )
        return

    summary = run_reproduce(
        grid,
        scale=scale,
        smoke=smoke,
        seeds=seeds,
        only=[e for e in only.split(",") if e] or None,
        source=source,
        data=parse_data(data),
        world=world,
        vary_subset=vary_subset,
        device=device,
        parallel=parallel,
    )
    if not summary.get("leader", True):
        print(f"worker done: {summary['steps_run']:.0f} steps run into grid run {summary['run_id']}")
        return
    print(
        f"grid run {summary['run_id']}: {summary['steps_run']:.0f} steps run, {summary['steps_reused']:.0f} reused, "
        f"{summary['seconds_total']:.1f} s (subset {summary['seconds_subset']:.1f}, pretrain "
        f"{summary['seconds_pretrain']:.1f}, transfer {summary['seconds_transfer']:.1f})"
    )


@app.command("report")
def report(
    out: Annotated[Path | None, typer.Option(help="output folder (default: reports/<UTC timestamp>)")] = None,
    grid_run: Annotated[str, typer.Option(help="the reproduce run to report (default: the newest finished one)")] = "",
) -> None:
    """Tables per experiment beside the paper's numbers, plots, Markdown + HTML; logged as a report run."""
    from imagenet_transfer.report import write_report

    folder = write_report(out, grid_run_id=grid_run or None)
    print(folder)


# -- team server (no MLproject entry point: it runs until stopped) --------------------------------------------
@app.command("server")
def server(
    folder: Annotated[Path, typer.Option(help="the server's data: PostgreSQL cluster, artifacts, logs")] = Path(
        "~/.local/share/imagenet-transfer/team"
    ),
    port: Annotated[int, typer.Option(help="port of the MLflow tracking server")] = 5000,
    host: Annotated[str, typer.Option(help="interface MLflow listens on (0.0.0.0: every network)")] = "127.0.0.1",
    auth: Annotated[
        bool,
        typer.Option(
            "--auth",
            help="MLflow basic auth (admin password: MLFLOW_AUTH_ADMIN_PASSWORD, else generated and shown once)",
        ),
    ] = False,
    database_url: Annotated[
        str,
        typer.Option(
            help="a running PostgreSQL server to use instead of a cluster in --folder: postgresql://USER:PASSWORD@HOST:PORT"
            " (databases mlflow, optuna; a URL ending in /NAME: NAME, NAME_optuna)"
        ),
    ] = "",
    postgres_port: Annotated[
        int | None, typer.Option(help="port of the cluster in --folder (default: its last one, else a free one)")
    ] = None,
    artifacts: Annotated[str, typer.Option(help="artifact store folder or URI (default: <folder>/artifacts)")] = "",
    workers: Annotated[int, typer.Option(help="MLflow server worker processes")] = 4,
) -> None:
    """Run the team server (MLflow on PostgreSQL, artifacts proxied) in the foreground until Ctrl-C or SIGTERM."""
    from imagenet_transfer.team_server import serve

    serve(
        folder,
        port=port,
        host=host,
        auth=auth,
        database_url=database_url or None,
        postgres_port=postgres_port,
        artifacts=artifacts or None,
        workers=workers,
    )


# -- MLproject entry points: derived from the commands above ---------------------------------------------------
def _command(words: list[str]):
    """The click command of `imagenet-transfer WORDS...` (a trailing argument, such as a benchmark, is skipped)."""
    import typer.main

    command = typer.main.get_command(app)
    for word in words:
        if word not in getattr(command, "commands", {}):
            break
        command = command.commands[word]
    return command


def entrypoint_parameters(words: list[str]) -> dict[str, str | None]:
    """The MLproject parameters of the command `words`: every option, by name, with its default as a string
    (None for a required option: `mlflow run` then asks for it)."""
    params = {}
    for param in _command(words).params:
        if param.param_type_name != "option" or param.name in ENTRYPOINT_EXCLUDED:
            continue
        default = param.default
        text = (
            ""
            if default is None or default == ()
            else str(default).lower()
            if isinstance(default, bool)
            else str(default)
        )
        params[param.opts[0].removeprefix("--").replace("-", "_")] = None if param.required else text
    return params


ENTRYPOINT_EXCLUDED = ("config", "create_only")  # CLI-only: a YAML of options; a study's set-up step


def mlproject(entry_points: dict[str, tuple[str, list[str]]]) -> str:
    """The MLproject file for `{name: (script, command words)}`: every option of each command is a parameter."""
    lines = [
        "name: imagenet-transfer",
        "",
        "# Generated by scripts/build_mlproject.py from the `imagenet-transfer` commands: edit the commands, then",
        "# rerun it. Without conda, pass --env-manager local (no environment variable sets it), and export the",
        "# project's tracking URI first:  export MLFLOW_TRACKING_URI=sqlite:///mlruns/mlflow.db",
        "conda_env: conda.yaml",
        "",
        "entry_points:",
    ]
    for name, (script, words) in entry_points.items():
        params = entrypoint_parameters(words)
        lines += [f"  {name}:", "    parameters:"]
        lines += [
            f"      {key}: {{type: string}}" if value is None else f'      {key}: {{type: string, default: "{value}"}}'
            for key, value in params.items()
        ]
        args = " ".join(f"--{key.replace('_', '-')} {{{key}}}" for key in params)
        lines += [f'    command: "python {script} {args}"', ""]
    return "\n".join(lines).rstrip() + "\n"


def run_entrypoint(command: list[str], argv: list[str]) -> None:
    """Run `command` with MLproject-style `--name value` pairs, dropping empty (unset) values.

    A flag's value `true|false` becomes the flag (`--quick`, `--compile`) or its negative (`--no-register`);
    an option taken many times (`--set`, `--data`) splits at commas before `key=`: `--set "a=1,b=2"` becomes
    `--set a=1 --set b=2`.
    """
    options = {opt: param for param in _command(command).params for opt in param.opts}
    args = list(command)
    for i in range(0, len(argv) - 1, 2):
        name, value = argv[i], argv[i + 1]
        param = options.get(name)
        if value == "":
            continue
        if param is None:  # not an option of the command: typer says so
            args += [name, value]
        elif getattr(param, "is_flag", False):
            on = value.lower() in ("true", "1", "yes")
            args += [name] if on else param.secondary_opts[:1]
        elif getattr(param, "multiple", False):
            for item in _split_settings(value):
                args += [name, item]
        else:
            args += [name, value]
    main(args)


def _split_settings(text: str) -> list[str]:
    """`a=1,b=x,y` -> ["a=1", "b=x,y"]: a comma starts a new setting only before `key=`."""
    import re

    return [part for part in re.split(r",(?=[A-Za-z_][A-Za-z0-9_.]*=)", text) if part]


def main(args: list[str] | None = None) -> None:
    """Console-script entry: run the app (usage errors exit 2), turning bad input into exit code 2 and SIGTERM
    into runs ended KILLED (exit 143; a pre-training saves its checkpoint first)."""
    from imagenet_transfer import preemption

    preemption.install()
    try:
        app(args)
    except UserError as err:
        typer.secho(f"error: {err}", err=True, fg="red")
        raise SystemExit(2) from None
    except (preemption.Preempted, SystemExit):  # click turns the interrupt into an exit of its own
        if not preemption.requested():
            raise
        typer.secho("stopped by SIGTERM: runs ended KILLED; the same command resumes", err=True, fg="yellow")
        raise SystemExit(preemption.EXIT_CODE) from None


if __name__ == "__main__":
    main()
