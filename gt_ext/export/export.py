"""Export a run folder: PEFT adapter, merged HF folder, GGUF files and a sha256 manifest.

    export_run(run_dir, to, quantized=("q8_0",)) -> dict (the manifest)
    merge_adapter(base_model, adapter_dir, parent_adapter=None) -> (merged model, tokenizer)

Layout (CONTRACTS.md):
    DIR/adapter/  DIR/merged/  DIR/model-f16.gguf  DIR/model-q8_0.gguf  DIR/run.json  DIR/manifest.json

Everything is built in a temp folder next to DIR and renamed into place at the end, so a failed
export leaves nothing behind.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from gt_ext.atomic import atomic_write_json, replace_dir
from gt_ext.digest import sha256_file
from gt_ext.errors import GtExtError

log = logging.getLogger(__name__)
CONVENTIONS = "conventions.json"  # gt_ext.loop.fingerprint.FILE


def merge_adapter(base_model: str, adapter_dir: str | Path, parent_adapter: str | Path | None = None) -> tuple[Any, Any]:
    """Base (+ parent role adapter: run.json `parent`, a registry name:ver or a folder) + this adapter,
    merged into plain weights; (model, tokenizer)."""
    from peft import PeftModel

    from gt_ext.models import load_model
    from gt_ext.train.lora import apply_role_adapter

    model, tok = load_model(base_model)
    if parent_adapter:
        model = apply_role_adapter(model, parent_adapter)
    merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    return plain_model(merged).eval(), tok


def plain_model(model: Any) -> Any:
    """A copy of `model` without quantization metadata, so `save_pretrained` writes plain weights.

    Base folders built from a GGUF can keep `quantization_config: {quant_method: gguf}` in their
    config although the weights are plain float; transformers then refuses to save the model.
    """
    import copy

    import torch

    if getattr(model.config, "quantization_config", None) is None and getattr(model, "hf_quantizer", None) is None:
        return model
    cfg = copy.deepcopy(model.config)
    if hasattr(cfg, "quantization_config"):
        delattr(cfg, "quantization_config")
    with torch.device("meta"):
        plain = type(model)(cfg)
    plain.load_state_dict(model.state_dict(), assign=True)
    # Non-persistent buffers (RoPE inv_freq) are not in the state dict: take them over too.
    for name, buf in model.named_buffers():
        owner, _, attr = name.rpartition(".")
        (plain.get_submodule(owner) if owner else plain)._buffers[attr] = buf
    plain.tie_weights()
    if any(t.is_meta for t in [*plain.parameters(), *plain.buffers()]):
        raise GtExtError("internal: model copy left tensors on the meta device")
    return plain


def _read_run(run_dir: Path) -> dict[str, Any]:
    from gt_ext.train.runfolder import RUN_JSON, read_run_json

    rj = run_dir / RUN_JSON
    run = read_run_json(run_dir)
    if run is None:
        raise GtExtError(f"{run_dir}: not a run folder (no run.json)")
    if not (run_dir / "adapter" / "adapter_config.json").is_file():
        raise GtExtError(f"{run_dir}: no adapter/ (has the run finished? status {run.get('status')!r})")
    if not run.get("base_model"):
        raise GtExtError(f"{rj}: no base_model")
    return run


def export_run(run_dir: str | Path, to: str | Path, quantized: tuple[str, ...] | list[str] = ("q8_0",),
               force: bool = False) -> dict[str, Any]:
    """Write the export folder `to` from `run_dir`; f16 GGUF always, plus each type in `quantized`."""
    from gt_ext.export.convert import QTYPES, write_ggufs
    from gt_ext.models import resolve_model_dir

    run_dir, to = Path(run_dir), Path(to)
    run = _read_run(run_dir)
    for q in quantized:
        if q not in QTYPES:
            raise GtExtError(f"--gguf {q!r}: use one of {', '.join(QTYPES)}")
    if to.exists() and not to.is_dir():
        raise GtExtError(f"--to {to}: is a file; the export is a folder (adapter/, merged/, *.gguf, manifest.json)")
    if to.exists() and any(to.iterdir()) and not force:
        raise GtExtError(f"export folder {to} is not empty (use --force to replace it)")
    if (bad := next((p for p in to.parents if p.exists() and not p.is_dir()), None)) is not None:
        raise GtExtError(f"--to {to}: {bad} is a file, not a folder")
    to.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{to.name}.", dir=to.parent))
    try:
        shutil.copytree(run_dir / "adapter", tmp / "adapter")
        shutil.copy2(run_dir / "run.json", tmp / "run.json")
        if (run_dir / CONVENTIONS).is_file():  # the convention fingerprint travels with the model
            shutil.copy2(run_dir / CONVENTIONS, tmp / CONVENTIONS)
        log.info("merging %s into %s", run_dir / "adapter", run["base_model"])
        model, tok = merge_adapter(run["base_model"], run_dir / "adapter", run.get("parent"))
        model.save_pretrained(str(tmp / "merged"), safe_serialization=True)
        tok.save_pretrained(str(tmp / "merged"))
        # A SentencePiece base keeps its tokenizer.model: llama.cpp's converter reads scores from it.
        base_dir = resolve_model_dir(run["base_model"])
        if (base_dir / "tokenizer.model").is_file() and not (tmp / "merged" / "tokenizer.model").is_file():
            shutil.copy2(base_dir / "tokenizer.model", tmp / "merged" / "tokenizer.model")
        name = f"gt-{run.get('role', 'model')}" + (f"-{run['task']}" if run.get("task") else "")
        types = list(dict.fromkeys(["f16", *quantized]))
        write_ggufs(tmp / "merged", {q: tmp / f"model-{q}.gguf" for q in types}, name=name)
        ggufs = [f"model-{q}.gguf" for q in types]
        files = {
            p.relative_to(tmp).as_posix(): sha256_file(p)
            for p in sorted(tmp.rglob("*"))
            if p.is_file()
        }
        manifest = {
            "files": files,
            "base_model": run["base_model"],
            "role": run.get("role"),
            "task": run.get("task"),
            "parent": run.get("parent"),
            "corpus_hash": run.get("corpus_hash"),
            "gguf": ggufs,
            "source_run": str(run_dir.resolve()),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        atomic_write_json(tmp / "manifest.json", manifest)
        for d in [tmp, *[p for p in tmp.rglob("*") if p.is_dir()]]:
            os.chmod(d, 0o755)  # mkdtemp/copytree made them private; exports are meant to be shared
        replace_dir(tmp, to)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def verify_export(folder: str | Path) -> list[str]:
    """Relative paths whose sha256 no longer matches the manifest (empty list: intact)."""
    folder = Path(folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    bad = []
    for rel, digest in manifest["files"].items():
        p = folder / rel
        if not p.is_file() or sha256_file(p) != digest:
            bad.append(rel)
    return bad
