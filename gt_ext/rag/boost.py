"""RAG boosts: sources ranked higher for a role while its deployed model is not fresh.

The staleness check (`gt_ext.loop.stale`) writes `<town>/.rag/boost.json`:
`{role: {"sources": ["file:CLAUDE.md", ...], "reason", "time"}}` — the files whose changes the
role's model was not trained on. `retrieve` adds `BOOST` to the score of their chunks, so an agent
sees the new conventions before a retrained model knows them; a fresh verdict clears the role's entry.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from gt_ext.atomic import atomic_write_json
from gt_ext.rag.queue import RAG_DIRNAME

BOOST = 0.15  # added to cosine similarity (as much as a same-day recency boost and a half)
FILE = "boost.json"
_cache: dict[str, tuple[int, dict]] = {}


def _path(town_root: str | os.PathLike) -> Path:
    return Path(town_root) / RAG_DIRNAME / FILE


def _read(path: Path) -> dict:
    try:
        stamp = path.stat().st_mtime_ns
    except FileNotFoundError:
        return {}
    hit = _cache.get(str(path))
    if hit and hit[0] == stamp:
        return hit[1]
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        data = {}
    data = data if isinstance(data, dict) else {}
    _cache[str(path)] = (stamp, data)
    return data


def set_boost(town_root: str | os.PathLike, role: str, sources: list[str], reason: str = "") -> None:
    """Boost `sources` for `role` (an empty list clears the role's boost)."""
    path = _path(town_root)
    data = dict(_read(path))
    if sources:
        data[role] = {"sources": sorted(set(sources)), "reason": reason, "time": time.time()}
    elif role in data:
        del data[role]
    else:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, data)


def boosted(town_root: str | os.PathLike, role: str | None) -> set[str]:
    """The sources boosted for `role` now (read once per change of the file)."""
    if not role:
        return set()
    entry = _read(_path(town_root)).get(role) or {}
    return set(entry.get("sources") or [])
