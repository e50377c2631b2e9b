"""RAG's reindex queue: a folder of small event files that bd hooks append to and the one indexer drains.

(Not the corpus spool, `gt_ext.corpus.spool`, which holds whole hook events for corpus processing;
this queue holds ids and paths only. On disk it is `<town>/.rag/spool/`, kept for existing towns.)

Hooks must return fast and never lose work, and Chroma is not process-safe, so a hook never
touches the index: it writes one event file here (temp + rename, so the indexer never reads half
an event) and exits. This module imports only the standard library and `gt_ext.atomic`.

    from gt_ext.rag.queue import enqueue
    enqueue(town_root, {"kind": "bead", "op": "close", "beads_dir": "/town/.beads", "id": "hq-1"})
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from gt_ext.atomic import atomic_write_text

RAG_DIRNAME = ".rag"
SPOOL_DIRNAME = "spool"
# Fields kept from an event: ids and paths only. Hooks get the full issue JSON on stdin; we do not
# spool bead text (it may hold a secret, and the indexer re-reads the bead through bd anyway).
_KEEP = ("kind", "op", "beads_dir", "id", "path", "rig")


def queue_dir(town_root: str | os.PathLike) -> Path:
    """`<town>/.rag/spool/`, where pending events wait for the indexer."""
    return Path(town_root) / RAG_DIRNAME / SPOOL_DIRNAME


def enqueue(town_root: str | os.PathLike, event: dict[str, Any]) -> Path:
    """Append one change event for the indexer and return its file; never blocks on the indexer.

    `event` is a dict such as `{"kind": "bead", "op": "create|update|close", "beads_dir": PATH,
    "id": ISSUE_ID}` or `{"kind": "file", "path": PATH}` (a config, CLAUDE.md or formula that
    changed). Only the keys kind, op, beads_dir, id, path and rig are kept.
    """
    if not isinstance(event, dict) or not isinstance(event.get("kind"), str):
        raise ValueError("rag queue event must be a dict with a string 'kind'")
    rec = {k: str(event[k]) for k in _KEEP if event.get(k) is not None}
    rec["ts"] = time.time()
    # Name sorts by time; pid + counter keep concurrent hooks from colliding.
    name = f"{time.time_ns():020d}-{os.getpid()}-{_next()}.json"
    path = queue_dir(town_root) / name
    atomic_write_text(path, json.dumps(rec, sort_keys=True) + "\n")
    return path


_counter = 0


def _next() -> int:
    global _counter
    _counter += 1
    return _counter


# Where a bd hook queues when the town's queue cannot be written (bd run by a sandboxed agent):
# `<beads>/hooks/.gt-ext-rag-pending/`; the indexer drains it too (events only name what to re-read).
PENDING_DIR = ".gt-ext-rag-pending"


def pending(town_root: str | os.PathLike, beads_dirs: list[Path] | tuple[Path, ...] = ()) -> list[Path]:
    """Event files waiting in the queue (and in the pending folders of `beads_dirs`), oldest first
    (temp files of writers in flight are skipped)."""
    out = []
    for d in (queue_dir(town_root), *(Path(b) / "hooks" / PENDING_DIR for b in beads_dirs)):
        if d.is_dir():
            out += [p for p in d.iterdir() if p.suffix == ".json" and not p.name.startswith(".")]
    return sorted(out, key=lambda p: p.name)


def read_queued(paths: list[Path]) -> list[dict[str, Any]]:
    """Parse event files; an unreadable one is returned as `{"kind": "corrupt", "path": ...}`."""
    out = []
    for p in paths:
        try:
            ev = json.loads(p.read_text())
            if not isinstance(ev, dict):
                raise ValueError("not an object")
        except (OSError, ValueError):
            ev = {"kind": "corrupt", "path": str(p)}
        out.append(ev)
    return out


def ack(paths: list[Path]) -> None:
    """Remove events the indexer has committed to the index."""
    for p in paths:
        try:
            p.unlink()
        except FileNotFoundError:
            pass


def reindex_trigger_argv(town_root: str | os.PathLike) -> list[str]:
    """The command a bead hook starts (detached) after queueing: `gt-ext rag reindex --trigger`."""
    return [sys.executable, "-m", "gt_ext.cli", "rag", "reindex", "--trigger", "--town", str(town_root)]
