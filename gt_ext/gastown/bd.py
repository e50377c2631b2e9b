"""A client for the real `bd` (beads) binary: every call uses `--json` and returns typed results.

`Bd(beads_dir)` runs bd with `BEADS_DIR=<beads_dir>` from the folder that holds it, so it works the
same for a rig's `<town>/<rig>/mayor/rig/.beads` and for a standalone `bd init` folder. Errors carry
bd's own message and exit code (`BdError`).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from gt_ext.errors import GtExtError
from gt_ext.gastown.binaries import find_bd

log = logging.getLogger(__name__)


class BdError(GtExtError):
    """`bd` failed: `message` is bd's own (one line), `exit_code` its exit status."""

    def __init__(self, message: str, exit_code: int, command: str = "bd"):
        super().__init__(f"{command}: {message}", exit_code=exit_code if exit_code > 0 else 1)
        self.bd_message = message
        self.bd_exit_code = exit_code


class Issue(BaseModel):
    """One bead as `bd --json` prints it. Fields bd adds later are kept (extra='allow')."""

    model_config = ConfigDict(extra="allow")

    id: str
    title: str = ""
    description: str = ""
    status: str = ""
    priority: int | None = None
    issue_type: str = ""
    assignee: str | None = None
    owner: str | None = None
    created_by: str | None = None
    created_at: str | None = None
    updated_at: str | None = None
    closed_at: str | None = None
    close_reason: str | None = None
    labels: list[str] | None = None
    metadata: Any = None


def _one_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return " / ".join(lines)[:500] if lines else "(no message)"


def _error_message(stdout: str, stderr: str) -> str:
    # With --json bd reports errors as {"error": "..."} (on stdout or stderr); else plain text.
    for text in (stderr, stdout):
        try:
            obj = json.loads(text)
        except (json.JSONDecodeError, ValueError):
            continue
        if isinstance(obj, dict) and obj.get("error"):
            return _one_line(str(obj["error"]))
    return _one_line(stderr or stdout)


class Bd:
    """The real `bd` for one beads folder (`.../.beads`)."""

    def __init__(self, beads_dir: str | os.PathLike, bd_bin: str | None = None,
                 actor: str | None = None, env: dict[str, str] | None = None, timeout: float = 120.0):
        self.beads_dir = Path(beads_dir).resolve()
        self.bin = bd_bin or find_bd()
        self.actor = actor
        self.timeout = timeout
        self._env = dict(os.environ if env is None else env)
        self._env["BEADS_DIR"] = str(self.beads_dir)

    def run(self, *args: str, json_out: bool = True, input: str | None = None) -> Any:
        """Run `bd ARGS [--json]` (with `input` on stdin); return parsed JSON (or stdout text),
        raise BdError on failure."""
        argv = [self.bin, *args]
        if json_out:
            argv.append("--json")
        if self.actor:
            argv += ["--actor", self.actor]
        log.debug("bd %s", " ".join(args))
        try:
            res = subprocess.run(argv, cwd=self.beads_dir.parent, env=self._env, capture_output=True,
                                 text=True, timeout=self.timeout, input=input,
                                 stdin=None if input is not None else subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise BdError(f"timed out after {self.timeout:.0f} s", 124, f"bd {args[0] if args else ''}") from None
        if res.returncode != 0:
            raise BdError(_error_message(res.stdout, res.stderr), res.returncode, f"bd {args[0] if args else ''}")
        if not json_out:
            return res.stdout
        out = res.stdout.strip()
        if not out:
            return None
        try:
            return json.loads(out)
        except json.JSONDecodeError:
            raise BdError(f"printed non-JSON output: {_one_line(out)[:200]}", 1, f"bd {args[0]}") from None

    # -- issues ----------------------------------------------------------------------------------
    def create(self, title: str, description: str = "", issue_type: str = "task", priority: int = 2,
               labels: list[str] | None = None, assignee: str | None = None,
               metadata: dict[str, Any] | None = None, extra: list[str] | None = None) -> Issue:
        """`bd create TITLE` -> the new Issue."""
        args = ["create", title, "--type", issue_type, "--priority", str(priority)]
        if description:
            args += ["--description", description]
        if labels:
            args += ["--labels", ",".join(labels)]
        if assignee:
            args += ["--assignee", assignee]
        if metadata is not None:
            args += ["--metadata", json.dumps(metadata)]
        args += list(extra or [])
        return _issue(self.run(*args))

    def list(self, status: str | None = None, all: bool = False, limit: int = 0,
             extra: list[str] | None = None) -> list[Issue]:
        """`bd list` -> Issues (open ones unless `status` or `all`); `limit` 0 = all of them
        (bd's own default would silently stop at 50)."""
        args = ["list", "--limit", str(limit)]
        if status:
            args += ["--status", status]
        if all:
            args.append("--all")
        args += list(extra or [])
        return [_issue(x) for x in _as_list(self.run(*args))]

    def ready(self, limit: int = 0) -> list[Issue]:
        """`bd ready` -> unblocked open Issues (`limit` 0 = all)."""
        return [_issue(x) for x in _as_list(self.run("ready", "--limit", str(limit)))]

    def show(self, issue_id: str) -> Issue:
        """`bd show ID` -> the Issue with labels, dependencies and comments."""
        items = _as_list(self.run("show", issue_id))
        if not items:
            raise BdError(f"no issue {issue_id}", 1, "bd show")
        return _issue(items[0])

    def show_many(self, issue_ids: list[str]) -> dict[str, Issue | None]:
        """`bd show ID...` in one call -> {id: Issue, or None when bd has no such issue (deleted)}."""
        if not issue_ids:
            return {}
        try:
            got = {i.id: i for i in (_issue(x) for x in _as_list(self.run("show", *issue_ids)))}
        except BdError:  # one unknown id fails the whole call: ask one by one
            got = {}
            for i in issue_ids:
                try:
                    got[i] = self.show(i)
                except BdError as e:
                    if e.bd_exit_code == 124:
                        raise
        return {i: got.get(i) for i in issue_ids}

    def update(self, issue_id: str, status: str | None = None, assignee: str | None = None,
               title: str | None = None, notes: str | None = None, extra: list[str] | None = None) -> Issue:
        """`bd update ID ...` -> the changed Issue."""
        args = ["update", issue_id]
        for flag, val in (("--status", status), ("--assignee", assignee), ("--title", title), ("--notes", notes)):
            if val is not None:
                args += [flag, val]
        args += list(extra or [])
        items = _as_list(self.run(*args))
        return _issue(items[0]) if items else self.show(issue_id)

    def close(self, issue_id: str, reason: str | None = None) -> Issue:
        """`bd close ID [--reason R]` -> the closed Issue."""
        args = ["close", issue_id]
        if reason:
            args += ["--reason", reason]
        items = _as_list(self.run(*args))
        return _issue(items[0]) if items else self.show(issue_id)

    def config_set(self, key: str, value: str) -> None:
        """`bd config set KEY VALUE`."""
        self.run("config", "set", key, value)

    def config_get(self, key: str) -> Any:
        """`bd config get KEY` (parsed JSON as bd prints it)."""
        return self.run("config", "get", key)


def _as_list(obj: Any) -> list[dict[str, Any]]:
    if obj is None:
        return []
    if isinstance(obj, dict):
        # Some bd versions wrap lists: {"issues": [...]}.
        for key in ("issues", "items", "results"):
            if isinstance(obj.get(key), list):
                return obj[key]
        return [obj]
    return list(obj)


def _issue(obj: Any) -> Issue:
    if isinstance(obj, list):
        obj = obj[0] if obj else {}
    if not isinstance(obj, dict) or "id" not in obj:
        raise BdError(f"unexpected JSON (no issue id): {str(obj)[:200]}", 1)
    return Issue.model_validate(obj)


def init_beads(folder: str | os.PathLike, prefix: str, bd_bin: str | None = None,
               env: dict[str, str] | None = None, timeout: float = 180.0) -> Path:
    """Run the real `bd init --prefix PREFIX` in `folder` (embedded Dolt); return `folder/.beads`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    bd = bd_bin or find_bd()
    run_env = dict(os.environ if env is None else env)
    for k in ("BEADS_DIR", "BEADS_DB", "BD_DB"):
        run_env.pop(k, None)  # otherwise bd would initialise the folder those point at
    argv = [bd, "init", "--prefix", prefix, "--quiet", "--skip-hooks", "--skip-agents", "--non-interactive"]
    res = subprocess.run(argv, cwd=folder, env=run_env, capture_output=True, text=True,
                         timeout=timeout, stdin=subprocess.DEVNULL)
    if res.returncode != 0:
        raise BdError(_error_message(res.stdout, res.stderr), res.returncode, "bd init")
    beads = folder / ".beads"
    if not beads.is_dir():
        raise GtExtError(f"bd init in {folder} made no .beads folder")
    return beads


def beads_fingerprint(beads_dir: str | os.PathLike, town_root: str | os.PathLike | None = None) -> str | None:
    """A cheap signal that a beads database changed, without asking bd: for an embedded-Dolt beads
    folder the newest mtime and file count under `embeddeddolt/`; for a server-mode one (a gt town)
    Dolt's hash of the database's working set (`DOLT_HASHOF_DB()`) on the server `metadata.json`
    names (its port, else the town's). None when neither can be read (then the caller re-lists)."""
    beads = Path(beads_dir)
    data = beads / "embeddeddolt"
    if data.is_dir():
        newest, count = 0, 0
        for root, _dirs, files in os.walk(data):
            for f in files:
                try:
                    st = os.stat(os.path.join(root, f))
                except FileNotFoundError:
                    continue
                newest = max(newest, st.st_mtime_ns)
                count += 1
        return f"tree:{newest}:{count}"
    try:
        meta = json.loads((beads / "metadata.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("dolt_mode") != "server" or not meta.get("dolt_database"):
        return None
    from gt_ext.gastown.dolt import DoltClient

    port = meta.get("dolt_server_port")
    try:
        if isinstance(port, int) and port > 0:
            client = DoltClient(host=str(meta.get("dolt_server_host") or "127.0.0.1"), port=port,
                                database=str(meta["dolt_database"]))
        elif town_root is not None:
            client = DoltClient.for_town(town_root, database=str(meta["dolt_database"]))
        else:
            return None
        with client as c:
            rows = c.query("SELECT DOLT_HASHOF_DB() AS h")
    except Exception as e:  # noqa: BLE001 - no server, old Dolt, lost connection: re-list instead
        log.debug("%s: no Dolt hash (%s)", beads, type(e).__name__)
        return None
    return f"dolt:{rows[0]['h']}" if rows and rows[0].get("h") else None
