"""What a cached result depends on, as digests: the code that made it, and the key that names it.

    code_version()                                   # changes whenever a source file of the package changes
    cache_key("pretrain", config, upstream)          # hash of stage, normalised config, upstream digests, code

A cache (a grid step, a finished pre-training, a checkpoint to resume) may return a result only when its key
matches: the same stage, config, upstream data (subset digest, source content digest, model version) and code.
The tracking store is checked separately: a result is reused only where its run and model exist.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

PACKAGE = Path(__file__).resolve().parent


@lru_cache(maxsize=1)
def code_version() -> str:
    """SHA-256 (16 hex) of the package's source files and resources, by relative path and content."""
    digest = hashlib.sha256()
    files = sorted(p for p in PACKAGE.rglob("*") if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc")
    for path in files:
        digest.update(str(path.relative_to(PACKAGE)).encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:16]


def cache_key(stage: str, config: dict[str, Any], upstream: str, length: int = 20) -> str:
    """hash(stage, normalised config, upstream digests, code version)."""
    content = {"stage": stage, "config": config, "upstream": upstream, "code": code_version()}
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:length]
