"""`gt-ext runs list|show|compare`: experiment tracking over local, swarm and pipeline runs."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import typer

from gt_ext.errors import GtExtError

log = logging.getLogger(__name__)

app = typer.Typer(help="Training runs side by side: configs, corpus, speed, losses, evals, registry versions.",
                  no_args_is_help=True, add_completion=False)

JSON_OPT = typer.Option(False, "--json", help="Print JSON.")
ROOT_OPT = typer.Option(None, "--root", help="Also look for runs under this folder (repeatable).")


def _load(roots: list[Path] | None):  # noqa: ANN202
    """(runs, registry or None). The registry is optional: without one, nothing shows as registered."""
    from gt_ext.runs.discover import attach_registry, default_roots, discover

    runs = discover([*default_roots(), *(roots or [])])
    reg = None
    try:
        from gt_ext.registry import Registry

        reg = Registry.open()
        attach_registry(runs, reg)
    except GtExtError as e:
        log.warning("registry not available (%s): registered versions not shown", e)
    return runs, reg


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str))


@app.command("list")
def list_cmd(roots: list[Path] = ROOT_OPT, json_out: bool = JSON_OPT) -> None:
    """Every run found, newest first: ID KIND ROLE MODE STATUS STEPS VAL LOSS REGISTERED."""
    runs, reg = _load(roots)
    if reg is not None:
        reg.close()
    if json_out:
        _print_json([r.to_dict(curves=False) for r in runs])
        return
    if not runs:
        print("no runs found (looked in $GT_EXT_HOME/runs and the job folders; add --root DIR)")
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(box=None, pad_edge=False)
    for h in ("ID", "KIND", "ROLE", "MODE", "STATUS", "STEPS", "VAL LOSS", "REGISTERED", "PATH"):
        t.add_column(h)
    for r in runs:
        vl = "-" if r.val_loss_end is None else f"{r.val_loss_end:.4f}"
        t.add_row(r.id, r.kind, (r.role or "?") + (f"/{r.task}" if r.task else ""), r.mode, r.status or "?",
                  str(r.steps or "-"), vl, r.registered or "-", r.path)
    Console(width=200).print(t)


@app.command("show")
def show_cmd(run: str = typer.Argument(..., metavar="RUN", help="Run folder, run id or registry NAME:VER."),
             roots: list[Path] = ROOT_OPT, json_out: bool = JSON_OPT) -> None:
    """One run in full: figures, config, loss sparkline, evals, registry version."""
    from gt_ext.runs.compare import flatten, sparkline
    from gt_ext.runs.discover import resolve

    runs, reg = _load(roots)
    try:
        r = resolve(run, runs, reg)
    finally:
        if reg is not None:
            reg.close()
    if json_out:
        _print_json(r.to_dict())
        return
    print(f"{r.id}  ({r.kind} run, {r.status or '?'})  {r.path}")
    print(f"role {r.role or '?'}{' / ' + r.task if r.task else ''}, mode {r.mode}, base {r.base_model}"
          + (f", parent {r.parent}" if r.parent else ""))
    print(f"corpus {r.corpus_hash or '-'}: {r.examples} examples, {r.dpo_pairs} DPO pairs")
    print(f"steps {r.steps}, wall {r.wall_s if r.wall_s is not None else '-'} s, CPU "
          f"{r.cpu_s if r.cpu_s is not None else '-'} s, {r.tokens_per_s or 0:.0f} tokens/s")
    print(f"val loss {r.val_loss_start} -> {r.val_loss_end}")
    losses = [v for _, v in r.train_loss]
    if losses:
        print(f"train loss {losses[0]:.4f} {sparkline(losses, 48)} {losses[-1]:.4f}")
    for k, v in flatten(r.config).items():
        print(f"  config {k} = {v}")
    for suite, e in r.evals.items():
        cats = ", ".join(f"{c} {s}" for c, s in e.get("categories", {}).items())
        gate = {True: "pass", False: "fail"}.get(e.get("deployable"), "-")
        print(f"eval {suite}: composite {e.get('composite')} ({cats}) gate {gate}")
    print(f"registered as {r.registered or '-'}")


@app.command("compare")
def compare_cmd(runs_arg: list[str] = typer.Argument(..., metavar="RUN...", help="Two or more runs: folders, ids "
                                                     "or registry NAME:VER."),
                out: Path = typer.Option(None, "--out", help="Where to write the loss PNG "
                                         "(default: $GT_EXT_HOME/runs/compare/<runs>.png)."),
                roots: list[Path] = ROOT_OPT, json_out: bool = JSON_OPT) -> None:
    """Runs side by side: only the config keys that differ, corpus, speed, losses (overlaid PNG and
    sparklines), eval per category with the gate verdict, registry version."""
    from gt_ext.paths import home_dir
    from gt_ext.runs.compare import config_diff, plot_losses, summary_rows
    from gt_ext.runs.discover import resolve

    if len(runs_arg) < 2:
        raise GtExtError("runs compare: give two or more runs")
    found, reg = _load(roots)
    try:
        chosen = [resolve(x, found, reg) for x in runs_arg]
    finally:
        if reg is not None:
            reg.close()
    ids = [r.id for r in chosen]
    if len(set(ids)) != len(ids):
        for i, r in enumerate(chosen):
            r.id = f"{i + 1}:{r.id}"
    if out is None:
        key = hashlib.sha256("\n".join(r.path for r in chosen).encode()).hexdigest()[:12]
        out = home_dir() / "runs" / "compare" / f"compare-{key}.png"
    png = plot_losses(chosen, out, title="train loss: " + " vs ".join(r.id for r in chosen))
    if json_out:
        _print_json({"runs": [r.to_dict() for r in chosen], "config_diff": config_diff(chosen), "plot": str(png),
                     "table": [{"row": label, "values": vals} for label, vals in summary_rows(chosen)]})
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(title="runs compared", show_lines=False)
    t.add_column("")
    for r in chosen:
        t.add_column(r.id, overflow="fold")
    for label, vals in summary_rows(chosen):
        t.add_row(label, *vals)
    console = Console(width=max(120, 28 + 30 * len(chosen)))
    console.print(t)
    console.print(f"loss curves: {png}")
