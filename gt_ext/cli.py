"""`gt-ext`: the project's command line. Each concern adds a sub-app from `gt_ext/<pkg>/cli.py`.

Sub-app modules must be cheap to import (no torch at module level): import heavy libraries inside
the command functions, so `gt-ext --help` and the `gt` shim stay fast.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys

import typer

from gt_ext.errors import GtExtError

app = typer.Typer(
    name="gt-ext",
    help="Gas Town fine-tuning: corpus, training, evaluation, registry and serving of role models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """Gas Town fine-tuning: corpus, training, evaluation, registry and serving of role models."""

# (name, module). Every module must import: a missing or broken one fails `gt-ext` loudly (a test
# checks each of them), never a silently missing subcommand.
SUBCOMMANDS: list[tuple[str, str]] = [
    ("corpus", "gt_ext.corpus.cli"),
    ("hooks", "gt_ext.hooks_cli"),
    ("models", "gt_ext.models.cli"),
    ("train", "gt_ext.train.cli"),
    ("export", "gt_ext.export.cli"),
    ("swarm", "gt_ext.swarm.cli"),
    ("pipeline", "gt_ext.pipeline.cli"),
    ("eval", "gt_ext.evals.cli"),
    ("model", "gt_ext.registry.cli"),
    ("formula", "gt_ext.orchestrate.cli"),
    ("job", "gt_ext.jobs.cli"),
    ("serve", "gt_ext.serve.cli"),
    ("rag", "gt_ext.rag.cli"),
    ("prefs", "gt_ext.prefs.cli"),
    ("runs", "gt_ext.runs.cli"),
    ("loop", "gt_ext.loop.cli"),
    ("install-shim", "gt_ext.shim_cli"),
]


@app.command()
def version() -> None:
    """Print the gastown-finetune version."""
    from gt_ext import __version__

    print(f"gt-ext {__version__}")


def _register() -> None:
    for name, module in SUBCOMMANDS:
        mod = importlib.import_module(module)
        sub = getattr(mod, "app", None)
        if isinstance(sub, typer.Typer):
            app.add_typer(sub, name=name)
        elif callable(getattr(mod, "command", None)):
            app.command(name=name)(mod.command)
        else:
            raise ImportError(f"{module}: defines neither a typer `app` nor a `command` for `gt-ext {name}`")


_register()


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI, turning `GtExtError` into a one-line error and its exit code.

    Usage errors (unknown command, bad option) print one line, `error: <command>: <message>`, exit 2.
    """
    logging.basicConfig(
        level=os.environ.get("GT_EXT_LOG", "WARNING").upper(),
        format="%(levelname)s %(name)s: %(message)s",
    )
    # Called through the `gt` shim: usage lines and errors name `gt corpus ...`, as the user typed.
    # Popped, so the commands this one starts (formula steps run `gt-ext ...`) say gt-ext again.
    prog = os.environ.pop("GT_EXT_PROG", None) or "gt-ext"
    try:  # typer >= 0.24 vendors click as typer._click; older ones use click itself
        from typer._click import exceptions as click_exc
    except ImportError:  # pragma: no cover
        from click import exceptions as click_exc

    try:
        # Not standalone: usage errors come back here and are printed on ONE line (typer would
        # draw a multi-line rich box); `--help` and typer.Exit come back as exit codes.
        rv = app(args=argv, prog_name=prog, standalone_mode=False)
    except click_exc.NoArgsIsHelpError as e:
        e.show()  # a group called without a subcommand: its help, exit 2
        return e.exit_code
    except click_exc.UsageError as e:
        where = e.ctx.command_path if e.ctx is not None else prog
        msg = " ".join(e.format_message().split())
        print(f"error: {where}: {msg} (see '{where} --help')", file=sys.stderr)
        return e.exit_code
    except click_exc.ClickException as e:
        print(f"error: {' '.join(e.format_message().split())}", file=sys.stderr)
        return e.exit_code
    except typer.Abort:
        print("aborted", file=sys.stderr)
        return 1
    except GtExtError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except OSError as e:
        # A file or folder the user named that cannot be used as asked (a folder where a file was
        # expected, no permission...): one line naming it. The commands check what they can first.
        logging.getLogger("gt_ext").debug("OS error", exc_info=True)
        what = f"{e.filename}: " if e.filename else ""
        print(f"error: {what}{(e.strerror or str(e)).lower()} (GT_EXT_LOG=DEBUG shows where)", file=sys.stderr)
        return 2
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except KeyboardInterrupt:
        return 130
    return rv if isinstance(rv, int) and not isinstance(rv, bool) else 0


if __name__ == "__main__":
    sys.exit(main())
