"""The deployment gate: which recorded evals count for a model version, and what deploy requires.

Every eval recorded for a version is kept in its `eval_runs` list (`eval_entry`). One counts for
the gate ("gating") only when all of these hold:

- it is a full run of the suite (`run.full`: no `--limit`, no `--split`), so a smoke run is
  recorded as such and never gates;
- it decoded freely (`run.decoding`), as the deployed agent does: a `--constrain` run, whose
  answers could only take listed action names, is recorded but never gates;
- it was produced by this project for this version: run through the registry ref, or found as an
  eval file in the registered folder, signed by this user's `gt-ext eval run`
  (`gt_ext.evals.provenance`) and verified against the version's own file hashes
  (`verify_model_files`); an unsigned or edited file, or one whose hashes do not match or that
  carries none, is kept as untrusted;
- it scored the role's gating suite (`gt_ext.evals.suite.role_suite`: the town's choice in
  `<town>/settings/gt-ext.json` `{"evals": {"gate_suites": {ROLE: PATH}}}`, else the role's formula
  patrol suite `builtin:ROLE-patrol`, else `builtin:ROLE`), identified by the hash of the suite's
  files, so an edited or foreign suite does not count.

`deploy_problems` is what `gt model deploy` checks: the newest gating eval must pass its gate, on
the suite as it is today. `--force --reason TEXT` overrides it (recorded in the deployment history).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from gt_ext.errors import GtExtError
from gt_ext.registry.db import ModelRecord


def gating_suite(role: str, town_root: Path | None) -> str:
    """The suite spec whose full run gates `role` (gt_ext.evals.suite.role_suite)."""
    from gt_ext.evals.suite import role_suite

    return role_suite(role, town_root)


def suite_hash_of(spec: str) -> str | None:
    """Hash of the suite's files today, or None when the suite does not exist."""
    from gt_ext.evals import suite as suite_mod

    try:
        return suite_mod.suite_hash(suite_mod.resolve_suite_dir(spec))
    except GtExtError:
        return None


def verify_model_files(result: dict[str, Any], manifest_files: dict[str, str]) -> str | None:
    """None when the result's `run.model_files` all match the version's manifest; else why not."""
    files = (result.get("run") or {}).get("model_files") or {}
    if not files:
        return "it names no model file hashes"
    for rel, sha in sorted(files.items()):
        have = manifest_files.get(rel)
        if have is None:
            return f"it scored {rel}, which this version does not have"
        if have != sha:
            return f"{rel} differs from the file it scored"
    return None


def eval_entry(result: dict[str, Any], rec: ModelRecord, town_root: Path | None, source: str,
               untrusted: str | None = None, file: str | None = None) -> dict[str, Any]:
    """The `eval_runs` entry for one result, with whether it gates and, when not, why."""
    run = result.get("run") or {}
    gate = result.get("gate") or {}
    want = gating_suite(rec.role, town_root)
    entry = {
        "suite": result.get("suite"), "suite_spec": run.get("suite_spec"), "suite_hash": run.get("suite_hash"),
        "full": bool(run.get("full")), "limit": run.get("limit"), "split": run.get("split"),
        "composite": result.get("composite"), "deployable": bool(gate.get("deployable")),
        "role": result.get("role"), "k": result.get("k"), "source": source, "file": file,
        "trusted": untrusted is None, "recorded": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "gating_suite": want,
    }
    if untrusted is not None:
        why = f"untrusted: {untrusted}"
    elif not run:
        why = "no run record (not produced by gt-ext eval run)"
    elif not entry["full"]:
        what = f"--limit {run['limit']}" if run.get("limit") else f"--split {run.get('split')}"
        why = f"partial run ({what}: {run.get('run_tasks')} of {run.get('suite_tasks')} tasks), a smoke run"
    elif run.get("decoding", "free") != "free":
        why = f"{run.get('decoding')} decoding (--constrain); the gate takes free decoding, as the agent runs"
    elif result.get("role") not in (None, rec.role):
        why = f"scored as role {result.get('role')}, the model is {rec.role}"
    elif run.get("suite_hash") != suite_hash_of(want):
        why = f"not a run of the role's gating suite {want} as it is now"
    else:
        why = None
    entry["gating"] = why is None
    entry["why_not_gating"] = why
    return entry


def latest_gating(rec: ModelRecord) -> dict[str, Any] | None:
    """The newest eval entry that counts for the gate."""
    return next((e for e in reversed(rec.eval_runs or []) if e.get("gating")), None)


def deploy_problems(rec: ModelRecord, town_root: Path | None) -> list[str]:
    """Why the gate refuses to deploy `rec` ([] when its newest gating eval passed on the current suite)."""
    want = gating_suite(rec.role, town_root)
    current = suite_hash_of(want)
    if current is None:
        return [f"the gating suite of role {rec.role}, {want}, does not exist"]
    entry = latest_gating(rec)
    if entry is None:
        others = len(rec.eval_runs or [])
        return [f"{rec.ref} has no full eval of {want}" + (f" ({others} other eval(s) recorded: partial or untrusted)"
                                                             if others else "")
                + f"; run `gt-ext eval run --model {rec.ref} --suite {want}`"]
    if entry.get("suite_hash") != current:
        return [f"{rec.ref} was scored on an earlier version of {want}; run it again"]
    if not entry.get("deployable"):
        return [f"{rec.ref} failed its eval gate on {want} (composite {entry.get('composite')})"]
    return []


__all__ = ["deploy_problems", "eval_entry", "gating_suite", "latest_gating", "suite_hash_of", "verify_model_files"]
