"""MLproject entry point `synth`: generate the embedded synthetic world (see `imagenet-transfer synth`).

    mlflow run . -e synth --env-manager local -P size=tiny
Writes ImageNet-, VOC2007-, VOC2012-action- and SUN397-format folders plus world.json into the cache
(about 30 s for the default size on 2 cores; found again in well under a second).
"""

import sys

from imagenet_transfer.cli import run_entrypoint

if __name__ == "__main__":
    run_entrypoint(["synth"], sys.argv[1:])
