"""When to train DPO again: enough new task-level pairs since the role's last DPO model.

    due = dpo_due("polecat", rig="demo")   # DpoDue(due, new_pairs, threshold, last_dpo, ...)
    if due.due:
        start_dpo("polecat", rig="demo")    # gt formula run train-role-model --set role=polecat --set mode=dpo --set rig=demo

`dpo_due` only reads (corpus store and registry); `start_dpo` runs the formula as a subprocess in a
fresh job folder. The threshold is `prefs.dpo_threshold` in `<town>/settings/gt-ext.json` (this
project's own settings file), else DEFAULT_DPO_THRESHOLD.

The trigger is the town's retrain mechanism (`gt_ext.loop.retrain`): when a pick stores a pair and
the role's new pairs reach the threshold, `request_dpo` opens ONE retrain job bead for the role
(none while one is open, none within the cooldown of `stale.cooldown_hours`, none with
`stale.retrain` false) naming `gt formula run train-role-model --set role=R --set mode=dpo
--set rig=RIG`. `gt-ext prefs due --run` starts that run at once.

Pairs are counted in the scope the formula's corpus export takes for the same rig (the rig's own
pairs, town-level ones, those of rigs that share theirs), so a due run always has them to train on.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from gt_ext.errors import GtExtError
from gt_ext.roles import check_role

log = logging.getLogger(__name__)

DEFAULT_DPO_THRESHOLD = 20
SETTINGS_FILE = "gt-ext.json"


@dataclass
class DpoDue:
    """Whether a DPO run of `role` is due, and the figures behind the verdict."""

    role: str
    rig: str | None  # the export scope the pairs were counted in (None: town-level)
    due: bool
    new_pairs: int
    threshold: int
    total_pairs: int
    last_dpo: str | None  # registry ref of the role's newest DPO model
    last_dpo_created: str | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)


def dpo_threshold(town_root: Path | None) -> int:
    """`prefs.dpo_threshold` from `<town>/settings/gt-ext.json`, else the default."""
    p = Path(town_root) / "settings" / SETTINGS_FILE if town_root else None
    if p is None or not p.is_file():
        return DEFAULT_DPO_THRESHOLD
    try:
        value = (json.loads(p.read_text()).get("prefs") or {}).get("dpo_threshold", DEFAULT_DPO_THRESHOLD)
    except (json.JSONDecodeError, AttributeError) as e:
        raise GtExtError(f"{p}: unreadable ({e.__class__.__name__})") from None
    if not isinstance(value, int) or value < 1:
        raise GtExtError(f"{p}: prefs.dpo_threshold must be a positive integer")
    return value


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def last_dpo_model(registry: Any, role: str) -> Any | None:
    """The newest registered role model of `role` trained with mode dpo (None when none)."""
    dpo = [r for r in registry.list() if r.role == role and not r.task and (r.hyperparams or {}).get("mode") == "dpo"]
    return max(dpo, key=lambda r: (r.created, r.version)) if dpo else None


def dpo_due(role: str, town_root: Path | None = None, threshold: int | None = None, rig: str | None = None) -> DpoDue:
    """Count the active pairs of `role` in rig `rig`'s export scope stored after its last DPO model
    was registered."""
    from gt_ext.corpus.shards import Scope
    from gt_ext.corpus.store import Store
    from gt_ext.registry import Registry

    check_role(role)
    threshold = threshold if threshold is not None else dpo_threshold(town_root)
    if threshold < 1:
        raise GtExtError(f"--threshold {threshold}: must be 1 or more")
    with Registry.open(town_root) as reg:
        last = last_dpo_model(reg, role)
    since = _epoch(last.created) if last else None
    with Store.open(os.environ.get("GT_EXT_CORPUS") or None, town=town_root) as st:
        pairs = st.preferences(status="active", role=role)
        allowed = Scope(rig=rig).allowed(st, {p["rig"] for p in pairs if p.get("rig")})
        pairs = [p for p in pairs if allowed is None or (p.get("rig") or None) in allowed]
    total = len(pairs)
    new = sum(1 for p in pairs if since is None or p["created"] > since)
    return DpoDue(role=role, rig=rig, due=new >= threshold, new_pairs=new, threshold=threshold, total_pairs=total,
                  last_dpo=last.ref if last else None, last_dpo_created=last.created if last else None)


def dpo_command(role: str, rig: str | None) -> str:
    """The command line a person (or the mayor) runs to train DPO for `role` on rig `rig`'s pairs."""
    return f"gt formula run train-role-model --set role={role} --set mode=dpo" + (f" --set rig={rig}" if rig else "")


def request_dpo(town_root: Path, due: DpoDue) -> Any:
    """Open the role's retrain job bead for a due DPO run (a `RetrainRequest`; None when the town's
    `stale.retrain` setting turns requests off)."""
    from gt_ext.loop.retrain import request_retrain
    from gt_ext.loop.stale import load_config

    cfg = load_config(town_root)
    if not cfg.retrain:
        return None
    since = f"since {due.last_dpo}" if due.last_dpo else "and no DPO model yet"
    reason = f"{due.new_pairs} new task-level preference pairs {since} (threshold {due.threshold})"
    return request_retrain(town_root, due.role, [reason], cooldown_s=cfg.cooldown_hours * 3600,
                           run=dpo_command(due.role, due.rig))


def dpo_formula_argv(role: str, job_dir: Path, extra: dict[str, str] | None = None, rig: str | None = None) -> list[str]:
    """The command that trains DPO for `role` (on rig `rig`'s pairs) on top of its current model, in `job_dir`."""
    sets = {"role": role, "mode": "dpo", **({"rig": rig} if rig else {}), **(extra or {})}
    argv = [sys.executable, "-m", "gt_ext.cli", "formula", "run", "train-role-model"]
    for k, v in sets.items():
        argv += ["--set", f"{k}={v}"]
    return [*argv, "--job-dir", str(job_dir)]


def start_dpo(role: str, extra: dict[str, str] | None = None, job_dir: Path | None = None,
              rig: str | None = None) -> subprocess.CompletedProcess:
    """Run the DPO formula now (a fresh job folder each time: new pairs make a new job)."""
    from gt_ext.jobs.places import jobs_root

    job_dir = job_dir or jobs_root() / f"train-role-model-{role}-dpo-{time.strftime('%Y%m%d-%H%M%S')}"
    argv = dpo_formula_argv(role, job_dir, extra, rig)
    log.info("starting DPO for %s: %s", role, " ".join(argv))
    return subprocess.run(argv, check=False)
