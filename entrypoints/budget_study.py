"""MLproject entry point `budget_study`: an Optuna search of how to spend B pre-training images (see
`imagenet-transfer budget-study`).

    mlflow run . -e budget_study --env-manager local -P budget=12000 -P n_trials=3        # ~10 min on 2 cores
    mlflow run . -e budget_study --env-manager local -P budget=12000 -P n_trials=20 -P storage=postgresql://lab/optuna
Logs a study run (stage=study) with one nested run per trial (stage=trial) and Optuna's plots.
"""

import sys

from imagenet_transfer.cli import run_entrypoint

if __name__ == "__main__":
    run_entrypoint(["budget-study"], sys.argv[1:])
