"""MLproject entry point `transfer_sun397`: the sun397 benchmark of one backbone.

Same as `imagenet-transfer transfer run sun397`.

    mlflow run . -e transfer_sun397 --env-manager local -P backbone=models:/small-full@current
    mlflow run . -e transfer_sun397 --env-manager local -P backbone=random:small -P quick=true
Logs one MLflow run (stage=transfer, benchmark=sun397) tagged with the backbone's model version and the digest of
its pre-training subset; `-P set="key=value,key=value"` changes the benchmark's config (e.g. data=PATH).
"""

import sys

from imagenet_transfer.cli import run_entrypoint

if __name__ == "__main__":
    run_entrypoint(["transfer", "run", "sun397"], sys.argv[1:])
