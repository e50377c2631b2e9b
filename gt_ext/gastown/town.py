"""Find a Gas Town (the HQ folder holding `mayor/town.json`) and list its rigs and beads folders.

Layout (gt v1.0.1): `<town>/mayor/town.json`, `<town>/mayor/rigs.json` (`{"version", "rigs":
{name: {"git_url", "added_at", "beads": {"repo", "prefix"}, ...}}}`), town beads `<town>/.beads/`,
rig beads `<town>/<rig>/mayor/rig/.beads/` (or `<town>/<rig>/.beads/`), town settings
`<town>/settings/config.json` + `agents.json`, rig settings `<town>/<rig>/settings/...`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gt_ext.errors import GtExtError

TOWN_MARKER = Path("mayor") / "town.json"
# Folders of gt/bd/Dolt state inside a town: a walk for documents (CLAUDE.md, docs) skips them.
STATE_DIRS = frozenset({".runtime", ".dolt-data", "embeddeddolt"})
EXT_SETTINGS_FILE = "gt-ext.json"


@dataclass(frozen=True)
class Rig:
    """A rig of a town: a managed repo with its own beads and settings."""

    name: str
    root: Path
    entry: dict[str, Any]

    @property
    def prefix(self) -> str | None:
        """The rig's beads issue prefix, from rigs.json (None if not recorded)."""
        return (self.entry.get("beads") or {}).get("prefix")

    @property
    def settings_dir(self) -> Path:
        """`<town>/<rig>/settings/` (config.json, agents.json)."""
        return self.root / "settings"

    @property
    def beads_dir(self) -> Path | None:
        """The rig's beads folder, or None when it has none yet.

        gt v1.0.1 keeps it at `<rig>/.beads` (worktrees hold a `redirect` file pointing there);
        older towns at `<rig>/mayor/rig/.beads`. Redirects are followed.
        """
        for cand in (self.root / ".beads", self.root / "mayor" / "rig" / ".beads"):
            real = resolve_beads_dir(cand)
            if real is not None:
                return real
        return None


@dataclass(frozen=True)
class Town:
    """A Gas Town HQ on disk."""

    root: Path

    @property
    def name(self) -> str:
        """The town name from mayor/town.json (folder name if absent)."""
        return str(self.town_config().get("name") or self.root.name)

    @property
    def settings_dir(self) -> Path:
        """`<town>/settings/` (config.json, agents.json, escalation.json)."""
        return self.root / "settings"

    @property
    def beads_dir(self) -> Path | None:
        """Town-level beads (`hq-` prefix), or None."""
        p = self.root / ".beads"
        return p if p.is_dir() else None

    @property
    def events_file(self) -> Path:
        """`<town>/.events.jsonl`: gt's append-only event log."""
        return self.root / ".events.jsonl"  # gastown.events.EVENTS_FILE

    def session_id_of(self, actor: str) -> str | None:
        """The session id gt recorded for an agent (`<town>/<actor>/.runtime/session_id`), or None.

        gt writes the id on the first line and the time on the second."""
        p = self.root / actor / ".runtime" / "session_id"
        try:
            sid = p.read_text(encoding="utf-8").split("\n", 1)[0].strip()
        except (OSError, UnicodeDecodeError):
            return None
        return sid or None

    def town_config(self) -> dict[str, Any]:
        """mayor/town.json as a dict."""
        return _read_json(self.root / TOWN_MARKER)

    def rigs_config(self) -> dict[str, Any]:
        """mayor/rigs.json as a dict (`{"version": 1, "rigs": {}}` if absent)."""
        p = self.root / "mayor" / "rigs.json"
        return _read_json(p) if p.is_file() else {"version": 1, "rigs": {}}

    def rigs(self) -> list[Rig]:
        """Rigs registered in mayor/rigs.json, sorted by name."""
        entries = self.rigs_config().get("rigs") or {}
        return [Rig(name, self.root / name, dict(entry or {})) for name, entry in sorted(entries.items())]

    def rig(self, name: str) -> Rig:
        """One rig by name (GtExtError listing the rigs if unknown)."""
        for r in self.rigs():
            if r.name == name:
                return r
        known = ", ".join(r.name for r in self.rigs()) or "none"
        raise GtExtError(f"no rig {name!r} in town {self.root} (rigs: {known})")

    def beads_dirs(self) -> dict[str, Path]:
        """Every beads folder of the town: {"hq": town beads, <rig>: rig beads}."""
        out: dict[str, Path] = {}
        if self.beads_dir:
            out["hq"] = self.beads_dir
        for r in self.rigs():
            if r.beads_dir:
                out[r.name] = r.beads_dir
        return out


def resolve_beads_dir(path: Path, _depth: int = 0) -> Path | None:
    """`path` if it is a beads folder, following a `redirect` file (relative to the folder holding
    `.beads`, as bd reads it); None if there is none."""
    if not path.is_dir():
        return None
    redirect = path / "redirect"
    if redirect.is_file() and _depth < 4:
        target = redirect.read_text().strip()
        if target:
            return resolve_beads_dir((path.parent / target).resolve(), _depth + 1)
    return path


def beads_dir_for(start: str | os.PathLike) -> Path | None:
    """The beads folder `bd` uses when run in `start`: $BEADS_DIR, else the first `.beads` folder
    walking up from `start` (its `redirect` followed); None if there is none."""
    env = os.environ.get("BEADS_DIR")
    if env:
        return resolve_beads_dir(Path(env))
    cur = Path(start).resolve()
    for d in (cur, *cur.parents):
        found = resolve_beads_dir(d / ".beads")
        if found is not None:
            return found
    return None


def read_ext_settings(town_root: str | os.PathLike | None) -> dict[str, Any]:
    """This project's own town settings, `<town>/settings/gt-ext.json` (`{}` if absent or no town).

    gt drops unknown keys from its own settings files when it rewrites them, so the project's
    settings (corpus sharing, the node0 agent's sandbox) live in this file of their own."""
    if town_root is None:
        return {}
    p = Path(town_root) / "settings" / EXT_SETTINGS_FILE
    return _read_json(p) if p.is_file() else {}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise GtExtError(f"{path}: cannot read ({e.strerror})") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise GtExtError(f"{path}:{e.lineno}:{e.colno}: malformed JSON ({e.msg})") from None
    if not isinstance(obj, dict):
        raise GtExtError(f"{path}: expected a JSON object")
    return obj


def is_town(path: str | os.PathLike) -> bool:
    """True if `path` holds `mayor/town.json`."""
    return (Path(path) / TOWN_MARKER).is_file()


def find_town(start: str | os.PathLike | None = None) -> Town | None:
    """The town containing `start` (default: cwd), else $GT_TOWN_ROOT / $GT_ROOT, else None.

    Like gt, the walk returns the OUTERMOST folder with `mayor/town.json`, since rigs and worktrees
    inside a town may carry their own.
    """
    if start is None:
        for var in ("GT_TOWN_ROOT", "GT_ROOT"):
            val = os.environ.get(var)
            if val:
                if not is_town(val):
                    raise GtExtError(f"{var}={val}: not a Gas Town (no mayor/town.json)")
                return Town(Path(val).resolve())
        start = Path.cwd()
    cur = Path(start).resolve()
    found: Path | None = None
    for d in (cur, *cur.parents):
        if is_town(d):
            found = d
    return Town(found) if found else None


def require_town(start: str | os.PathLike | None = None) -> Town:
    """Like find_town, but a one-line GtExtError when there is no town."""
    t = find_town(start)
    if t is None:
        raise GtExtError("not inside a Gas Town (no mayor/town.json above the current folder; set GT_TOWN_ROOT)")
    return t
