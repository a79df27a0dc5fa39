"""A 3-trial budget study on the embedded default world, timed per stage (subset, pretrain, transfer) and in total.

    python bench/study.py [--budget 12000] [--trials 3] [--iterations 800] [--epochs 10] [--keep]

Runs `imagenet-transfer budget-study` (objective: PASCAL-ACT-CLS mAP on a validation split held out from its
training persons) in a fresh temporary MLflow store and Optuna database (`--keep` uses the project's instead),
then reads the runs back and prints, per trial, the wall time of its subset, pre-training and transfer runs, the
final test run, and the total. Target: at most 10 minutes for 3 trials on the 2-core machine. The
defaults are sized for that: pre-training 800 iterations of the `world` recipe (~150 s on the 2-core machine),
action classification 10 epochs (~8 s); the world is generated first if absent (~70 s, not counted). Measured:
8.5 min in all (bench/README.md).
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=int, default=12000)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=800, help="pre-training iterations of each trial")
    parser.add_argument("--epochs", type=int, default=10, help="voc12_action fine-tuning epochs")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--keep", action="store_true", help="log to the project's store instead of a temporary one")
    args = parser.parse_args()

    from imagenet_transfer.synthetic import default_source

    default_source()  # generate the world outside the timing
    scratch = Path(tempfile.mkdtemp(prefix="bench-study-"))
    if not args.keep:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{scratch / 'mlflow.db'}"
    import mlflow

    from imagenet_transfer import tracking
    from imagenet_transfer.study import run_study
    from imagenet_transfer.study_config import StudyConfig

    name = f"bench-{int(time.time())}"
    config = StudyConfig(
        budget=args.budget,
        n_trials=args.trials,
        study_name=name,
        recipe="world",
        iterations=args.iterations,
        device=args.device,
        pruner="none",
        storage="" if args.keep else f"sqlite:///{scratch / 'optuna.db'}",
        benchmark_settings=(f"voc12_action.epochs={args.epochs}",),
    )
    start = time.perf_counter()
    summary = run_study(config)
    total = time.perf_counter() - start

    tracking.configure()
    runs = mlflow.search_runs(search_all_experiments=True, filter_string=f"tags.study_name = '{name}'")
    runs["seconds"] = (runs["end_time"] - runs["start_time"]).dt.total_seconds()
    if "tags.study_role" not in runs:
        runs["tags.study_role"] = None
    print(
        f"\nbudget study of {args.trials} trials, B = {args.budget}, on the default embedded world "
        f"({os.cpu_count()} CPU cores)"
    )
    print(
        f"{'trial':>6} {'C':>5} {'B/C':>6} {'subset s':>9} {'pretrain s':>11} {'transfer s':>11} {'trial s':>8}"
        "  objective"
    )
    trials = runs[runs["tags.stage"] == "trial"].sort_values("start_time")
    for _, trial in trials.iterrows():
        number = trial["tags.trial_number"]
        mine = runs[(runs["tags.trial_number"] == number) & (runs["tags.study_role"] != "final_test")]
        stage = {s: mine.loc[mine["tags.stage"] == s, "seconds"].sum() for s in ("subset", "pretrain", "transfer")}
        print(
            f"{number:>6} {trial['params.num_classes']:>5} {float(trial['params.images_per_class']):6.1f} "
            f"{stage['subset']:9.1f} {stage['pretrain']:11.1f} {stage['transfer']:11.1f} {trial['seconds']:8.1f}  "
            f"{trial.get('metrics.objective', float('nan')):.2f}"
        )
    final = runs[runs["tags.study_role"] == "final_test"]["seconds"].sum()
    print(f"final test of the chosen configuration: {final:.1f} s; test metrics {summary.get('test')}")
    print(f"total: {total:.1f} s ({total / 60:.1f} min; target <= 10 min)")


if __name__ == "__main__":
    sys.exit(main())
