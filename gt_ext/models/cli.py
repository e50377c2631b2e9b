"""`gt-ext models`: list the base models and try one out."""

from __future__ import annotations

import json
import sys
import time

import typer

app = typer.Typer(help="Base models: list them, and generate with one.", no_args_is_help=True,
                  add_completion=False)


@app.command("list")
def list_models(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List the known base-model names (any HF folder or .gguf path also works)."""
    from gt_ext.models.base import _CACHE_FORMAT, KNOWN_MODELS
    from gt_ext.paths import cache_dir

    rows = []
    for name, desc in KNOWN_MODELS.items():
        folder = cache_dir() / "models" / f"{name}-v{_CACHE_FORMAT}"
        rows.append({"name": name, "description": desc, "cached": (folder / "CHECKSUM").is_file(),
                     "path": str(folder)})
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        mark = "cached" if r["cached"] else "not built yet"
        print(f"{r['name']:<{width}}  {r['description']} [{mark}]")


@app.command()
def generate(
    name: str = typer.Argument(..., help="Base model: a known name, an HF folder or a .gguf file."),
    prompt: str = typer.Argument(..., help="The user message."),
    max_new_tokens: int = typer.Option(64, "--max-new-tokens", min=1, max=4096, help="Tokens to generate."),
    system: str = typer.Option(None, "--system", help="Optional system message."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON with timings instead of streaming text."),
) -> None:
    """Answer PROMPT with base model NAME (greedy, using the model's chat template)."""
    from gt_ext.models.base import resolve_model_dir

    t0 = time.perf_counter()
    resolve_model_dir(name)  # unknown names fail here, before torch loads; builds the cache once
    from gt_ext.models.base import load_model
    from gt_ext.models.chat import chat_once

    model, tok = load_model(name)
    load_s = time.perf_counter() - t0
    streamer = None
    if not as_json and sys.stdout.isatty():
        from transformers import TextStreamer

        streamer = TextStreamer(tok, skip_prompt=True, skip_special_tokens=True)
    t1 = time.perf_counter()
    text, n_new = chat_once(model, tok, prompt, max_new_tokens=max_new_tokens, system=system, streamer=streamer)
    gen_s = time.perf_counter() - t1
    if as_json:
        print(json.dumps({"model": name, "prompt": prompt, "output": text, "new_tokens": n_new,
                          "load_s": round(load_s, 3), "generate_s": round(gen_s, 3),
                          "tokens_per_s": round(n_new / gen_s, 2) if gen_s > 0 else None}))
    elif streamer is None:
        print(text)
    print(f"[{name}: loaded in {load_s:.1f} s, {n_new} tokens in {gen_s:.1f} s]", file=sys.stderr)
