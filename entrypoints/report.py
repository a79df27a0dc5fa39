"""MLproject entry point `report`: tables and plots of the newest grid run (see `imagenet-transfer report`).

    mlflow run . -e report --env-manager local -P out=reports/paper
Writes report.md, report.html (self-contained), tables/ and plots/ to the folder and as a run's artifacts.
"""

import sys

from imagenet_transfer.cli import run_entrypoint

if __name__ == "__main__":
    run_entrypoint(["report"], sys.argv[1:])
