"""Locate the real Gas Town tools: `bd`, `dolt`, and the real `gt` (never our own shim).

Search order, for each tool: an explicit environment variable (`BD_BIN`, `DOLT_BIN`, `GT_REAL_BIN`),
then the folder of the running Python (the venv's `bin/`, where install.sh links them), then PATH.
For `gt` the venv holds `gt-real` (the real binary) next to `gt` (our shim); a `gt` that is our shim
is skipped wherever it is found.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from gt_ext.errors import GtExtError

# Our shim writes this marker into its first lines so that it can be told apart from the real gt.
SHIM_MARKER = "gt-ext-shim"


def _venv_bin() -> Path:
    return Path(sys.executable).parent


def is_shim(path: str | os.PathLike) -> bool:
    """True if `path` is this project's `gt` shim (a small script carrying SHIM_MARKER)."""
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError:
        return False
    return SHIM_MARKER.encode() in head


def _search(names: list[str], skip_shim: bool = False) -> str | None:
    dirs = [str(_venv_bin())] + os.environ.get("PATH", "").split(os.pathsep)
    for name in names:
        for d in dirs:
            if not d:
                continue
            cand = os.path.join(d, name)
            if os.path.isfile(cand) and os.access(cand, os.X_OK):
                if skip_shim and is_shim(cand):
                    continue
                return cand
    return None


def _from_env(var: str) -> str | None:
    val = os.environ.get(var)
    if not val:
        return None
    found = shutil.which(val)
    if not found:
        raise GtExtError(f"{var}={val}: not an executable file")
    return found


def find_bd(required: bool = True) -> str | None:
    """Path of the real `bd` (beads) binary, or None / GtExtError when it is not installed."""
    p = _from_env("BD_BIN") or _search(["bd"])
    if p is None and required:
        raise GtExtError("bd (beads) not found: run ./install.sh or put bd on PATH (or set BD_BIN)")
    return p


def find_dolt(required: bool = True) -> str | None:
    """Path of the real `dolt` binary, or None / GtExtError when it is not installed."""
    p = _from_env("DOLT_BIN") or _search(["dolt"])
    if p is None and required:
        raise GtExtError("dolt not found: run ./install.sh or put dolt on PATH (or set DOLT_BIN)")
    return p


def find_gt(required: bool = True) -> str | None:
    """Path of the REAL `gt` binary: $GT_REAL_BIN, then `gt-real`, then a `gt` that is not our shim."""
    p = _from_env("GT_REAL_BIN") or _search(["gt-real"]) or _search(["gt"], skip_shim=True)
    if p is None and required:
        raise GtExtError("real gt (gastown) not found: run ./install.sh, or set GT_REAL_BIN")
    return p
