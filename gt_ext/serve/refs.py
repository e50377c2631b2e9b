"""Turn a `--model` reference into what a Generator needs: base model, adapters, GGUF, merged folder.

Accepted forms:
    base:<name>            a base model (`smollm2-135m-instruct`, `tiny-llama`, an HF folder, a .gguf)
    /path/to/run-or-export a run folder (run.json + adapter/) or an export folder (+ merged/, *.gguf)
    /path/to/model.gguf    a GGUF file (llama.cpp backend, or dequantized for PyTorch)
    NAME[:VER]             a model in the registry (`gt_ext.registry`)
Adapters (`--adapters a,b=0.5`) are registry refs or adapter/run/export folders, each with an
optional `=WEIGHT` (default 1.0).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from gt_ext.errors import GtExtError

log = logging.getLogger(__name__)

GGUF_PREFERENCE = ("model-q8_0.gguf", "model-f16.gguf")


@dataclass
class ResolvedModel:
    """A model reference made concrete."""

    ref: str
    base_model: str
    adapters: list[tuple[Path, float]] = field(default_factory=list)
    gguf_path: Path | None = None
    merged_dir: Path | None = None
    role: str | None = None

    def to_dict(self) -> dict:
        """JSON-able form (for `/v1/models` and `--json` output)."""
        return {
            "ref": self.ref,
            "base_model": self.base_model,
            "adapters": [[str(p), w] for p, w in self.adapters],
            "gguf_path": str(self.gguf_path) if self.gguf_path else None,
            "merged_dir": str(self.merged_dir) if self.merged_dir else None,
            "role": self.role,
        }


def resolve_model(ref: str, town: object | None = None) -> ResolvedModel:
    """Resolve `ref` (see module doc); raise `GtExtError` saying which forms were tried."""
    if not isinstance(ref, str) or not ref.strip():
        raise GtExtError("--model: empty model reference")
    if ref.startswith("base:"):
        name = ref[len("base:") :]
        if not name:
            raise GtExtError("--model base:<name>: the base model name is missing")
        return ResolvedModel(ref=ref, base_model=name, gguf_path=_base_gguf(name))
    p = Path(ref).expanduser()
    if p.is_file() and p.suffix == ".gguf":
        return ResolvedModel(ref=ref, base_model=str(p), gguf_path=p)
    if p.is_dir():
        return _from_folder(ref, p)
    if "/" in ref:
        raise GtExtError(f"--model {ref}: no such file or folder")
    return _from_registry(ref, town)


def resolve_adapter(item: str, town: object | None = None) -> tuple[Path, float]:
    """`REF[=WEIGHT]` -> (adapter folder, weight)."""
    ref, _, w = item.strip().partition("=")
    try:
        weight = float(w) if w else 1.0
    except ValueError:
        raise GtExtError(f"--adapters {item}: weight {w!r} is not a number") from None
    p = Path(ref).expanduser()
    if p.is_dir():
        from gt_ext.serve.lora import adapter_folder

        return adapter_folder(p), weight
    rec = _registry_record(ref, town)
    if rec.adapter_dir is None:
        raise GtExtError(f"--adapters {ref}: registry model {rec.ref} has no adapter/ folder")
    return Path(rec.adapter_dir), weight


def parse_adapters(spec: str | None, town: object | None = None) -> list[tuple[Path, float]]:
    """Comma-separated adapter list -> [(folder, weight)]."""
    if not spec:
        return []
    return [resolve_adapter(x, town) for x in spec.split(",") if x.strip()]


def _base_gguf(name: str) -> Path | None:
    if name == "smollm2-135m-instruct":
        from gt_ext.models.base import smollm2_gguf_path

        try:
            return smollm2_gguf_path()
        except GtExtError:
            return None
    if name.endswith(".gguf") and Path(name).is_file():
        return Path(name)
    return None


def _from_folder(ref: str, p: Path) -> ResolvedModel:
    run_json = p / "run.json"
    if run_json.is_file():
        try:
            run = json.loads(run_json.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise GtExtError(f"{run_json}: unreadable ({e.__class__.__name__})") from None
        base = run.get("base_model")
        if not base:
            raise GtExtError(f"{run_json}: no 'base_model'")
        adapters = [(p / "adapter", 1.0)] if (p / "adapter" / "adapter_config.json").is_file() else []
        if adapters and run.get("parent"):
            # A task adapter trained on top of a role adapter: the role adapter goes under it.
            parent = Path(run["parent"])
            if not (parent / "adapter_config.json").is_file():
                raise GtExtError(f"--model {ref}: trained on top of role adapter {parent}, which is gone")
            adapters.insert(0, (parent, 1.0))
        return ResolvedModel(
            ref=ref,
            base_model=str(base),
            adapters=adapters,
            gguf_path=next((p / g for g in GGUF_PREFERENCE if (p / g).is_file()), None),
            merged_dir=p / "merged" if (p / "merged" / "config.json").is_file() else None,
            role=run.get("role"),
        )
    if (p / "config.json").is_file():  # a plain HF model folder
        return ResolvedModel(ref=ref, base_model=str(p))
    raise GtExtError(f"--model {ref}: folder has neither run.json (run/export) nor config.json (HF model)")


def _registry_record(ref: str, town: object | None):
    try:
        from gt_ext.registry import Registry
    except ImportError:
        raise GtExtError(f"--model {ref}: the model registry is not available in this install") from None
    reg = Registry.open(town)
    try:
        return reg.get(ref)
    finally:
        reg.close()


def _from_registry(ref: str, town: object | None) -> ResolvedModel:
    rec = _registry_record(ref, town)
    adapters = [(Path(rec.adapter_dir), 1.0)] if rec.adapter_dir else []
    return ResolvedModel(
        ref=rec.ref,
        base_model=rec.base_model,
        adapters=adapters,
        gguf_path=Path(rec.gguf_path) if rec.gguf_path else None,
        merged_dir=Path(rec.merged_dir) if rec.merged_dir else None,
        role=rec.role,
    )
