"""The figures of a budget study: Optuna's matplotlib plots, logged as PNGs to the study run.

    imagenet-transfer budget-study --budget 12000 --n-trials 3     # `study.finish` calls `log_plots`

Input: the Optuna study and its `StudyConfig`. Output, as artifacts of the active (study) run:
`plots/optimization_history*.png`, `plots/num_classes_vs_objective*.png`, `plots/contour*.png` and
`plots/param_importances*.png` (suffix `_<i>` per objective of a multi-objective study), and
`plots/skipped.txt` naming each plot that could not be drawn and why. Optuna draws with pyplot: every figure is
closed once logged.
"""

from __future__ import annotations

import functools
import warnings

import mlflow

from imagenet_transfer.study_config import StudyConfig


def log_plots(study, config: StudyConfig) -> None:
    """Optuna's matplotlib plots, as PNGs under `plots/` of the active (study) run; skipped ones say why."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.trial import TrialState
    from optuna.visualization import matplotlib as ovm

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    notes = []
    if not complete:
        mlflow.set_tag("plots", "none: no completed trial")
        return
    targets = (
        [(None, "objective")]
        if len(config.objective) == 1
        else [(lambda t, i=i: t.values[i], f"objective_{i}") for i in range(len(config.objective))]
    )
    searched = sorted({p for t in complete for p in t.params})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for target, label in targets:
            suffix = "" if target is None else f"_{label.split('_')[1]}"
            name = config.metrics[0] if target is None else config.metrics[int(label.split("_")[1])]
            kwargs = {"target_name": f"{name} (val)", **({} if target is None else {"target": target})}
            plots = {
                f"optimization_history{suffix}": functools.partial(ovm.plot_optimization_history, study, **kwargs),
                f"num_classes_vs_objective{suffix}": functools.partial(
                    ovm.plot_slice, study, params=["num_classes"], **kwargs
                ),
            }
            if len(searched) >= 2:
                plots[f"contour{suffix}"] = functools.partial(ovm.plot_contour, study, params=searched[:2], **kwargs)
            if len(searched) >= 2 and len(complete) >= 3:
                plots[f"param_importances{suffix}"] = functools.partial(ovm.plot_param_importances, study, **kwargs)
            else:
                notes.append(
                    f"param_importances{suffix}: skipped ({len(searched)} searched param(s), "
                    f"{len(complete)} completed trial(s); needs >= 2 and >= 3)"
                )
            for file_name, draw in plots.items():
                try:
                    axes = draw()
                except (ValueError, RuntimeError, ZeroDivisionError, optuna.exceptions.OptunaError) as err:
                    notes.append(f"{file_name}: skipped ({err})")
                    continue
                first = axes.flat[0] if hasattr(axes, "flat") else axes
                mlflow.log_figure(first.figure, f"plots/{file_name}.png")
                plt.close(first.figure)
    if notes:
        mlflow.log_text("\n".join(notes) + "\n", "plots/skipped.txt")
