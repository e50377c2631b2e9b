"""Comparison records: one A/B run of a bead by two models, from slinging to the pick.

A comparison lives in `<town>/.gt-ext/prefs/<id>/`: `comparison.json` (this record, written
atomically), and per side `a/` and `b/` the agent's transcript and pane output. The sides' work
folders (the clone each agent works in, its beads folder pointing bd at its Dolt branch) are in
the rig, `<rig>/prefs/<id>/<side>/`, outside what the agent's sandbox hides. Status:

    running  -> the agents are working (or the sling was interrupted: `interrupted` when its
                process is gone)
    pending  -> both outcomes recorded, waiting for a pick
    decided  -> a winner picked, its branches merged, the loser's dropped, the DPO pair stored
    dropped  -> abandoned (`gt-ext prefs drop`): every branch removed, nothing merged

`--json` output of `gt-ext prefs list|show` is `Comparison.to_dict()`.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from gt_ext.atomic import atomic_write_json
from gt_ext.errors import GtExtError
from gt_ext.registry.locks import file_lock

RECORD = "comparison.json"
LABELS = ("a", "b")
OPEN_STATUSES = ("running", "pending")


def now_iso() -> str:
    """UTC time, second precision, ISO-8601."""
    return datetime.now(UTC).isoformat(timespec="seconds")


class Failure(BaseModel):
    """One failure mode measured on an outcome."""

    mode: str  # crash | timeout | wrong-branch | tests-broken | dependency-direction | hooks-skipped | convention
    detail: str = ""


class Outcome(BaseModel):
    """What one agent did with the bead, measured after it stopped."""

    model_config = ConfigDict(extra="allow")

    label: str
    model: str  # the reference given on the command line
    model_ref: str = ""  # resolved (registry name:ver, or the folder)
    dolt_branch: str
    git_branch: str
    worktree: str
    beads_dir: str = ""
    transcript: str | None = None
    pane_log: str | None = None
    exit_code: int | None = None
    timed_out: bool = False
    wall_s: float = 0.0
    tokens: dict[str, int] = Field(default_factory=dict)  # input, output
    bead: dict[str, Any] | None = None  # the bead's row on the branch afterwards
    beads_created: list[str] = Field(default_factory=list)
    dependencies_added: list[dict[str, Any]] = Field(default_factory=list)
    dolt_commits: int = 0
    commits: list[dict[str, str]] = Field(default_factory=list)
    head_branch: str | None = None
    stray_commits: list[str] = Field(default_factory=list)
    dirty: list[str] = Field(default_factory=list)
    tests: dict[str, Any] | None = None  # {cmd, base_rc, rc, output}
    commands: list[str] = Field(default_factory=list)
    failures: list[Failure] = Field(default_factory=list)

    @property
    def failure_modes(self) -> list[str]:
        """Names of the failure modes, in measurement order."""
        return [f.mode for f in self.failures]


class Decision(BaseModel):
    """Who or which rule picked, why, and what the pick did."""

    model_config = ConfigDict(extra="allow")

    winner: str  # label
    loser: str
    by: str  # "person:<name>" or "rule:auto"
    rule: str = ""
    why: str = ""
    time: str = Field(default_factory=now_iso)
    pair_id: str | None = None
    pair_note: str = ""
    merge: dict[str, Any] = Field(default_factory=dict)  # {"dolt": MergeResult, "git": GitMergeResult}


class Comparison(BaseModel):
    """One bead, two models, two Dolt branches and two git branches."""

    model_config = ConfigDict(extra="allow")

    id: str
    bead: str
    rig: str
    role: str
    title: str = ""
    prompt: str = ""
    models: list[str]
    status: str = "running"
    created: str = Field(default_factory=now_iso)
    updated: str = Field(default_factory=now_iso)
    pid: int | None = None
    database: str = ""
    base: dict[str, str] = Field(default_factory=dict)  # {"git_branch", "git", "dolt"}
    outcomes: dict[str, Outcome] = Field(default_factory=dict)
    decision: Decision | None = None
    history: list[dict[str, Any]] = Field(default_factory=list)  # refused picks: conflicts, errors

    def effective_status(self) -> str:
        """`interrupted` for a running comparison whose sling process is gone."""
        if self.status == "running" and self.pid is not None and not _alive(self.pid):
            return "interrupted"
        return self.status

    def outcome_for(self, who: str) -> Outcome:
        """The outcome of label `a`/`b` or of a model reference as given to sling."""
        key = who.strip()
        if key.lower() in self.outcomes:
            return self.outcomes[key.lower()]
        matches = [o for o in self.outcomes.values() if key in (o.model, o.model_ref)]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise GtExtError(f"comparison {self.id}: {who!r} names both sides (same model twice); use a or b")
        sides = ", ".join(f"{o.label}={o.model}" for o in self.outcomes.values())
        raise GtExtError(f"comparison {self.id}: no side {who!r} (sides: {sides})")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict, with the effective status."""
        d = self.model_dump(mode="json")
        d["status"] = self.effective_status()
        return d


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class PrefsStore:
    """The comparisons of a town, one folder each under `<town>/.gt-ext/prefs/`."""

    def __init__(self, root: Path):
        self.root = Path(root)

    @classmethod
    def for_town(cls, town_root: Path) -> PrefsStore:
        """`<town>/.gt-ext/prefs`."""
        return cls(Path(town_root) / ".gt-ext" / "prefs")

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Serialize claims and picks across processes."""
        with file_lock(self.root / ".lock"):
            yield

    def folder(self, cid: str) -> Path:
        """Folder of comparison `cid`."""
        return self.root / cid

    def save(self, cmp: Comparison) -> None:
        """Write the record atomically."""
        cmp.updated = now_iso()
        atomic_write_json(self.folder(cmp.id) / RECORD, cmp.model_dump(mode="json"))

    def load(self, cid: str) -> Comparison:
        """One comparison by id (GtExtError when unknown or unreadable)."""
        p = self.folder(cid) / RECORD
        if not p.is_file():
            raise GtExtError(f"no comparison {cid!r} in {self.root}")
        try:
            return Comparison.model_validate(json.loads(p.read_text()))
        except (json.JSONDecodeError, ValueError) as e:
            raise GtExtError(f"{p}: unreadable comparison record ({str(e).splitlines()[0][:120]})") from None

    def all(self) -> list[Comparison]:
        """Every comparison, oldest first."""
        if not self.root.is_dir():
            return []
        out = [self.load(p.parent.name) for p in sorted(self.root.glob(f"*/{RECORD}"))]
        return sorted(out, key=lambda c: (c.created, c.id))

    def find(self, task: str) -> Comparison:
        """A comparison by id, or the newest one of a bead id."""
        if (self.folder(task) / RECORD).is_file():
            return self.load(task)
        of_bead = [c for c in self.all() if c.bead == task]
        if not of_bead:
            raise GtExtError(f"no comparison {task!r} (neither a comparison id nor a compared bead; "
                             f"see gt-ext prefs list)")
        return of_bead[-1]

    def open_for_bead(self, bead: str) -> Comparison | None:
        """The running or pending comparison of `bead`, if any."""
        return next((c for c in self.all() if c.bead == bead and c.status in OPEN_STATUSES), None)

    def new_id(self, bead: str) -> str:
        """`<bead>-<n>`: the n-th comparison of that bead."""
        base = re.sub(r"[^A-Za-z0-9_-]", "-", bead)
        n = 1 + sum(1 for c in self.all() if c.bead == bead)
        while self.folder(f"{base}-{n}").exists():
            n += 1
        return f"{base}-{n}"
