"""Run a planned grid: every step of the plan under one grid run, reusing each step that already has a result, with
as many workers as the lab has (processes, GPUs, machines) sharing the work.

    imagenet-transfer reproduce                              # configs/paper.yaml, E1-E7, the embedded world
    imagenet-transfer reproduce --smoke                      # a toy size of every step (tiny world)
    imagenet-transfer reproduce --only E1,E3 --seeds 3       # pre-training and fine-tuning with seeds 0, 1, 2
    imagenet-transfer reproduce --only E5 --seeds 3 --vary-subset   # and E5's random classes drawn with 0, 1, 2
    imagenet-transfer reproduce --parallel 8                 # 8 workers: one per GPU (or 8 processes on CPU)
    imagenet-transfer reproduce --scale real --source /data/imagenet \
        --data voc07_det=/data/VOCdevkit --data voc12_action=/data/VOCdevkit --data sun397=/data/sun

Input: a grid file, read by `grid` and expanded by `grid_plan` into the plan (every check passes before any run
starts). Output: one MLflow run (tags stage=reproduce, `grid`, `varied`; params among them `seeds` and `varied`:
"pretrain,finetune", or "pretrain,finetune,subset" with `--vary-subset`) with every step's run nested under it (tags
`grid`, `experiment`, `variant`, `seed`, `step_key`, `grid_worker`), the grid file and `experiments.json` (each
experiment's question) as its artifacts, the step table `steps.json` (experiment, variant, seed, arch, stage,
benchmark, run id, reused or not, seconds, worker; written after every step) and the wall time per stage as metrics
(`seconds_subset`, `seconds_pretrain`, `seconds_transfer`). Baselines (random init, one per seed) come after every
pre-trained step in the plan's order.

A step is skipped when a FINISHED run in the current tracking store carries its `step_key` (see `grid_plan`):
a pre-training reuses the registered model version (when it still exists in the store), a benchmark the
metrics. So an interrupted grid resumes where it stopped, and a finished one costs nothing to rerun.

Workers. Every `reproduce` of the same plan on the same tracking store joins one grid: the first (the leader)
starts the grid run and writes its table; the others (`--parallel` children, or the same command on other
machines) nest their steps under it. Each step is claimed through the coordination database (`claims`: the team's
PostgreSQL in `IMAGENET_TRANSFER_DB`, else an SQLite file beside the local store) before it runs, so no step runs
twice, and a dead worker's step is taken over once its heartbeat stops (`IMAGENET_TRANSFER_CLAIM_TTL`, 120 s).
A worker takes the first step of the plan whose inputs are done and that nobody holds; it waits only while some
step's inputs are still being made, and leaves when every step left is held by another worker. The leader waits
for all of them and ends the grid run (FAILED, naming them, when steps failed); when it dies, the first worker to
find its claim expired adopts the grid run and ends it. SIGTERM ends the worker's runs KILLED and gives its step
back; the same command afterwards resumes.
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from imagenet_transfer.errors import UserError
from imagenet_transfer.grid import load_grid
from imagenet_transfer.grid_plan import Plan, make_plan
from imagenet_transfer.grid_steps import Step, execute, find, plan_steps

STAGES = ("subset", "pretrain", "transfer")
POLL_SECONDS = 2.0  # how often a worker waiting for others looks again


def grid_key(plan: Plan) -> str:
    """What makes two `reproduce` calls the same grid: the plan's steps (their keys carry the configs, data digests
    and code version) and the tracking store."""
    from imagenet_transfer import tracking
    from imagenet_transfer.provenance import cache_key

    known = [u.pretrain_key for u in plan.units] + [
        plan.transfer_key(name, config, b.backbone) for b in plan.baselines for name, config in b.benchmarks.items()
    ]
    what = {"name": plan.grid.name, "profile": plan.profile, "steps": known}
    if plan.vary_subset:  # a grid that varies its subsets is another grid, even where its steps are the same
        what["varied"] = plan.varied
    return cache_key("grid", what, tracking.store_id())


def run_grid(
    plan: Plan,
    *,
    device: str = "auto",
    on_step: Callable[[dict[str, Any]], None] | None = None,
    parallel: int = 1,
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run the plan's steps as one worker of its grid (the leader when it is the first), reusing finished ones.
    With `parallel` > 1, the leader starts that many workers in all (`options`: the `reproduce` arguments they get).
    Returns the step table and times (a worker that is not the leader: the steps it ran).

    `on_step(record)` is called after every step this worker records (a test interrupts the grid there)."""
    import mlflow

    from imagenet_transfer import tracking
    from imagenet_transfer.claims import Claims, coordination_url

    if parallel < 1:
        raise UserError(f"--parallel {parallel}: expected a positive number of workers")
    tracking.configure()
    claims = Claims(coordination_url())
    prefix = hashlib.sha256(tracking.store_id().encode()).hexdigest()[:8]
    worker = Worker(plan, claims, prefix, device, on_step, mlflow.MlflowClient())
    lead_key = f"{prefix}:grid:{grid_key(plan)}"
    with claims.hold(lead_key, retry_failed=True) as lead:
        if lead.acquired:
            children = _spawn(parallel, device, options or {}) if parallel > 1 else []
            try:
                return worker.lead(lead, claims)
            finally:
                _join(children)
        summary = worker.follow(lead)
    if not _leader_died(claims, lead_key):
        return summary
    with claims.hold(lead_key) as lead:  # the leader died: this worker adopts its grid run and ends it
        if not lead.acquired:
            return summary  # another worker adopted it first
        print(f"{worker.name}: the grid's leader stopped; adopting its grid run", file=sys.stderr, flush=True)
        return Worker(plan, claims, prefix, device, on_step, mlflow.MlflowClient()).lead(lead, claims)


def _leader_died(claims, key: str) -> bool:
    """Whether the grid's leader stopped without ending its grid run: its claim is still `running` but no longer
    renewed. Waits while that is undecided (renewed less recently than its heartbeat period would keep it)."""
    while True:
        found = claims.get(key)
        if found is None or found.state != "running":
            return False  # ended (the run is FINISHED, FAILED or KILLED) or given back
        left = found.expires - time.time()
        if left < 0:
            return True
        if left > claims.ttl / 2:
            return False  # renewed recently: the leader is alive and will end the run
        time.sleep(min(left, 1.0) + 0.1)


class Worker:
    """One worker of a grid: takes steps in the plan's order, runs or reuses them, records them."""

    def __init__(self, plan: Plan, claims, prefix: str, device: str, on_step, client):
        self.plan, self.claims, self.prefix, self.device, self.on_step, self.client = (
            plan,
            claims,
            prefix,
            device,
            on_step,
            client,
        )
        self.name = os.environ.get("IMAGENET_TRANSFER_WORKER") or f"{socket.gethostname()}:{os.getpid()}"
        self.started = time.time()
        self.done: dict[str, dict[str, Any]] = {}  # step key -> outputs
        self.failed: dict[str, str] = {}  # step key -> error
        self.records: list[dict[str, Any]] = []
        self.grid_id = ""
        self.log_table = False

    # -- the two roles ------------------------------------------------------------------------------------------------
    def lead(self, lead, claims) -> dict[str, Any]:
        """Start (or, after a dead leader, adopt) the grid run, work until every step is resolved, end the run."""
        import mlflow

        from imagenet_transfer import tracking

        plan = self.plan
        params = {
            "grid": plan.grid.path,
            "grid_name": plan.grid.name,
            "scale": plan.scale,
            "profile": plan.profile,
            "smoke": plan.smoke,
            "seeds": plan.seeds,
            "varied": plan.varied,
            "only": ",".join(dict.fromkeys(u.experiment for u in plan.units)),
            "source": plan.source,
            "world": plan.world,
            "steps": plan.steps,
        }
        adopted = lead.result.get("run_id") if _exists(lead.result.get("run_id")) else None
        started = time.monotonic()
        with tracking.start_run(
            "reproduce",
            params=None if adopted else params,
            tags={
                "grid": plan.grid.name,
                "scale": plan.profile,
                "varied": plan.varied,
                "grid_key": lead.key.split(":")[-1],
            },
            run_name=f"reproduce {plan.grid.name} {plan.profile}",
            run_id=adopted,
        ) as grid_run:
            self.grid_id, self.log_table = grid_run.info.run_id, True
            claims.note(lead.key, {"run_id": self.grid_id})  # joining workers nest their steps under it
            if not adopted:
                self.client.log_artifact(self.grid_id, plan.grid.path)
                self.client.log_dict(
                    self.grid_id,
                    {e: plan.grid.experiments[e].question for e in params["only"].split(",") if e},
                    "experiments.json",
                )
            self.work(wait_for_all=True)
            if self.failed:
                raise RuntimeError(
                    f"{len(self.failed)} step(s) of grid {plan.grid.name} failed: "
                    + "; ".join(f"{k}: {v}" for k, v in self.failed.items())
                )
            seconds = dict.fromkeys(STAGES, 0.0)
            for record in self.records:
                seconds[record["stage"]] += 0.0 if record["reused"] else record["seconds"]
            metrics = {f"seconds_{stage}": value for stage, value in seconds.items()}
            metrics.update(
                seconds_total=time.monotonic() - started,
                steps_run=sum(not r["reused"] for r in self.records),
                steps_reused=sum(r["reused"] for r in self.records),
                workers=len({r["worker"] for r in self.records if not r["reused"]}),
            )
            mlflow.log_metrics(metrics)
        return {"run_id": self.grid_id, "records": self.records, "leader": True, **metrics}

    def follow(self, lead) -> dict[str, Any]:
        """Join the grid run another worker leads: run the steps nobody holds, nested under it."""
        from imagenet_transfer import tracking

        deadline = time.monotonic() + 60
        while not lead.result.get("run_id"):  # the leader is starting the grid run
            if time.monotonic() > deadline:
                raise UserError(f"grid {self.plan.grid.name}: its leader ({lead.owner}) started no grid run in 60 s")
            time.sleep(0.5)
            lead = self.claims.get(lead.key) or lead
        self.grid_id = lead.result["run_id"]
        print(f"joining grid run {self.grid_id} led by {lead.owner}", file=sys.stderr, flush=True)
        command_run = tracking.command_run_id()
        if command_run:  # the run `mlflow run` made points at the grid run its steps went to
            tracking.follow(command_run, self.grid_id, "reproduce", f"reproduce {self.plan.grid.name} (worker)")
        started = time.monotonic()
        self.work(wait_for_all=False)
        if self.failed:
            raise RuntimeError("step(s) failed: " + "; ".join(f"{k}: {v}" for k, v in self.failed.items()))
        ran = [r for r in self.records if not r["reused"] and r["worker"] == self.name]
        return {
            "run_id": self.grid_id,
            "records": self.records,
            "leader": False,
            "steps_run": len(ran),
            "steps_reused": len(self.records) - len(ran),
            "seconds_total": time.monotonic() - started,
            **{f"seconds_{s}": sum(r["seconds"] for r in ran if r["stage"] == s) for s in STAGES},
        }

    # -- the loop -----------------------------------------------------------------------------------------------------
    def work(self, *, wait_for_all: bool) -> None:
        """Resolve steps in the plan's order until none is left (`wait_for_all`) or every one left is held by
        another worker."""
        pending = plan_steps(self.plan)
        waiting_said = False
        while pending:
            busy = 0
            for step in list(pending):
                if any(k in self.failed for k in step.inputs()):
                    pending.remove(step)  # its input failed: it cannot run in this grid
                    continue
                if not all(k in self.done for k in step.inputs()):
                    continue
                state = self.attempt(step)
                if state == "busy":
                    busy += 1
                    continue
                pending.remove(step)
                if state == "done":
                    break  # look again from the top: the plan's order
            else:
                if not pending:
                    break
                if not wait_for_all and busy == len(pending):
                    return  # everything left is held by others
                if not waiting_said:
                    print(f"{self.name}: waiting for steps that other workers run", file=sys.stderr, flush=True)
                    waiting_said = True
                time.sleep(POLL_SECONDS)

    def attempt(self, step: Step) -> str:
        """Resolve `step` if possible: "done" (run here or found finished), "busy" (another live worker holds
        it) or "failed"."""
        from imagenet_transfer import tracking

        key = step.key(self.plan, self.done)
        if key in self.done:  # the same step earlier in this plan (an experiment shares it with another)
            self.record(step, key, self.done[key], reused=True, seconds=0.0, worker=self.name)
            return "done"
        claim_key = f"{self.prefix}:step:{key}"
        held = self.claims.get(claim_key)
        if held and held.state == "running" and held.expires > time.time() and not held.acquired:
            return "busy"
        if held and held.state == "failed" and held.updated >= self.started:
            self.failed[key] = held.result.get("error", "failed")
            return "failed"
        if self._resolve_found(step, key):
            return "done"
        tags = {**step.tags(self.plan), "grid_worker": self.name}
        with self.claims.hold(claim_key, retry_failed=True) as claim:
            if not claim.acquired:
                return "busy" if claim.state == "running" else "failed" if claim.state == "failed" else "done"
            if self._resolve_found(step, key):  # finished by another worker between the look and the claim
                claim.complete({})
                return "done"
            began = time.monotonic()
            links = {**tags, "mlflow.parentRunId": self.grid_id}
            with tracking.nested_under(self.grid_id, tags):
                outputs = execute(step, key, self.plan, self.done, self.client, self.device, links)
            claim.complete(outputs)
        self.done[key] = outputs
        self.record(step, key, outputs, reused=False, seconds=time.monotonic() - began, worker=self.name)
        return "done"

    def _resolve_found(self, step: Step, key: str) -> bool:
        """Whether the step is FINISHED in the store (then recorded: run by a worker of this grid, or reused)."""
        found = find(step, key, self.client, self.done)
        if found is None:
            return False
        run, outputs = found
        tags = run.data.tags
        ours = tags.get("mlflow.parentRunId") == self.grid_id  # run by a worker of this grid, not reused
        seconds = ((run.info.end_time or 0) - (run.info.start_time or 0)) / 1000 if ours else 0.0
        self.done[key] = outputs
        self.record(step, key, outputs, reused=not ours, seconds=seconds, worker=tags.get("grid_worker", ""))
        return True

    def record(self, step: Step, key: str, outputs: dict, *, reused: bool, seconds: float, worker: str) -> None:
        from rich.console import Console

        row = {
            **step.describe(),
            "benchmark": step.benchmark,
            "step_key": key,
            "reused": reused,
            "seconds": round(seconds, 3),
            "worker": worker,
            **outputs,
        }
        self.records.append(row)
        if self.log_table:  # written as it goes: an interrupted grid keeps it
            self.client.log_dict(self.grid_id, self.records, "steps.json")
        elif worker != self.name:
            return  # a joining worker reports the steps it runs; the leader's table has them all
        what = f"{step.stage} {step.benchmark}".strip()
        state = "reused" if reused else f"ran in {seconds:.1f} s" + (f" by {worker}" if worker != self.name else "")
        Console(stderr=True).print(
            f"[{len(self.records)}/{self.plan.steps}] {row['experiment']} {row['variant']} {row['arch']} "
            f"seed {row['seed']} {what}: {state}"
        )
        if self.on_step is not None:
            self.on_step(row)


def _exists(run_id: str | None) -> bool:
    import mlflow

    if not run_id:
        return False
    try:
        mlflow.get_run(run_id)
    except mlflow.exceptions.MlflowException:
        return False
    return True


# -- more workers on this machine -----------------------------------------------------------------------------------
def _spawn(parallel: int, device: str, options: dict[str, Any]) -> list[subprocess.Popen]:
    """Start `parallel - 1` more workers of this grid: one per GPU on CUDA (this process takes GPU 0), else
    processes sharing the CPU cores."""
    import torch

    gpus = torch.cuda.device_count() if device in ("auto", "cuda") else 0
    if device == "cuda" and gpus < parallel:
        raise UserError(f"--parallel {parallel} on cuda but {gpus} GPU(s) are visible; expected at most {gpus}")
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_RUN_ID"}  # not the run `mlflow run` made
    env["MLFLOW_TRACKING_URI"] = _tracking_uri()
    if not gpus:
        threads = str(max(1, (os.cpu_count() or 1) // parallel))
        env["OMP_NUM_THREADS"] = threads
        torch.set_num_threads(int(threads))
    else:
        os.environ["CUDA_VISIBLE_DEVICES"] = "0"
    children = []
    for index in range(1, parallel):
        child_env = {**env, "IMAGENET_TRANSFER_WORKER": f"{socket.gethostname()} worker {index + 1}/{parallel}"}
        if gpus:
            child_env["CUDA_VISIBLE_DEVICES"] = str(index)
        command = [sys.executable, "-m", "imagenet_transfer.cli", "reproduce", *_arguments(options, device)]
        children.append(subprocess.Popen(command, env=child_env))
    return children


def _tracking_uri() -> str:
    from imagenet_transfer import tracking

    return tracking.configure()


def _arguments(options: dict[str, Any], device: str) -> list[str]:
    """`reproduce`'s command-line arguments for `options` (the keyword arguments of `reproduce`)."""
    args = ["--grid", str(options["grid_path"]), "--scale", options.get("scale", "world"), "--device", device]
    if options.get("smoke"):
        args.append("--smoke")
    if options.get("seeds"):
        args += ["--seeds", str(options["seeds"])]
    if options.get("vary_subset"):
        args.append("--vary-subset")
    if options.get("only"):
        args += ["--only", ",".join(options["only"])]
    if options.get("source"):
        args += ["--source", str(options["source"])]
    for name, path in (options.get("data") or {}).items():
        args += ["--data", f"{name}={path}"]
    if options.get("world"):
        args += ["--world", str(options["world"])]
    return args


def _join(children: list[subprocess.Popen]) -> None:
    """Wait for the workers this one started (they leave once nothing is left for them)."""
    failed = []
    try:
        for child in children:
            if child.wait():
                failed.append(f"{child.args[-1] if child.args else ''} exit {child.returncode}")
    except BaseException:
        for child in children:
            child.terminate()  # SIGTERM: they give their steps back and end their runs KILLED
        for child in children:
            child.wait()
        raise
    if failed:
        print(f"{len(failed)} worker(s) ended with an error: {', '.join(failed)}", file=sys.stderr, flush=True)


def reproduce(
    grid_path: str | Path,
    *,
    scale: str = "world",
    smoke: bool = False,
    seeds: int | None = None,
    only: list[str] | None = None,
    source: str = "",
    data: dict[str, str] | None = None,
    world: str | Path | None = None,
    vary_subset: bool = False,
    device: str = "auto",
    parallel: int = 1,
    on_step: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Load, plan (everything checked before any run starts) and run a grid as one of its workers (with
    `parallel` > 1: and start more); returns `run_grid`'s summary. `vary_subset`: seed s also draws the random
    subsets with seed s (`grid_plan.make_plan`)."""
    plan = make_plan(
        load_grid(grid_path),
        scale=scale,
        smoke=smoke,
        seeds=seeds,
        only=only,
        source=source,
        data=data,
        world=world,
        vary_subset=vary_subset,
    )
    options = {
        "grid_path": grid_path,
        "scale": scale,
        "smoke": smoke,
        "seeds": seeds,
        "vary_subset": vary_subset,
        "only": only,
        "source": source,
        "data": data,
        "world": world,
    }
    return run_grid(plan, device=device, on_step=on_step, parallel=parallel, options=options)


def print_plan(grid_path: str | Path, *, gpus: int = 8, **options: Any) -> list[dict[str, Any]]:
    """Plan a grid (every step checked, nothing run) and print its steps, settings and estimated GPU-hours."""
    from rich.console import Console
    from rich.table import Table

    from imagenet_transfer.grid_plan import describe

    plan = make_plan(load_grid(grid_path), **options)
    rows = describe(plan, gpus=gpus)
    table = Table(title=f"{plan.grid.name} at scale {plan.profile}: {len(rows)} steps", show_lines=False)
    for column in ("experiment", "variant", "arch", "seed", "step", "settings", "GPU-h (1 H200)", f"on {gpus}"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(
            row["experiment"],
            row["variant"],
            row["arch"],
            str(row["seed"]),
            row["step"],
            row["settings"],
            f"{row['gpu_hours']:.2f}",
            f"{row[f'hours_on_{gpus}']:.2f}",
        )
    total = sum(r["gpu_hours"] for r in rows)
    console = Console(width=200)
    console.print(table)
    console.print(
        f"total: {total:,.1f} GPU-hours on one H200, {total / gpus:,.1f} hours on {gpus} "
        "(training throughput from bench/README.md, linear scaling assumed; steps shared between experiments run "
        "once; fine-tuning steps of one image a batch are latency-bound, so their figures are lower bounds)"
    )
    return rows
