"""MLproject entry point `transfer_voc07_det`: the voc07_det benchmark of one backbone.

Same as `imagenet-transfer transfer run voc07_det`.

    mlflow run . -e transfer_voc07_det --env-manager local -P backbone=models:/small-full@current
    mlflow run . -e transfer_voc07_det --env-manager local -P backbone=random:small -P quick=true
Logs one MLflow run (stage=transfer, benchmark=voc07_det) tagged with the backbone's model version and the digest of
its pre-training subset; `-P set="key=value,key=value"` changes the benchmark's config (e.g. data=PATH).
"""

import sys

from imagenet_transfer.cli import run_entrypoint

if __name__ == "__main__":
    run_entrypoint(["transfer", "run", "voc07_det"], sys.argv[1:])
