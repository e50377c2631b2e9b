"""`gt-ext models`: list the base models and try one out."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import typer

app = typer.Typer(help="Base models: list, register (add) and inspect (show) them, and generate with one.",
                  no_args_is_help=True, add_completion=False)


def _print_record(rec: dict) -> None:
    width = max(len(k) for k in rec)
    for k, v in rec.items():
        print(f"{k:<{width}}  {v}")


@app.command("list")
def list_models(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List the built-in base models and the registered ones (any HF folder or .gguf path also works)."""
    from gt_ext.models import registered
    from gt_ext.models.base import _CACHE_FORMAT, KNOWN_MODELS
    from gt_ext.paths import cache_dir

    rows = []
    for name, desc in KNOWN_MODELS.items():
        folder = cache_dir() / "models" / f"{name}-v{_CACHE_FORMAT}"
        rows.append({"name": name, "kind": "built-in", "description": desc,
                     "cached": (folder / "CHECKSUM").is_file(), "path": str(folder)})
    for name, rec in sorted(registered.all_bases().items()):
        rows.append({"name": name, "kind": "registered", "path": rec["path"],
                     "tokenizer_family": rec.get("tokenizer_family"), "chat_template": rec.get("chat_template"),
                     "license": rec.get("license"), "present": Path(rec["path"]).is_dir()})
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        if r["kind"] == "built-in":
            mark = "cached" if r["cached"] else "not built yet"
            print(f"{r['name']:<{width}}  {r['description']} [{mark}]")
        else:
            gone = "" if r["present"] else " [FOLDER MISSING]"
            print(f"{r['name']:<{width}}  {r['path']} (tokenizer {r['tokenizer_family'] or 'unknown'}, "
                  f"chat template {r['chat_template'] or 'none'}, license {r['license'] or 'unknown'}){gone}")


@app.command()
def add(
    path: Path = typer.Argument(..., help="A local HF folder (config.json, safetensors, tokenizer files)."),
    name: str = typer.Option(None, "--name", help="Name to register it under (default: the folder's name)."),
    license: str = typer.Option(None, "--license", help="License to record (default: from README.md or LICENSE)."),
    as_json: bool = typer.Option(False, "--json", help="Print the record as JSON."),
) -> None:
    """Register a LLaMA-family base model folder: checks it, notes its tokenizer family, chat
    template and license. The name then works as base_model=NAME and --model base:NAME."""
    from gt_ext.models import registered

    rec = registered.add(path, name=name, license=license)
    if as_json:
        print(json.dumps(rec, indent=2))
        return
    _print_record(rec)
    if rec["tokenizer_family"] is None:
        print("note: unknown tokenizer family: training works, GGUF export will be refused", file=sys.stderr)
    if rec["chat_template"] is None:
        print("note: no chat template: training renders conversations with it, so add one to "
              "tokenizer_config.json or chat_template.jinja", file=sys.stderr)


@app.command()
def show(
    name: str = typer.Argument(..., help="A registered or built-in name, or an HF folder."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Describe a base model: architecture, sizes, tokenizer family, chat template, license."""
    from gt_ext.models import registered
    from gt_ext.models.base import KNOWN_MODELS, resolve_model_dir
    from gt_ext.models.family import describe

    rec = registered.get(name)
    if rec is None:
        folder = resolve_model_dir(name)  # built-in names are built once here; unknown names fail
        rec = {"name": name, **describe(folder)}
        if name in KNOWN_MODELS and not rec["license"]:
            rec["license"] = {"smollm2-135m-instruct": "Apache-2.0",
                              "tiny-llama": "none (random weights; SmolLM2's tokenizer, Apache-2.0)"}.get(name)
    if as_json:
        print(json.dumps(rec, indent=2))
        return
    _print_record(rec)


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
