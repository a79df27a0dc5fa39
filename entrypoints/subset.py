"""MLproject entry point `subset`: build a pre-training subset and log it (see `imagenet-transfer subset build`).

    mlflow run . -e subset --env-manager local -P preset=e3-127
Writes manifest.parquet, classes.tsv, counts.tsv, spec.yaml, subset.json (also as run artifacts under
`subset/`). Takes about 5 s on the built-in demo catalog.
"""

import sys

from imagenet_transfer.cli import run_entrypoint

if __name__ == "__main__":
    run_entrypoint(["subset", "build"], sys.argv[1:])
