"""Stackable LoRA adapters applied at run time, with a weight each, chosen per batch row.

The base model is loaded once. Each adapter (a PEFT `save_pretrained` folder) is read into plain
tensors. A decoder that fuses projections sharing an input (q/k/v, gate/up) describes its fused
linears as a `Layout`; for the adapters a batch uses, `AdapterBank` concatenates every adapter's
A matrices of a fused linear into one [in, R] matrix and places the B matrices into one [R, out]
matrix, so the decoder adds, for each row b of the batch,

    out[b] += ((x[b] @ A_cat) * s[b]) @ B_cat      s[b, slot] = w[b, i] * scale_i for adapter i's slots

with `w[b, i]` the weight row b gives adapter i (0 when unused): two small matmuls per fused
linear whatever the number of adapters. Switching adapters is a change of `s`, never a reload, and
one batch mixes requests that use different adapter stacks.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections import OrderedDict
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



@dataclass(frozen=True)
class Target:
    """Where an adapted module sits in the decoder: its fused linear, output offset and shape."""

    fused: str  # the fused linear's name, e.g. "model.layers.3.qkv"
    offset: int  # first output column of this module in the fused output
    out_features: int
    in_features: int


Layout = dict[str, Target]  # HF module name ("model.layers.3.self_attn.k_proj") -> Target


@dataclass
class FusedLora:
    """The adapters of one batch on one fused linear: out += ((x @ a) * scales[row]) @ b."""

    a: torch.Tensor  # [in, R]: every used adapter's A^T side by side
    b: torch.Tensor  # [R, out_fused]: each adapter's B^T at its module's output columns
    scales: torch.Tensor  # [rows, R]: weight * alpha/r of the adapter owning each rank slot, per row


class AdapterBank:
    """The loaded adapters of one decoder, and the fused matrices for the adapter sets in use."""

    def __init__(self, layout: Layout, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                 cached_sets: int = 8):
        self.layout = layout
        self._width: dict[str, int] = {}  # fused linear -> its output width
        for t in layout.values():
            self._width[t.fused] = max(self._width.get(t.fused, 0), t.offset + t.out_features)
        self.dtype, self.device = dtype, device
        self.adapters: dict[str, LoraAdapter] = {}
        self.cached_sets = cached_sets
        # sorted adapter keys -> fused name -> (a, b, slot's adapter index [R], slot's alpha/r [R])
        self._sets: OrderedDict[tuple[str, ...], dict[str, tuple[torch.Tensor, ...]]] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, path: str | Path) -> str:
        """Load an adapter once (keyed by its resolved folder); raise if it does not fit the model."""
        key = str(adapter_folder(path).resolve())
        if key in self.adapters:
            return key
        ad = LoraAdapter.load(key, dtype=self.dtype)
        for module, (a, b) in ad.weights.items():
            t = self.layout.get(module)
            if t is None:
                raise GtExtError(f"{ad.path}: adapter targets {module}, which the serving decoder cannot adapt "
                                 "(LoRA on attention and MLP projections only)")
            if a.shape[1] != t.in_features or b.shape[0] != t.out_features or a.shape[0] != b.shape[1]:
                raise GtExtError(
                    f"{ad.path}: adapter shapes for {module} (A {tuple(a.shape)}, B {tuple(b.shape)}) "
                    f"do not fit the base model's ({t.out_features}x{t.in_features})"
                )
        with self._lock:
            self.adapters[key] = ad
        log.info("loaded adapter %s (r=%d, %d modules)", ad.path, ad.rank, len(ad.weights))
        return key

    def batch(self, rows: list[list[tuple[str, float]]]) -> dict[str, FusedLora]:
        """The fused LoRA of every adapted linear for a batch; `rows[b]` is row b's [(key, weight)].
        Empty when no row uses an adapter."""
        used = tuple(sorted({k for row in rows for k, w in row if w != 0.0}))
        if not used:
            return {}
        fused = self._fused(used)
        weights = torch.zeros(len(rows), len(used), dtype=self.dtype)  # [rows, adapters]
        for r, row in enumerate(rows):
            for k, w in row:
                if w != 0.0:
                    weights[r, used.index(k)] += w
        weights = weights.to(self.device)
        return {name: FusedLora(a, b, weights[:, idx] * scale) for name, (a, b, idx, scale) in fused.items()}

    def _fused(self, used: tuple[str, ...]) -> dict[str, tuple[torch.Tensor, ...]]:
        with self._lock:
            if used in self._sets:
                self._sets.move_to_end(used)
                return self._sets[used]
            ads = [self.adapters[k] for k in used]
        parts: dict[str, list[tuple[int, LoraAdapter, Target, torch.Tensor, torch.Tensor]]] = {}
        for i, ad in enumerate(ads):
            for module, (a, b) in ad.weights.items():
                t = self.layout[module]
                parts.setdefault(t.fused, []).append((i, ad, t, a, b))
        fused: dict[str, tuple[torch.Tensor, ...]] = {}
        for name, items in parts.items():
            in_f = items[0][2].in_features
            out_f = self._width[name]
            rank = sum(a.shape[0] for _, _, _, a, _ in items)
            a_cat = torch.zeros(in_f, rank, dtype=self.dtype)
            b_cat = torch.zeros(rank, out_f, dtype=self.dtype)
            idx = torch.zeros(rank, dtype=torch.long)
            scale = torch.zeros(rank, dtype=self.dtype)
            at = 0
            for i, ad, t, a, b in items:
                r = a.shape[0]
                a_cat[:, at : at + r] = a.T
                b_cat[at : at + r, t.offset : t.offset + t.out_features] = b.T
                idx[at : at + r] = i
                scale[at : at + r] = ad.scale
                at += r
            fused[name] = (a_cat.to(self.device), b_cat.to(self.device), idx.to(self.device), scale.to(self.device))
        with self._lock:
            self._sets[used] = fused
            while len(self._sets) > self.cached_sets:
                self._sets.popitem(last=False)
        return fused
