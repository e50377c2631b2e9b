"""An index of gt's event log kept in the corpus store, so linking a closed bead to its sessions
costs what is new in the log, not the whole log.

`<town>/.events.jsonl` only grows (gt appends). `EventIndex.sync()` reads the bytes after the
offset it stopped at last time (`gt_ext.gastown.events.read_new_events`) and keeps the events that
link sessions to beads (the `LINK_TYPES`) in the `gt_events` table, keyed by each line's byte
offset (file order = time order). The offset, the log's inode and its first bytes are kept in
`gt_events_log`; a log that shrank or whose head changed (replaced, rotated) is indexed again from
the start. Every question a bead close asks is then one or two indexed queries:

    idx = EventIndex(store, town_root); idx.sync()
    idx.actors_for_bead("dm-12")            # who was slung it, who did it, who merged it
    idx.bead_span(actor, "dm-12")           # (lo, hi): that actor's attempts at it lie between
    idx.session_starts(actor, lo, hi)       # its sessions there
    idx.window(actor, pos)                  # what that session's actor did until its next start

The index writes inside the caller's transaction discipline: `sync()` commits on its own.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from gt_ext.gastown.events import EVENTS_FILE, log_head, read_new_events

log = logging.getLogger(__name__)

# The event types that link sessions to beads (gt v1.0.1 names); everything else is read past.
LINK_TYPES = ("session_start", "sling", "hook", "done", "merged", "merge_failed", "session_death")
END = 2**62  # "after every event" for open-ended spans

SCHEMA = """
CREATE TABLE IF NOT EXISTS gt_events(
  pos INTEGER PRIMARY KEY,   -- byte offset of the event's line in .events.jsonl
  type TEXT NOT NULL, actor TEXT, bead TEXT, target TEXT, pactor TEXT,
  session TEXT, role TEXT, cwd TEXT, reason TEXT);
CREATE INDEX IF NOT EXISTS gte_bead ON gt_events(bead, type);
CREATE INDEX IF NOT EXISTS gte_actor ON gt_events(actor, type, pos);
CREATE INDEX IF NOT EXISTS gte_actor_pos ON gt_events(actor, pos);
CREATE TABLE IF NOT EXISTS gt_events_log(
  id INTEGER PRIMARY KEY CHECK (id = 1), path TEXT, inode INTEGER, head TEXT, offset INTEGER NOT NULL);
"""


def _row(pos: int, e: dict[str, Any]) -> tuple:
    p = e.get("payload") or {}

    def s(v: Any) -> str | None:
        return None if v is None else str(v)

    return (pos, str(e.get("type") or ""), s(e.get("actor")), s(p.get("bead")), s(p.get("target")),
            s(p.get("actor")), s(p.get("session_id")), s(p.get("role")), s(p.get("cwd")), s(p.get("reason")))


class EventIndex:
    """The link-relevant events of one town's log, in the corpus store's database."""

    def __init__(self, store: Any, town_root: str | os.PathLike | None):
        self.db = store.db
        self.path = Path(town_root) / EVENTS_FILE if town_root is not None else None
        for stmt in SCHEMA.split(";"):
            if stmt.strip():
                self.db.execute(stmt)

    def sync(self) -> int:
        """Index what was appended since the last sync; returns the number of events added."""
        if self.path is None:
            return 0
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return 0
        row = self.db.execute("SELECT path, inode, head, offset FROM gt_events_log WHERE id = 1").fetchone()
        offset = 0
        head = log_head(self.path)
        if row is not None and row[0] == str(self.path) and row[1] == st.st_ino and st.st_size >= row[3] \
                and head.startswith(row[2][: len(head)]) and row[2].startswith(head[: len(row[2])]):
            offset = row[3]
        elif row is not None:
            log.info("%s was replaced or rotated: indexing it again from the start", self.path)
        if row is not None and offset == row[3] and st.st_size == offset:
            return 0
        events, end = read_new_events(self.path, offset, LINK_TYPES)
        self.db.execute("BEGIN IMMEDIATE")
        try:
            if offset == 0:
                self.db.execute("DELETE FROM gt_events")
            self.db.executemany("INSERT OR REPLACE INTO gt_events VALUES (?,?,?,?,?,?,?,?,?,?)",
                                [_row(pos, e) for pos, e in events])
            self.db.execute("INSERT OR REPLACE INTO gt_events_log VALUES (1, ?, ?, ?, ?)",
                            (str(self.path), st.st_ino, head, end))
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")
        return len(events)

    # --- the questions a bead close asks -------------------------------------------------------
    def actors_for_bead(self, bead: str) -> set[str]:
        """Actors that worked `bead`: sling/hook targets, and who logged done/merged/merge_failed."""
        out: set[str] = set()
        for typ, actor, target, pactor in self.db.execute(
                "SELECT type, actor, target, pactor FROM gt_events WHERE bead = ? AND type IN "
                "('sling', 'hook', 'done', 'merged', 'merge_failed')", (bead,)):
            # A sling's actor is the one who slung it; its target works it.
            who = (target or pactor) if typ in ("sling", "hook") else (actor or pactor)
            if who:
                out.add(who)
        return out

    def bead_span(self, actor: str, bead: str) -> tuple[int, int]:
        """(lo, hi) log positions: `actor`'s sessions starting strictly between them worked `bead`.

        An agent works one hooked bead at a time, so its attempts at a bead run from the bead's
        sling/hook to it (or else from its `done` of its previous bead) up to its `done` of this
        bead (or the end of the log). Without that bound every session the actor ever ran would be
        linked to every bead it closed."""
        (done,) = self.db.execute("SELECT MAX(pos) FROM gt_events WHERE actor = ? AND type = 'done' AND bead = ?",
                                  (actor, bead)).fetchone()
        hi = END if done is None else done + 1
        (slung,) = self.db.execute(
            "SELECT MAX(pos) FROM gt_events WHERE bead = ? AND type IN ('sling', 'hook') AND pos < ? "
            "AND (target = ? OR pactor = ?)", (bead, hi, actor, actor)).fetchone()
        (prev,) = self.db.execute(
            "SELECT MAX(pos) FROM gt_events WHERE actor = ? AND type = 'done' AND pos < ? "
            "AND (bead IS NULL OR bead != ?)", (actor, hi, bead)).fetchone()
        found = [p for p in (slung, prev) if p is not None]
        return (max(found) if found else -1), hi

    def session_starts(self, actor: str, lo: int = -1, hi: int = END) -> list[dict[str, Any]]:
        """`actor`'s session_start events with lo < pos < hi: {pos, session, role, cwd}."""
        return [{"pos": r[0], "session": r[1], "role": r[2], "cwd": r[3]} for r in self.db.execute(
            "SELECT pos, session, role, cwd FROM gt_events WHERE actor = ? AND type = 'session_start' "
            "AND pos > ? AND pos < ? AND session IS NOT NULL ORDER BY pos", (actor, lo, hi))]

    def window(self, actor: str, pos: int) -> list[dict[str, Any]]:
        """The actor's done/session_death events after its session_start at `pos`, up to its next
        session_start, as event dicts (what `tags.attempt_outcome` reads)."""
        (nxt,) = self.db.execute("SELECT MIN(pos) FROM gt_events WHERE actor = ? AND type = 'session_start' "
                                 "AND pos > ?", (actor, pos)).fetchone()
        rows = self.db.execute(
            "SELECT type, bead, reason FROM gt_events WHERE actor = ? AND pos > ? AND pos < ? "
            "AND type IN ('done', 'session_death') ORDER BY pos", (actor, pos, END if nxt is None else nxt))
        return [{"type": t, "actor": actor, "payload": {k: v for k, v in (("bead", b), ("reason", r)) if v is not None}}
                for t, b, r in rows]

    def all_session_starts(self) -> dict[str, dict[str, Any]]:
        """session id -> {actor, role, cwd} over the whole log (the batch scan's tags)."""
        return {r[0]: {"actor": r[1], "role": r[2], "cwd": r[3]} for r in self.db.execute(
            "SELECT session, actor, role, cwd FROM gt_events WHERE type = 'session_start' "
            "AND session IS NOT NULL ORDER BY pos")}
