"""`gt-ext install-shim`: put the `gt` front door into the venv (and optionally a user bin dir)."""

from __future__ import annotations

import sys
from pathlib import Path

import typer


def command(
    bin_dir: list[Path] = typer.Option(None, "--bin-dir", help="Also install into this folder (e.g. ~/.local/bin); repeatable."),  # noqa: B008
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing on success."),
) -> None:
    """Install the `gt` shim: `gt corpus|model ...` and `gt formula run <our formula>` go to gt-ext,
    everything else execs the real gt (found via GT_REAL_BIN, `gt-real` beside the shim, or PATH)."""
    from gt_ext.gastown.binaries import find_gt
    from gt_ext.shim import install_shim

    dirs = [Path(sys.executable).parent, *(bin_dir or [])]
    written = install_shim(dirs)
    if not quiet:
        for p in written:
            print(f"installed {p}")
        real = find_gt(required=False)
        print(f"real gt: {real}" if real else "real gt: not found (the shim will say so; run ./install.sh)")
