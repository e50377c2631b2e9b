"""Run a formula's steps here, in dependency order, resumably.

A run lives in a job folder. `formula-state.json` there records the variables and the steps that
finished, so running the same formula with the same variables again skips what is done and goes on
from the first unfinished step (each step's own command resumes its own work, e.g. `train --resume`).
A job tracker (a training-job bead, see gt_ext.jobs) is told each step's status as it runs.

A step's exit code is a failure unless the step declares it an outcome (`exit_statuses`):
- `stopped`: the step stopped by design before finishing (training hit its time limit, with a
  checkpoint). The run pauses there, the step is not marked finished, the job is `stopped`, and a
  rerun resumes that step.
- `gate-failed`: the step finished, with a verdict (the eval gate failed). The run goes on (the
  model is still registered, for the record) and the job ends `gate-failed` instead of `done`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from gt_ext.atomic import atomic_write_json
from gt_ext.errors import GtExtError
from gt_ext.orchestrate.formula import Formula, substitute
from gt_ext.orchestrate.resolvers import resolve_extra
from gt_ext.roles import check_role

log = logging.getLogger(__name__)


# Exit outcomes a step may declare: the ones that pause the run, and the ones that set how it ends.
PAUSE_STATUSES = ("stopped",)
FINAL_STATUSES = ("gate-failed",)
OUTCOME_STATUSES = PAUSE_STATUSES + FINAL_STATUSES
EXIT_STOPPED = 3  # exit code of `formula run` / `job resume` when the job paused (resumable)


class JobTracker(Protocol):
    """What the runner tells about a job's progress (implemented by gt_ext.jobs.JobBead)."""

    def step_started(self, step_id: str, status: str | None) -> None: ...
    def step_finished(self, step_id: str) -> None: ...
    def failed(self, reason: str) -> None: ...
    def stopped(self, reason: str) -> None: ...
    def done(self, status: str = "done", reason: str = "") -> None: ...


@dataclass
class FormulaRunResult:
    """What happened: steps run now, steps skipped because a previous run finished them."""

    job_dir: Path
    vars: dict[str, str]
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    status: str = "done"  # how the job ended: done, or a final outcome such as gate-failed
    reason: str = ""


def job_dir_for(formula: Formula, given: dict[str, str], root: Path) -> Path:
    """Deterministic job folder for (formula, variables): the same request resumes the same job."""
    key = json.dumps({"formula": formula.name, "vars": dict(sorted(given.items()))}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:10]
    label = given.get("role", "")
    return root / f"{formula.name}{'-' + label if label else ''}-{digest}"


def next_job_dir(formula: Formula, job_dir: Path) -> Path:
    """`job_dir`, or for a `restart_when_done` formula whose job there finished every step, the
    first `<job_dir>-N` that did not: the same request then starts the next round, not nothing."""
    if not formula.restart_when_done:
        return job_dir
    steps = {s.id for s in formula.steps}
    cand, n = Path(job_dir), 1
    while True:
        state = cand / "formula-state.json"
        try:
            done = set(json.loads(state.read_text()).get("completed") or [])
        except (OSError, ValueError):
            return cand
        if not steps <= done:
            return cand
        n += 1
        cand = Path(f"{job_dir}-{n}")


def to_argv(command: str) -> list[str]:
    """Split a step command; `gt-ext` runs as this interpreter's module so the venv is always used."""
    argv = shlex.split(command)
    if argv and argv[0] == "gt-ext":
        argv = [sys.executable, "-m", "gt_ext.cli", *argv[1:]]
    return argv


def validate_vars(values: dict[str, str]) -> None:
    """Project-wide checks on well-known variable names."""
    if "role" in values:
        check_role(values["role"])


def run_formula(
    formula: Formula,
    given: dict[str, str],
    job_dir: Path,
    tracker: JobTracker | None = None,
    echo: Callable[[str], None] = lambda s: log.info(s),
    env: dict[str, str] | None = None,
) -> FormulaRunResult:
    """Run `formula` with variables `given` in `job_dir`, skipping steps a previous run finished."""
    job_dir = Path(job_dir)
    derived = {"job_dir": str(job_dir), "formula": formula.name}
    values = formula.resolve_vars(given, derived)
    validate_vars(values)
    steps = formula.ordered_steps()
    missing = [s.id for s in steps if not s.run]
    if missing:
        raise GtExtError(f"{formula.path}: step {missing[0]!r} has no 'run' command, so it cannot run here")

    state_path = job_dir / "formula-state.json"
    if state_path.exists():
        prev = json.loads(state_path.read_text())
        # Resolved values (resolvers.py) are taken from the first run, so a resume uses the same ones.
        if {k: (prev.get("vars") or {}).get(k) for k in values} != values:
            raise GtExtError(f"{job_dir}: holds a run with other variables; use another job folder")
        state = prev
        values = dict(prev["vars"])
    else:
        values = resolve_extra(formula, values)
        state = {"formula": formula.name, "vars": values, "completed": []}
    job_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(state_path, state)

    result = FormulaRunResult(job_dir=job_dir, vars=values)
    run_env = {**os.environ, **(env or {})}
    for i, step in enumerate(steps, 1):
        if step.id in state["completed"]:
            result.skipped.append(step.id)
            echo(f"[{i}/{len(steps)}] {step.id}: done in an earlier run, skipped")
            continue
        argv = to_argv(substitute(step.run or "", values))
        echo(f"[{i}/{len(steps)}] {step.id}: {step.title}")
        log.info("step %s: %s", step.id, shlex.join(argv))
        if tracker:
            tracker.step_started(step.id, step.job_status)
        t0 = time.monotonic()
        proc = subprocess.run(argv, env=run_env)
        result.seconds[step.id] = time.monotonic() - t0
        outcome = step.outcome(proc.returncode) if proc.returncode else None
        if outcome in PAUSE_STATUSES:
            reason = f"step {step.id} {outcome} (exit code {proc.returncode}); rerun to resume it"
            if tracker:
                tracker.stopped(reason)
            raise GtExtError(f"formula {formula.name}: {reason} (job folder {job_dir})", exit_code=EXIT_STOPPED)
        if proc.returncode != 0 and outcome is None:
            reason = f"step {step.id} failed with exit code {proc.returncode}"
            if tracker:
                tracker.failed(reason)
            raise GtExtError(f"formula {formula.name}: {reason} (job folder {job_dir}; rerun to resume)", exit_code=1)
        if outcome in FINAL_STATUSES:
            state["final"] = {"status": outcome, "reason": f"step {step.id}: {outcome}"}
            echo(f"[{i}/{len(steps)}] {step.id}: {outcome}; going on, the job will end {outcome}")
        state["completed"].append(step.id)
        atomic_write_json(state_path, state)
        result.ran.append(step.id)
        if tracker:
            tracker.step_finished(step.id)
    final = state.get("final") or {"status": "done", "reason": "all steps finished"}
    result.status, result.reason = final["status"], final["reason"]
    if tracker:
        tracker.done(result.status, result.reason)
    return result
