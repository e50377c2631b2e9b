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


def log_head(path: str | os.PathLike, size: int = 256) -> str:
    """The first `size` bytes of an event log as hex: with the inode, it tells a log that was
    replaced or rotated (same name, other content) from one that only grew. "" when absent."""
    try:
        with open(path, "rb") as f:
            return f.read(size).hex()
    except OSError:
        return ""


def read_new_events(path: str | os.PathLike, offset: int = 0,
                    types: Iterable[str] | None = None) -> tuple[list[tuple[int, dict[str, Any]]], int]:
    """The events appended to `path` since byte `offset`, for incremental readers.

    Returns ([(byte offset of the line, event dict)], offset just past the last COMPLETE line): a
    line gt is still writing (no newline yet) is left for the next call. Only `types` are returned
    when given (the others are still read past). Malformed lines are skipped with a warning. Plain
    `json` and no per-line model: a long-lived town's log has millions of lines."""
    p = Path(path)
    want = set(types) if types is not None else None
    out: list[tuple[int, dict[str, Any]]] = []
    try:
        f = open(p, "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        return out, offset
    with f:
        f.seek(offset)
        pos = offset
        for raw in f:
            if not raw.endswith(b"\n"):
                break  # half-written: next time
            start, pos = pos, pos + len(raw)
            if want is not None and not any(f'"{t}"'.encode() in raw for t in want):
                continue  # cheap pre-filter before parsing; checked properly below
            try:
                obj = json.loads(raw)
            except ValueError as e:
                log.warning("%s: byte %d: skipping malformed event (%s)", p, start, str(e)[:80])
                continue
            if not isinstance(obj, dict):
                continue
            if not isinstance(obj.get("payload", {}), dict):
                obj["payload"] = {"value": obj["payload"]}
            if want is None or obj.get("type") in want:
                out.append((start, obj))
    return out, pos
