"""The spool: hooks drop one small JSON file per event here; `gt-ext corpus process` consumes them.

A spool file is written to a temp name and renamed, so a reader sees whole files only, and a hook
killed midway leaves at most a ``.tmp`` file that is never read. File names sort by time:
``<time_ns>-<pid>-<random>.json``. Format (the hook executables in ``hooks/`` write the same):

    {"kind": "bead_close" | "session_stop" | "session_shutdown",
     "time": ISO-8601, "argv": [...], "payload": <stdin as JSON, or {"raw": text}>,
     "env": {GT_ROLE, GT_RIG, BD_ACTOR, GT_SESSION, GT_SESSION_ID, GT_ROOT, ...}, "cwd": "...",
     "beads_dir": "..." (bead hooks only)}

This module imports only the standard library: hooks must start fast.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# Written by `gt-ext hooks install` (auto-processing on) into `<store>/hooks/`: the processor argv a
# finished node0 session starts (gt_ext.serve.agent). Claude's Stop hook fires every turn, so it
# only spools.
PROCESS_ON_END = ".gt-ext-process-on-end"

# Where a bd hook puts its event when the town's spool cannot be written (bd run by a sandboxed
# agent): `<beads>/hooks/.gt-ext-pending/`. Processing drains it, taking only the bead id from there.
PENDING_DIR = ".gt-ext-pending"
PENDING_PREFIX = "pending:"  # spool ids of those events

# Only these environment variables are kept: they tag the session; nothing else (tokens!) leaves.
ENV_KEYS = ("GT_ROLE", "GT_RIG", "BD_ACTOR", "GT_SESSION", "GT_SESSION_ID", "GT_ROOT", "GT_TOWN_ROOT",
            "GT_AGENT", "GT_HOOK_SOURCE", "GT_POLECAT", "GT_CREW")


def write_event(spool_dir: str | os.PathLike, kind: str, payload: Any, argv: list[str] | None = None,
                env: dict[str, str] | None = None, beads_dir: str | None = None) -> Path:
    """Spool one event atomically and return its path."""
    spool = Path(spool_dir)
    spool.mkdir(parents=True, exist_ok=True, mode=0o700)  # stdlib only (hooks): gt_ext.private's rule
    env = os.environ if env is None else env
    event = {
        "kind": kind,
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "argv": list(argv or []),
        "payload": payload,
        "env": {k: env[k] for k in ENV_KEYS if env.get(k)},
        "cwd": os.getcwd(),
    }
    if beads_dir:
        event["beads_dir"] = str(beads_dir)
    name = f"{time.time_ns():020d}-{os.getpid()}-{secrets.token_hex(4)}"
    tmp = spool / f".{name}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(event, f)
        f.flush()
        os.fsync(f.fileno())
    final = spool / f"{name}.json"
    os.replace(tmp, final)
    return final


def pending(spool_dir: str | os.PathLike) -> list[Path]:
    """Spooled event files, oldest first (temp files excluded)."""
    spool = Path(spool_dir)
    if not spool.is_dir():
        return []
    return sorted(p for p in spool.glob("*.json") if not p.name.startswith("."))


def entries(spool_dir: str | os.PathLike) -> Iterator[tuple[str, Path, dict | None, str | None]]:
    """Yield ``(spool_id, path, event, error)`` for each pending file; unreadable ones carry an error."""
    for p in pending(spool_dir):
        try:
            ev = json.loads(p.read_text(encoding="utf-8"))
            if not isinstance(ev, dict) or "kind" not in ev:
                yield p.stem, p, None, f"{p}: spool entry is not an event object"
                continue
            yield p.stem, p, ev, None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            yield p.stem, p, None, f"{p}: unreadable spool entry ({type(e).__name__})"


def processor_argv(store: str | os.PathLike, town: str | os.PathLike) -> list[str]:
    """The command that processes a store's spool in the background (`corpus process --trigger`)."""
    return [sys.executable, "-m", "gt_ext.cli", "corpus", "--store", str(store), "--town", str(town),
            "process", "--trigger"]


def start_detached(argv: list[str]) -> bool:
    """Start `argv` in its own session with no terminal, so no kill of the caller's process group
    (bd's after 10 s, tmux's when a pane closes) reaches it. False when it could not start."""
    try:
        subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True, close_fds=True)
        return True
    except OSError:
        return False
