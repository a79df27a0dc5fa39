"""Budget studies (E5 searched): for a fixed budget of B pre-training images, how should they be spent?

    imagenet-transfer budget-study --budget 12000 --n-trials 3 --iterations 1000 --set voc12_action.epochs=10
    imagenet-transfer budget-study --budget 12000 --n-trials 20 --objective voc12_action,sun397 \\
        --labels fine,top-down-127 --class-rules random,pascal-removed --storage postgresql://lab/optuna
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
`search_space`, `mlflow_run_id`, `final_test`). The same study name joins the study (a second worker) or
continues it (a restart): `n_trials` counts the study's finished trials.
"""

from __future__ import annotations

import json
import warnings
from typing import Any

import mlflow

from imagenet_transfer import tracking
from imagenet_transfer.study_config import StudyConfig, benchmark_config, check
from imagenet_transfer.study_plots import log_plots
from imagenet_transfer.study_storage import create_study, finished_states
from imagenet_transfer.study_trial import run_trial


# -- the study run --------------------------------------------------------------------------------------------------
def run_study(config: StudyConfig, *, create_only: bool = False) -> dict[str, Any]:
    """Create or join the study, run trials until it holds `n_trials` finished ones, then (once) report the
    chosen configuration's test metrics on the study run. Returns a summary."""
    import optuna

    pools = check(config)
    study, shown = create_study(config, pools)
    run_id = _study_run_id(study)
    params = {k: (",".join(v) if isinstance(v, tuple) else v) for k, v in config.to_dict().items()}
    params["storage"] = shown
    params.update({"search.num_classes_low": pools.low, "search.num_classes_high": pools.high})
    # the first worker records the config as params; a joining or restarted one (whose n_trials, heartbeat or
    # device may differ) only updates the tag n_trials: params cannot change in MLflow
    with tracking.start_run(
        "study",
        params=None if run_id else params,
        run_name=f"study {config.study_name}",
        tags={"study_name": config.study_name, "storage": shown, "n_trials": str(config.n_trials)},
        run_id=run_id,
    ) as run:
        run_id = run.info.run_id
        study.set_user_attr("mlflow_run_id", run_id)
        if create_only:
            return {"study_name": config.study_name, "storage": shown, "run_id": run_id, "trials": 0}
        done = len(study.get_trials(deepcopy=False, states=finished_states()))
        remaining = config.n_trials - done
        if remaining > 0:
            print(f"study {config.study_name} ({shown}): {done} finished trial(s), running up to {remaining} more")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.optimize(
                    lambda trial: run_trial(trial, config, pools, run_id),
                    n_trials=remaining,
                    callbacks=[optuna.study.MaxTrialsCallback(config.n_trials, states=finished_states())],
                    gc_after_trial=True,
                )
        else:
            print(f"study {config.study_name} ({shown}) already holds {done} finished trial(s); nothing to run")
        summary = finish(study, config, run_id)
    return {"study_name": config.study_name, "storage": shown, "run_id": run_id, **summary}


def _study_run_id(study) -> str | None:
    """The MLflow run of the study (shared by its workers), when it exists in this tracking store."""
    run_id = study.user_attrs.get("mlflow_run_id")
    if not run_id:
        return None
    tracking.configure()
    try:
        mlflow.get_run(run_id)
    except mlflow.exceptions.MlflowException:
        return None  # another tracking store: this one gets a study run of its own
    return run_id


# -- the end: the chosen configuration, its test metrics ---------------------------------------------------------
def chosen_trial(study):
    """The best trial (multi-objective: of the Pareto front, the one with the best mean objective)."""
    if len(study.directions) == 1:
        return study.best_trial
    return max(study.best_trials, key=lambda t: (sum(t.values) / len(t.values), -t.number))


def finish(study, config: StudyConfig, study_run_id: str) -> dict[str, Any]:
    """Log the plots and trials table; once the study is complete, test the chosen configuration once."""
    from optuna.trial import TrialState

    from imagenet_transfer.transfer.runner import run_benchmark

    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    counts = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
    mlflow.log_metrics({f"trials_{k}": v for k, v in counts.items()})
    mlflow.log_text(study.trials_dataframe().to_csv(index=False), "trials.csv")
    log_plots(study, config)
    if not complete:
        mlflow.set_tag("note", "no trial completed: nothing to test")
        return {"trials": len(trials), "complete": 0}
    best = chosen_trial(study)
    images = config.budget / best.params["num_classes"]
    best_values = best.values
    mlflow.log_metrics(
        {
            "best_objective": sum(best_values) / len(best_values),
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
    summary = {
        "trials": len(trials),
        "complete": len(complete),
        "best_trial": best.number,
        "best_params": dict(best.params),
        "best_values": list(best_values),
    }
    running = [t for t in trials if t.state == TrialState.RUNNING]
    finished = counts["complete"] + counts["pruned"]
    final = study.user_attrs.get("final_test") or {}
    if finished < config.n_trials or running:
        mlflow.set_tag("final_test", f"not yet: {finished}/{config.n_trials} finished, {len(running)} running")
        return summary
    if final.get("trial") == best.number:
        mlflow.log_metrics({f"test_{k}": v for k, v in final["metrics"].items()})
        return {**summary, "test": final["metrics"]}
    tested = {}
    with tracking.nested_under(
        study_run_id, {"study_name": config.study_name, "trial_number": str(best.number), "study_role": "final_test"}
    ):
        for bench, metric in zip(config.objective, config.metrics):
            result = run_benchmark(
                bench, best.user_attrs["model_uri"], benchmark_config(config, bench, "test"), device=config.device
            )
            tested[metric] = float(result[metric])
    mlflow.log_metrics({f"test_{k}": v for k, v in tested.items()})
    mlflow.set_tag("final_test", f"trial {best.number}")
    study.set_user_attr("final_test", {"trial": best.number, "metrics": tested})
    return {**summary, "test": tested}
