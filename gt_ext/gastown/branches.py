"""Dolt branches of a rig's beads database on the town's `dolt sql-server`.

A rig's beads live in one database of the town's server (`<rig beads>/metadata.json`:
`dolt_mode: server`, `dolt_database`). A branch of that database is a copy-on-write snapshot
that writes of its own: a connection to `db/branch` reads and writes only that branch (bd reaches a
branch through `gt_ext.gastown.branchproxy`). This module creates, inspects, merges and deletes
such branches, and reads beads rows from any branch.

    db = BeadsDatabase.for_rig(town, "demo")
    db.create_branch("prefs-dm-1-a")                # from main
    db.issue("dm-1", branch="prefs-dm-1-a")          # the bead as that branch sees it
    result = db.merge("prefs-dm-1-a")                # into main; conflicts reported, never forced
    db.delete_branch("prefs-dm-1-a")

A merge runs in one SQL transaction on `main`: when Dolt reports conflicts (or a constraint
violation) the transaction is rolled back, so main and the branch both stay exactly as they were,
and the conflicting rows of both sides are returned.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gt_ext.errors import GtExtError
from gt_ext.gastown.dolt import LOCALHOST, DoltClient, town_dolt_port
from gt_ext.gastown.town import Town

log = logging.getLogger(__name__)

MAIN = "main"
_BRANCH_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,120}$")


def check_branch_name(name: str) -> str:
    """A Dolt/git-safe branch name (letters, digits, `.`, `_`, `-`), or a one-line error."""
    if not _BRANCH_RE.match(name or "") or ".." in name:
        raise GtExtError(f"bad branch name {name!r}: letters, digits, '.', '_' and '-' only")
    return name


@dataclass
class MergeResult:
    """What a merge did: merged (with the new main commit) or refused with the conflicts."""

    branch: str
    merged: bool
    commit: str | None = None
    fast_forward: bool = False
    up_to_date: bool = False
    conflicts: dict[str, int] = field(default_factory=dict)  # table -> conflicting rows
    details: list[dict[str, Any]] = field(default_factory=list)  # both sides of each conflicting row
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return dict(self.__dict__)


def beads_database(beads_dir: Path) -> tuple[str, str]:
    """(dolt database, mode) of a beads folder from its metadata.json; mode is server|embedded."""
    meta_path = Path(beads_dir) / "metadata.json"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise GtExtError(f"{meta_path}: unreadable beads metadata ({e.__class__.__name__})") from None
    mode = str(meta.get("dolt_mode") or "embedded").lower()
    return str(meta.get("dolt_database") or meta.get("database") or "beads"), mode


class BeadsDatabase:
    """One beads database on a Dolt sql-server, and its branches."""

    def __init__(self, database: str, port: int, host: str = LOCALHOST, beads_dir: Path | None = None):
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_\-]*$", database):
            raise GtExtError(f"bad beads database name {database!r}")
        self.database = database
        self.port = port
        self.host = host
        self.beads_dir = beads_dir

    @classmethod
    def for_rig(cls, town: Town, rig: str) -> BeadsDatabase:
        """The rig's beads database on the town's server (GtExtError when it is not on a server)."""
        r = town.rig(rig)
        if r.beads_dir is None:
            raise GtExtError(f"rig {rig} has no beads folder")
        database, mode = beads_database(r.beads_dir)
        if mode != "server":
            raise GtExtError(f"rig {rig}: beads in {r.beads_dir} are not on the town's Dolt server "
                             f"(dolt_mode {mode}); branches need the town's sql-server")
        return cls(database, town_dolt_port(town.root), beads_dir=r.beads_dir)

    def client(self, branch: str | None = None) -> DoltClient:
        """A client on `branch` (default: the database's default branch)."""
        db = self.database if branch is None else f"{self.database}/{check_branch_name(branch)}"
        return DoltClient(self.host, self.port, database=db)

    # -- branches -------------------------------------------------------------------------------
    def branches(self) -> dict[str, str]:
        """{branch name: head commit hash}."""
        with self.client() as c:
            return {r["name"]: r["hash"] for r in c.query("SELECT name, hash FROM dolt_branches")}

    def has_branch(self, name: str) -> bool:
        """True when `name` is a branch of this database."""
        with self.client() as c:
            return bool(c.query("SELECT 1 FROM dolt_branches WHERE name = %s", (name,)))

    def create_branch(self, name: str, start: str = MAIN) -> str:
        """New branch `name` at `start`'s head; returns its commit. Refuses an existing name."""
        check_branch_name(name)
        with self.client() as c:
            if c.query("SELECT 1 FROM dolt_branches WHERE name = %s", (name,)):
                raise GtExtError(f"beads database {self.database}: branch {name} already exists")
            c.query("CALL DOLT_BRANCH(%s, %s)", (name, start))
            return str(c.query("SELECT hash FROM dolt_branches WHERE name = %s", (name,))[0]["hash"])

    def delete_branch(self, name: str) -> bool:
        """Delete a branch, merged or not; False when there was none."""
        with self.client() as c:
            if not c.query("SELECT 1 FROM dolt_branches WHERE name = %s", (name,)):
                return False
            c.query("CALL DOLT_BRANCH('-D', %s)", (name,))
        log.info("deleted beads branch %s/%s", self.database, name)
        return True

    def commits_since(self, branch: str, base: str) -> list[dict[str, Any]]:
        """Commits on `branch` not on `base` (newest first): hash, committer, message."""
        with self.client(branch) as c:
            return c.query("SELECT commit_hash, committer, message FROM dolt_log "
                           "WHERE commit_hash NOT IN (SELECT commit_hash FROM dolt_log AS OF %s) ORDER BY date DESC",
                           (base,))

    # -- beads rows -----------------------------------------------------------------------------
    def issue(self, issue_id: str, branch: str | None = None) -> dict[str, Any] | None:
        """The `issues` row of a bead as `branch` sees it (None when absent there)."""
        with self.client(branch) as c:
            rows = c.query("SELECT * FROM issues WHERE id = %s", (issue_id,))
        return _jsonable(rows[0]) if rows else None

    def issues(self, branch: str | None = None) -> list[dict[str, Any]]:
        """Every `issues` row of `branch`."""
        with self.client(branch) as c:
            return [_jsonable(r) for r in c.query("SELECT * FROM issues ORDER BY id")]

    def dependencies(self, branch: str | None = None) -> list[dict[str, Any]]:
        """Every dependency row of `branch`: issue_id depends on depends_on_id, with its type."""
        with self.client(branch) as c:
            return [_jsonable(r) for r in c.query("SELECT issue_id, depends_on_id, type FROM dependencies")]

    # -- merge ----------------------------------------------------------------------------------
    def merge(self, branch: str, into: str = MAIN, message: str | None = None) -> MergeResult:
        """Merge `branch` into `into` in one transaction; on conflicts roll back and report them."""
        import pymysql

        check_branch_name(branch)
        have = self.branches()
        for b in (branch, into):
            if b not in have:
                raise GtExtError(f"beads database {self.database}: no branch {b}")
        msg = message or f"merge {branch} into {into}"
        client = self.client(into)
        try:
            client.connect()
            client.query("SET @@autocommit = 0")
            client.query("START TRANSACTION")
            try:
                row = client.query("CALL DOLT_MERGE('--no-ff', '-m', %s, %s)", (msg, branch))[0]
            except pymysql.err.MySQLError as e:
                client.query("ROLLBACK")
                text = str(e.args[-1]) if e.args else str(e)
                return MergeResult(branch, False, message=f"dolt merge refused: {text.splitlines()[0][:300]}")
            conflicts = {r["table"]: int(r["num_conflicts"]) for r in client.query("SELECT * FROM dolt_conflicts")}
            violations = {r["table"]: int(r["num_violations"])
                          for r in client.query("SELECT * FROM dolt_constraint_violations")}
            if int(row.get("conflicts") or 0) or conflicts or violations:
                details = self._conflict_rows(client, conflicts)
                client.query("ROLLBACK")
                both = {**conflicts, **{f"{t} (constraint)": n for t, n in violations.items()}}
                return MergeResult(branch, False, conflicts=both, details=details,
                                   message=f"conflicts in {', '.join(f'{t} ({n})' for t, n in both.items())}")
            client.query("COMMIT")
            head = str(client.query("SELECT hash FROM dolt_branches WHERE name = %s", (into,))[0]["hash"])
            ff = bool(int(row.get("fast_forward") or 0))
            up_to_date = "up to date" in str(row.get("message") or "").lower()
            return MergeResult(branch, True, commit=head, fast_forward=ff, up_to_date=up_to_date,
                               message=str(row.get("message") or "merged"))
        finally:
            client.close()

    @staticmethod
    def _conflict_rows(client: DoltClient, conflicts: dict[str, int], limit: int = 20) -> list[dict[str, Any]]:
        """Both sides of the conflicting rows (ours = the target branch, theirs = the merged one)."""
        out: list[dict[str, Any]] = []
        for table in conflicts:
            if not re.match(r"^[A-Za-z0-9_]+$", table):
                continue
            for r in client.query(f"SELECT * FROM `dolt_conflicts_{table}` LIMIT {int(limit)}"):
                ours = {k[len("our_"):]: v for k, v in r.items() if k.startswith("our_") and k != "our_diff_type"}
                theirs = {k[len("their_"):]: v for k, v in r.items()
                          if k.startswith("their_") and k != "their_diff_type"}
                changed = sorted(k for k in ours if ours.get(k) != theirs.get(k))
                out.append({"table": table, "id": ours.get("id") or theirs.get("id"), "columns": changed,
                            "ours": _jsonable({k: ours[k] for k in changed}),
                            "theirs": _jsonable({k: theirs.get(k) for k in changed})})
        return out


def branch_beads_dir(rig_beads: Path, folder: Path, port: int) -> Path:
    """A beads folder `folder/.beads` for a bd that must work in a branch: the rig's metadata
    (server mode, same database) and, in the port file bd reads before anything else, the port of
    the `BranchProxy` that pins that branch. Run bd with BEADS_DIR=<it> (and
    BEADS_DOLT_SERVER_PORT=<port>, which bd reads first of all)."""
    beads = Path(folder) / ".beads"
    beads.mkdir(parents=True, exist_ok=True)
    for name in ("metadata.json", "config.yaml"):
        if (Path(rig_beads) / name).is_file():
            shutil.copy2(Path(rig_beads) / name, beads / name)
    (beads / "dolt-server.port").write_text(str(port))
    return beads


def branch_env(env: dict[str, str], beads: Path, port: int) -> dict[str, str]:
    """`env` for a bd working in a branch through the proxy on `port` (see branch_beads_dir)."""
    out = {k: v for k, v in env.items() if k not in ("BEADS_DB", "BD_DB", "BEADS_DOLT_SERVER_DATABASE")}
    out.update({"BEADS_DIR": str(beads), "BEADS_DOLT_SERVER_PORT": str(port), "BEADS_DOLT_PORT": str(port),
                "BEADS_DOLT_AUTO_START": "0"})
    return out


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    """A SQL row with datetimes and bytes made JSON-friendly."""
    out = {}
    for k, v in row.items():
        if hasattr(v, "isoformat"):
            v = v.isoformat()
        elif isinstance(v, (bytes, bytearray)):
            v = v.decode("utf-8", "replace")
        elif v is not None and not isinstance(v, (int, float, str, bool, list, dict)):
            v = str(v)
        out[k] = v
    return out
