"""Budget studies (E5 searched): for a fixed budget of B pre-training images, how should they be spent?

    imagenet-transfer budget-study --budget 12000 --n-trials 3 --iterations 1000 --set voc12_action.epochs=10
    imagenet-transfer budget-study --budget 12000 --n-trials 20 --objective voc12_action,sun397 \\
        --labels fine,top-down-127 --class-rules random,pascal-removed --storage postgresql+psycopg://lab/optuna
    mlflow run . -e budget_study --env-manager local -P budget=12000 -P n_trials=3

Optuna searches the number of classes C (images per class are derived, B/C, never sampled), and optionally the
label granularity (`fine`, `bottom-up-K`, `top-down-K`) and the class-selection rule (`random`: C random classes
of the source; `pascal-removed`: C random classes among those below no PASCAL synset). Each trial pre-trains on
its subset and scores the chosen benchmark(s) on a validation split (`study_trial`). The objective is maximised
(several benchmarks: a multi-objective study). The test metrics of the chosen configuration (the best trial;
multi-objective: the Pareto trial with the best mean objective) are computed once, at the end.

This module drives the study: check the config (`study_config`), create or join the study (`study_storage`), run
trials (`study_trial`) until the study holds `n_trials` finished ones, log the plots (`study_plots`) and test
the chosen configuration. Input: the `StudyConfig`. Output, in MLflow: one study run (tag `stage=study`,
`study_name`; the config as params; metrics `best_objective`, `best_num_classes`, `best_images_per_class`,
`trials_<state>`, `test_<metric>`; artifacts `trials.csv` and the plots), the trial runs under it, and the final
test's benchmark runs under it (tag `study_role=final_test`). In Optuna's storage: the study (user attrs
`search_space`, `mlflow_run_id`, `final_test`). The same command starts another worker of the study (on this
machine or another one sharing the storage and the tracking store) or continues it after a crash or a kill:
`n_trials` counts the study's finished trials, over all workers.

Workers agree through claims in the storage's database (`study_storage.Coordination`). Exactly `n_trials` trials
finish: a worker starts a trial only under the study's lock, and only while finished + running trials are fewer
than `n_trials`; a trial ends (or is failed as dead, its retry enqueued) under the same lock, so no two workers
ever count the same free place. A worker with nothing left to start waits while other workers' trials run (a
dead worker's trial is failed after `grace_period` and its retry taken by a waiting worker); then one worker,
the one that claims `finish:<finished trials>`, tests the chosen configuration (once per trial, claim
`final_test:<trial number>`: a worker that finds it done logs the recorded metrics, a dead tester's claim is taken
over), logs the summary and ends the study run FINISHED. The study run is made by the first worker (claim
`study_run`); the others nest their trials under it without resuming it, so none ends it while others work.
"""

from __future__ import annotations

import contextlib
import gc
import json
import time
from typing import Any

import mlflow

from imagenet_transfer import tracking
from imagenet_transfer.study_config import StudyConfig, benchmark_config, check
from imagenet_transfer.study_plots import log_plots
from imagenet_transfer.study_storage import Coordination, create_study
from imagenet_transfer.study_trial import end_dead_runs, execute


# -- the study run --------------------------------------------------------------------------------------------------
def run_study(config: StudyConfig, *, create_only: bool = False) -> dict[str, Any]:
    """Create or join the study, run trials until it holds `n_trials` finished ones (waiting for other workers'
    trials), then (once, whichever worker gets there) report the chosen configuration's test metrics on the study
    run. Returns a summary."""
    pools = check(config)
    study, shown = create_study(config, pools)
    coordination = Coordination(study, config)
    params = {k: (",".join(v) if isinstance(v, tuple) else v) for k, v in config.to_dict().items()}
    params["storage"] = shown
    params.update({"search.num_classes_low": pools.low, "search.num_classes_high": pools.high})
    with contextlib.ExitStack() as stack:
        run_id = _study_run(stack, study, coordination, config, params, shown)
        if create_only:
            return {"study_name": config.study_name, "storage": shown, "run_id": run_id, "trials": 0}
        finished, _running = coordination.counts()
        done, remaining = len(finished), config.n_trials - len(finished)
        if remaining > 0:
            print(f"study {config.study_name} ({shown}): {done} finished trial(s), running up to {remaining} more")
        else:
            print(f"study {config.study_name} ({shown}) already holds {done} finished trial(s); nothing to run")
        _run_trials(study, coordination, config, pools, run_id)
        summary = _end(study, coordination, config, run_id)
    return {"study_name": config.study_name, "storage": shown, "run_id": run_id, **summary}


def _study_run(stack: contextlib.ExitStack, study, coordination: Coordination, config, params, shown) -> str:
    """The study run: the one the study names (user attr `mlflow_run_id`) when it is in this tracking store, else
    a new one made by this worker (claim `study_run`, so that workers started together make one) and kept open
    (`stack`) while this worker works. A joining worker leaves the run as it is: its trials nest under it."""
    tags = {"study_name": config.study_name, "storage": shown, "n_trials": str(config.n_trials)}
    key = coordination.key("study_run")
    while True:
        run_id = _study_run_id(study)
        claim = None
        if run_id is None:
            claim = coordination.claims.claim(key, retry_failed=True)
            if claim.state == "done" and _exists(claim.result.get("run_id")):
                run_id = claim.result["run_id"]
        if run_id is not None:  # join it; under `mlflow run`, this command's run becomes its child
            mlflow.MlflowClient().set_tag(run_id, "n_trials", str(config.n_trials))
            command_run = tracking.command_run_id()
            if command_run and command_run != run_id:
                tracking.follow(command_run, run_id, "study", f"study {config.study_name}")
            return run_id
        if claim.acquired or claim.state == "done":  # done: made in another tracking store
            # the first worker records the config as params; a joining or restarted one (whose n_trials,
            # heartbeat or device may differ) only updates the tag n_trials: params cannot change in MLflow
            run = stack.enter_context(
                tracking.start_run("study", params=params, run_name=f"study {config.study_name}", tags=tags)
            )
            study.set_user_attr("mlflow_run_id", run.info.run_id)
            if claim.acquired:
                coordination.claims.complete(key, {"run_id": run.info.run_id})
            return run.info.run_id
        time.sleep(0.2)  # another worker is making it


def _study_run_id(study) -> str | None:
    """The MLflow run of the study (shared by its workers), when it exists in this tracking store."""
    run_id = study.user_attrs.get("mlflow_run_id")
    return run_id if _exists(run_id) else None  # another tracking store: this one gets a study run of its own


def _exists(run_id: str | None) -> bool:
    if not run_id:
        return False
    tracking.configure()
    try:
        mlflow.get_run(run_id)
    except mlflow.exceptions.MlflowException:
        return False
    return True


# -- the trials -----------------------------------------------------------------------------------------------------
def _run_trials(study, coordination: Coordination, config: StudyConfig, pools, run_id: str) -> int:
    """Start trials while the study needs more, then wait for the other workers' running trials (or for them to
    be failed as dead: their retries are then started here). Returns the number of trials this worker ran."""
    ran, said = 0, None
    while True:
        trial = coordination.next_trial()
        if trial is not None:
            execute(trial, coordination, config, pools, run_id)
            gc.collect()
            ran, said = ran + 1, None
            continue
        finished, running = coordination.counts()
        if len(finished) >= config.n_trials and not running:
            return ran
        state = (len(finished), tuple(t.number for t in running))
        if state != said:
            print(
                f"study {config.study_name}: {len(finished)}/{config.n_trials} trials finished; waiting for "
                f"trial(s) {', '.join(map(str, state[1]))} of other workers (a worker silent for "
                f"{config.grace_period} s is taken for dead and its trial retried)",
                flush=True,
            )
            said = state
        time.sleep(coordination.poll)


# -- the end: the chosen configuration, its test metrics ---------------------------------------------------------
def _end(study, coordination: Coordination, config: StudyConfig, run_id: str) -> dict[str, Any]:
    """Once the study holds its trials: the worker that claims `finish:<finished trials>` tests the chosen
    configuration, logs the summary into the study run and ends it FINISHED; the others wait for it (taking over
    if it dies) and return what it recorded."""
    finished, _running = coordination.counts()
    key = coordination.key("finish", len(finished))
    claim = coordination.take(key, f"study {config.study_name}: worker {{owner}} is finishing the study; waiting")
    if claim.state == "done":
        summary = {**summarize(study), **({"test": claim.result["test"]} if claim.result.get("test") else {})}
        active = mlflow.active_run()
        if active is not None and active.info.run_id == run_id and claim.result.get("run_id") != run_id:
            _log_summary(study, config, summary)  # this worker's own study run (another tracking store)
        return summary
    with coordination.claims.hold(key, retry_failed=True) as held:
        active = mlflow.active_run()
        mine = active is not None and active.info.run_id == run_id
        with contextlib.nullcontext() if mine else tracking.start_run("study", run_id=run_id):
            summary = finish(study, config, run_id, coordination)
        held.complete({"run_id": run_id, "test": summary.get("test")})
    return summary


def chosen_trial(study):
    """The best trial (multi-objective: of the Pareto front, the one with the best mean objective)."""
    if len(study.directions) == 1:
        return study.best_trial
    return max(study.best_trials, key=lambda t: (sum(t.values) / len(t.values), -t.number))


def summarize(study) -> dict[str, Any]:
    """The study's trial counts and chosen configuration."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    summary: dict[str, Any] = {"trials": len(trials), "complete": len(complete)}
    if complete:
        best = chosen_trial(study)
        summary.update(best_trial=best.number, best_params=dict(best.params), best_values=list(best.values))
    return summary


def _log_summary(study, config: StudyConfig, summary: dict[str, Any]) -> None:
    """Trial counts, trials.csv, the plots, the chosen configuration (and its test metrics) into the active run."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    mlflow.log_metrics({f"trials_{s.name.lower()}": sum(t.state == s for t in trials) for s in TrialState})
    mlflow.log_text(study.trials_dataframe().to_csv(index=False), "trials.csv")
    log_plots(study, config)
    if "best_trial" not in summary:
        mlflow.set_tag("note", "no trial completed: nothing to test")
        return
    best = next(t for t in trials if t.number == summary["best_trial"])
    images = config.budget / best.params["num_classes"]
    mlflow.log_metrics(
        {
            "best_objective": sum(best.values) / len(best.values),
            "best_trial_number": best.number,
            "best_num_classes": best.params["num_classes"],
            "best_images_per_class": images,
        }
    )
    mlflow.set_tags(
        {
            "best_trial_number": str(best.number),
            "best_params": json.dumps(
                {"num_classes": best.params["num_classes"], "images_per_class": images, **best.params}
            ),
        }
    )
    if summary.get("test"):
        mlflow.log_metrics({f"test_{k}": v for k, v in summary["test"].items()})
        mlflow.set_tag("final_test", f"trial {best.number}")


def finish(study, config: StudyConfig, study_run_id: str, coordination: Coordination) -> dict[str, Any]:
    """Into the active (study) run: the plots and trials table, and the chosen configuration's test metrics,
    scored once for that trial over all workers (claim `final_test:<trial>`; a result recorded earlier is
    logged again, not scored again)."""
    summary = summarize(study)
    if "best_trial" in summary:
        summary["test"] = final_test(study, config, study_run_id, coordination, summary["best_trial"])
    _log_summary(study, config, summary)
    return summary


def final_test(study, config: StudyConfig, study_run_id: str, coordination: Coordination, number: int):
    """The test metrics of trial `number`: recorded ones (its claim is done), else scored here, under the study
    run (tag `study_role=final_test`), while holding its claim."""
    from imagenet_transfer.transfer.runner import run_benchmark

    key = coordination.key("final_test", number)
    claim = coordination.take(key, f"study {config.study_name}: worker {{owner}} runs the final test; waiting")
    if claim.state == "done":
        return claim.result["metrics"]
    best = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
    tags = {"study_name": config.study_name, "trial_number": str(number), "study_role": "final_test"}
    with coordination.claims.hold(key, retry_failed=True) as held:
        recorded = study.user_attrs.get("final_test") or {}
        if recorded.get("trial") == number:  # tested before the claims existed
            tested = recorded["metrics"]
        else:
            _end_dead_final_tests(study_run_id, tags)
            tested = {}
            with tracking.nested_under(study_run_id, tags):
                for bench, metric in zip(config.objective, config.metrics):
                    settings = benchmark_config(config, bench, "test")
                    result = run_benchmark(bench, best.user_attrs["model_uri"], settings, device=config.device)
                    tested[metric] = float(result[metric])
            study.set_user_attr("final_test", {"trial": number, "metrics": tested})
        held.complete({"trial": number, "metrics": tested})
    return tested


def _end_dead_final_tests(study_run_id: str, tags: dict[str, str]) -> None:
    """Final-test runs of this trial still RUNNING while this worker holds its claim: their worker died."""
    query = " and ".join(f"tags.{k} = '{v}'" for k, v in tags.items())
    experiment = mlflow.get_run(study_run_id).info.experiment_id
    found = mlflow.MlflowClient().search_runs([experiment], f"{query} and attributes.status = 'RUNNING'")
    end_dead_runs(r.info.run_id for r in found)
