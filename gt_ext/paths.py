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


def claude_projects_dir() -> Path:
    """Where Claude Code keeps session transcripts (and the node0 agent writes its own):
    $GT_EXT_CLAUDE_PROJECTS, else $CLAUDE_CONFIG_DIR/projects, else ~/.claude/projects."""
    if os.environ.get("GT_EXT_CLAUDE_PROJECTS"):
        return Path(os.environ["GT_EXT_CLAUDE_PROJECTS"])
    if os.environ.get("CLAUDE_CONFIG_DIR"):
        return Path(os.environ["CLAUDE_CONFIG_DIR"]) / "projects"
    return Path.home() / ".claude" / "projects"
