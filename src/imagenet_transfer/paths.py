"""Where the platform keeps what it generates: the cache of catalogs, worlds and prepared data.

`IMAGENET_TRANSFER_CACHE` overrides the default `~/.cache/imagenet-transfer`.
"""

import os
from pathlib import Path


def cache_dir() -> Path:
    return Path(os.environ.get("IMAGENET_TRANSFER_CACHE", Path.home() / ".cache" / "imagenet-transfer"))
