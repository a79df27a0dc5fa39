"""Wall time of the paper grid: `reproduce` of configs/paper.yaml from scratch, then again (all reused).

    python bench/reproduce.py            # the default world grid, one seed: target <= 60 min on 2 CPU cores
    python bench/reproduce.py --smoke    # every step at toy size on the tiny world: a few minutes
    python bench/reproduce.py --only E1 --seeds 2

Runs in a temporary MLflow store and cache (so nothing is reused from earlier runs; `--keep DIR` keeps them
there), generating the world first (timed on its own), and prints the seconds per stage and per benchmark,
the total against the target, and the rerun of the finished grid as the baseline (it should do nothing).
"""

import argparse
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

TARGET_MINUTES = {"world": 60.0, "smoke": 10.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", default=str(Path(__file__).resolve().parents[1] / "configs" / "paper.yaml"))
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--only", default="")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--keep", default="", help="folder for the MLflow store and cache (default: temporary)")
    args = parser.parse_args()

    folder = Path(args.keep or tempfile.mkdtemp(prefix="bench-reproduce-")).absolute()
    folder.mkdir(parents=True, exist_ok=True)
    os.environ["IMAGENET_TRANSFER_CACHE"] = str(folder / "cache")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder / 'mlflow.db'}"
    os.environ.pop("MLFLOW_RUN_ID", None)

    from imagenet_transfer.grid import load_grid
    from imagenet_transfer.grid_plan import make_plan
    from imagenet_transfer.reproduce import run_grid
    from imagenet_transfer.synthetic import generate

    grid = load_grid(args.grid)
    started = time.monotonic()
    world = generate(size=grid.scales["smoke" if args.smoke else "world"].get("world", "default"), progress=False)
    world_seconds = time.monotonic() - started
    only = [e for e in args.only.split(",") if e] or None
    plan = make_plan(grid, smoke=args.smoke, seeds=args.seeds, only=only, world=world)
    plan_seconds = time.monotonic() - started - world_seconds
    first = run_grid(plan, device=args.device)
    again = run_grid(plan, device=args.device)

    per_step = defaultdict(lambda: [0, 0.0])
    for record in first["records"]:
        name = record["stage"] + (f" {record['benchmark']}" if record["benchmark"] else "")
        if not record["reused"]:
            per_step[name][0] += 1
            per_step[name][1] += record["seconds"]
    total = world_seconds + plan_seconds + first["seconds_total"]
    target = TARGET_MINUTES["smoke" if args.smoke else "world"]
    print(
        f"\nreproduce {args.grid} ({'smoke' if args.smoke else 'world'}, {args.seeds} seed(s), "
        f"{args.only or 'all experiments'}); store and cache in {folder}"
    )
    print(f"{'stage':24s} {'steps':>5s} {'seconds':>9s} {'s/step':>8s}")
    print(f"{'world (generate)':24s} {1:5d} {world_seconds:9.1f} {world_seconds:8.1f}")
    print(f"{'plan (build subsets)':24s} {1:5d} {plan_seconds:9.1f} {plan_seconds:8.1f}")
    for name, (count, seconds) in sorted(per_step.items()):
        print(f"{name:24s} {count:5d} {seconds:9.1f} {seconds / count:8.1f}")
    reused = sum(r["reused"] for r in first["records"])
    print(f"{'reused within the grid':24s} {reused:5d}")
    print(f"total {total / 60:.1f} min (target <= {target:.0f} min: {'OK' if total / 60 <= target else 'OVER'})")
    print(
        f"baseline, rerun of the finished grid: {again['seconds_total']:.1f} s, {again['steps_run']:.0f} steps run, "
        f"{again['steps_reused']:.0f} reused"
    )
    sys.exit(0 if again["steps_run"] == 0 else 1)


if __name__ == "__main__":
    main()
