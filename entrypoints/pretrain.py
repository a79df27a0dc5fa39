"""MLproject entry point `pretrain`: train a backbone on a subset and register it (see `imagenet-transfer pretrain`).

    mlflow run . -e pretrain --env-manager local                          # the embedded world, ~3 min on 2 cores
    mlflow run . -e pretrain --env-manager local -P subset=e3-127 -P arch=small
Logs the backbone as the MLflow model `backbone/` of the run and registers it as `<arch>-<subset>@current`.
"""

import sys

from imagenet_transfer.cli import run_entrypoint

if __name__ == "__main__":
    run_entrypoint(["pretrain"], sys.argv[1:])
