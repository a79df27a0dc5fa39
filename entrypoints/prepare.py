"""MLproject entry point `prepare`: a subset's images as shards for fast pre-training input.

Same as `imagenet-transfer prepare`.

    mlflow run . -e prepare --env-manager local -P subset=full -P short_side=36     # the embedded world, ~10 s
    mlflow run . -e prepare --env-manager local -P subset=e1-500 -P source=/data/imagenet -P format=auto
Writes the shard folder (in the cache by manifest digest + options, or `out`) and logs its index.json under
`shards/` with the size and throughput as metrics.
"""

import sys

from imagenet_transfer.cli import run_entrypoint

if __name__ == "__main__":
    run_entrypoint(["prepare"], sys.argv[1:])
