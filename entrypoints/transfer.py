"""MLproject entry point `transfer`: every benchmark of one backbone (see `imagenet-transfer transfer all`).

    mlflow run . -e transfer --env-manager local -P backbone=models:/small-full@current
One MLflow run per benchmark (stage=transfer), each tagged with the backbone's model version.
"""

import sys

from imagenet_transfer.cli import run_entrypoint

if __name__ == "__main__":
    run_entrypoint(["transfer", "all"], sys.argv[1:])
