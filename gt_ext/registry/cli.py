"""`gt-ext model ...` (and `gt model ...` through the shim): list, show, adapters, register,
deploy, rollback, prune, history. Every command takes `--json`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

app = typer.Typer(
    help="Model registry: registered role models and task adapters, deployment to roles, rollback, prune.",
    no_args_is_help=True,
    add_completion=False,
)

JSON_OPT = typer.Option(False, "--json", help="Print JSON instead of a table.")


def _open():
    from gt_ext.registry import Registry

    return Registry.open()


def _print_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))


def _table(headers: list[str], rows: list[list[str]]) -> str:
    """Plain aligned columns, like gt's own listings."""
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


def _eval_str(rec) -> str:
    return "-" if rec.eval_composite is None else f"{rec.eval_composite:.1f}"


def _status(rec, where: list[str]) -> str:
    if where:
        return "deployed: " + ", ".join(where)
    if rec.gate is None and rec.eval_runs:
        return "no gating eval"  # only smoke runs or untrusted results so far
    return {"pass": "ready", "fail": "gate failed"}.get(rec.gate or "", "not evaluated")


@app.command("list")
def list_cmd(json_out: bool = JSON_OPT) -> None:
    """List registered role models: NAME ROLE BASE VER EVAL STATUS."""
    with _open() as reg:
        live = reg.live()
        recs = [r for r in reg.list() if not r.task]
        if json_out:
            _print_json([{**r.to_dict(), "deployed_to": reg.deployed_to(r, live),
                          "status": _status(r, reg.deployed_to(r, live))} for r in recs])
            return
        rows = [[r.name, r.role, r.base_model, f"v{r.version}", _eval_str(r), _status(r, reg.deployed_to(r, live))]
                for r in recs]
        typer.echo(_table(["NAME", "ROLE", "BASE", "VER", "EVAL", "STATUS"], rows) if rows else "no models registered")


@app.command("show")
def show_cmd(ref: str = typer.Argument(..., metavar="NAME[:VER]", help="Model name, optionally :VER."),
             json_out: bool = JSON_OPT) -> None:
    """Show one model version in full."""
    with _open() as reg:
        rec = reg.get(ref)
        where = reg.deployed_to(rec, reg.live())
        adapters = [a.ref for a in reg.adapters() if rec.base_model in (a.compatible or [a.base_model])
                    and a.role == rec.role]
        lineage = reg.lineage(rec)
        run = run_of(rec)
        forced = [h for h in reg.history() if h.forced and h.model == rec.ref]
        if json_out:
            _print_json({**rec.to_dict(), "deployed_to": where, "adapters": adapters, "status": _status(rec, where),
                         "forced_deploys": [h.to_dict() for h in forced], "lineage": lineage,
                         "run": str(run) if run else None})
            return
        lora = rec.hyperparams.get("lora") if isinstance(rec.hyperparams.get("lora"), dict) else {}
        cats = ", ".join(f"{c} {v.get('score', '?')}" for c, v in sorted(rec.eval_categories.items()))
        lines = [
            ("Name", f"{rec.name}:v{rec.version}" + (f"  (task adapter: {rec.task})" if rec.task else "")),
            ("Role", rec.role),
            ("Base", rec.base_model),
            ("LoRA", f"r={rec.lora_rank}" + (f" alpha={lora.get('alpha')}" if lora.get("alpha") else "")
             if rec.lora_rank else "-"),
            ("Trained", rec.created + (f" from {rec.parent}" if rec.parent else "")
             + (f"  ({rec.hyperparams.get('mode')})" if rec.hyperparams.get("mode") else "")),
            ("Lineage", " -> ".join(lineage) if len(lineage) > 1 else "-"),
            ("Run", f"{run}  (gt-ext runs show {rec.ref})" if run else "-"),
            ("Corpus", f"{(rec.corpus_hash or '-')[:16]}  {rec.examples} examples"),
            ("Eval score", f"{_eval_str(rec)}" + (f"  ({cats})" if cats else "") + (f"  gate {rec.gate}" if rec.gate else "")),
            ("DPO pairs", str(rec.dpo_pairs)),
            ("Adapters", ", ".join(adapters) or "-"),
            ("Deployed to", ", ".join(where) or "-"),
            ("Status", _status(rec, where)),
            ("Path", str(rec.path)),
        ]
        for k, v in lines:
            typer.echo(f"{k + ':':<13}{v}")
        if rec.eval_runs:
            typer.echo("Evals:")
            for e in rec.eval_runs:
                verdict = "pass" if e.get("deployable") else "fail"
                kind = "gating" if e.get("gating") else f"not gating: {e.get('why_not_gating')}"
                typer.echo(f"  {e.get('recorded', '')}  {e.get('suite')}  composite {e.get('composite')}  "
                           f"{verdict}  ({e.get('source')}; {kind})")
        for h in forced:
            typer.echo(f"Forced:      {h.action} to {h.role}@{h.rig or 'town'} at {h.time} by {h.actor}: {h.reason}")


def run_of(rec) -> Path | None:  # noqa: ANN001 - ModelRecord
    """The training run a version came from: the run folder an export names (`source_run`) when it
    is still there, else the version folder itself (it holds the run's run.json)."""
    try:
        src = json.loads((rec.path / "manifest.json").read_text()).get("source_run")
    except (OSError, json.JSONDecodeError):
        src = None
    if src and (Path(src) / "run.json").is_file():
        return Path(src)
    return rec.path if (rec.path / "run.json").is_file() else None


@app.command("adapters")
def adapters_cmd(json_out: bool = JSON_OPT) -> None:
    """List task adapters: NAME TASK VER COMPATIBLE WITH."""
    with _open() as reg:
        recs = reg.adapters()
        if json_out:
            _print_json([r.to_dict() for r in recs])
            return
        rows = [[r.name, r.task or "", f"v{r.version}", ", ".join(r.compatible)] for r in recs]
        typer.echo(_table(["NAME", "TASK", "VER", "COMPATIBLE WITH"], rows) if rows else "no task adapters registered")


@app.command("register")
def register_cmd(src: str = typer.Argument(..., metavar="RUN_OR_EXPORT_DIR", help="A run folder or an export folder."),
                 name: str = typer.Option(None, "--name", help="Model name (default: the role, or ROLE-TASK)."),
                 parent: str = typer.Option(None, "--parent", metavar="NAME:VER",
                                            help="The registered model it was trained on top of (lineage; "
                                                 "default: found from the run)."),
                 json_out: bool = JSON_OPT) -> None:
    """Register a run or export folder as the next version of a model."""
    from tqdm import tqdm

    with _open() as reg, tqdm(total=0, unit="B", unit_scale=True, desc="copying", leave=False,
                              disable=json_out or None) as bar:
        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        rec = reg.register(src, name=name, progress=progress, parent=(parent or "").strip() or None)
        if json_out:
            _print_json(rec.to_dict())
        else:
            typer.echo(f"registered {rec.name}:v{rec.version} ({rec.role}, base {rec.base_model}) at {rec.path}")


@app.command("deploy")
def deploy_cmd(ref: str = typer.Argument(..., metavar="NAME[:VER]"),
               role: str = typer.Option(None, "--role", help="Role to serve (default: the model's role)."),
               rig: str = typer.Option(None, "--rig", help="Write this rig's settings instead of the town's."),
               adapters: str = typer.Option("", "--adapters", help="Task adapters to load with it: NAME[:VER],..."),
               force: bool = typer.Option(False, "--force",
                                          help="Deploy without a passing full eval of the role's suite, or out of "
                                               "rollout order; needs --reason, recorded in the registry."),
               reason: str = typer.Option("", "--reason", help="Why (required with --force); kept in the "
                                          "deployment history and shown by `gt model show`."),
               rag: bool = typer.Option(True, "--rag/--no-rag",
                                        help="Give the agent the town's RAG context with every prompt, within the "
                                             "role's token budget (default), or not."),
               json_out: bool = JSON_OPT) -> None:
    """Point a role at a model: writes agents["node0-ROLE"] and role_agents[ROLE] in gt settings.

    Refused unless the model's newest full run of its role's gating suite (builtin:ROLE) passed
    the gate: a --limit smoke run, an untrusted eval file or no eval at all does not count."""
    from gt_ext.errors import GtExtError

    if force and not reason.strip():
        raise GtExtError("--force needs --reason TEXT (it is recorded in the registry)")
    with _open() as reg:
        res = reg.deploy(ref, role=role, rig=rig, force_reason=reason if force else None,
                         adapters=[a for a in adapters.split(",") if a], reason=reason, rag=rag)
        if rag and reg.town is not None:
            from gt_ext.rag.retrieve import index_exists

            if not index_exists(reg.town.root):  # the agent answers without context until there is one
                res.warnings.append("the town has no RAG index yet: build it with `gt-ext rag reindex` "
                                    "(`gt-ext hooks install` keeps it fresh afterwards)")
        if json_out:
            _print_json(res.to_dict())
            return
        for w in res.warnings:
            typer.echo(f"warning: {w}", err=True)
        e = res.entry
        typer.echo(f"deployed {e.model} to {e.role} in {e.rig or 'town'} settings ({res.settings_path}); "
                   f"was {e.before.get('model') or e.before.get('role_agent') or 'default agent'}")


@app.command("rollback")
def rollback_cmd(role: str = typer.Argument(..., metavar="ROLE"),
                 rig: str = typer.Option(None, "--rig", help="Roll back this rig's settings instead of the town's."),
                 json_out: bool = JSON_OPT) -> None:
    """Restore a role's agent to what it was before its last deployment."""
    with _open() as reg:
        res = reg.rollback(role, rig=rig)
        if json_out:
            _print_json(res.to_dict())
            return
        e = res.entry
        typer.echo(f"rolled back {e.role} in {e.rig or 'town'} settings: now "
                   f"{e.after.get('model') or e.after.get('role_agent') or 'default agent'}")


@app.command("prune")
def prune_cmd(keep: int = typer.Option(3, "--keep", help="Newest versions of each model to keep."),
              dry_run: bool = typer.Option(False, "--dry-run", help="Only say what would be deleted."),
              json_out: bool = JSON_OPT) -> None:
    """Delete old model versions (files and records); never a deployed one nor the last good one."""
    with _open() as reg:
        plan = reg.prune(keep=keep, dry_run=dry_run)
        if json_out:
            _print_json({"dry_run": dry_run, "deleted": [r.ref for r in plan.delete],
                         "kept": [{"ref": r.ref, "why": why} for r, why in plan.keep]})
            return
        verb = "would delete" if dry_run else "deleted"
        for r in plan.delete:
            typer.echo(f"{verb} {r.name}:v{r.version}  {r.path}")
        for r, why in plan.keep:
            typer.echo(f"kept {r.name}:v{r.version}  ({why})")
        if not plan.delete:
            typer.echo("nothing to prune")


@app.command("history")
def history_cmd(role: str = typer.Option(None, "--role"), rig: str = typer.Option(None, "--rig", help="'' = town"),
                json_out: bool = JSON_OPT) -> None:
    """The append-only deployment history: ID WHEN WHO ACTION ROLE WHERE FROM TO WHY."""
    with _open() as reg:
        hist = reg.history(role=role, rig=rig)
        if json_out:
            _print_json([h.to_dict() for h in hist])
            return
        rows = [[str(h.id), h.time, h.actor, h.action + (" (forced)" if h.forced else ""), h.role, h.rig or "town",
                 h.before.get("model") or h.before.get("role_agent") or "-",
                 h.after.get("model") or h.after.get("role_agent") or "-", h.reason or ""] for h in hist]
        typer.echo(_table(["ID", "WHEN", "WHO", "ACTION", "ROLE", "WHERE", "FROM", "TO", "WHY"], rows)
                   if rows else "no deployments yet")


@app.command("stale")
def stale_cmd(role: str = typer.Argument(None, metavar="[ROLE]", help="Only this role's deployed models."),
              retrain: bool = typer.Option(None, "--retrain/--no-retrain", show_default=False,
                                           help="Open a retrain job bead for a stale model (default: as the town's "
                                                "settings say, on unless \"stale\": {\"retrain\": false})."),
              loss: bool = typer.Option(True, "--loss/--no-loss",
                                        help="Measure the deployed model's loss on the new corpus examples."),
              decision: str = typer.Option(None, "--decision", metavar="FILE",
                                           help="Also write {\"retrain\": bool, ...} to FILE (the improve-role formula reads it)."),
              json_out: bool = JSON_OPT) -> None:
    """Is each deployed model still trained on the town's conventions? Changed items with a diff
    summary, new corpus examples, loss on them vs validation loss, a verdict; a stale model gets
    one retrain job bead per role (with a cooldown). Thresholds: settings/gt-ext.json "stale"."""
    from pathlib import Path

    from gt_ext.gastown.town import require_town
    from gt_ext.loop.stale import NothingDeployed, check, needs_retrain

    if role:
        from gt_ext.roles import check_role

        check_role(role)
    town = require_town()
    try:
        reports = check(town.root, role, retrain=retrain, loss=loss)
    except NothingDeployed as e:
        if not decision:
            raise
        from gt_ext.atomic import atomic_write_json

        atomic_write_json(Path(decision), {"retrain": True, "role": role, "reason": str(e), "reports": []})
        typer.echo(f"{e}: a first model is trained")
        return
    rows = [r.to_dict() for r in reports]
    if decision:
        from gt_ext.atomic import atomic_write_json

        atomic_write_json(Path(decision), {"retrain": needs_retrain(reports), "role": role, "reports": rows})
    if json_out:
        _print_json(rows)
        return
    for r in reports:
        where = f"{r.role}@{r.rig or 'town'}"
        head = f"{where}  model {r.model}  trained {_age(r.trained)}  verdict {r.verdict.upper()}"
        if r.verdict != "unknown":
            head += f" (score {r.score:g}, threshold {r.threshold:g})"
        typer.echo(head)
        if r.verdict == "unknown":
            for why in r.reasons:
                typer.echo(f"  {why}")
        for c in r.changed:
            typer.echo(f"  {c['change']}: {c['key']}  {c.get('summary', '')}")
        for c in r.reverted:
            typer.echo(f"  reverted: {c['key']}  {c.get('summary', '')}")
        for c in r.unreadable:
            typer.echo(f"  unreadable: {c['key']}  {c.get('summary', '')}")
        if r.verdict != "unknown":
            own = f" (+{r.new_self_outputs} served by node0 models, not counted)" if r.new_self_outputs else ""
            typer.echo(f"  corpus: {r.new_examples} new examples since training{own}; {r.trained_examples} trained on")
            lo = r.loss or {}
            if lo.get("new") is not None:
                typer.echo(f"  loss on {lo['examples']} new examples: {lo['new']:.4f} vs validation {lo['val']:.4f} "
                           f"({lo['ratio']:.2f}x)")
        if r.candidate:
            typer.echo(f"  candidate: {r.candidate} is registered and fresh: `gt model deploy {r.candidate}`")
        if r.retrain.get("bead"):
            typer.echo(f"  retrain: opened job bead {r.retrain['bead']} (`gt formula run improve-role --set role={r.role}`)")
        elif r.retrain.get("skipped"):
            typer.echo(f"  retrain: {r.retrain['skipped']}")


def _age(t: float | None) -> str:
    """'3.2 h ago' / '5 days ago' for an epoch time; '?' when unknown."""
    import time

    if not t:
        return "?"
    h = (time.time() - t) / 3600
    return f"{h:.1f} h ago" if h < 48 else f"{h / 24:.0f} days ago"
