"""The one meaning of a model reference (`--model REF`), for evals, serving, the API and the agent.

    resolve(ref, town=None) -> ResolvedModel

Accepted forms, tried in this order:
    base:<name>            a base model (`smollm2-135m-instruct`, `tiny-llama`, an HF folder, a .gguf)
    <known base name>      the same without `base:` (`tiny-llama`, `smollm2-135m-instruct`)
    /path/to/model.gguf    a GGUF file (llama.cpp backend, or dequantized for PyTorch)
    /path/to/folder        a run folder (run.json + adapter/), an export folder (+ merged/, *.gguf,
                           manifest.json) or a plain HF model folder (config.json)
    NAME[:VER]             a model in the registry (`gt_ext.registry`), newest version without VER

A task adapter is trained on top of a role adapter; its run.json (and registry record) names that
role adapter in `parent` (see docs/CONTRACTS.md: a registry `name:ver`, or the folder of a role
adapter that was never registered). `ResolvedModel.adapters` is the whole stack, parent first,
resolved here and nowhere else. A merged folder (`merged/`, an export) already holds the whole
stack: `torch_weights()` prefers it.

Extra adapters (`--adapters a,b=0.5`) are registry refs or adapter/run/export folders, each with an
optional `=WEIGHT` (default 1.0): `parse_adapters`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gt_ext.errors import GtExtError
from gt_ext.paths import home_dir

GGUF_PREFERENCE = ("model-q8_0.gguf", "model-f16.gguf")
_REGISTRY_REF = re.compile(r"[A-Za-z0-9_.-]+(:v?\d+)?")
_MAX_PARENT_DEPTH = 4  # role -> task is one level; more is a loop or a mistake


@dataclass
class ResolvedModel:
    """A model reference made concrete: what to load, and where its eval results go."""

    ref: str  # canonical form: base:<name>, the folder/file path, or the registry's name:ver
    base_model: str  # the base model the adapters apply to (never a merged folder)
    adapters: list[tuple[Path, float]] = field(default_factory=list)  # parent first
    gguf_path: Path | None = None
    merged_dir: Path | None = None  # base + every adapter of the stack, merged (an export)
    role: str | None = None
    results_dir: Path | None = None  # where `eval-<suite>.json` is written (None: nowhere)
    registry_ref: str | None = None  # name:ver when the model came from the registry

    def torch_weights(self) -> tuple[str, list[tuple[Path, float]]]:
        """(model to load, adapters to apply) for PyTorch: the merged folder alone when there is
        one (it already holds the adapters), else the base with the adapter stack."""
        if self.merged_dir is not None:
            return str(self.merged_dir), []
        return self.base_model, list(self.adapters)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (for `/v1/models` and `--json` output)."""
        return {
            "ref": self.ref,
            "base_model": self.base_model,
            "adapters": [[str(p), w] for p, w in self.adapters],
            "gguf_path": str(self.gguf_path) if self.gguf_path else None,
            "merged_dir": str(self.merged_dir) if self.merged_dir else None,
            "role": self.role,
            "registry_ref": self.registry_ref,
        }


def resolve(ref: str, town: object | None = None) -> ResolvedModel:
    """Resolve `ref` (see module doc); raise `GtExtError` saying which forms were tried."""
    from gt_ext.models.base import KNOWN_MODELS

    if not isinstance(ref, str) or not ref.strip():
        raise GtExtError("--model: empty model reference (give base:<model>, a run/export folder or NAME[:VER])")
    if ref.startswith("base:") or ref in KNOWN_MODELS:
        name = ref[len("base:"):] if ref.startswith("base:") else ref
        if not name:
            raise GtExtError("--model base:<name>: the base model name is missing")
        return ResolvedModel(ref=f"base:{name}", base_model=name, gguf_path=base_gguf(name),
                             results_dir=_results_dir_for(name))
    p = Path(ref).expanduser()
    if p.is_file() and p.suffix == ".gguf":
        return ResolvedModel(ref=ref, base_model=str(p), gguf_path=p, results_dir=_results_dir_for(p.name))
    if p.is_dir():
        return _from_folder(ref, p, town)
    if "/" in ref or not _REGISTRY_REF.fullmatch(ref):
        raise GtExtError(f"--model {ref}: no such file or folder, and not base:<model> or a registry NAME[:VER]")
    return from_registry(ref, town)


def adapter_folder(path: str | Path) -> Path:
    """The PEFT adapter folder for `path`: the folder itself, or its `adapter/` (run/export folders)."""
    p = Path(path).expanduser()
    for cand in (p, p / "adapter"):
        if (cand / "adapter_config.json").is_file():
            return cand
    raise GtExtError(f"{p}: no LoRA adapter here (expected adapter_config.json, or adapter/adapter_config.json)")


def adapter_stack(ref: str, town: object | None = None) -> list[Path]:
    """The adapter folders `ref` applies on its base model, parent first (a registry ref or a folder)."""
    p = Path(ref).expanduser()
    if p.is_dir():
        if (p / "adapter_config.json").is_file():
            return [p]  # a bare adapter folder: no run.json, so no parent to stack
        return [a for a, _ in _from_folder(ref, p, town).adapters]
    m = resolve(ref, town)
    if not m.adapters:
        raise GtExtError(f"{ref}: {m.ref} has no LoRA adapter to apply")
    return [a for a, _ in m.adapters]


def resolve_adapter(item: str, town: object | None = None) -> tuple[Path, float]:
    """`REF[=WEIGHT]` -> (its own adapter folder, weight). An extra adapter goes on top of the
    served model, which carries its parent (a task adapter is deployed on its role model), so
    only the adapter itself is added: its parent is not stacked a second time."""
    ref, _, w = item.strip().partition("=")
    try:
        weight = float(w) if w else 1.0
    except ValueError:
        raise GtExtError(f"--adapters {item}: weight {w!r} is not a number") from None
    return adapter_stack(ref, town)[-1], weight


def parse_adapters(spec: str | None, town: object | None = None) -> list[tuple[Path, float]]:
    """Comma-separated `REF[=WEIGHT]` list -> [(adapter folder, weight)] (see `resolve_adapter`)."""
    if not spec:
        return []
    return [resolve_adapter(x, town) for x in spec.split(",") if x.strip()]


def parent_stack(parent: str | None, where: str, town: object | None = None, _depth: int = 0) -> list[Path]:
    """The adapter folders of a run's `parent` (registry `name:ver`, or a role adapter folder),
    its own parent first; `where` names the run in the error when the parent is gone."""
    if not parent:
        return []
    if _depth >= _MAX_PARENT_DEPTH:
        raise GtExtError(f"{where}: parent chain deeper than {_MAX_PARENT_DEPTH} (a loop?) at {parent}")
    p = Path(parent).expanduser()
    if p.is_absolute() or "/" in parent or p.is_dir():
        try:
            return [adapter_folder(p)]
        except GtExtError:
            raise GtExtError(f"{where}: trained on top of role adapter {parent}, which is gone "
                             "(no adapter_config.json)") from None
    try:
        rec = _registry_record(parent, town)
    except GtExtError as e:
        raise GtExtError(f"{where}: trained on top of {parent}, which is not in the registry ({e})") from None
    if rec.adapter_dir is None:
        raise GtExtError(f"{where}: trained on top of {rec.ref}, which has no adapter/")
    return [*parent_stack(rec.parent, f"registry model {rec.ref}", town, _depth + 1), Path(rec.adapter_dir)]


def parent_ref(role_adapter: str | None, town: object | None = None) -> str | None:
    """What run.json `parent` records for a `role_adapter` setting: the registry's `name:ver` for a
    registry ref (the version it is now, not "newest"), else the absolute adapter folder."""
    if not role_adapter:
        return None
    p = Path(role_adapter).expanduser()
    if p.is_absolute() or "/" in role_adapter or p.is_dir():
        try:
            return str(adapter_folder(p).resolve())
        except GtExtError:
            raise GtExtError(f"role_adapter={role_adapter}: no adapter_config.json there (or in its adapter/)") from None
    try:
        return _registry_record(role_adapter, town).ref
    except GtExtError as e:
        raise GtExtError(f"role_adapter={role_adapter}: not a folder and not in the registry ({e})") from None


# ----------------------------------------------------------------------------------------- details


def _results_dir_for(name: str) -> Path:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")
    return home_dir() / "evals" / f"base-{slug}"


def base_gguf(name: str) -> Path | None:
    """The GGUF holding base model `name`'s own weights (a known base's, or `name` itself when it is a
    .gguf file), or None."""
    if name == "smollm2-135m-instruct":
        from gt_ext.models.base import smollm2_gguf_path

        try:
            return smollm2_gguf_path()
        except GtExtError:
            return None
    if name.endswith(".gguf") and Path(name).is_file():
        return Path(name)
    return None


def _read_json(p: Path) -> dict[str, Any]:
    try:
        obj = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise GtExtError(f"{p}: unreadable ({e.__class__.__name__})") from None
    if not isinstance(obj, dict):
        raise GtExtError(f"{p}: expected a JSON object")
    return obj


def _from_folder(ref: str, p: Path, town: object | None) -> ResolvedModel:
    # An export folder holds manifest.json and a copy of run.json; a run folder run.json only.
    from gt_ext.train.runfolder import RUN_JSON, read_run_json

    meta: dict[str, Any] = {}
    described = [p / f for f in ("manifest.json", RUN_JSON) if (p / f).is_file()]
    if (p / "manifest.json").is_file():
        meta = _read_json(p / "manifest.json")
    meta = {**(read_run_json(p) or {}), **meta}  # an export's manifest.json wins over its run.json copy
    if not described:
        if (p / "config.json").is_file():  # a plain HF model folder
            return ResolvedModel(ref=ref, base_model=str(p), results_dir=p)
        raise GtExtError(f"--model {ref}: folder has no run.json/manifest.json (run/export) "
                         "and no config.json (HF model)")
    base = meta.get("base_model")
    if not base:
        raise GtExtError(f"{p}: not a run or export folder (no run.json/manifest.json with base_model)")
    merged = p / "merged" if (p / "merged" / "config.json").is_file() else None
    own = p / "adapter" if (p / "adapter" / "adapter_config.json").is_file() else None
    if own is None and merged is None:
        raise GtExtError(f"{p}: no adapter/ (adapter_config.json) or merged/ model in this folder")
    adapters = []
    if own is not None:
        adapters = [(a, 1.0) for a in parent_stack(meta.get("parent"), f"--model {ref}", town)] + [(own, 1.0)]
    return ResolvedModel(
        ref=ref,
        base_model=str(base),
        adapters=adapters,
        gguf_path=next((p / g for g in GGUF_PREFERENCE if (p / g).is_file()), None),
        merged_dir=merged,
        role=meta.get("role"),
        results_dir=p,
    )


def _registry_record(ref: str, town: object | None) -> Any:
    from gt_ext.registry import Registry

    with Registry.open(town) as reg:
        return reg.get(ref)


def from_registry(ref: str, town: object | None = None) -> ResolvedModel:
    """A registry ref `NAME[:VER]` only (never a path: what a remote API request may name)."""
    rec = _registry_record(ref, town)
    adapters: list[tuple[Path, float]] = []
    if rec.adapter_dir is not None:
        stack = parent_stack(rec.parent, f"registry model {rec.ref}", town) + [Path(rec.adapter_dir)]
        adapters = [(a, 1.0) for a in stack]
    merged = rec.merged_dir if rec.merged_dir is not None and (rec.merged_dir / "config.json").is_file() else None
    return ResolvedModel(
        ref=rec.ref,
        base_model=rec.base_model,
        adapters=adapters,
        gguf_path=Path(rec.gguf_path) if rec.gguf_path else None,
        merged_dir=merged,
        role=rec.role,
        results_dir=Path(rec.path),
        registry_ref=rec.ref,
    )
