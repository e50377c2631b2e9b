"""`gt-ext train`: LoRA SFT/DPO of a role (or task) adapter from a corpus export.

No torch import at module level: the heavy work is imported inside the command.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import typer
from typer.core import TyperGroup

from gt_ext.errors import GtExtError

EXIT_STOPPED = 3  # a time limit stopped the run with a checkpoint (not done; --resume continues)

app = typer.Typer(
    help="Train a role LoRA (or a task adapter on top of a role model) on a corpus export.",
    invoke_without_command=True,
    subcommand_metavar="",  # a single command: no COMMAND in the usage line
    add_completion=False,
    # options may follow positionals (RUN_DIR --to DIR; k=v --dry-run)
    context_settings={"allow_interspersed_args": True},
)


def _epilog() -> str:
    from rich.markup import escape

    from gt_ext.train.config import config_help

    return escape("Config keys (KEY=VALUE overrides, or a --config YAML/TOML with the same nesting), with "
                  "their defaults:\n\n" + config_help())


class _TrainCommand(TyperGroup):
    """`gt-ext train`, whose --help lists the config keys: built only when help is shown, so that
    every other `gt-ext` / `gt` call does not import the config model."""

    @property
    def epilog(self) -> str:  # read by typer's help formatter
        return _epilog()

    @epilog.setter
    def epilog(self, _value: str | None) -> None:
        pass


@app.callback(cls=_TrainCommand)
def train(
    overrides: list[str] = typer.Argument(None, metavar="[KEY=VALUE]...", help="config overrides, e.g. optim.lr=1e-4 lora.r=16"),
    role: str = typer.Option(..., "--role", help="Gas Town role, e.g. witness"),
    corpus: Path = typer.Option(..., "--corpus", help="corpus export folder (gt-ext corpus export --out DIR)"),
    task: str = typer.Option(None, "--task", help="train a task adapter on this task partition only"),
    config: Path = typer.Option(None, "--config", help="YAML or TOML config file"),
    out: Path = typer.Option(None, "--out", help="run folder (default: ~/gt/runs/<role>[-<task>]-<time>)"),
    resume: bool = typer.Option(False, "--resume", help="continue from the newest checkpoint in --out"),
    dry_run: bool = typer.Option(False, "--dry-run", help="validate config and data, print token counts, train nothing"),
    as_json: bool = typer.Option(False, "--json", help="print the result as JSON"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="show a progress bar"),
    fingerprint: bool = typer.Option(True, "--fingerprint/--no-fingerprint",
                                     help="in a town: record its conventions (docs, formulas, settings, directives, "
                                          "the role's gt prime) in RUN_DIR/conventions.json, for `gt model stale`"),
    backend: str = typer.Option("local", "--backend", help="local (one process) or pipeline (node0 stages, docs/pipeline.md)"),
    stages: int = typer.Option(None, "--stages", help="pipeline: start this many local stage servers (unless --initial-peers)"),
    run_name: str = typer.Option(None, "--run", help="pipeline: run name the stages were started with"),
    initial_peers: list[str] = typer.Option(None, "--initial-peers", help="pipeline: multiaddr of a running stage (repeatable)"),
    swarm_key: Path = typer.Option(None, "--swarm-key", help="pipeline: swarm key file (or $GT_SWARM_KEY_FILE)"),
    compression_rate: int = typer.Option(None, "--compression-rate", help="pipeline, local stages: node0 activation compression"),
    subspace: Path = typer.Option(None, "--subspace", help="pipeline, local stages: subspace file for compression"),
    node0: Path = typer.Option(None, "--node0", help="pipeline, local stages: node0 checkout (default $NODE0_PATH)"),
) -> None:
    """Train an adapter: `gt-ext train --role R --corpus DIR [--task T] [--config F] [--out RUN_DIR] [k=v ...]`."""
    if not progress:
        from gt_ext.quiet import quiet_libraries

        quiet_libraries()  # before the heavy imports: no weight-loading bars, no library warnings
    from gt_ext.train.run import prepare, run_training

    if backend not in ("local", "pipeline"):
        raise GtExtError(f"--backend {backend!r}: use local or pipeline")
    if backend == "pipeline" and not stages and not initial_peers:
        raise GtExtError("--backend pipeline needs --stages N (local stage servers) or --initial-peers ADDR (running ones)")

    prepared = prepare(role, corpus, task, config, list(overrides or []))
    if dry_run:
        s = prepared.summary()
        if as_json:
            print(json.dumps(s, indent=2))
        else:
            t, v = s["train"], s["val"]
            print(f"partition {s['mode']}/{role}/{task or '*'} in {corpus} (base {s['base_model']})")
            print(f"  train: {t['items']} items, {t['tokens']} tokens, {t['target_tokens']} assistant tokens, "
                  f"{t['truncated']} truncated to {s['max_length']}, {t['dropped_no_target']} without assistant tokens")
            print(f"  val:   {v['items']} items, {v['tokens']} tokens, {v['target_tokens']} assistant tokens"
                  + (" (held out from train)" if v["held_out_from_train"] else ""))
            print("  config: ok")
        return
    if out is None:
        from gt_ext.paths import home_dir

        if resume:
            raise GtExtError("--resume needs --out RUN_DIR")
        out = home_dir() / "runs" / f"{role}{'-' + task if task else ''}-{time.strftime('%Y%m%d-%H%M%S')}"
    extra = None
    if fingerprint and not (resume and (out / "conventions.json").is_file()):
        from gt_ext.train.config import config_to_dict
        from gt_ext.train.runfolder import check_new_or_resumable

        check_new_or_resumable(out, config_to_dict(prepared.cfg), resume)  # before writing into it
        extra = _fingerprint(role, out)  # RUN_DIR/conventions.json (both backends); run.json's summary
    if backend == "pipeline":
        from gt_ext.pipeline.trainer import pipeline_settings, run_pipeline_training

        settings = pipeline_settings(out, run_name or role, stages, initial_peers or [], swarm_key,
                                     compression_rate, subspace, node0)
        final = run_pipeline_training(prepared, out, settings, resume=resume, progress=progress)
    else:
        final = run_training(prepared, out, resume=resume, progress=progress, extra=extra)
    m = final["metrics"]
    if as_json:
        print(json.dumps({"run_dir": str(out), **final}, indent=2))
    else:
        print(f"run {out}: {final['status']}, {m['steps']} steps, val loss {m['val_loss_start']:.4f} -> "
              f"{m['val_loss_end']:.4f}, {m['tokens_per_s']:.0f} tokens/s")
    if final["status"] == "failed":
        print(f"error: {m.get('message', 'training failed')}", file=sys.stderr)
        raise typer.Exit(1)
    if final["status"] == "stopped":
        print(f"stopped: {m.get('message', 'time limit reached')} (gt-ext train ... --out {out} --resume)",
              file=sys.stderr)
        raise typer.Exit(EXIT_STOPPED)


def _fingerprint(role: str, out: Path) -> dict | None:
    """Take the town's convention fingerprint for `role` into `out` (None outside a town)."""
    from gt_ext.corpus.store import Store
    from gt_ext.gastown.town import find_town
    from gt_ext.loop.fingerprint import summary, take_fingerprint, write_fingerprint

    town = find_town()
    if town is None:
        return None
    with Store.open(town=town.root) as store:
        fp = take_fingerprint(town.root, role, store=store)
    out.mkdir(parents=True, exist_ok=True)
    write_fingerprint(out, fp)
    bad = [k for k, v in fp["items"].items() if v.get("error")]
    if bad:
        print(f"warning: {len(bad)} convention item(s) unreadable, recorded as such: {', '.join(bad[:5])}", file=sys.stderr)
    return {"convention_fingerprint": summary(fp)}
