"""`gt-ext formula list|show|run`: this project's formulas (also `gt formula run NAME k=v` via the shim)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from gt_ext.errors import GtExtError

app = typer.Typer(help="Run this project's formulas (improve-role, train-role-model, corpus-collect, eval-suite).",
                  no_args_is_help=True)


def parse_assignments(pairs: list[str]) -> dict[str, str]:
    """`k=v` strings to a dict; anything else is a one-line error."""
    out: dict[str, str] = {}
    for p in pairs:
        key, sep, value = p.partition("=")
        if not sep or not key:
            raise GtExtError(f"expected key=value, got {p!r}")
        out[key.strip()] = value
    return out


def _load(name: str):
    from gt_ext.orchestrate.formula import find_formula, list_formulas

    f = find_formula(name)
    if f is None:
        names = ", ".join(p.name.removesuffix(".formula.toml") for p in list_formulas())
        raise GtExtError(f"unknown formula {name!r}: this project's formulas are {names}")
    return f


@app.command("list")
def list_cmd(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """List this project's formulas."""
    from gt_ext.orchestrate.formula import list_formulas, load_formula

    rows = []
    for p in list_formulas():
        f = load_formula(p)
        first = f.description.strip().splitlines()[0] if f.description.strip() else ""
        rows.append({"name": f.name, "steps": [s.id for s in f.ordered_steps()], "vars": sorted(f.vars), "description": first})
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    for r in rows:
        print(f"{r['name']:<18} {' -> '.join(r['steps'])}")


@app.command("show")
def show_cmd(name: str, as_json: bool = typer.Option(False, "--json")) -> None:
    """Show a formula's variables and steps."""
    f = _load(name)
    if as_json:
        print(json.dumps({
            "name": f.name, "path": str(f.path), "type": f.type, "version": f.version,
            "vars": {k: {"required": v.required, "default": v.default, "description": v.description} for k, v in f.vars.items()},
            "steps": [{"id": s.id, "title": s.title, "needs": list(s.needs), "run": s.run, "job_status": s.job_status,
                       "exit_statuses": {str(c): st for c, st in s.exit_statuses}} for s in f.ordered_steps()],
        }, indent=2))
        return
    print(f"{f.name} ({f.type} v{f.version})  {f.path}")
    print("vars:")
    for v in f.vars.values():
        req = "required" if v.required else f"default {v.default!r}"
        print(f"  {v.name:<12} {req:<34} {v.description}")
    print("steps:")
    for s in f.ordered_steps():
        needs = f" (after {', '.join(s.needs)})" if s.needs else ""
        print(f"  {s.id:<14} {s.title}{needs}\n      $ {s.run}")


@app.command("run")
def run_cmd(
    name: str = typer.Argument(..., help="Formula name, e.g. train-role-model"),
    assignments: list[str] = typer.Argument(None, help="Variables as key=value (same as --set)"),
    set_: list[str] = typer.Option(None, "--set", help="Variable as key=value; repeatable"),
    job_dir: Path = typer.Option(None, "--job-dir", help="Job folder (default: derived from formula and variables, so a rerun resumes)"),
    no_bead: bool = typer.Option(False, "--no-bead", help="Do not track the run as a job bead"),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the resolved steps and commands; run nothing"),
) -> None:
    """Run a formula's steps in dependency order; rerunning the same request resumes it."""
    from gt_ext.orchestrate.formula import substitute
    from gt_ext.orchestrate.runner import job_dir_for, next_job_dir, run_formula, validate_vars

    f = _load(name)
    given = {**parse_assignments(assignments or []), **parse_assignments(set_ or [])}
    from gt_ext.jobs.places import jobs_root

    jd = job_dir or next_job_dir(f, job_dir_for(f, given, jobs_root()))
    values = f.resolve_vars(given, {"job_dir": str(jd), "formula": f.name})
    validate_vars(values)  # before any side effect: a bad role is a one-line error, nothing written
    if dry_run or not (jd / "formula-state.json").exists():
        from gt_ext.orchestrate.resolvers import resolve_extra

        values = resolve_extra(f, values)  # e.g. mode=dpo with no role model to start from: nothing written
    if dry_run:
        for s in f.ordered_steps():
            print(f"{s.id}: {substitute(s.run or '', values)}")
        return
    tracker, env = None, {}
    if not no_bead:
        from gt_ext.jobs.bead import open_job

        tracker = open_job(f, given, jd)
        env = {"GT_EXT_JOB_BEAD": tracker.bead_id, "GT_EXT_JOB_BEADS_DIR": str(tracker.bd.beads_dir)}
    result = run_formula(f, given, jd, tracker=tracker, echo=lambda s: print(s, flush=True), env=env)
    print(f"formula {f.name}: ran {len(result.ran)} step(s), skipped {len(result.skipped)}; job folder {jd}")
    if result.status != "done":
        print(f"job ended {result.status}: {result.reason}")
    if tracker is not None:
        print(f"job bead: {tracker.bead_id} ({result.status})")
