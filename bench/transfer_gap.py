"""Does pre-training transfer on the embedded world? Pre-trained vs randomly initialised backbone, all benchmarks.

    python bench/transfer_gap.py [--backbone models:/small-full@current] [--baseline random:small@32] [--quick]
                                 [--only voc12_action,sun397,probe]

Pre-trains the default backbone first when `--backbone` is not registered yet (the `world` recipe, ~2 min),
then runs every transfer benchmark (default configs, the default embedded world) on it and on the baseline,
each as an MLflow run, and prints one table: a column per backbone and the difference. Takes ~15 min on 2
CPU cores (detection dominates); `--only` runs the listed benchmarks; `--quick` runs the toy size of
everything in ~1 min. Each benchmark's wall time is printed too.
"""

import argparse
import time

import mlflow

from imagenet_transfer import tracking
from imagenet_transfer.transfer.runner import BENCHMARKS, make_config, run_benchmark

HEADLINE = (
    "voc07_map",
    "voc07_coco_ap50",
    "voc12_action_map",
    "sun397_acc",
    "probe_knn_top1",
    "probe_linear_top1",
    "probe_coarse_top1",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="models:/small-full@current")
    parser.add_argument("--baseline", default="random:small@32")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--only", default="", help=f"comma-separated subset of {','.join(BENCHMARKS)}")
    args = parser.parse_args()
    names = [n for n in args.only.split(",") if n] or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; expected some of {', '.join(BENCHMARKS)}")

    tracking.configure()
    try:
        mlflow.MlflowClient().get_model_version_by_alias("small-full", "current")
    except mlflow.exceptions.MlflowException:
        if args.backbone == "models:/small-full@current":
            from imagenet_transfer.pretrain import run_pretrain
            from imagenet_transfer.pretrain_config import PretrainConfig

            run_pretrain(PretrainConfig())
    results, seconds = {}, {}
    for backbone in (args.backbone, args.baseline):
        for name in names:
            started = time.perf_counter()
            metrics = run_benchmark(name, backbone, make_config(name, quick=args.quick), device=args.device)
            seconds[(backbone, name)] = time.perf_counter() - started
            results.setdefault(backbone, {}).update(metrics)
    a, b = results[args.backbone], results[args.baseline]
    print(f"\n{'metric':22s} {args.backbone:>28s} {args.baseline:>18s} {'difference':>11s}")
    for key in HEADLINE:
        if key in a and key in b:
            print(f"{key:22s} {a[key]:28.2f} {b[key]:18.2f} {a[key] - b[key]:+11.2f}")
    for name in names:
        print(f"{name + ' (s)':22s} {seconds[(args.backbone, name)]:28.1f} {seconds[(args.baseline, name)]:18.1f}")


if __name__ == "__main__":
    main()
