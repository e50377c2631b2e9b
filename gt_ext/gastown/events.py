"""Read a town's `.events.jsonl` (gt's append-only event log) without choking on bad lines.

Each line: `{"ts", "source": "gt", "type", "actor", "payload": {...}, "visibility"}`; types include
session_start, sling, done, spawn, kill, session_death, merged, merge_failed.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

log = logging.getLogger(__name__)

EVENTS_FILE = ".events.jsonl"


class Event(BaseModel):
    """One gt event; unknown fields are kept."""

    model_config = ConfigDict(extra="allow")

    ts: str = ""
    source: str = ""
    type: str = ""
    actor: str = ""
    payload: dict[str, Any] = {}
    visibility: str | None = None
    line: int = 0  # 1-based line number in the file (not part of gt's record)


def append_events(town_root: str | os.PathLike, events: Iterable[dict[str, Any]]) -> Path:
    """Append events to a town's log, one JSON object a line, as gt does (a sample town's history)."""
    path = Path(town_root) / EVENTS_FILE
    with open(path, "a", encoding="utf-8") as f:
        for e in events:
            f.write(json.dumps(e) + "\n")
    return path


def town_events(town_root: str | os.PathLike | None) -> list[dict[str, Any]]:
    """Every event of a town's log as plain dicts (file order = time order); [] without a town/log."""
    if town_root is None:
        return []
    return [ev.model_dump(exclude={"line"}) for ev in read_events(Path(town_root) / EVENTS_FILE)]


def read_events(path: str | os.PathLike, types: Iterable[str] | None = None, offset: int = 0) -> Iterator[Event]:
    """Yield the events of `path` (optionally only some `types`), starting at byte `offset`.

    Malformed lines (e.g. a half-written last line) are skipped with a warning naming the line.
    """
    p = Path(path)
    if not p.is_file():
        return
    want = set(types) if types is not None else None
    with open(p, "rb") as f:
        f.seek(offset)
        # Line numbers count from the offset's line when an offset is given.
        for n, raw in enumerate(f, start=1):
            text = raw.decode("utf-8", errors="replace").strip()
            if not text:
                continue
            try:
                obj = json.loads(text)
                if not isinstance(obj, dict):
                    raise ValueError("not an object")
                if not isinstance(obj.get("payload", {}), dict):
                    obj["payload"] = {"value": obj["payload"]}
                ev = Event.model_validate({**obj, "line": n})
            except (ValueError, TypeError) as e:
                log.warning("%s:%d: skipping malformed event (%s)", p, n, str(e).splitlines()[0][:80])
                continue
            if want is None or ev.type in want:
                yield ev
