"""Where the platform keeps what it generates: the cache of catalogs, worlds and prepared data, and the locks
that let one process at a time make a thing there.

`IMAGENET_TRANSFER_CACHE` overrides the default `~/.cache/imagenet-transfer`.
"""

import fcntl
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def cache_dir() -> Path:
    return Path(os.environ.get("IMAGENET_TRANSFER_CACHE", Path.home() / ".cache" / "imagenet-transfer"))


@contextmanager
def cache_lock(name: str, waiting: str = "") -> Iterator[None]:
    """Hold the exclusive lock `name` (a file under the cache's locks/ folder; released when the process dies):
    one process at a time gets past it; the others wait (saying `waiting`, if given, when they must)."""
    folder = cache_dir() / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"{name}.lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if waiting:
                print(waiting, file=sys.stderr, flush=True)
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield
