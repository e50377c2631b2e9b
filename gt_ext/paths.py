"""Where things live on disk. Every path can be moved with an environment variable."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Machine-wide cache (dequantized base models, built tools): $GT_EXT_CACHE or ~/.cache/gt-ext."""
    p = Path(os.environ.get("GT_EXT_CACHE", Path.home() / ".cache" / "gt-ext"))
    p.mkdir(parents=True, exist_ok=True)
    return p


def home_dir() -> Path:
    """Per-user state outside a town (corpus, registry): $GT_EXT_HOME or ~/gt."""
    return Path(os.environ.get("GT_EXT_HOME", Path.home() / "gt"))
