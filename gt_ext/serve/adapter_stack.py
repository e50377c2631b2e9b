"""Stackable LoRA adapters applied at run time, with a weight each, chosen per batch row.

The base model is loaded once. Each adapter (a PEFT `save_pretrained` folder) is read into plain
tensors; a forward hook on every targeted `nn.Linear` adds

    out[b] += sum_i  w[b, i] * scale_i * (x[b] @ A_i.T) @ B_i.T

where `w[b, i]` is the weight row `b` of the batch gives adapter `i` (0 when unused). Switching
adapters is therefore a change of a small weight matrix, never a reload, and one batch can mix
requests that use different adapters.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file

from gt_ext.errors import GtExtError
from gt_ext.models.refs import adapter_folder

log = logging.getLogger(__name__)


@dataclass
class LoraAdapter:
    """One adapter's tensors: module name -> (A [r, in], B [out, r]) and its scale alpha/r."""

    name: str
    path: Path
    scale: float
    rank: int
    base_model: str | None
    weights: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path, dtype: torch.dtype = torch.float32) -> LoraAdapter:
        """Read a PEFT LoRA folder; raise `GtExtError` on anything this runtime cannot apply exactly."""
        folder = adapter_folder(path)
        try:
            cfg = json.loads((folder / "adapter_config.json").read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise GtExtError(f"{folder}/adapter_config.json: unreadable ({e.__class__.__name__})") from None
        if cfg.get("peft_type", "LORA") != "LORA":
            raise GtExtError(f"{folder}: peft_type {cfg.get('peft_type')!r} is not LORA")
        if cfg.get("use_dora"):
            raise GtExtError(f"{folder}: DoRA adapters are not supported by the serving runtime")
        if cfg.get("fan_in_fan_out"):
            raise GtExtError(f"{folder}: fan_in_fan_out adapters (Conv1D models) are not supported")
        r = int(cfg.get("r", 8))
        alpha = float(cfg.get("lora_alpha", r))
        scale = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
        wfile = folder / "adapter_model.safetensors"
        if not wfile.is_file():
            raise GtExtError(f"{folder}: adapter_model.safetensors is missing")
        tensors = load_file(str(wfile))
        pairs: dict[str, dict[str, torch.Tensor]] = {}
        for key, t in tensors.items():
            for part in ("lora_A", "lora_B"):
                marker = f".{part}."
                if marker in key:
                    module = key.split(marker)[0]
                    # PEFT prefixes keys with "base_model.model."; the hooks use the model's own names.
                    module = module.removeprefix("base_model.model.")
                    pairs.setdefault(module, {})[part] = t.to(dtype)
                    break
            else:
                if "lora_" in key or "modules_to_save" in key:
                    raise GtExtError(f"{folder}: unsupported adapter tensor {key!r}")
        weights: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for module, ab in pairs.items():
            if set(ab) != {"lora_A", "lora_B"}:
                raise GtExtError(f"{folder}: module {module} has only {sorted(ab)}")
            weights[module] = (ab["lora_A"].contiguous(), ab["lora_B"].contiguous())
        if not weights:
            raise GtExtError(f"{folder}: adapter has no LoRA weights")
        return cls(
            name=str(folder),
            path=folder,
            scale=scale,
            rank=r,
            base_model=cfg.get("base_model_name_or_path"),
            weights=weights,
        )


class LoraRuntime:
    """Owns the hooks on a model and the loaded adapters; `activate(rows)` picks weights per batch row."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.adapters: dict[str, LoraAdapter] = {}
        self._linears = {name: m for name, m in model.named_modules() if _is_linear(m)}
        self._hooked: dict[str, torch.utils.hooks.RemovableHandle] = {}
        # Per forward: module name -> (A_cat [R, in], B_cat [out, R]) and row scales [B, R].
        self._active: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self._lock = threading.Lock()

    def add(self, path: str | Path) -> str:
        """Load an adapter once (keyed by its resolved folder) and hook the modules it targets."""
        key = str(adapter_folder(path).resolve())
        if key in self.adapters:
            return key
        ad = LoraAdapter.load(key, dtype=_param_dtype(self.model))
        for module, (a, b) in ad.weights.items():
            lin = self._linears.get(module)
            if lin is None:
                raise GtExtError(f"{ad.path}: adapter targets {module}, which the base model does not have")
            in_f, out_f = _linear_shape(lin)
            if a.shape[1] != in_f or b.shape[0] != out_f or a.shape[0] != b.shape[1]:
                raise GtExtError(
                    f"{ad.path}: adapter shapes for {module} (A {tuple(a.shape)}, B {tuple(b.shape)}) "
                    f"do not fit the base model's ({out_f}x{in_f})"
                )
        for module in ad.weights:
            if module not in self._hooked:
                self._hooked[module] = self._linears[module].register_forward_hook(self._make_hook(module))
        self.adapters[key] = ad
        log.info("loaded adapter %s (r=%d, %d modules)", ad.path, ad.rank, len(ad.weights))
        return key

    def activate(self, rows: list[list[tuple[str, float]]]) -> None:
        """Set the adapters for the next forwards: `rows[b]` is [(adapter key, weight), ...] for row b."""
        used = sorted({k for row in rows for k, w in row if w != 0.0})
        self._active = {}
        if not used:
            return
        ranks = [self.adapters[k].rank for k in used]
        offsets = [sum(ranks[:i]) for i in range(len(used))]
        total = sum(ranks)
        dtype = _param_dtype(self.model)
        scales = torch.zeros(len(rows), total, dtype=dtype)  # [B, R]: weight*scale for each rank slot
        for b, row in enumerate(rows):
            for k, w in row:
                if w == 0.0:
                    continue
                i = used.index(k)
                scales[b, offsets[i] : offsets[i] + ranks[i]] += w * self.adapters[k].scale
        modules = {m for k in used for m in self.adapters[k].weights}
        for m in modules:
            a_parts, b_parts, idx = [], [], []
            for i, k in enumerate(used):
                ab = self.adapters[k].weights.get(m)
                if ab is None:
                    continue
                a_parts.append(ab[0])
                b_parts.append(ab[1])
                idx.extend(range(offsets[i], offsets[i] + ranks[i]))
            a_cat = torch.cat(a_parts, 0)  # [R_m, in]
            b_cat = torch.cat(b_parts, 1)  # [out, R_m]
            self._active[m] = (a_cat, b_cat, scales[:, idx].contiguous())

    def deactivate(self) -> None:
        """No adapter on the next forwards (the hooks then cost one dict lookup each)."""
        self._active = {}

    def _make_hook(self, module: str):
        def hook(_mod: torch.nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> torch.Tensor:
            act = self._active.get(module)
            if act is None:
                return out
            a_cat, b_cat, scales = act
            x = inputs[0]  # [B, T, in]
            h = x.to(a_cat.dtype) @ a_cat.T  # [B, T, R]
            h = h * scales[: x.shape[0], None, :]  # per-row weight*scale for each rank slot
            return out + (h @ b_cat.T).to(out.dtype)  # [B, T, out]

        return hook


def _is_linear(m: torch.nn.Module) -> bool:
    if isinstance(m, torch.nn.Linear):
        return True
    # Dynamically quantized linears (int8 backend) keep in/out features but are not nn.Linear.
    return type(m).__name__ == "Linear" and hasattr(m, "in_features") and hasattr(m, "out_features")


def _linear_shape(m: torch.nn.Module) -> tuple[int, int]:
    return int(m.in_features), int(m.out_features)


def _param_dtype(model: torch.nn.Module) -> torch.dtype:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32
