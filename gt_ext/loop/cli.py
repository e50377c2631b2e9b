"""`gt-ext loop`: helpers the improve-role formula runs between its steps."""

from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path

import typer

from gt_ext.errors import GtExtError

app = typer.Typer(help="The improvement loop: steps that run only when a role model needs retraining.",
                  no_args_is_help=True, add_completion=False)


@app.command("when-stale", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def when_stale(ctx: typer.Context,
               decision: Path = typer.Argument(..., help="The file `gt model stale --decision FILE` wrote."),
               force: str = typer.Option("false", "--force", help="true: run the command whatever the decision says.")) -> None:
    """Run the command after `--` only when the stale check decided to retrain (or --force true);
    else say so and succeed, so a formula goes on to its next step."""
    from gt_ext.orchestrate.runner import to_argv

    argv = [a for a in ctx.args if a != "--"] if ctx.args[:1] == ["--"] else list(ctx.args)
    if not argv:
        raise GtExtError("when-stale: give the command to run after --")
    if force.lower() not in ("true", "false", "1", "0", "yes", "no"):
        raise GtExtError(f"--force {force!r}: expected true or false")
    try:
        wanted = bool(json.loads(decision.read_text()).get("retrain"))
    except FileNotFoundError:
        raise GtExtError(f"{decision}: no stale decision (run `gt model stale ROLE --decision {decision}` first)") from None
    except (OSError, ValueError, AttributeError) as e:
        raise GtExtError(f"{decision}: unreadable stale decision ({type(e).__name__})") from None
    if not (wanted or force.lower() in ("true", "1", "yes")):
        print(f"skipped (the deployed model is not stale): {' '.join(argv)}", flush=True)
        return
    res = subprocess.run(to_argv(shlex.join(argv)))
    if res.returncode:
        raise typer.Exit(res.returncode)
