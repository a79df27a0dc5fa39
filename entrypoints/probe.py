"""MLproject entry point `probe`: the probe benchmark of one backbone (see `imagenet-transfer transfer run probe`).

    mlflow run . -e probe --env-manager local -P backbone=models:/small-full@current
    mlflow run . -e probe --env-manager local -P backbone=random:small -P quick=true
Logs one MLflow run (stage=transfer, benchmark=probe) tagged with the backbone's model version and the digest of
its pre-training subset; `-P set="key=value,key=value"` changes the benchmark's config (e.g. data=PATH).
"""

import sys

from imagenet_transfer.cli import run_entrypoint

if __name__ == "__main__":
    run_entrypoint(["transfer", "run", "probe"], sys.argv[1:])
