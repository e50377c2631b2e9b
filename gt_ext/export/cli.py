"""`gt-ext export RUN_DIR --to DIR [--gguf q8_0]`: adapter, merged folder, GGUF files, manifest.

No torch import at module level.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

app = typer.Typer(
    help="Export a training run: adapter, merged HF folder, GGUF (f16 + quantized), sha256 manifest.",
    invoke_without_command=True,
    subcommand_metavar="",  # a single command: no COMMAND in the usage line
    add_completion=False,
    # options may follow positionals (RUN_DIR --to DIR; k=v --dry-run)
    context_settings={"allow_interspersed_args": True},
)


@app.callback()
def export(
    run_dir: Path = typer.Argument(..., help="run folder written by gt-ext train"),
    to: Path = typer.Option(..., "--to", help="export folder to create"),
    gguf: list[str] = typer.Option(["q8_0"], "--gguf", help="quantized GGUF type(s) besides f16: q8_0, f32, or none"),
    force: bool = typer.Option(False, "--force", help="replace a non-empty export folder"),
    as_json: bool = typer.Option(False, "--json", help="print the manifest as JSON"),
) -> None:
    """Export RUN_DIR to DIR: adapter/, merged/, model-f16.gguf, model-<q>.gguf, run.json, manifest.json."""
    from gt_ext.export.export import export_run

    quantized = [q for q in gguf if q != "none"]
    manifest = export_run(run_dir, to, quantized, force=force)
    if as_json:
        print(json.dumps(manifest, indent=2))
    else:
        print(f"exported {run_dir} -> {to}: {len(manifest['files'])} files, GGUF {', '.join(manifest['gguf'])}")
