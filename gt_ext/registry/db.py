"""Registry metadata: one interface (`MetaStore`), two backends.

- `SqliteStore`: an embedded SQLite file (the default outside a town). Writes run inside
  `BEGIN IMMEDIATE`, so concurrent processes serialize on the database's write lock.
- `DoltStore`: tables in the town's HQ Dolt database, reached over the MySQL protocol
  (`gt_ext.gastown.dolt.DoltClient`). Every write is one SQL transaction followed by a Dolt commit
  with a message (`CALL DOLT_COMMIT`), so `SELECT * FROM dolt_log` is the registry's history.
  Writers serialize on a named server lock (`GET_LOCK`).

Both backends share the SQL below (`_SqlStore`); they differ in placeholders, column types, and
how a write transaction starts and ends. Tables are prefixed `gtx_` so they never clash with the
beads tables that share the HQ database.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gt_ext.errors import GtExtError

log = logging.getLogger(__name__)

MODELS_TABLE = "gtx_models"
DEPLOY_TABLE = "gtx_deployments"


@dataclass
class ModelRecord:
    """One registered model version (a role model or a task adapter) and where its files are."""

    name: str
    version: int
    role: str
    base_model: str
    path: Path
    task: str | None = None  # set for task adapters
    parent: str | None = None  # "name:ver" this one was trained from
    corpus_hash: str | None = None
    examples: int = 0
    dpo_pairs: int = 0
    hyperparams: dict[str, Any] = field(default_factory=dict)
    lora_rank: int | None = None
    eval_categories: dict[str, Any] = field(default_factory=dict)  # {cat: {"passed","total","score"}}
    eval_composite: float | None = None  # 0-100
    gate: str | None = None  # "pass" | "fail" of the newest gating eval; None = none yet
    compatible: list[str] = field(default_factory=list)  # base models a task adapter fits
    created: str = ""  # ISO-8601 UTC
    convention_fingerprint: str | None = None
    # Every eval recorded for this version, oldest first (gt_ext.registry.gate.eval_entry): suite,
    # hash, full or partial, trusted or not, gating or not (and why), composite, verdict, time.
    eval_runs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ref(self) -> str:
        """`name:ver`, the form used in settings args and deployment history."""
        return f"{self.name}:{self.version}"

    @property
    def adapter_dir(self) -> Path | None:
        """The PEFT adapter folder, if this version has one."""
        p = self.path / "adapter"
        return p if p.is_dir() else None

    @property
    def merged_dir(self) -> Path | None:
        """The merged HF weights folder, if this version has one."""
        p = self.path / "merged"
        return p if p.is_dir() else None

    @property
    def gguf_path(self) -> Path | None:
        """The GGUF file (q8_0 preferred over f16), if this version has one."""
        ggufs = sorted(self.path.glob("*.gguf"))
        for g in ggufs:
            if "q8_0" in g.name:
                return g
        return ggufs[0] if ggufs else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (paths as strings, plus `ref`)."""
        d = asdict(self)
        d["path"] = str(self.path)
        d["ref"] = self.ref
        return d


@dataclass
class Deployment:
    """One entry of the append-only deployment history.

    `before`/`after` are settings states: {"role_agent": str|None, "agent_config": dict|None,
    "model": "name:ver"|None, "adapters": [refs]}. A rollback entry's `after` is the `before` of
    the deploy it undoes.
    """

    id: int
    action: str  # "deploy" | "rollback"
    role: str
    rig: str  # "" = town settings
    model: str | None  # "name:ver" now serving the role, None when the role left node0
    before: dict[str, Any]
    after: dict[str, Any]
    actor: str
    time: str
    reason: str = ""  # why (for --force: the override reason)
    forced: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)


_MODEL_COLS = ("name", "version", "role", "task", "base_model", "path", "parent", "corpus_hash",
               "examples", "dpo_pairs", "hyperparams", "lora_rank", "eval_categories",
               "eval_composite", "gate", "compatible", "created", "convention_fingerprint", "eval_runs")
_JSON_MODEL_COLS = {"hyperparams", "eval_categories", "compatible", "eval_runs"}
_LIST_COLS = {"compatible", "eval_runs"}
# Columns added after the first release, with their SQL type per backend: an older table gets them
# (ALTER TABLE ... ADD COLUMN) when a store opens it.
_ADDED_COLS = {"eval_runs": {"sqlite": "TEXT", "dolt": "LONGTEXT"}}
_DEPLOY_COLS = ("action", "role", "rig", "model", "before_state", "after_state", "actor", "time",
                "reason", "forced")


def _cols(cols: tuple[str, ...]) -> str:
    # Backticks: `time`, `action`, `role` are keywords in MySQL/Dolt; SQLite accepts backticks too.
    return ", ".join(f"`{c}`" for c in cols)


class MetaStore(ABC):
    """The registry's metadata interface. Implementations must make each write atomic."""

    backend: str = "?"

    @abstractmethod
    def add_model(self, rec: ModelRecord, message: str) -> None:
        """Insert a new model version (GtExtError if name:version exists)."""

    @abstractmethod
    def get_model(self, name: str, version: int | None = None) -> ModelRecord | None:
        """One version, or the newest version of `name` when `version` is None."""

    @abstractmethod
    def list_models(self) -> list[ModelRecord]:
        """All versions, ordered by name then version."""

    @abstractmethod
    def max_version(self, name: str) -> int:
        """Highest version ever stored for `name` in the live table (0 when none)."""

    @abstractmethod
    def update_eval(self, name: str, version: int, categories: dict[str, Any], composite: float | None,
                    gate: str | None, message: str, eval_runs: list[dict[str, Any]] | None = None) -> None:
        """Record an evaluation for one version: the gate columns (a gating eval) and/or the list of
        every eval recorded (`eval_runs`, when given)."""

    @abstractmethod
    def delete_model(self, name: str, version: int, message: str) -> None:
        """Remove one version's record (prune)."""

    @abstractmethod
    def append_deployment(self, dep: Deployment, message: str) -> int:
        """Append a history entry; returns its id (ids grow with time)."""

    @abstractmethod
    def deployments(self, role: str | None = None, rig: str | None = None) -> list[Deployment]:
        """History entries in append order, optionally for one role and/or rig."""

    @abstractmethod
    def close(self) -> None:
        """Release connections."""


class _SqlStore(MetaStore):
    """Shared SQL over a DB-API connection; subclasses define `_ph`, DDL, `_cursor` and `_write`."""

    _ph = "?"

    # -- subclass hooks -------------------------------------------------------------------------
    @abstractmethod
    def _ddl(self) -> list[str]: ...

    @abstractmethod
    @contextmanager
    def _write(self, message: str) -> Iterator[Any]:
        """A write transaction yielding a cursor; commits (and records `message`) on success."""

    @abstractmethod
    def _read(self, sql: str, args: tuple = ()) -> list[dict[str, Any]]: ...

    # -- helpers --------------------------------------------------------------------------------
    def _sql(self, sql: str) -> str:
        return sql.replace("?", self._ph)

    @staticmethod
    def _row_to_model(row: dict[str, Any]) -> ModelRecord:
        kw = dict(row)
        for c in _JSON_MODEL_COLS:
            kw[c] = json.loads(kw[c]) if kw.get(c) else ([] if c in _LIST_COLS else {})
        kw["path"] = Path(kw["path"])
        kw["version"] = int(kw["version"])
        kw["examples"] = int(kw["examples"] or 0)
        kw["dpo_pairs"] = int(kw["dpo_pairs"] or 0)
        if kw.get("eval_composite") is not None:
            kw["eval_composite"] = float(kw["eval_composite"])
        if kw.get("lora_rank") is not None:
            kw["lora_rank"] = int(kw["lora_rank"])
        return ModelRecord(**{k: kw.get(k) for k in _MODEL_COLS})

    @staticmethod
    def _row_to_dep(row: dict[str, Any]) -> Deployment:
        return Deployment(id=int(row["id"]), action=row["action"], role=row["role"], rig=row["rig"] or "",
                          model=row["model"], before=json.loads(row["before_state"]),
                          after=json.loads(row["after_state"]), actor=row["actor"], time=row["time"],
                          reason=row["reason"] or "", forced=bool(int(row["forced"] or 0)))

    # -- interface ------------------------------------------------------------------------------
    def add_model(self, rec: ModelRecord, message: str) -> None:
        vals = []
        for c in _MODEL_COLS:
            v = getattr(rec, c)
            if c in _JSON_MODEL_COLS:
                v = json.dumps(v, sort_keys=True)
            elif c == "path":
                v = str(v)
            vals.append(v)
        sql = self._sql(f"INSERT INTO {MODELS_TABLE} ({_cols(_MODEL_COLS)}) "
                        f"VALUES ({', '.join('?' for _ in _MODEL_COLS)})")
        if self.get_model(rec.name, rec.version) is not None:
            raise GtExtError(f"model {rec.ref} is already registered ({self.backend} registry)")
        with self._write(message) as cur:
            cur.execute(sql, tuple(vals))

    def get_model(self, name: str, version: int | None = None) -> ModelRecord | None:
        if version is None:
            rows = self._read(f"SELECT * FROM {MODELS_TABLE} WHERE `name` = ? ORDER BY `version` DESC LIMIT 1",
                              (name,))
        else:
            rows = self._read(f"SELECT * FROM {MODELS_TABLE} WHERE `name` = ? AND `version` = ?", (name, version))
        return self._row_to_model(rows[0]) if rows else None

    def list_models(self) -> list[ModelRecord]:
        return [self._row_to_model(r) for r in self._read(f"SELECT * FROM {MODELS_TABLE} ORDER BY `name`, `version`")]

    def max_version(self, name: str) -> int:
        rows = self._read(f"SELECT MAX(`version`) AS v FROM {MODELS_TABLE} WHERE `name` = ?", (name,))
        return int(rows[0]["v"] or 0) if rows else 0

    def update_eval(self, name: str, version: int, categories: dict[str, Any], composite: float | None,
                    gate: str | None, message: str, eval_runs: list[dict[str, Any]] | None = None) -> None:
        runs = json.dumps(eval_runs, sort_keys=True) if eval_runs is not None else None
        with self._write(message) as cur:
            if gate is not None:
                cur.execute(self._sql(f"UPDATE {MODELS_TABLE} SET `eval_categories` = ?, `eval_composite` = ?, `gate` = ? "
                                      "WHERE `name` = ? AND `version` = ?"),
                            (json.dumps(categories, sort_keys=True), composite, gate, name, version))
            if runs is not None:
                cur.execute(self._sql(f"UPDATE {MODELS_TABLE} SET `eval_runs` = ? WHERE `name` = ? AND `version` = ?"),
                            (runs, name, version))

    def _add_missing_columns(self, have: set[str]) -> None:
        """Bring a table made by an earlier release up to date (new columns, empty)."""
        missing = [c for c in _ADDED_COLS if c not in have]
        if missing:
            with self._write(f"gt-ext registry: add columns {', '.join(missing)}") as cur:
                for c in missing:
                    cur.execute(f"ALTER TABLE {MODELS_TABLE} ADD COLUMN `{c}` {_ADDED_COLS[c][self.backend]}")

    def delete_model(self, name: str, version: int, message: str) -> None:
        with self._write(message) as cur:
            cur.execute(self._sql(f"DELETE FROM {MODELS_TABLE} WHERE `name` = ? AND `version` = ?"), (name, version))

    def append_deployment(self, dep: Deployment, message: str) -> int:
        vals = (dep.action, dep.role, dep.rig, dep.model, json.dumps(dep.before, sort_keys=True),
                json.dumps(dep.after, sort_keys=True), dep.actor, dep.time, dep.reason, int(dep.forced))
        sql = self._sql(f"INSERT INTO {DEPLOY_TABLE} ({_cols(_DEPLOY_COLS)}) "
                        f"VALUES ({', '.join('?' for _ in _DEPLOY_COLS)})")
        with self._write(message) as cur:
            cur.execute(sql, vals)
            new_id = int(cur.lastrowid)
        dep.id = new_id
        return new_id

    def deployments(self, role: str | None = None, rig: str | None = None) -> list[Deployment]:
        where, args = [], []
        if role is not None:
            where.append("`role` = ?")
            args.append(role)
        if rig is not None:
            where.append("`rig` = ?")
            args.append(rig)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        rows = self._read(f"SELECT * FROM {DEPLOY_TABLE}{clause} ORDER BY `id`", tuple(args))
        return [self._row_to_dep(r) for r in rows]


class SqliteStore(_SqlStore):
    """Metadata in an embedded SQLite file (WAL mode; writers take `BEGIN IMMEDIATE`)."""

    backend = "sqlite"

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we issue BEGIN ourselves; timeout: wait for other writers' locks.
        self._conn = sqlite3.connect(str(self.path), timeout=60.0, isolation_level=None)
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA busy_timeout=60000")
        with self._write("create tables") as cur:
            for stmt in self._ddl():
                cur.execute(stmt)
        self._add_missing_columns({r["name"] for r in self._read(f"PRAGMA table_info({MODELS_TABLE})")})

    def _ddl(self) -> list[str]:
        return [
            f"""CREATE TABLE IF NOT EXISTS {MODELS_TABLE} (
                `name` TEXT NOT NULL, `version` INTEGER NOT NULL, `role` TEXT NOT NULL, `task` TEXT,
                `base_model` TEXT NOT NULL, `path` TEXT NOT NULL, `parent` TEXT, `corpus_hash` TEXT,
                `examples` INTEGER, `dpo_pairs` INTEGER, `hyperparams` TEXT, `lora_rank` INTEGER,
                `eval_categories` TEXT, `eval_composite` REAL, `gate` TEXT, `compatible` TEXT,
                `created` TEXT NOT NULL, `convention_fingerprint` TEXT, `eval_runs` TEXT,
                PRIMARY KEY (`name`, `version`))""",
            f"""CREATE TABLE IF NOT EXISTS {DEPLOY_TABLE} (
                `id` INTEGER PRIMARY KEY AUTOINCREMENT, `action` TEXT NOT NULL, `role` TEXT NOT NULL,
                `rig` TEXT NOT NULL, `model` TEXT, `before_state` TEXT NOT NULL, `after_state` TEXT NOT NULL,
                `actor` TEXT NOT NULL, `time` TEXT NOT NULL, `reason` TEXT, `forced` INTEGER NOT NULL)""",
        ]

    @contextmanager
    def _write(self, message: str) -> Iterator[Any]:
        cur = self._conn.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            yield cur
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        cur.execute("COMMIT")
        log.debug("sqlite registry %s: %s", self.path, message)

    def _read(self, sql: str, args: tuple = ()) -> list[dict[str, Any]]:
        return [dict(r) for r in self._conn.execute(self._sql(sql), args).fetchall()]

    def close(self) -> None:
        self._conn.close()


class DoltStore(_SqlStore):
    """Metadata as tables in a Dolt database (the town's `hq`); each write is a Dolt commit."""

    backend = "dolt"
    _ph = "%s"
    _LOCK = "gtx_registry"

    def __init__(self, client: Any, database: str = "hq", lock_timeout: int = 120):
        """`client` is a `gt_ext.gastown.dolt.DoltClient` (not yet bound to a database is fine)."""
        self.client = client
        self.database = database
        self._lock_timeout = lock_timeout
        self.client.query(f"CREATE DATABASE IF NOT EXISTS `{database}`")
        self.client.query(f"USE `{database}`")
        existing = {next(iter(r.values())) for r in self.client.query("SHOW TABLES")}
        if not {MODELS_TABLE, DEPLOY_TABLE} <= existing:
            with self._write("gt-ext registry: create tables") as cur:
                for stmt in self._ddl():
                    cur.execute(stmt)
        self._add_missing_columns({next(iter(r.values())) for r in self.client.query(f"SHOW COLUMNS FROM {MODELS_TABLE}")})

    def _ddl(self) -> list[str]:
        return [
            f"""CREATE TABLE IF NOT EXISTS {MODELS_TABLE} (
                `name` VARCHAR(200) NOT NULL, `version` INT NOT NULL, `role` VARCHAR(32) NOT NULL,
                `task` VARCHAR(64), `base_model` VARCHAR(1000) NOT NULL, `path` TEXT NOT NULL,
                `parent` VARCHAR(255), `corpus_hash` VARCHAR(128), `examples` INT, `dpo_pairs` INT,
                `hyperparams` LONGTEXT, `lora_rank` INT, `eval_categories` LONGTEXT, `eval_composite` DOUBLE,
                `gate` VARCHAR(8), `compatible` LONGTEXT, `created` VARCHAR(40) NOT NULL,
                `convention_fingerprint` VARCHAR(128), `eval_runs` LONGTEXT, PRIMARY KEY (`name`, `version`))""",
            f"""CREATE TABLE IF NOT EXISTS {DEPLOY_TABLE} (
                `id` BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY, `action` VARCHAR(16) NOT NULL,
                `role` VARCHAR(32) NOT NULL, `rig` VARCHAR(200) NOT NULL, `model` VARCHAR(255),
                `before_state` LONGTEXT NOT NULL, `after_state` LONGTEXT NOT NULL, `actor` VARCHAR(255) NOT NULL,
                `time` VARCHAR(40) NOT NULL, `reason` TEXT, `forced` TINYINT NOT NULL)""",
        ]

    @contextmanager
    def _write(self, message: str) -> Iterator[Any]:
        conn = self.client._conn if self.client._conn is not None else self.client.connect()._conn
        # A named server lock serializes registry writers across processes; the SQL transaction
        # makes the write all-or-nothing; DOLT_COMMIT turns it into a Dolt history entry.
        got = self.client.query("SELECT GET_LOCK(%s, %s) AS ok", (self._LOCK, self._lock_timeout))
        if not got or int(next(iter(got[0].values())) or 0) != 1:
            raise GtExtError(f"dolt registry {self.client.host}:{self.client.port}/{self.database}: "
                             f"could not take the registry lock within {self._lock_timeout} s")
        try:
            with conn.cursor() as cur:
                cur.execute("START TRANSACTION")
                try:
                    yield cur
                    cur.execute("COMMIT")
                except BaseException:
                    cur.execute("ROLLBACK")
                    raise
                # Stage only our tables: HQ also holds the town's beads, which are not ours to commit.
                cur.execute("CALL DOLT_ADD(%s, %s)", (MODELS_TABLE, DEPLOY_TABLE))
                self._dolt_commit(cur, message)
        finally:
            self.client.query("SELECT RELEASE_LOCK(%s)", (self._LOCK,))

    def _dolt_commit(self, cur: Any, message: str) -> None:
        import pymysql

        for attempt in range(5):
            try:
                msg = message if message.startswith("gt-ext registry") else f"gt-ext registry: {message}"
                cur.execute("CALL DOLT_COMMIT('-m', %s, '--author', %s)",
                            (msg, "gt-ext registry <gt-ext@localhost>"))
                return
            except pymysql.err.MySQLError as e:
                text = str(e.args[-1]) if e.args else str(e)
                if "nothing to commit" in text:
                    return
                if attempt == 4:
                    raise GtExtError(f"dolt registry {self.database}: commit failed: {text}") from None
                time.sleep(0.2 * (attempt + 1))

    def _read(self, sql: str, args: tuple = ()) -> list[dict[str, Any]]:
        return self.client.query(self._sql(sql), args or None)

    def history(self, limit: int = 50) -> list[dict[str, Any]]:
        """The Dolt commit log touching the registry (newest first): hash, committer, date, message."""
        return self.client.query("SELECT commit_hash, committer, date, message FROM dolt_log "
                                 "WHERE message LIKE %s ORDER BY date DESC LIMIT %s",
                                 ("gt-ext registry%", limit))

    def close(self) -> None:
        self.client.close()
