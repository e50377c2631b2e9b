"""Owner-only folders and files for what holds session text: the corpus store, its spool and
quarantine, corpus exports and agent transcripts (0700 folders, 0600 files).

A folder made before this existed is tightened when it is next opened; one owned by someone else
is left as it is, with a warning (chmod would fail).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

DIR_MODE = 0o700
FILE_MODE = 0o600


def private_dir(path: str | os.PathLike) -> Path:
    """Create `path` (and its parents) if missing and make it 0700; return it."""
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    _chmod(p, DIR_MODE)
    return p


def private_file(path: str | os.PathLike) -> Path:
    """Make an existing file 0600, or create it empty with 0600; return it."""
    p = Path(path)
    if not p.exists():
        os.close(os.open(p, os.O_WRONLY | os.O_CREAT, FILE_MODE))
    _chmod(p, FILE_MODE)
    return p


def _chmod(p: Path, mode: int) -> None:
    try:
        if p.stat().st_mode & 0o777 != mode:
            os.chmod(p, mode)
    except PermissionError:
        log.warning("%s: not owned by this user, its mode %o left as it is", p, p.stat().st_mode & 0o777)
