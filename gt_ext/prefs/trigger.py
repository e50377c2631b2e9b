"""When to train DPO again: enough new task-level pairs since the role's last DPO model.

    due = dpo_due("polecat")            # DpoDue(due, new_pairs, threshold, last_dpo, ...)
    if due.due:
        start_dpo("polecat")             # gt formula run train-role-model --set role=polecat --set mode=dpo

`dpo_due` only reads (corpus store and registry); `start_dpo` runs the formula as a subprocess in a
fresh job folder. The threshold is `prefs.dpo_threshold` in `<town>/settings/gt-ext.json` (this
project's own settings file), else DEFAULT_DPO_THRESHOLD. A staleness / retrain mechanism calls
these two functions; nothing here runs on its own.
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


def dpo_due(role: str, town_root: Path | None = None, threshold: int | None = None) -> DpoDue:
    """Count the active pairs of `role` stored after its last DPO model was registered."""
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
        total = len(st.preferences(status="active", role=role))
        new = len(st.preferences(status="active", role=role, since=since))
    return DpoDue(role=role, due=new >= threshold, new_pairs=new, threshold=threshold, total_pairs=total,
                  last_dpo=last.ref if last else None, last_dpo_created=last.created if last else None)


def dpo_formula_argv(role: str, job_dir: Path, extra: dict[str, str] | None = None) -> list[str]:
    """The command that trains DPO for `role` on top of its current model, in `job_dir`."""
    sets = {"role": role, "mode": "dpo", **(extra or {})}
    argv = [sys.executable, "-m", "gt_ext.cli", "formula", "run", "train-role-model"]
    for k, v in sets.items():
        argv += ["--set", f"{k}={v}"]
    return [*argv, "--job-dir", str(job_dir)]


def start_dpo(role: str, extra: dict[str, str] | None = None, job_dir: Path | None = None) -> subprocess.CompletedProcess:
    """Run the DPO formula now (a fresh job folder each time: new pairs make a new job)."""
    from gt_ext.jobs.places import jobs_root

    job_dir = job_dir or jobs_root() / f"train-role-model-{role}-dpo-{time.strftime('%Y%m%d-%H%M%S')}"
    argv = dpo_formula_argv(role, job_dir, extra)
    log.info("starting DPO for %s: %s", role, " ".join(argv))
    return subprocess.run(argv, check=False)
