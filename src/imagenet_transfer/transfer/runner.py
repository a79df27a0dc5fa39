"""Run one transfer benchmark on one backbone as an MLflow run (stage=transfer).

    imagenet-transfer transfer run voc07_det --backbone models:/small-full@current
    imagenet-transfer transfer run sun397 --backbone random:small --set protocol=linear --set partitions=1,2
    imagenet-transfer transfer all --backbone models:/small-full@current --quick

Input: a backbone (`models:/NAME@ALIAS`, `models:/NAME/VERSION`, or `random:ARCH[@RES]` for the
no-pre-training baseline) and the benchmark's Config (defaults: the embedded world; `--set data=PATH` for
real data). Output: a run tagged `benchmark`, `backbone`, `model_name`, `model_version`, `subset_name`,
`subset_digest`, `spec_digest`, `evaluate_on` (test, or val: scored on data held out from the benchmark's
training data, as a budget study does) — so the MLflow UI can put a transfer number next to the pre-training data
that produced it — with the config as params, the metrics, figures (PNG) and tables (CSV) as artifacts. Each
headline metric also carries its per-unit prediction table, `predictions/<metric>.parquet`, and its percentile
bootstrap interval as metrics `<metric>_ci_low`, `<metric>_ci_high` (params `ci.resamples`, `ci.level`; see
`transfer.uncertainty`); `load_predictions(run_id, metric)` reads such a table back.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import os
import tempfile
import types
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import mlflow
from pydantic import ConfigDict, TypeAdapter, ValidationError
from pydantic.fields import FieldInfo

from imagenet_transfer import tracking
from imagenet_transfer.errors import UserError

if TYPE_CHECKING:
    import pandas as pd

CI_RESAMPLES, CI_LEVEL, CI_SEED = 1000, 0.95, 0  # the bootstrap interval every headline metric is logged with
BENCHMARKS = {
    "voc07_det": "imagenet_transfer.transfer.voc07_det",
    "voc12_action": "imagenet_transfer.transfer.voc12_action",
    "sun397": "imagenet_transfer.transfer.sun397",
    "probe": "imagenet_transfer.transfer.probe",
}


def benchmark_module(name: str):
    if name not in BENCHMARKS:
        raise UserError(f"unknown benchmark {name!r}; expected one of: {', '.join(BENCHMARKS)}")
    return importlib.import_module(BENCHMARKS[name])


def make_config(name: str, settings: list[str] | None = None, *, quick: bool = False, real: bool = False):
    """The benchmark's Config with `key=value` settings applied: its `quick()` variant (smoke tests), its `real()`
    variant (the published protocol on the real dataset, where the benchmark has one) or the defaults (the
    embedded world)."""
    module = benchmark_module(name)
    if quick:
        config = module.Config.quick()
    elif real and hasattr(module.Config, "real"):
        config = module.Config.real()
    else:
        config = module.Config()
    fields = type(config).model_fields
    changes = {}
    for item in settings or []:
        key, sep, text = item.partition("=")
        if not sep or key not in fields:
            raise UserError(f"--set {item!r}: expected KEY=VALUE with KEY one of: {', '.join(fields)}")
        changes[key] = parse_setting(text, fields[key], f"--set {item}")
    try:
        return config.replace(**changes)
    except UserError as err:  # a rule over several fields
        raise UserError(f"{' '.join(f'--set {item}' for item in settings or [])}: {name} {err}") from None


def parse_setting(text: str, field: FieldInfo, where: str) -> Any:
    """`text` as a value of `field`, converted by pydantic's lax mode ("3" -> 3, "true" -> True) and checked
    against the field's constraints: comma-separated items for a tuple, "" or "none" for None where None is
    allowed. A bad value raises UserError naming `where` and what was expected."""
    hint = field.annotation
    if _allows_none(hint) and text.strip().lower() in ("", "none"):
        return None
    item = _tuple_item(hint)
    value = text if item is None else tuple(part.strip() for part in text.split(",") if part.strip())
    adapter = TypeAdapter(
        Annotated[(hint, *field.metadata)] if field.metadata else hint, config=ConfigDict(strict=False)
    )
    try:
        return adapter.validate_python(value)
    except ValidationError as err:
        errors = err.errors(include_url=False)
        inner = any(e["loc"] for e in errors)  # a bad item says more than the length it leaves
        problems = []
        for error in errors:
            if error["type"] == "too_short" and inner:
                continue
            message = error["msg"].removeprefix("Value error, ")
            message = message.replace("Input should be ", "expected ").replace("Input ", "expected ")
            if error["type"].endswith(("_parsing", "_type")):  # not text of the field's type
                kind = _type_name(item if error["loc"] else hint)
                listed = f" (expected comma-separated {kind} values)" if error["loc"] else ""
                problems.append(f"{error['input']!r} is not a valid {kind}{listed}")
            elif error["loc"]:  # one item of a tuple
                problems.append(f"{error['input']!r}: {message}")
            else:
                problems.append(message)
        raise UserError(f"{where}: {'; '.join(problems)}") from None


def _allows_none(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in typing.get_args(hint)


def _tuple_item(hint: Any) -> Any:
    """The item type of a `tuple[X, ...]` (or an optional one), else None."""
    if _allows_none(hint):
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
    if typing.get_origin(hint) is typing.Annotated:
        hint = typing.get_args(hint)[0]
    args = typing.get_args(hint)
    return args[0] if typing.get_origin(hint) is tuple and len(args) == 2 and args[1] is Ellipsis else None


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) is typing.Annotated:
        hint = typing.get_args(hint)[0]
    if typing.get_origin(hint) is typing.Literal:
        return "one of " + ", ".join(repr(choice) for choice in typing.get_args(hint))
    return getattr(hint, "__name__", str(hint))


def check_data(name: str, config) -> None:
    """Find the benchmark's data (its readers' layout checks raise UserError naming the folder), before any run."""
    from imagenet_transfer.transfer.common import world_part

    if name == "voc07_det":
        from imagenet_transfer.transfer.voc07_det.data import find_voc2007

        find_voc2007(config.data)
    elif name == "voc12_action":
        from imagenet_transfer.transfer.voc12_action.data import voc2012_root

        voc2012_root(config.data)
    elif name == "sun397":
        from imagenet_transfer.datasets.sun397 import find_sun397

        find_sun397(config.data or world_part("sun397"))
    elif name == "probe":
        from imagenet_transfer.catalog import load_catalog

        load_catalog(config.data or world_part("imagenet"))


def run_benchmark(name: str, backbone: str, config, *, device: str = "auto") -> dict[str, float]:
    """Resolve the backbone, run the benchmark in an MLflow run, log its result; return the metrics.

    The run carries the backbone's pre-training as params (`backbone.subset_name`, `backbone.subset_digest`,
    `backbone.arch`, `backbone.recipe`, ...), so filtering `tags.benchmark = 'voc07_det'` in the MLflow UI lists
    one row per pre-training variant with its metric."""
    import torch

    from imagenet_transfer.transfer.common import resolve_backbone

    module = benchmark_module(name)
    net, info = resolve_backbone(backbone)
    check_data(name, config)
    target = torch.device(
        "cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device)
    )
    tags = {
        "benchmark": name,
        "backbone": backbone,
        "backbone_arch": info["backbone"]["arch"],
        "model_name": info.get("model_name", ""),
        "model_version": info.get("model_version", ""),
        "subset_name": info.get("subset_name", ""),
        "subset_digest": info.get("subset_digest", ""),
        "spec_digest": info.get("spec_digest", ""),
        "evaluate_on": getattr(config, "evaluate_on", "test"),  # val: scored on data held out from training
    }
    pretraining = {
        "arch": info["backbone"]["arch"],
        "subset_name": info.get("subset_name", ""),
        "subset_digest": info.get("subset_digest", ""),
        "recipe": info.get("recipe", ""),
        "seed": info.get("seed", ""),
        "model_name": info.get("model_name", ""),
        "model_version": info.get("model_version", ""),
    }
    params = {"benchmark": name, "backbone": backbone, "device": device, "config": config.to_dict()}
    shown = f"{tags['model_name']} v{tags['model_version']}" if tags["model_name"] else backbone
    with tracking.start_run(
        "transfer", params=params, resolved={"device": str(target)}, tags=tags, run_name=f"{name} on {shown}"
    ):
        tracking.log_params(pretraining, prefix="backbone.")
        tracking.log_params(tracking.runtime_params(target))
        result = module.run(net, info, config, device=target)
        finite = {k: float(v) for k, v in result.metrics.items() if math.isfinite(float(v))}
        mlflow.log_metrics(finite)  # an AP that is undefined (no positive) is left out, as from the means
        if len(finite) < len(result.metrics):
            mlflow.set_tag("undefined_metrics", ",".join(sorted(set(result.metrics) - set(finite))))
        for file_name, figure in result.figures.items():
            mlflow.log_figure(figure, file_name)
        for file_name, table in result.tables.items():
            mlflow.log_text(table.to_csv(index=False), file_name)
        log_predictions(result.predictions)
    return result.metrics


def log_predictions(predictions: dict[str, pd.DataFrame]) -> None:
    """Log each metric's prediction table as `predictions/<metric>.parquet` and its bootstrap interval as the
    metrics `<metric>_ci_low`, `<metric>_ci_high` (left out where undefined), in the active run, with the
    interval's settings as params `ci.resamples`, `ci.level`."""
    from imagenet_transfer.transfer.uncertainty import interval

    if not predictions:
        return
    tracking.log_params({"ci": {"resamples": CI_RESAMPLES, "level": CI_LEVEL}})
    with tempfile.TemporaryDirectory() as folder:
        for metric, table in predictions.items():
            path = Path(folder) / f"{metric}.parquet"
            table.to_parquet(path, index=False)
            mlflow.log_artifact(str(path), artifact_path="predictions")
            low, high = interval(metric, table, resamples=CI_RESAMPLES, seed=CI_SEED, level=CI_LEVEL)
            if math.isfinite(low) and math.isfinite(high):
                mlflow.log_metrics({f"{metric}_ci_low": low, f"{metric}_ci_high": high})


def load_predictions(run_id: str, metric: str) -> pd.DataFrame:
    """The prediction table run `run_id` logged for `metric` (`predictions/<metric>.parquet`), for
    `transfer.uncertainty`; UserError when the run has none."""
    import pandas as pd
    from mlflow.exceptions import MlflowException

    with tempfile.TemporaryDirectory() as folder, _no_download_bars():
        try:
            path = mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=f"predictions/{metric}.parquet", dst_path=folder
            )
        except (MlflowException, OSError) as err:
            raise UserError(
                f"run {run_id} has no predictions/{metric}.parquet ({err}); expected a transfer run that logged "
                "its per-unit predictions"
            ) from None
        return pd.read_parquet(path)


def run_all(backbone: str, *, quick: bool = False, data: str = "", device: str = "auto") -> dict[str, dict[str, float]]:
    """Every benchmark on one backbone: a run (stage=transfer-all) holding one child run per benchmark and
    the children's headline metrics; returns each benchmark's metrics. `data`: a folder holding every
    benchmark's data as a world lays it out (VOCdevkit/, SUN397/ + Partitions/, imagenet/); "" = the embedded world."""
    configs = {}
    for name in BENCHMARKS:
        target = str(Path(data) / "imagenet") if data and name == "probe" else data
        configs[name] = make_config(name, [f"data={target}"] if target else None, quick=quick)
        check_data(name, configs[name])  # every benchmark's data before the first run
    results = {}
    with tracking.start_run(
        "transfer-all",
        params={"backbone": backbone, "quick": quick, "data": data, "device": device},
        tags={"backbone": backbone},
        run_name=f"all benchmarks on {backbone}",
    ):
        for name, config in configs.items():
            results[name] = run_benchmark(name, backbone, config, device=device)
            mlflow.log_metrics(
                {
                    k: float(v)
                    for k, v in results[name].items()
                    if math.isfinite(float(v)) and not k.startswith(("voc07_ap_", "voc12_action_ap_"))
                }
            )
    return results


@contextlib.contextmanager
def _no_download_bars():
    """MLflow draws a progress bar for every download; a report reads dozens of small tables."""
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    before = os.environ.get(key)
    os.environ[key] = "false"
    try:
        yield
    finally:
        if before is None:
            del os.environ[key]
        else:
            os.environ[key] = before
