"""One pipeline stage: a span of an HF LLaMA's decoder layers, loaded alone, with LoRA on its layers.

    span = Span(first=2, last=4, total=6)                 # layers 2..3 of a 6-layer model
    stage = load_stage(model_dir, span, lora, seed=0)     # reads only these tensors from the folder
    h = stage(x, position_ids, attention_mask)            # x: input ids (head) or hidden [B, T, H]
    logp = stage.target_logps(h, targets)                 # tail: log p(target) per token [B, T]

    cache = stage.new_cache()                             # generation: this stage's KV cache
    h = stage(x, position_ids, attention_mask=None, cache=cache)   # positions carry the offset

The stage is built from transformers' own Llama parts (decoder layers, rotary embedding, causal-mask
helper, norm), named as in the full model (`model.layers.<global index>...`, `model.embed_tokens`,
`model.norm`, `lm_head`), so that

* a pipeline of stages computes exactly what `LlamaForCausalLM` computes (same kernels, same mask);
* LoRA (PEFT) wraps only this stage's layers, and its parameter names are the full model's, so the
  adapters of all stages gather into one PEFT adapter with global layer indices (`adapter_state`);
* generation works with a per-stage KV cache: `position_ids` give the absolute positions of the new
  tokens, the mask is built against the cache (transformers' `create_causal_mask`), and the cache
  holds only this stage's layers.

Nothing here knows about node0 or hivemind: node0_patches wraps a stage as a node0 expert.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gt_ext.errors import GtExtError
from gt_ext.train.config import LoraSettings
from gt_ext.train.data import IGNORE

log = logging.getLogger(__name__)

PEFT_PREFIX = "base_model.model."
# Modules whose output is added to the residual stream (with activation compression their LoRA
# delta must stay inside the compression subspace).
RESIDUAL_WRITERS = ("o_proj", "down_proj")
TRAINED = "default"  # PEFT name of the adapter a stage trains; serving adapters have other names


@dataclass(frozen=True)
class Span:
    """Decoder layers [first, last) of a model with `total` layers. The head (first == 0) also holds
    the token embedding; the tail (last == total) the final norm and the LM head."""

    first: int
    last: int
    total: int

    def __post_init__(self) -> None:
        if not 0 <= self.first < self.last <= self.total:
            raise GtExtError(f"layer span {self.first}:{self.last} is not inside 0:{self.total} (need first < last)")

    @property
    def head(self) -> bool:
        return self.first == 0

    @property
    def tail(self) -> bool:
        return self.last == self.total

    @property
    def kind(self) -> str:
        """`head`, `body` or `tail` (a span covering the whole model counts as the head)."""
        return "head" if self.head else ("tail" if self.tail else "body")

    def label(self) -> str:
        """Human form, e.g. `layers 2-3`."""
        return f"layers {self.first}-{self.last - 1}"


def split_layers(total: int, stages: int) -> list[Span]:
    """Split `total` layers into `stages` contiguous spans of near-equal size (earlier ones larger)."""
    if not 1 <= stages <= total:
        raise GtExtError(f"cannot split {total} layers into {stages} stages (need 1 <= stages <= layers)")
    size, extra = divmod(total, stages)
    spans, first = [], 0
    for i in range(stages):
        last = first + size + (1 if i < extra else 0)
        spans.append(Span(first, last, total))
        first = last
    return spans


def parse_span(text: str, total: int) -> Span:
    """`A:B` (layers A..B-1) or `K/N` (the K-th of N even spans) -> Span; one-line error otherwise."""
    try:
        if "/" in text:
            k, n = (int(x) for x in text.split("/"))
            if not 0 <= k < n:
                raise ValueError
            return split_layers(total, n)[k]
        a, b = (int(x) for x in text.split(":"))
        return Span(a, b, total)
    except ValueError:
        raise GtExtError(f"layer span {text!r}: expected A:B (layers A..B-1) or K/N (stage K of N)") from None


# ---------------------------------------------------------------------------------------------------
# Reading only a span's tensors from an HF folder
# ---------------------------------------------------------------------------------------------------


def read_config(model_dir: str | Path) -> Any:
    """The folder's LlamaConfig, with the attention kernel transformers picks for it by default."""
    from transformers import AutoConfig

    folder = Path(model_dir)
    if not (folder / "config.json").is_file():
        raise GtExtError(f"{folder}: not an HF model folder (no config.json)")
    cfg = AutoConfig.from_pretrained(str(folder))
    if cfg.model_type != "llama":
        raise GtExtError(f"{folder}: pipeline stages serve LLaMA models, this one is {cfg.model_type!r}")
    if getattr(cfg, "_attn_implementation", None) is None:
        cfg._attn_implementation = "sdpa"  # what from_pretrained picks on CPU: same kernel, same numbers
    return cfg


def _weight_files(folder: Path) -> dict[str, Path]:
    """{tensor name: safetensors file} for a single-file or sharded checkpoint."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {name: folder / f for name, f in weight_map.items()}
    single = folder / "model.safetensors"
    if not single.is_file():
        raise GtExtError(f"{folder}: no model.safetensors (pipeline stages read safetensors checkpoints)")
    from safetensors import safe_open

    with safe_open(str(single), "pt") as f:
        return {name: single for name in f.keys()}  # noqa: SIM118 - safe_open has keys(), not iteration


def stage_tensor_names(span: Span, tied: bool) -> list[str]:
    """Checkpoint names this span needs (and nothing else)."""
    names: list[str] = []
    if span.head:
        names.append("model.embed_tokens.weight")
    for i in range(span.first, span.last):
        p = f"model.layers.{i}."
        names += [p + s for s in ("input_layernorm.weight", "post_attention_layernorm.weight",
                                  "self_attn.q_proj.weight", "self_attn.k_proj.weight",
                                  "self_attn.v_proj.weight", "self_attn.o_proj.weight",
                                  "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight")]
    if span.tail:
        names.append("model.norm.weight")
        names.append("model.embed_tokens.weight" if tied else "lm_head.weight")
    return list(dict.fromkeys(names))


def read_span_tensors(model_dir: str | Path, span: Span, tied: bool, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Read only `span`'s tensors (safetensors reads each one on its own, never the whole file)."""
    from safetensors import safe_open

    folder = Path(model_dir)
    where = _weight_files(folder)
    wanted = stage_tensor_names(span, tied)
    missing = [n for n in wanted if n not in where]
    # Some checkpoints store biases (attention_bias=True); pick those up too when present.
    extra = [n for n in where if n.endswith(".bias") and any(n.startswith(w[: -len("weight")]) for w in wanted)]
    if missing:
        raise GtExtError(f"{folder}: checkpoint lacks {missing[0]} (and {len(missing) - 1} more) needed by {span.label()}")
    out: dict[str, torch.Tensor] = {}
    by_file: dict[Path, list[str]] = {}
    for n in wanted + extra:
        by_file.setdefault(where[n], []).append(n)
    for path, names in by_file.items():
        with safe_open(str(path), "pt") as f:
            for n in names:
                out[n] = f.get_tensor(n).to(dtype)
    if span.tail and tied:
        out["lm_head.weight"] = out["model.embed_tokens.weight"]
        if not span.head:
            del out["model.embed_tokens.weight"]
    return out


_HASH_CACHE = "model-hashes.json"


def model_fingerprint(model_dir: str | Path) -> str:
    """sha256 of a model folder's config and weights (16 hex chars): stages of one pipeline must
    agree on it. Our cache folders carry a CHECKSUM file; other folders are hashed once and the
    result cached by (path, size, mtime)."""
    from gt_ext.paths import cache_dir

    folder = Path(model_dir).resolve()
    marker = folder / "CHECKSUM"
    if marker.is_file():
        return hashlib.sha256(marker.read_bytes()).hexdigest()[:16]
    files = [folder / "config.json"] + sorted(set(_weight_files(folder).values()))
    stamp = ";".join(f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files)
    cache_file = cache_dir() / _HASH_CACHE
    try:
        cache = json.loads(cache_file.read_text()) if cache_file.is_file() else {}
    except json.JSONDecodeError:
        cache = {}
    hit = cache.get(str(folder))
    if isinstance(hit, dict) and hit.get("stamp") == stamp:
        return str(hit["hash"])
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    digest = h.hexdigest()[:16]
    cache[str(folder)] = {"stamp": stamp, "hash": digest}
    from gt_ext.atomic import atomic_write_json

    atomic_write_json(cache_file, cache)
    return digest


# ---------------------------------------------------------------------------------------------------
# The stage module
# ---------------------------------------------------------------------------------------------------


class StageModel(nn.Module):
    """Decoder layers `span` of a LLaMA (see module docstring). Build with `load_stage`."""

    def __init__(self, config: Any, span: Span):
        from transformers.models.llama.modeling_llama import (
            LlamaDecoderLayer,
            LlamaRMSNorm,
            LlamaRotaryEmbedding,
        )

        super().__init__()
        if config.num_hidden_layers != span.total:
            raise GtExtError(f"span of {span.total} layers for a model with {config.num_hidden_layers}")
        self.config, self.span = config, span
        self.model = nn.Module()
        if span.head:
            self.model.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        # A ModuleDict keyed by the global index keeps the full model's parameter names.
        self.model.layers = nn.ModuleDict(
            {str(i): LlamaDecoderLayer(config, layer_idx=i) for i in range(span.first, span.last)}
        )
        if span.tail:
            self.model.norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.model.rotary_emb = LlamaRotaryEmbedding(config=config)

    # -- forward --------------------------------------------------------------------------------------
    def forward(
        self,
        x: torch.Tensor,
        position_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: Any = None,
    ) -> torch.Tensor:
        """Run this stage's layers.

        x: input ids [B, T] (head) or hidden states [B, T, H] (other stages).
        position_ids [B, T]: absolute positions (restart per packed example; offset by the cached
            length when decoding).
        attention_mask: a 4-D bool mask [B, 1, T, T_total] (True = may attend), e.g. the training
            batch's block-diagonal mask, or a 2-D padding mask [B, T_total], or None (plain causal).
        cache: a `new_cache()` when generating: keys/values of earlier tokens, updated in place.
        Returns hidden states [B, T, H]; the tail's are after the final norm.
        """
        from transformers.masking_utils import create_causal_mask

        h = self.model.embed_tokens(x) if self.span.head else x
        mask = create_causal_mask(
            config=self.config,
            inputs_embeds=h,
            attention_mask=attention_mask,
            cache=cache,
            position_ids=position_ids,
            layer_idx=self.span.first,  # the cache holds only this stage's layers
        )
        rope = self.model.rotary_emb(h, position_ids=position_ids)
        for layer in self.model.layers.values():
            h = layer(h, attention_mask=mask, position_embeddings=rope, position_ids=position_ids,
                      cache=cache, use_cache=cache is not None)
        if self.span.tail:
            h = self.model.norm(h)
        return h

    def target_logps(self, h: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Tail: log p(target) at every position [B, T] (0 where targets == -100). The LM head runs
        only at target positions, as in single-process training (gt_ext.train.losses)."""
        sel = targets != IGNORE
        logits = self.lm_head(h[sel]).float()  # [N, V]
        out = torch.zeros(targets.shape, dtype=torch.float32, device=h.device)
        out[sel] = -F.cross_entropy(logits, targets[sel], reduction="none")
        return out

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """Tail: next-token logits [B, T, V] (generation)."""
        return self.lm_head(h).float()

    def new_cache(self) -> Any:
        """An empty KV cache for one generation session on this stage."""
        from transformers import DynamicCache

        return DynamicCache(config=self.config)

    # -- LoRA -----------------------------------------------------------------------------------------
    def lora_modules(self) -> Iterator[tuple[str, nn.Module]]:
        """(full-model name, module) of every LoRA-wrapped linear layer of this stage."""
        for name, m in self.named_modules():
            if isinstance(getattr(m, "lora_A", None), nn.ModuleDict):
                yield name, m

    def _wrapped_layers(self) -> list[nn.Module]:
        """The LoRA-wrapped layers, listed once: generation switches their adapters on every step,
        and walking the module tree each time cost ~1 ms per stage and token. Reset by whatever
        wraps more layers (`add_stage_lora`, `add_serving_adapter`)."""
        if self.__dict__.get("_wrapped") is None:
            self.__dict__["_wrapped"] = [m for _, m in self.lora_modules()]
        return self.__dict__["_wrapped"]

    def _forget_wrapped_layers(self) -> None:
        self.__dict__["_wrapped"] = None

    @contextmanager
    def adapters_disabled(self, disabled: bool = True) -> Iterator[None]:
        """Run with the LoRA adapters off (the DPO reference policy); no-op if `disabled` is False."""
        layers = [m for _, m in self.lora_modules()] if disabled else []
        for m in layers:
            m.enable_adapters(False)
        try:
            yield
        finally:
            for m in layers:
                m.enable_adapters(True)

    def adapter_state(self) -> dict[str, torch.Tensor]:
        """LoRA weights under PEFT's saved names with global layer indices
        (`base_model.model.model.layers.7.self_attn.q_proj.lora_A.weight`)."""
        out = {}
        for name, p in self.named_parameters():
            if p.requires_grad and ".lora_" in name:
                out[PEFT_PREFIX + name.replace(".default.", ".")] = p.detach().clone()
        return out

    def load_adapter_state(self, state: dict[str, torch.Tensor], strict: bool = True) -> None:
        """Load LoRA weights from PEFT names (the keys of this stage's layers; others are ignored
        unless `strict`, which also requires every local LoRA weight to be present)."""
        params = dict(self.named_parameters())
        mine = {}
        for key, value in state.items():
            local = key[len(PEFT_PREFIX):] if key.startswith(PEFT_PREFIX) else key
            local = local.replace(".lora_A.weight", ".lora_A.default.weight").replace(
                ".lora_B.weight", ".lora_B.default.weight")
            if local in params:
                mine[local] = value
        expected = {n for n, p in params.items() if p.requires_grad and ".lora_" in n}
        if strict and set(mine) != expected:
            missing = sorted(expected - set(mine))
            raise GtExtError(f"adapter does not fit {self.span.label()}: missing {missing[:1]} ({len(missing)} tensors)")
        with torch.no_grad():
            for n, v in mine.items():
                params[n].copy_(v)

    def project_residual_lora(self, basis: torch.Tensor) -> None:
        """Keep the LoRA delta of residual writers (o_proj, down_proj) inside span(basis) [H, k]:
        B <- basis basis^T B. With activation compression this keeps compression lossless."""
        with torch.no_grad():
            for name, m in self.lora_modules():
                if name.rsplit(".", 1)[-1] in RESIDUAL_WRITERS and TRAINED in m.lora_B:
                    w = m.lora_B[TRAINED].weight  # [H, r] (serving adapters are left as trained)
                    w.copy_(basis @ (basis.T @ w))

    # -- serving adapters (generation) ----------------------------------------------------------------
    def serving_adapter_names(self) -> list[str]:
        """Names of the serving adapters this stage holds (see `add_serving_adapter`)."""
        names: set[str] = set()
        for _, m in self.lora_modules():
            names.update(n for n in m.lora_A if n != TRAINED)
        return sorted(names)

    def add_serving_adapter(self, name: str, scale: float,
                            weights: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Hold another LoRA adapter for generation, as a named PEFT adapter next to the trained one.

        weights: {full-model module name (`model.layers.7.self_attn.q_proj`): (A [r, in], B [out, r])}
        of this stage's layers only; scale: its alpha/r (`LoraAdapter.scale`). The adapter is frozen
        and inactive except inside `serving_adapters`; the trained adapter (`default`), its
        optimizer and the training forward are not touched."""
        from peft import LoraConfig, inject_adapter_in_model

        if not name.isidentifier() or name == TRAINED:
            raise GtExtError(f"serving adapter name {name!r}: letters, digits and '_', not {TRAINED!r}")
        if not weights:
            raise GtExtError(f"serving adapter {name}: no LoRA weights for {self.span.label()}")
        layers = dict(self.model.layers.named_modules())
        rel: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for module, (a, b) in weights.items():
            parts = module.split(".")
            local = ".".join(parts[2:])  # "7.self_attn.q_proj" inside the layers' ModuleDict
            if parts[:2] != ["model", "layers"] or local not in layers or not parts[2].isdigit():
                raise GtExtError(f"serving adapter {name}: {module} is not a linear layer of {self.span.label()}")
            base = getattr(layers[local], "base_layer", layers[local])
            if not isinstance(base, nn.Linear) or a.shape[1] != base.in_features or \
                    b.shape[0] != base.out_features or a.shape[0] != b.shape[1]:
                raise GtExtError(f"serving adapter {name}: shapes for {module} (A {tuple(a.shape)}, "
                                 f"B {tuple(b.shape)}) do not fit the base model's layer")
            rel[local] = (a, b)
        before = {id(m): list(m.active_adapters) for _, m in self.lora_modules()}
        ranks = {k: int(a.shape[0]) for k, (a, _) in rel.items()}
        r0 = next(iter(ranks.values()))
        # scaling = alpha/r per module; alpha = scale * r gives every module the adapter's scale.
        cfg = LoraConfig(r=r0, lora_alpha=scale * r0, lora_dropout=0.0, bias="none", target_modules=sorted(rel),
                         rank_pattern={k: r for k, r in ranks.items() if r != r0},
                         alpha_pattern={k: scale * r for k, r in ranks.items() if r != r0})
        inject_adapter_in_model(cfg, self.model.layers, adapter_name=name)
        self._forget_wrapped_layers()
        with torch.no_grad():
            for local, (a, b) in rel.items():
                m = self.model.layers.get_submodule(local)  # the PEFT wrapper now
                m.lora_A[name].weight.copy_(a)
                m.lora_B[name].weight.copy_(b)
        # PEFT makes the new adapter active and trainable everywhere: put the trained one back.
        for _, m in self.lora_modules():
            m._active_adapter = before.get(id(m), [TRAINED])
        for n, p in self.named_parameters():
            if f".{name}." in n:
                p.requires_grad_(False)

    def drop_serving_adapter(self, name: str) -> None:
        """Forget a serving adapter (its layers stay wrapped, holding the other adapters)."""
        for _, m in self.lora_modules():
            if name in m.lora_A:
                m.delete_adapter(name)

    @contextmanager
    def serving_adapters(self, stack: list[tuple[str, float]]) -> Iterator[None]:
        """Run with exactly these serving adapters on, each at its weight (`[]`: the base model);
        the trained adapter is off. Not thread-safe: callers hold the stage's compute lock.

        A wrapped layer that none of the stack's adapters touches runs as its plain base layer
        meanwhile (its `forward` is the base `nn.Linear`'s): PEFT's wrapper forward costs ~15 us of
        Python per call even with no adapter active, ~4 ms per token over SmolLM2's 120 wrapped
        layers. The module tree is left as it is (the optimizer thread may walk it)."""
        saved = []
        try:
            for m in self._wrapped_layers():
                on = [n for n, _ in stack if n in m.lora_A]
                if not on:
                    object.__setattr__(m, "forward", m.base_layer.forward)  # an instance attribute
                    saved.append((m, None, None))
                    continue
                saved.append((m, m._active_adapter, dict(m.scaling)))
                m._active_adapter = on
                for n, w in stack:
                    m.set_scale(n, w)  # w * alpha / r (ignored where the adapter has no module)
            yield
        finally:
            for m, active, scaling in saved:
                if active is None:
                    object.__delattr__(m, "forward")  # back to the class's (PEFT's) forward
                    continue
                m._active_adapter = active
                m.scaling.clear()
                m.scaling.update(scaling)


def add_stage_lora(stage: StageModel, lora: LoraSettings, seed: int) -> StageModel:
    """Freeze the stage and inject LoRA into its own layers; initial weights from `init_lora_by_name`
    (the same as a single-process run with the same seed)."""
    from peft import LoraConfig, inject_adapter_in_model

    from gt_ext.train.lora import init_lora_by_name

    for p in stage.parameters():
        p.requires_grad_(False)
    names = {n.rsplit(".", 1)[-1] for n, _ in stage.model.layers.named_modules()}
    missing = [t for t in lora.targets if t not in names]
    if missing:
        raise GtExtError(f"lora.targets: {', '.join(missing)} not found in the stage's layers")
    cfg = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                     target_modules=list(lora.targets), bias="none")
    inject_adapter_in_model(cfg, stage.model.layers)
    stage._forget_wrapped_layers()
    init_lora_by_name(stage, seed)
    return stage


def load_stage(
    model_dir: str | Path,
    span: Span,
    lora: LoraSettings | None = None,
    seed: int = 0,
    dtype: str = "float32",
) -> StageModel:
    """Build `span` of the LLaMA in `model_dir`, reading only its tensors; frozen; LoRA on its layers
    when `lora` is given."""
    cfg = read_config(model_dir)
    span = Span(span.first, span.last, cfg.num_hidden_layers) if span.total != cfg.num_hidden_layers else span
    tied = bool(getattr(cfg, "tie_word_embeddings", False))
    tdtype = getattr(torch, dtype)
    with torch.device("meta"):
        stage = StageModel(cfg, span)
    state = read_span_tensors(model_dir, span, tied, tdtype)
    # Parameters come from the checkpoint (assign); the rotary buffer is computed, not stored.
    stage.load_state_dict(state, strict=False, assign=True)
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    stage.model.rotary_emb = LlamaRotaryEmbedding(config=cfg)
    left = [n for n, p in stage.named_parameters() if p.is_meta]
    if left:
        raise GtExtError(f"{model_dir}: no weights for {left[0]} in {span.label()}")
    stage.eval()
    for p in stage.parameters():
        p.requires_grad_(False)
    if lora is not None:
        add_stage_lora(stage, lora, seed)
    log.info("stage %s of %s: %d frozen + %d LoRA parameters", span.label(), os.path.basename(str(model_dir)),
             sum(p.numel() for p in stage.parameters() if not p.requires_grad),
             sum(p.numel() for p in stage.parameters() if p.requires_grad))
    return stage
