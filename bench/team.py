"""Team mode against a real tracking server: the smoke grid with 1 and with 2 workers, and a budget study's trials
per minute with 1, 2 and 4 workers.

    python bench/team.py                       # both measurements on a throwaway PostgreSQL + mlflow server
    python bench/team.py --grid-workers 1,2 --study-workers 1,2,4 --n-trials 8

Each measurement gets fresh databases (so nothing is reused from the one before) behind its own `mlflow server`,
and workers are separate processes with separate caches, as on separate machines; they share only the server
(`MLFLOW_TRACKING_URI`) and the team database (`IMAGENET_TRANSFER_DB`). Printed per measurement: the wall time,
the steps (or trials) each worker ran, and the duplicates found in the store afterwards (steps with more than one
FINISHED run; the target is 0), and the baseline of each table is its 1-worker row.
"""

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid-workers", default="1,2")
    parser.add_argument("--study-workers", default="1,2,4")
    parser.add_argument("--n-trials", type=int, default=8)
    parser.add_argument("--only", default="", help="experiments of the smoke grid (default: all)")
    args = parser.parse_args()

    from imagenet_transfer.synthetic import generate
    from imagenet_transfer.team_server import init_postgres, running_server, stop_postgres

    root = Path(tempfile.mkdtemp(prefix="bench-team-"))
    os.environ["IMAGENET_TRANSFER_CACHE"] = str(root / "world-cache")
    world = generate(root / "tiny", size="tiny", seed=0, progress=False)
    cluster = root / "postgres"
    pg = init_postgres(cluster)
    print(f"machine: {cpu()}; tiny world in {world}")
    try:
        grid_rows = []
        for n in [int(x) for x in args.grid_workers.split(",") if x]:
            with running_server(root / f"grid-{n}", database_url=pg, databases=fresh()) as server:
                grid_rows.append(grid(server, n, world, root / f"grid-{n}", args.only))
        study_rows = []
        for n in [int(x) for x in args.study_workers.split(",") if x]:
            with running_server(root / f"study-{n}", database_url=pg, databases=fresh()) as server:
                study_rows.append(study(server, n, world, root / f"study-{n}", args.n_trials))
    finally:
        stop_postgres(cluster)
    print("\nsmoke grid (reproduce --smoke) against the server")
    print(f"{'workers':>7} {'wall s':>8} {'speed-up':>8} {'steps run by each':>24} {'duplicates':>10}")
    for row in grid_rows:
        print(
            f"{row['workers']:7d} {row['seconds']:8.1f} {grid_rows[0]['seconds'] / row['seconds']:8.2f} "
            f"{'/'.join(map(str, row['per_worker'])):>24} {row['duplicates']:10d}"
        )
    print(f"\nbudget study ({args.n_trials} trials) against the server")
    print(f"{'workers':>7} {'wall s':>8} {'trials/min':>10} {'finished':>8} {'final tests':>11} {'duplicates':>10}")
    for row in study_rows:
        print(
            f"{row['workers']:7d} {row['seconds']:8.1f} {row['per_minute']:10.2f} {row['finished']:8d} "
            f"{row['final_tests']:11d} {row['duplicates']:10d}"
        )


def cpu() -> str:
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    wide = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_tile") if f in flags]
    return f"{model}, {os.cpu_count()} cores, {' '.join(wide) or 'no avx2'}"


def fresh():
    from imagenet_transfer.team_server import Databases

    return Databases.prefixed(f"bench_{uuid.uuid4().hex[:8]}")


def environment(server, cache: Path, threads: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(
        MLFLOW_TRACKING_URI=server.tracking_uri,
        IMAGENET_TRANSFER_DB=server.db_url,
        IMAGENET_TRANSFER_CACHE=str(cache),
        OMP_NUM_THREADS=str(threads),
    )
    return env


def together(commands: list[tuple[list[str], dict[str, str]]], log: Path) -> float:
    """Start the commands at once, wait for all; the wall time (a failure stops the benchmark)."""
    log.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        outputs = [stack.enter_context(open(log / f"{i}.out", "w")) for i in range(len(commands))]
        started = time.monotonic()
        processes = [
            subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
            for (cmd, env), out in zip(commands, outputs)
        ]
        codes = [p.wait() for p in processes]
        seconds = time.monotonic() - started
    if any(codes):
        sys.exit(f"a worker failed (exit codes {codes}); see {log}")
    return seconds


def grid(server, workers: int, world: Path, folder: Path, only: str) -> dict:
    import mlflow

    threads = max(1, (os.cpu_count() or 1) // workers)
    command = [sys.executable, "-m", "imagenet_transfer.cli", "reproduce", "--smoke", "--world", str(world)]
    command += ["--device", "cpu"] + (["--only", only] if only else [])
    seconds = together(
        [(command, environment(server, folder / f"cache-{i}", threads)) for i in range(workers)], folder / "logs"
    )
    mlflow.set_tracking_uri(server.tracking_uri)
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    grids = [r for r in runs if r.data.tags.get("stage") == "reproduce"]
    steps = [r for r in runs if r.data.tags.get("step_key") and r.info.status == "FINISHED"]
    per_worker = Counter(r.data.tags.get("grid_worker", "?") for r in steps if r.data.tags.get("stage") != "subset")
    duplicates = sum(n > 1 for n in Counter(r.data.tags["step_key"] for r in steps).values())
    assert len(grids) == 1, f"expected one grid run, found {len(grids)}"
    return {"workers": workers, "seconds": seconds, "per_worker": sorted(per_worker.values()), "duplicates": duplicates}


def study(server, workers: int, world: Path, folder: Path, n_trials: int) -> dict:
    import mlflow

    threads = max(1, (os.cpu_count() or 1) // workers)
    command = [sys.executable, "-m", "imagenet_transfer.cli", "budget-study", "--budget", "240"]
    command += ["--n-trials", str(n_trials), "--study-name", "bench", "--objective", "sun397"]
    command += ["--source", str(world / "imagenet"), "--recipe", "smoke", "--iterations", "4", "--batch-size", "8"]
    command += ["--workers", "0", "--device", "cpu", "--quick", "--pruner", "none"]
    command += ["--set", f"sun397.data={world}", "--set", "sun397.partitions=1"]
    create = subprocess.run([*command, "--create-only"], env=environment(server, folder / "cache-0", threads))
    if create.returncode:
        sys.exit("could not create the study")
    seconds = together(
        [(command, environment(server, folder / f"cache-{i}", threads)) for i in range(workers)], folder / "logs"
    )
    mlflow.set_tracking_uri(server.tracking_uri)
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    trials = [r for r in runs if r.data.tags.get("stage") == "trial" and r.info.status == "FINISHED"]
    finals = [r for r in runs if r.data.tags.get("study_role") == "final_test" and r.info.status == "FINISHED"]
    numbers = Counter(r.data.tags.get("trial_number") for r in trials)
    return {
        "workers": workers,
        "seconds": seconds,
        "per_minute": len(trials) / seconds * 60,
        "finished": len(trials),
        "final_tests": len(finals),
        "duplicates": sum(n > 1 for n in numbers.values()),
    }


if __name__ == "__main__":
    main()
