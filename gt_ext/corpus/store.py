"""The corpus store: one SQLite database in WAL mode, safe under concurrent writers.

Layout of a store folder (``<town>/.corpus/`` in a town, else ``$GT_EXT_HOME/corpus``):

    corpus.db        examples, quarantine, processed sources and spool entries, batches
    spool/           one JSON file per hook event, written by the hooks (see `spool`)
    process.lock     held by `gt-ext corpus process` so two processors never interleave

Every write happens in one ``BEGIN IMMEDIATE`` transaction, so a processor killed midway leaves
either the whole batch or none of it, and a rerun finds each source either done or not done.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from gt_ext.corpus.tags import LINK_FIELDS, Tags
from gt_ext.errors import GtExtError
from gt_ext.gastown.town import find_town
from gt_ext.paths import home_dir
from gt_ext.private import private_dir, private_file

SCHEMA = """
CREATE TABLE IF NOT EXISTS examples(
  id TEXT PRIMARY KEY,
  role TEXT, task TEXT, rig TEXT, bead TEXT, session TEXT, user TEXT, time TEXT,
  source TEXT NOT NULL, source_key TEXT NOT NULL, source_hash TEXT NOT NULL,
  outcome TEXT NOT NULL DEFAULT 'unknown',   -- success | failure | unknown
  label TEXT NOT NULL DEFAULT 'neutral',     -- good | neutral | bad (violations, failures)
  status TEXT NOT NULL DEFAULT 'active',     -- active | quarantined | review | superseded
  reason TEXT,                               -- why quarantined / under review / labelled bad
  findings TEXT NOT NULL DEFAULT '[]',       -- scrub findings: type, span, confidence (no values)
  messages TEXT,                             -- JSON chat messages (NULL for unparseable sources)
  minhash TEXT,                              -- JSON signature for near-duplicate search
  artifact_key TEXT,                         -- rig:relpath for versioned artifacts
  batch TEXT,
  grp TEXT,                                  -- source group (user, curated file) for per-source caps
  created REAL NOT NULL,
  model TEXT                                 -- the model that wrote the assistant turns, when known
);
CREATE INDEX IF NOT EXISTS ex_status ON examples(status);
CREATE INDEX IF NOT EXISTS ex_source ON examples(source_key);
CREATE INDEX IF NOT EXISTS ex_session ON examples(session);
CREATE INDEX IF NOT EXISTS ex_artifact ON examples(artifact_key);
CREATE TABLE IF NOT EXISTS sources(source_key TEXT PRIMARY KEY, source_hash TEXT NOT NULL, updated REAL NOT NULL);
CREATE TABLE IF NOT EXISTS spool_done(spool_id TEXT PRIMARY KEY, done REAL NOT NULL);
CREATE TABLE IF NOT EXISTS links(
  session TEXT PRIMARY KEY, bead TEXT, role TEXT, rig TEXT, task TEXT, outcome TEXT, user TEXT, updated REAL);
CREATE TABLE IF NOT EXISTS lsh(band INTEGER NOT NULL, bucket TEXT NOT NULL, example_id TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS lsh_idx ON lsh(band, bucket);
CREATE TABLE IF NOT EXISTS batches(batch TEXT PRIMARY KEY, created REAL NOT NULL, stats TEXT NOT NULL, flags TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS preferences(            -- task-level DPO pairs picked from A/B runs (gt_ext.prefs)
  id TEXT PRIMARY KEY,                             -- format.dpo_id(prompt, chosen, rejected)
  role TEXT NOT NULL, task TEXT NOT NULL, rig TEXT, bead TEXT, comparison TEXT,
  prompt TEXT NOT NULL, chosen TEXT NOT NULL, rejected TEXT NOT NULL,
  provenance TEXT NOT NULL,                        -- JSON: comparison, models, who or which rule picked, why
  status TEXT NOT NULL DEFAULT 'active',           -- active | quarantined
  reason TEXT, findings TEXT NOT NULL DEFAULT '[]', created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS open_batches(          -- batches still being stored: not yet judged (ingest.py)
  batch TEXT PRIMARY KEY, judge INTEGER NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS sealed(                 -- suspected secrets of held-back examples, encrypted (seal.py)
  example_id TEXT NOT NULL, marker TEXT NOT NULL, token TEXT NOT NULL, placeholder TEXT,
  PRIMARY KEY(example_id, marker));
"""

PREFERENCE_COLUMNS = ("id", "role", "task", "rig", "bead", "comparison", "prompt", "chosen", "rejected",
                      "provenance", "status", "reason", "findings", "created")

# Columns added after the first release, for stores made before them (name, SQL declaration).
ADDED_COLUMNS: tuple[tuple[str, str], ...] = (("model", "TEXT"),)

# What an example can be: exported (active), held for a human (quarantined, review), refused by a
# gate (rejected), replaced by a newer version of its artifact (superseded).
STATUSES = ("active", "quarantined", "review", "rejected", "superseded")


@dataclass(kw_only=True)
class StoredExample(Tags):
    """One stored example (SFT chat): the tag fields (`Tags`) plus its source, content and state.

    (Not `gt_ext.train.data.Example`, which is one tokenized conversation.)"""

    id: str
    source: str
    source_key: str
    source_hash: str
    messages: list[dict[str, str]] | None
    label: str = "neutral"
    status: str = "active"
    reason: str | None = None
    findings: list[dict] = field(default_factory=list)
    minhash: list[int] | None = None
    batch: str | None = None
    grp: str | None = None
    created: float = 0.0

    def row(self) -> tuple:
        d = self.__dict__.copy()
        d["findings"] = json.dumps(self.findings)
        d["messages"] = None if self.messages is None else json.dumps(self.messages, ensure_ascii=False)
        d["minhash"] = None if self.minhash is None else json.dumps(self.minhash)
        d["created"] = self.created or time.time()
        return tuple(d[c] for c in EXAMPLE_COLUMNS)

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> StoredExample:
        d = dict(row)
        d["findings"] = json.loads(d["findings"] or "[]")
        d["messages"] = None if d["messages"] is None else json.loads(d["messages"])
        d["minhash"] = None if d["minhash"] is None else json.loads(d["minhash"])
        return cls(**d)

    def provenance(self) -> dict[str, Any]:
        """The contract's provenance object."""
        return {"source": self.source, "session": self.session or "", "rig": self.rig or "",
                "bead": self.bead or "", "user": self.user or "", "time": self.time or "",
                "model": self.model or "", "source_hash": self.source_hash}

    def summary(self) -> dict[str, Any]:
        """Listing form: tags and status, no content."""
        return {k: getattr(self, k) for k in ("id", "role", "task", "rig", "bead", "session", "source",
                                               "model", "outcome", "label", "status", "reason")} | {
            "turns": len(self.messages or []), "findings": len(self.findings)}


# The `examples` table's columns are the fields of StoredExample (SCHEMA above must name the same).
EXAMPLE_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(StoredExample))


def default_store_dir(town_root: str | os.PathLike | None = None) -> Path:
    """``<town>/.corpus`` when a town is given or found, else ``$GT_EXT_HOME/corpus``."""
    if town_root is None:
        town_root = _find_town_root()
    if town_root is not None:
        return Path(town_root) / ".corpus"
    return home_dir() / "corpus"


def _find_town_root() -> Path | None:
    t = find_town()
    return Path(t.root) if t is not None else None


class Store:
    """The corpus database. Open with `Store.open(dir)`; use as a context manager to close."""

    def __init__(self, root: Path):
        self.root = Path(root)
        # Session text (and quarantined examples) lives here: owner only. SQLite gives its -wal and
        # -shm files the database file's mode, so a 0600 corpus.db keeps them 0600 too.
        private_dir(self.root)
        private_dir(self.root / "spool")
        private_file(self.root / "corpus.db")
        # isolation_level=None: we issue BEGIN IMMEDIATE ourselves, so a writer takes the lock up
        # front instead of failing on upgrade from a read lock.
        self.db = sqlite3.connect(self.root / "corpus.db", timeout=60, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA busy_timeout=60000")
        with self.tx():
            for stmt in SCHEMA.split(";"):  # executescript would COMMIT our transaction
                if stmt.strip():
                    self.db.execute(stmt)
            have = {r[1] for r in self.db.execute("PRAGMA table_info(examples)")}
            for col, decl in ADDED_COLUMNS:  # a store made by an older version: add what it lacks
                if col not in have:
                    self.db.execute(f"ALTER TABLE examples ADD COLUMN {col} {decl}")

    @classmethod
    def open(cls, root: str | os.PathLike | None = None, town: str | os.PathLike | None = None) -> Store:
        """Open (creating) the store at `root`, or the default for `town` / the current town."""
        return cls(Path(root) if root is not None else default_store_dir(town))

    @property
    def spool_dir(self) -> Path:
        return self.root / "spool"

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: all or nothing."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        else:
            self.db.execute("COMMIT")

    # --- examples ---------------------------------------------------------------------------
    def insert(self, ex: StoredExample) -> bool:
        """Insert one example (inside the caller's transaction); False when its id exists."""
        cur = self.db.execute(
            f"INSERT OR IGNORE INTO examples({','.join(EXAMPLE_COLUMNS)}) VALUES ({','.join('?' * len(EXAMPLE_COLUMNS))})",
            ex.row())
        return cur.rowcount == 1

    def get(self, ex_id: str) -> StoredExample:
        """One example by id or unique id prefix; raises when missing or ambiguous."""
        rows = self.db.execute("SELECT * FROM examples WHERE id LIKE ? LIMIT 2", (ex_id + "%",)).fetchall()
        if not rows:
            raise GtExtError(f"no example {ex_id!r} in {self.root}")
        if len(rows) > 1:
            raise GtExtError(f"example id prefix {ex_id!r} is ambiguous in {self.root}")
        return StoredExample.from_row(rows[0])

    def query(self, status: str | None = "active", role: str | None = None, task: str | None = None,
              rig: str | None = None, source: str | None = None, limit: int | None = None) -> list[StoredExample]:
        """Examples filtered by status/role/task/rig/source, oldest first."""
        where, args = [], []
        for col, val in (("status", status), ("role", role), ("task", task), ("rig", rig), ("source", source)):
            if val is not None:
                where.append(f"{col} = ?")
                args.append(val)
        sql = "SELECT * FROM examples" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY created, id"
        if limit:
            sql += f" LIMIT {int(limit)}"
        return [StoredExample.from_row(r) for r in self.db.execute(sql, args)]

    def count(self, **where: Any) -> int:
        cond = " AND ".join(f"{k} = ?" for k in where) or "1"
        return self.db.execute(f"SELECT COUNT(*) FROM examples WHERE {cond}", tuple(where.values())).fetchone()[0]

    def set_status(self, ex_id: str, status: str, reason: str | None = None) -> None:
        with self.tx():
            self.db.execute("UPDATE examples SET status = ?, reason = ? WHERE id = ?", (status, reason, ex_id))

    def delete(self, ex_id: str) -> None:
        with self.tx():
            self.db.execute("DELETE FROM examples WHERE id = ?", (ex_id,))
            self.db.execute("DELETE FROM lsh WHERE example_id = ?", (ex_id,))
            self.db.execute("DELETE FROM sealed WHERE example_id = ?", (ex_id,))

    # --- sealed spans (gt_ext.corpus.seal) ---------------------------------------------------
    def add_sealed(self, ex_id: str, sealed: list) -> None:
        """Keep an example's sealed spans (inside the caller's transaction)."""
        self.db.executemany("INSERT OR REPLACE INTO sealed VALUES (?, ?, ?, ?)",
                            [(ex_id, s.marker, s.token, s.placeholder) for s in sealed])

    def sealed(self, ex_id: str) -> dict:
        """{marker: Sealed} of one example."""
        from gt_ext.corpus.seal import Sealed

        return {r[0]: Sealed(r[0], r[1], r[2]) for r in self.db.execute(
            "SELECT marker, token, placeholder FROM sealed WHERE example_id = ?", (ex_id,))}

    def unseal_into(self, ex_id: str, messages: list[dict[str, str]], status: str, reason: str | None) -> None:
        """Release: store `messages` (markers resolved), set the status, forget the sealed spans."""
        with self.tx():
            self.db.execute("UPDATE examples SET messages = ?, status = ?, reason = ? WHERE id = ?",
                            (json.dumps(messages, ensure_ascii=False), status, reason, ex_id))
            self.db.execute("DELETE FROM sealed WHERE example_id = ?", (ex_id,))

    def stats(self) -> dict[str, Any]:
        """Counts by status, role, task, label, source; task-level preference pairs by role and status."""
        out: dict[str, Any] = {"total": self.count()}
        for col in ("status", "role", "task", "label", "source", "outcome"):
            out[col] = {(k if k is not None else "-"): n for k, n in self.db.execute(
                f"SELECT {col}, COUNT(*) FROM examples GROUP BY {col} ORDER BY {col}")}
        out["preferences"] = {f"{role}/{status}": n for role, status, n in self.db.execute(
            "SELECT role, status, COUNT(*) FROM preferences GROUP BY role, status ORDER BY role, status")}
        return out

    # --- sources, links, spool bookkeeping -------------------------------------------------
    def source_hash(self, key: str) -> str | None:
        r = self.db.execute("SELECT source_hash FROM sources WHERE source_key = ?", (key,)).fetchone()
        return r[0] if r else None

    def mark_source(self, key: str, h: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO sources VALUES (?, ?, ?)", (key, h, time.time()))

    def spool_done(self, spool_id: str) -> bool:
        return self.db.execute("SELECT 1 FROM spool_done WHERE spool_id = ?", (spool_id,)).fetchone() is not None

    def mark_spool_done(self, spool_id: str) -> None:
        self.db.execute("INSERT OR IGNORE INTO spool_done VALUES (?, ?)", (spool_id, time.time()))

    def get_meta(self, key: str) -> str | None:
        """A value of the store's own bookkeeping (e.g. the scrub detectors' fingerprint)."""
        r = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return r[0] if r else None

    def set_meta(self, key: str, value: str) -> None:
        """Set a bookkeeping value (inside the caller's transaction, or on its own)."""
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def link(self, session: str) -> dict[str, Any] | None:
        r = self.db.execute("SELECT * FROM links WHERE session = ?", (session,)).fetchone()
        return dict(r) if r else None

    def set_link(self, session: str, **tags: Any) -> None:
        """Remember what a bead close said about a session (inside the caller's transaction)."""
        old = self.link(session) or {}
        new = {k: tags.get(k) or old.get(k) for k in LINK_FIELDS}
        self.db.execute(f"INSERT OR REPLACE INTO links(session, {', '.join(LINK_FIELDS)}, updated) "
                        f"VALUES (?, {', '.join('?' * len(LINK_FIELDS))}, ?)",
                        (session, *(new[k] for k in LINK_FIELDS), time.time()))

    # --- task-level preference pairs ----------------------------------------------------------
    def add_preference(self, rec: dict[str, Any]) -> bool:
        """Store one DPO pair record (CONTRACTS.md DPO record + status/reason/findings) in its own
        transaction; False when a pair with that id is already stored."""
        row = {**rec, "prompt": json.dumps(rec["prompt"], ensure_ascii=False),
               "provenance": json.dumps(rec.get("provenance") or {}, ensure_ascii=False, sort_keys=True),
               "findings": json.dumps(rec.get("findings") or []), "status": rec.get("status") or "active",
               "created": rec.get("created") or time.time()}
        with self.tx():
            cur = self.db.execute(
                f"INSERT OR IGNORE INTO preferences({','.join(PREFERENCE_COLUMNS)}) "
                f"VALUES ({','.join('?' * len(PREFERENCE_COLUMNS))})",
                tuple(row.get(c) for c in PREFERENCE_COLUMNS))
        return cur.rowcount == 1

    def preferences(self, status: str | None = "active", role: str | None = None,
                    since: float | None = None) -> list[dict[str, Any]]:
        """Stored pairs (oldest first) as DPO records plus status, comparison and `created`."""
        where, args = [], []
        for col, val in (("status", status), ("role", role)):
            if val is not None:
                where.append(f"{col} = ?")
                args.append(val)
        if since is not None:
            where.append("created > ?")
            args.append(since)
        sql = "SELECT * FROM preferences" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY created, id"
        out = []
        for r in self.db.execute(sql, args):
            d = dict(r)
            d["prompt"] = json.loads(d["prompt"])
            d["provenance"] = json.loads(d["provenance"])
            d["findings"] = json.loads(d["findings"] or "[]")
            out.append(d)
        return out

    def delete_preference(self, pair_id: str) -> None:
        """Remove one pair (a pick that could not complete takes its pair back)."""
        with self.tx():
            self.db.execute("DELETE FROM preferences WHERE id = ?", (pair_id,))

    # --- near-duplicate index ----------------------------------------------------------------
    def lsh_candidates(self, buckets: list[str]) -> set[str]:
        out: set[str] = set()
        for band, b in enumerate(buckets):
            out.update(r[0] for r in self.db.execute("SELECT example_id FROM lsh WHERE band = ? AND bucket = ?", (band, b)))
        return out

    def lsh_add(self, ex_id: str, buckets: list[str]) -> None:
        self.db.executemany("INSERT INTO lsh VALUES (?, ?, ?)", [(i, b, ex_id) for i, b in enumerate(buckets)])

    def minhash_of(self, ex_id: str) -> list[int] | None:
        r = self.db.execute("SELECT minhash FROM examples WHERE id = ?", (ex_id,)).fetchone()
        return json.loads(r[0]) if r and r[0] else None
