"""Retrain requests: ONE open job bead per role, and a cooldown, however often the trigger fires.

    req = request_retrain(town_root, "witness", reasons=["town:CLAUDE.md changed"], cooldown_s=86400)
    req.bead      # the bead opened now, or None
    req.skipped   # why none was opened: one is open already, or the cooldown has not passed

A request is a task bead in the town's beads (labels `gt-ext`, `retrain-job`, `role:<role>`) that
says why and what to run: `gt formula run improve-role --set role=<role>`. Whoever runs the town
(the mayor, the deacon's patrol, a person) picks it up; deploying the result stays deliberate.
`<town>/.models/retrain.json` remembers the last request per role (bead id, time), under a file
lock, so two checks at once open one bead, and a burst of edits opens one bead per cooldown.
Any trigger can call this: the staleness check does; a "new DPO pairs" trigger can too.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from gt_ext.atomic import atomic_write_json
from gt_ext.errors import GtExtError

log = logging.getLogger(__name__)

LABEL = "retrain-job"
STATE_FILE = "retrain.json"
DEFAULT_COOLDOWN_S = 24 * 3600.0
CLOSED = {"closed", "done", "failed"}


@dataclass
class RetrainRequest:
    """The outcome of one request: a new bead, or why none was opened (and the open one, if any)."""

    role: str
    bead: str | None = None
    skipped: str | None = None
    open_bead: str | None = None

    def to_dict(self) -> dict[str, str | None]:
        return dict(self.__dict__)


def _state_path(town_root: Path) -> Path:
    return Path(town_root) / ".models" / STATE_FILE


def _load(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _beads(town_root: Path, beads_dir: Path | None):
    from gt_ext.gastown.bd import Bd
    from gt_ext.gastown.town import Town

    d = beads_dir or Town(Path(town_root)).beads_dir
    if d is None:
        raise GtExtError(f"town {town_root} has no beads folder (.beads) for retrain requests")
    return Bd(d)


def open_request(town_root: str | os.PathLike, role: str, beads_dir: Path | None = None) -> str | None:
    """The role's retrain request bead if it is still open, else None."""
    last = _load(_state_path(Path(town_root))).get(role) or {}
    if not last.get("bead"):
        return None
    try:
        issue = _beads(Path(town_root), beads_dir).show(last["bead"])
    except GtExtError:
        return None  # deleted: nothing open
    return None if issue.status in CLOSED else issue.id


def request_retrain(town_root: str | os.PathLike, role: str, reasons: list[str],
                    cooldown_s: float = DEFAULT_COOLDOWN_S, beads_dir: Path | None = None,
                    now: float | None = None) -> RetrainRequest:
    """Open a retrain job bead for `role` unless one is open or the last was opened within
    `cooldown_s`; see the module docstring."""
    from gt_ext.registry.locks import file_lock

    root = Path(town_root)
    now = time.time() if now is None else now
    path = _state_path(root)
    with file_lock(path.with_suffix(".lock")):
        state = _load(path)
        last = state.get(role) or {}
        if (bead := open_request(root, role, beads_dir)) is not None:
            return RetrainRequest(role, skipped=f"retrain job {bead} is still open", open_bead=bead)
        if last.get("time") and now - float(last["time"]) < cooldown_s:
            wait_h = (cooldown_s - (now - float(last["time"]))) / 3600
            return RetrainRequest(role, skipped=f"cooldown: the last retrain job ({last.get('bead')}) was opened "
                                                f"{(now - float(last['time'])) / 3600:.1f} h ago; next in {wait_h:.1f} h")
        bd = _beads(root, beads_dir)
        why = "\n".join(f"- {r}" for r in reasons) or "- (no reason given)"
        issue = bd.create(
            f"retrain the {role} model: {reasons[0] if reasons else 'stale'}"[:200],
            description=(f"The deployed {role} model has gone stale:\n{why}\n\n"
                         f"Run: gt formula run improve-role --set role={role}\n"
                         "(collect -> stale check -> train -> eval -> register). Deploying the new "
                         "version stays a deliberate `gt model deploy`."),
            issue_type="task", priority=2, labels=["gt-ext", LABEL, f"role:{role}"])
        state[role] = {"bead": issue.id, "time": now, "reasons": reasons}
        atomic_write_json(path, state)
        log.info("opened retrain job %s for %s: %s", issue.id, role, "; ".join(reasons))
        return RetrainRequest(role, bead=issue.id)


def close_request(town_root: str | os.PathLike, role: str, reason: str, beads_dir: Path | None = None) -> str | None:
    """Close the role's open retrain request (a retrained version was registered); returns its id."""
    bead = open_request(town_root, role, beads_dir)
    if bead is None:
        return None
    _beads(Path(town_root), beads_dir).close(bead, reason=reason)
    return bead


__all__ = ["DEFAULT_COOLDOWN_S", "LABEL", "RetrainRequest", "close_request", "open_request", "request_retrain"]
