"""MLproject entry point `reproduce`: the paper grid end to end (see `imagenet-transfer reproduce`).

    mlflow run . -e reproduce --env-manager local -P smoke=true        # every step at toy size, minutes
    mlflow run . -e reproduce --env-manager local                      # E1-E7 on the embedded world, <= 60 min
    mlflow run . -e reproduce --env-manager local -P only=E5 -P seeds=3 -P vary_subset=true   # seeds vary subsets too
One grid run (stage=reproduce) with every step's run nested under it; finished steps are reused.
"""

import sys

from imagenet_transfer.cli import run_entrypoint

if __name__ == "__main__":
    run_entrypoint(["reproduce"], sys.argv[1:])
