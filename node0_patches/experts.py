"""LoRA pipeline stages as node0 experts: node0's model arguments with LoRA fields, and three expert
classes registered under new names (`lm_head_lora`, `lm_body_lora`, `lm_tail_lora`).

    from node0_patches.experts import stage_arguments, register_stage_experts
    args = stage_arguments(model_dir, span, lora, seed=0)      # a node0 LlamaArguments subclass
    register_stage_experts()                                    # node0's `lm_*` classes stay as they are
    expert = name_to_block[expert_class(span)](args)

An expert is a `gt_ext.pipeline.stage.StageModel` (transformers' Llama layers of one span, loaded
alone from an HF folder, LoRA on its own layers) behind node0's expert interface. Its inputs are
tensors with the batch first, as hivemind's runtime needs:

    head: input_ids [B,T] long, position_ids [B,T] long, example_index [B,T] long, adapter_on [B]
    body: x [B,T,D],            position_ids,            example_index,            adapter_on
    tail: x [B,T,D],            position_ids,            example_index,            adapter_on, targets [B,T]
    full: input_ids,            position_ids,            example_index,            adapter_on, targets

`example_index` rebuilds the batch's block-diagonal causal mask (gt_ext.train.data), `adapter_on` is
1.0 (LoRA on) or 0.0 (LoRA off: the DPO reference policy) per row. The head and body return the
activations for the next stage; the tail returns log p(target) per token [B,T] (0 off target).

With node0's activation compression (`use_compression`), activations travel in node0's own format:
D = hidden/compression_rate + 1, coordinates in the `rcv` subspace minus the fixed token embedding,
token ids in the last channel as float32, made by node0's `BaseExpert.compress_output` and read by
`BaseExpert.decompress_input`. The base model must keep its residual stream in that subspace
(node0-pretrained models do; `gt_ext.pipeline.subspace` makes one from any LLaMA), and after every
optimizer step `ss_regularize` projects the LoRA delta of the residual writers (o_proj, down_proj)
back into it, so compression stays lossless.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gt_ext.errors import GtExtError
from gt_ext.pipeline.stage import Span, load_stage, read_config
from gt_ext.train.config import LoraSettings
from node0_patches import load_node0

log = logging.getLogger(__name__)

EXPERT_CLASSES = {"head": "lm_head_lora", "body": "lm_body_lora", "tail": "lm_tail_lora", "full": "lm_full_lora"}
_SAMPLE_T = 4  # sequence length of the dummy batch hivemind runs once to learn output shapes


def expert_class(span: Span) -> str:
    """The registered expert name for a span (`full`: one stage holding the whole model)."""
    return EXPERT_CLASSES["full" if span.head and span.tail else span.kind]


@functools.cache
def stage_arguments_class() -> type:
    """`LoraLlamaArguments`: node0's `LlamaArguments` plus the base model folder, the layer span and
    the LoRA settings (node0 builds an expert from its arguments alone)."""
    load_node0()
    from node0.models.llama.arguments import LlamaArguments

    class LoraLlamaArguments(LlamaArguments):
        base_model_path: str
        first_layer: int
        last_layer: int
        total_layers: int
        lora_r: int = 8
        lora_alpha: float = 16.0
        lora_dropout: float = 0.0
        lora_targets: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj"]
        lora_seed: int = 0
        dtype: str = "float32"

        def span(self) -> Span:
            return Span(self.first_layer, self.last_layer, self.total_layers)

        def lora(self) -> LoraSettings:
            return LoraSettings(r=self.lora_r, alpha=self.lora_alpha, dropout=self.lora_dropout,
                                targets=list(self.lora_targets))

    return LoraLlamaArguments


def stage_arguments(
    model_dir: str | Path,
    span: Span,
    lora: LoraSettings,
    seed: int = 0,
    dtype: str = "float32",
    vocab_size: int | None = None,
    compression_rate: int | None = None,
    subspace: str | Path | None = None,
    max_seq_len: int = 2048,
) -> Any:
    """node0 model arguments for `span` of the LLaMA in `model_dir` (shapes from its config.json;
    `vocab_size` from the tokenizer, checked against the embedding)."""
    cfg = read_config(model_dir)
    vocab = vocab_size or cfg.vocab_size
    if vocab > cfg.vocab_size:
        raise GtExtError(f"{model_dir}: tokenizer has {vocab} tokens, the embedding only {cfg.vocab_size}")
    if lora.dropout:
        # A stage re-runs its forward inside backward; random dropout masks would differ between
        # the two and the gradient would not match the activations the next stage saw.
        raise GtExtError("lora.dropout must be 0 for pipeline training (stages recompute their forward in backward)")
    if (compression_rate is None) != (subspace is None):
        raise GtExtError("activation compression needs both a compression rate and a subspace file")
    return stage_arguments_class()(
        hidden_dim=cfg.hidden_size,
        n_heads=cfg.num_attention_heads,
        n_kv_heads=cfg.num_key_value_heads,
        vocab_size=vocab,
        norm_eps=cfg.rms_norm_eps,
        max_seq_len=max_seq_len,
        num_hidden_layers=span.last - span.first,  # node0: layers in this stage
        stage=span.first,
        use_compression=compression_rate is not None,
        compression_rate=compression_rate,
        ss_component=str(subspace) if subspace else None,
        base_model_path=str(model_dir),
        first_layer=span.first,
        last_layer=span.last,
        total_layers=cfg.num_hidden_layers,
        lora_r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        lora_targets=list(lora.targets),
        lora_seed=seed,
        dtype=dtype,
    )


def build_mask(example_index: torch.Tensor) -> torch.Tensor:
    """The batch's block-diagonal causal mask, rebuilt from example ids."""
    from gt_ext.train.data import dense_mask

    return dense_mask(example_index)


@functools.cache
def _expert_base() -> type:
    """The shared expert class (node0's compression methods borrowed from its BaseExpert)."""
    load_node0()
    from node0.models.llama.layers import BaseExpert

    class StageExpert(nn.Module):
        """A StageModel behind node0's expert interface (see module docstring)."""

        # node0's own wire format and subspace loading, used unchanged.
        compress_output = BaseExpert.compress_output
        decompress_input = BaseExpert.decompress_input
        load_comp = BaseExpert.load_comp

        def __init__(self, model_args: Any):
            super().__init__()
            from node0_patches.backend import StageCounters

            self.model_args = model_args
            self.span = model_args.span()
            self.counters = StageCounters()  # shared by the backend, the optimizer and the handlers
            # Training (the runtime's thread) and generation (node0_patches.inference) share the
            # module: one computes at a time, and serving adapters are switched only under it.
            self.compute_lock = threading.RLock()
            self.stage = load_stage(model_args.base_model_path, self.span, model_args.lora(),
                                    seed=model_args.lora_seed, dtype=model_args.dtype)
            if model_args.use_compression:
                h = model_args.hidden_dim
                self.compression_length = int(h // model_args.compression_rate)
                self.rcv = nn.Parameter(torch.empty(h, self.compression_length), requires_grad=False)
                self.fixed_tok_embeddings = nn.Embedding(model_args.vocab_size, h)
                self.fixed_tok_embeddings.weight.requires_grad_(False)

        def ss_regularize(self) -> None:
            """After a step: keep the LoRA delta of residual writers inside the compression subspace
            (the tail's output is not compressed, so it is left free)."""
            if self.model_args.use_compression and not self.span.tail:
                self.stage.project_residual_lora(self.rcv.data)

        def _run(self, x: torch.Tensor, position_ids: torch.Tensor, example_index: torch.Tensor,
                 adapter_on: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
            """Decompress the input if needed and run the layers; rows with adapter_on == 0 run with
            LoRA off. Returns (hidden [B,T,H], token ids [B,T,1] as float, or None)."""
            tokens = None
            if self.model_args.use_compression:
                if self.span.head:
                    tokens = x.unsqueeze(2).float()
                else:
                    full = self.decompress_input(x)  # [B, T, H + 1]
                    x, tokens = full[:, :, :-1], full[:, :, -1:]
            mask = build_mask(example_index)
            with self._autocast(x.device):
                return self._layers(x, position_ids, mask, adapter_on), tokens

        def infer(self, x: torch.Tensor, start: int, cache: Any, keep: int = 0) -> torch.Tensor:
            """Generation: run new tokens at absolute positions start.. against this stage's KV
            `cache` (updated in place). x: ids [1, T] (head) or activations [1, T, D] in the wire
            format. Returns activations for the next stage (the last `keep` positions when keep > 0)
            or, at the tail, next-token logits of the last position [1, V] (float32)."""
            dev = self.stage.model.rotary_emb.inv_freq.device
            x = x.to(dev)
            positions = torch.arange(start, start + x.shape[1], device=dev)[None]
            tokens = None
            if self.model_args.use_compression:
                if self.span.head:
                    tokens = x.unsqueeze(2).float()
                else:
                    full = self.decompress_input(x)  # [1, T, H + 1]
                    x, tokens = full[:, :, :-1], full[:, :, -1:]
            with self._autocast(dev):
                h = self.stage(x, positions, None, cache=cache)
                if self.span.tail:
                    return self.stage.logits(h[:, -1:])[:, 0].float().cpu()
            if keep:
                h, tokens = h[:, -keep:], (tokens[:, -keep:] if tokens is not None else None)
            return (self.compress_output(torch.cat([h, tokens], dim=-1)) if tokens is not None else h).cpu()

        def _autocast(self, device: torch.device) -> Any:
            """bf16 weights (dtype auto on CUDA): the float32 LoRA weights compute in bf16 too."""
            from contextlib import nullcontext

            if self.model_args.dtype == "float32":
                return nullcontext()
            return torch.autocast(device.type, dtype=getattr(torch, self.model_args.dtype))

        def _layers(self, x: torch.Tensor, position_ids: torch.Tensor, mask: torch.Tensor,
                    adapter_on: torch.Tensor) -> torch.Tensor:
            on = adapter_on > 0.5
            if bool(on.all()) or not bool(on.any()):
                with self.stage.adapters_disabled(not bool(on.all())):
                    return self.stage(x, position_ids, mask)
            # Mixed rows: attention never crosses rows, so each group runs alone and is put back.
            out = None
            for rows, disabled in ((on, False), (~on, True)):
                with self.stage.adapters_disabled(disabled):
                    h = self.stage(x[rows], position_ids[rows], mask[rows])
                if out is None:
                    out = h.new_empty((x.shape[0], *h.shape[1:]))
                out[rows] = h
            return out

    return StageExpert


@functools.cache
def register_stage_experts() -> dict[str, type]:
    """Register `lm_head_lora`, `lm_body_lora`, `lm_tail_lora` with hivemind's expert registry
    (idempotent); return {name: class}."""
    load_node0()
    from hivemind.moe.server.layers.custom_experts import name_to_block, register_expert_class

    base = _expert_base()

    class HeadStage(base):
        def forward(self, input_ids, position_ids, example_index, adapter_on):  # noqa: D102 - see module doc
            h, tokens = self._run(input_ids, position_ids, example_index, adapter_on)
            return self.compress_output(torch.cat([h, tokens], dim=-1)) if tokens is not None else h

    class BodyStage(base):
        def forward(self, x, position_ids, example_index, adapter_on):  # noqa: D102
            h, tokens = self._run(x, position_ids, example_index, adapter_on)
            return self.compress_output(torch.cat([h, tokens], dim=-1)) if tokens is not None else h

    class TailStage(base):
        def forward(self, x, position_ids, example_index, adapter_on, targets):  # noqa: D102
            h, _ = self._run(x, position_ids, example_index, adapter_on)
            with self._autocast(h.device):
                return self.stage.target_logps(h, targets)

    class FullStage(TailStage):
        """Head and tail at once (a one-stage pipeline): input ids in, log-probs out."""

    def ints(b: int, t: int) -> torch.Tensor:
        return torch.zeros(b, t, dtype=torch.long)

    samples: dict[str, tuple[type, Callable[..., Any]]] = {
        "lm_head_lora": (HeadStage, lambda b, t, d: (ints(b, _SAMPLE_T), ints(b, _SAMPLE_T), ints(b, _SAMPLE_T),
                                                     torch.ones(b))),
        "lm_body_lora": (BodyStage, lambda b, t, d: (torch.zeros(b, _SAMPLE_T, d), ints(b, _SAMPLE_T),
                                                     ints(b, _SAMPLE_T), torch.ones(b))),
        "lm_tail_lora": (TailStage, lambda b, t, d: (torch.zeros(b, _SAMPLE_T, d), ints(b, _SAMPLE_T),
                                                     ints(b, _SAMPLE_T), torch.ones(b), ints(b, _SAMPLE_T))),
        "lm_full_lora": (FullStage, lambda b, t, d: (ints(b, _SAMPLE_T), ints(b, _SAMPLE_T), ints(b, _SAMPLE_T),
                                                     torch.ones(b), ints(b, _SAMPLE_T))),
    }
    out = {}
    for name, (cls, sample) in samples.items():
        if name not in name_to_block:  # hivemind refuses to register a name twice
            register_expert_class(name, sample)(cls)
        out[name] = name_to_block[name]
    return out
