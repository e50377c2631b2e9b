"""The one sha256 of a file's bytes (hex), shared by corpus shards, model exports and the registry."""

from __future__ import annotations

import hashlib
import os

CHUNK = 1 << 20  # 1 MiB: a multi-GB GGUF is hashed without reading it into memory


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()
