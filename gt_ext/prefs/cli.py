"""`gt-ext prefs ...`: task-level preferences from A/B runs of one bead by two models."""

from __future__ import annotations

import json
from typing import Any

import typer

from gt_ext.errors import GtExtError

app = typer.Typer(
    help="Preference learning the Gas Town way: sling one bead to two models (each in its own Dolt and git "
         "branch), pick the better outcome (a person or the rules), and collect the pair for DPO.",
    no_args_is_help=True, add_completion=False)

JSON_OPT = typer.Option(False, "--json", help="Print JSON.")


def _town():
    from gt_ext.gastown.town import require_town

    return require_town()


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str))


def _summary(c) -> dict[str, Any]:  # noqa: ANN001 - Comparison
    d = c.to_dict()
    return {"id": c.id, "bead": c.bead, "rig": c.rig, "status": d["status"],
            "models": {lb: o.model for lb, o in c.outcomes.items()} or dict(zip("ab", c.models, strict=False)),
            "failures": {lb: o.failure_modes for lb, o in c.outcomes.items()},
            "winner": c.outcomes[c.decision.winner].model if c.decision else None,
            "picked_by": c.decision.by if c.decision else None, "created": c.created}


@app.command("sling")
def sling_cmd(
    bead: str = typer.Argument(..., help="The bead both models work on."),
    models: str = typer.Option(..., "--models", metavar="A,B", help="Two model references (registry NAME[:VER], "
                               "a run/export folder or base:<name>)."),
    rig: str = typer.Option(None, "--rig", help="The bead's rig (default: from its prefix)."),
    role: str = typer.Option("polecat", "--role", help="The role the agents play (GT_ROLE)."),
    timeout: float = typer.Option(600.0, "--timeout", help="Seconds each agent may work before it is stopped."),
    test: str = typer.Option(None, "--test", help="Test command run on the base commit and on each branch "
                             "(default: detected: make test, pytest, npm test, go test)."),
    no_tests: bool = typer.Option(False, "--no-tests", help="Run no tests."),
    max_steps: int = typer.Option(8, "--max-steps", help="Model replies (tool calls) per agent."),
    max_new_tokens: int = typer.Option(384, "--max-new-tokens", help="Tokens per model reply."),
    backend: str = typer.Option("auto", "--backend", help="auto, torch or llama.cpp (as node0-inference)."),
    quantize: str = typer.Option("int8", "--quantize", help="PyTorch backend: int8 or none (as node0-inference)."),
    json_out: bool = JSON_OPT,
) -> None:
    """Run BEAD with two models side by side, each in its own beads branch and git clone."""
    from gt_ext.prefs.sling import SlingOptions, sling

    if no_tests and test:
        raise GtExtError("--test and --no-tests exclude each other")
    opts = SlingOptions(role=role, timeout_s=timeout, test_cmd="" if no_tests else test, max_steps=max_steps,
                        max_new_tokens=max_new_tokens, backend=backend, quantize=quantize)
    cmp = sling(_town(), bead, [m for m in models.split(",")], rig=rig, opts=opts,
                echo=(lambda s: None) if json_out else (lambda s: print(s, flush=True)))
    if json_out:
        _print_json(cmp.to_dict())
    else:
        print(f"comparison {cmp.id}: pending; pick with `gt-ext prefs pick {cmp.id} --winner A|B` or `--auto`")


@app.command("pick")
def pick_cmd(
    task: str = typer.Argument(..., metavar="TASK", help="Comparison id (or the bead id of its newest comparison)."),
    winner: str = typer.Option(None, "--winner", help="The better side: its model reference, or a / b."),
    auto: bool = typer.Option(False, "--auto", help="Let the rules pick from the measured failure modes."),
    why: str = typer.Option("", "--why", help="Why (kept with the DPO pair's provenance)."),
    by: str = typer.Option(None, "--by", help="Who picks (default: BD_ACTOR, git author or the user name)."),
    json_out: bool = JSON_OPT,
) -> None:
    """Pick the winner: its branches merge (conflicts refused), the loser's are dropped, the pair goes to the corpus."""
    from gt_ext.prefs.pick import pick

    cmp = pick(_town(), task, winner=winner, auto=auto, why=why, person=by,
               echo=(lambda s: None) if json_out else print)
    if json_out:
        _print_json(cmp.to_dict())


@app.command("drop")
def drop_cmd(task: str = typer.Argument(..., metavar="TASK"), json_out: bool = JSON_OPT) -> None:
    """Abandon an undecided comparison: remove both sides' branches, merge nothing."""
    from gt_ext.prefs.pick import drop

    cmp = drop(_town(), task)
    if json_out:
        _print_json(cmp.to_dict())
    else:
        print(f"comparison {cmp.id} dropped: {', '.join(cmp.history[-1].get('removed') or []) or 'nothing left to remove'}")


@app.command("list")
def list_cmd(status: str = typer.Option(None, "--status", help="running, interrupted, pending, decided, dropped, failed."),
             json_out: bool = JSON_OPT) -> None:
    """Comparisons, oldest first: ID BEAD STATUS A B WINNER."""
    from gt_ext.prefs.record import PrefsStore

    rows = [_summary(c) for c in PrefsStore.for_town(_town().root).all()]
    if status:
        rows = [r for r in rows if r["status"] == status]
    if json_out:
        _print_json(rows)
        return
    if not rows:
        print("no comparisons")
        return
    print(f"{'ID':<22} {'BEAD':<14} {'STATUS':<12} {'A':<20} {'B':<20} WINNER")
    for r in rows:
        m = r["models"]
        print(f"{r['id']:<22} {r['bead']:<14} {r['status']:<12} {m.get('a', ''):<20} {m.get('b', ''):<20} "
              f"{r['winner'] or '-'}")


@app.command("show")
def show_cmd(task: str = typer.Argument(..., metavar="TASK"), json_out: bool = JSON_OPT) -> None:
    """One comparison: both outcomes side by side, the decision and what it merged."""
    from gt_ext.prefs.record import PrefsStore

    c = PrefsStore.for_town(_town().root).find(task)
    if json_out:
        _print_json(c.to_dict())
        return
    print(f"{c.id}: bead {c.bead} ({c.title}) in rig {c.rig}, role {c.role}, {c.to_dict()['status']}")
    print(f"base: git {c.base.get('git_branch')}@{c.base.get('git', '')[:10]}, beads main@{c.base.get('dolt', '')[:10]}")
    for lb, o in c.outcomes.items():
        t = o.tests or {}
        print(f"\n[{lb}] {o.model} ({o.model_ref})")
        print(f"  branches: beads {o.dolt_branch}, git {o.git_branch}")
        print(f"  ran {o.wall_s:.0f} s, exit {o.exit_code}{' (timed out)' if o.timed_out else ''}, "
              f"tokens in {o.tokens.get('input', 0)} out {o.tokens.get('output', 0)}")
        print(f"  bead: {(o.bead or {}).get('status', '?')}; new beads {len(o.beads_created)}, "
              f"new dependencies {len(o.dependencies_added)}, beads commits {o.dolt_commits}")
        print(f"  git: {len(o.commits)} commit(s); ended on {o.head_branch or 'a detached HEAD'}"
              + (f"; tests {t.get('cmd')!r}: base {t.get('base_rc')}, here {t.get('rc')}" if t.get("cmd") else ""))
        print(f"  commands: {len(o.commands)}" + (f" ({'; '.join(x[:60] for x in o.commands[:3])})" if o.commands else ""))
        print("  failures: " + ("; ".join(f"{f.mode} ({f.detail})" for f in o.failures) or "none"))
        print(f"  transcript: {o.transcript or '-'}")
    if c.decision:
        d = c.decision
        print(f"\ndecision: {d.winner} ({c.outcomes[d.winner].model}) by {d.by}"
              + (f", rule {d.rule}" if d.rule and d.rule != "manual" else "") + (f": {d.why}" if d.why else ""))
        print(f"  DPO pair: {d.pair_id or '-'} ({d.pair_note})")
        g, b = d.merge.get("git") or {}, d.merge.get("dolt") or {}
        print(f"  merged: git {g.get('commit', '')[:10]} ({g.get('message')}), beads {str(b.get('commit') or '')[:10]} "
              f"({b.get('message')})")
    for h in c.history:
        print(f"  history: {h.get('event')}: {json.dumps(h.get('result') or h.get('error') or h.get('removed'))[:200]}")


@app.command("due")
def due_cmd(role: str = typer.Option("polecat", "--role"),
            threshold: int = typer.Option(None, "--threshold", help="New pairs that make a DPO run due "
                                          "(default: prefs.dpo_threshold in settings/gt-ext.json, else 20)."),
            run: bool = typer.Option(False, "--run", help="Start `train-role-model --set mode=dpo` when due."),
            json_out: bool = JSON_OPT) -> None:
    """Is a DPO run of ROLE due: new task-level pairs since its last DPO model, against the threshold."""
    from gt_ext.gastown.town import find_town
    from gt_ext.prefs.trigger import dpo_due, start_dpo

    town = find_town()
    d = dpo_due(role, town.root if town else None, threshold)
    if json_out:
        _print_json(d.to_dict())
    else:
        print(f"{role}: {d.new_pairs} new pair(s) of {d.total_pairs} since {d.last_dpo or 'no DPO model yet'}; "
              f"threshold {d.threshold}: {'due' if d.due else 'not due'}")
    if run and d.due:
        res = start_dpo(role)
        if res.returncode != 0:
            raise GtExtError(f"DPO formula for {role} exited {res.returncode}", exit_code=1)
