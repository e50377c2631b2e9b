"""`gt-ext job list|show|resume`: training jobs, which are beads."""

from __future__ import annotations

import json

import typer

from gt_ext.errors import GtExtError

app = typer.Typer(help="Training jobs (tracked as beads with custom statuses).", no_args_is_help=True)


def _bd():
    from gt_ext.gastown.bd import Bd
    from gt_ext.jobs.places import job_beads_dir

    return Bd(job_beads_dir())


@app.command("list")
def list_cmd(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """List training jobs, newest first."""
    from gt_ext.jobs.bead import JOB_LABEL

    issues = _bd().list(all=True, extra=["--label", JOB_LABEL])
    rows = []
    for i in sorted(issues, key=lambda x: x.created_at or "", reverse=True):
        meta = i.metadata if isinstance(i.metadata, dict) else {}
        rows.append({"id": i.id, "status": i.status, "formula": meta.get("formula"), "role": meta.get("role"),
                     "job_dir": meta.get("job_dir"), "corpus_hash": meta.get("corpus_hash"), "created": i.created_at})
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    if not rows:
        print("no training jobs")
        return
    print(f"{'ID':<14} {'STATUS':<18} {'FORMULA':<18} {'ROLE':<10} CREATED")
    for r in rows:
        print(f"{r['id']:<14} {r['status']:<18} {r['formula'] or '':<18} {r['role'] or '':<10} {r['created'] or ''}")


def _job(bd, job_id: str):
    """The job bead `job_id`: one line naming the id when there is no such bead, or it is no job."""
    from gt_ext.gastown.bd import BdError
    from gt_ext.jobs.bead import JOB_LABEL

    try:
        issue = bd.show(job_id)
    except BdError as e:
        raise GtExtError(f"no training job {job_id!r} in {bd.beads_dir} ({e.bd_message}); `gt-ext job list` shows "
                         "them") from None
    meta = issue.metadata if isinstance(issue.metadata, dict) else {}
    if JOB_LABEL not in (issue.labels or []) or not meta.get("formula") or not meta.get("job_dir"):
        raise GtExtError(f"{issue.id} is a bead ({issue.issue_type or 'issue'}: {issue.title[:60]!r}) but not a training "
                         f"job (no {JOB_LABEL} label with a formula and job folder)")
    return issue, meta


@app.command("show")
def show_cmd(job_id: str, as_json: bool = typer.Option(False, "--json")) -> None:
    """Show a job: status history, variables, job folder."""
    issue, meta = _job(_bd(), job_id)
    if as_json:
        print(json.dumps(issue.model_dump(), indent=2, default=str))
        return
    print(f"{issue.id}  {issue.title}\nstatus: {issue.status}\njob folder: {meta.get('job_dir')}")
    print("vars: " + ", ".join(f"{k}={v}" for k, v in (meta.get("vars") or {}).items()))
    print("history:")
    for h in meta.get("status_history") or []:
        print(f"  {h.get('time')}  {h.get('status'):<18} {h.get('note', '')}")


@app.command("resume")
def resume_cmd(job_id: str) -> None:
    """Continue a job from its last finished step (and the trainer from its last checkpoint)."""
    from pathlib import Path

    from gt_ext.jobs.bead import JobBead
    from gt_ext.orchestrate.formula import find_formula
    from gt_ext.orchestrate.runner import run_formula

    bd = _bd()
    issue, meta = _job(bd, job_id)
    f = find_formula(meta["formula"])
    if f is None:
        raise GtExtError(f"{job_id}: formula {meta['formula']!r} is not one of this project's formulas")
    job_dir = Path(meta["job_dir"])
    state_file = job_dir / "formula-state.json"
    if not state_file.is_file():
        raise GtExtError(f"{issue.id}: its job folder {job_dir} has no formula-state.json (moved or deleted?)")
    state = json.loads(state_file.read_text())
    declared = {k: v for k, v in state["vars"].items() if k in f.vars}
    tracker = JobBead(bd, issue.id, job_dir, meta)
    env = {"GT_EXT_JOB_BEAD": issue.id, "GT_EXT_JOB_BEADS_DIR": str(bd.beads_dir)}
    res = run_formula(f, declared, job_dir, tracker=tracker, echo=lambda s: print(s, flush=True), env=env)
    print(f"job {issue.id}: ran {len(res.ran)} step(s), skipped {len(res.skipped)}; {res.status}")
