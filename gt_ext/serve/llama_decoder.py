"""A lean LLaMA forward for serving: prefill one sequence, decode one token for many, per-row LoRA.

    dec = LlamaDecoder(hf_model, quantize="int8", max_slots=8)
    slot = dec.cache.claim()
    logits = dec.prefill(slot, prompt_ids, lora=dec.adapters.batch([stack]))   # [V], last position
    logits = dec.decode([slot], next_ids, lora=dec.adapters.batch(stacks))     # [n, V], one row per slot
    logits = dec.prefill_many(slots, prompts, lora=dec.adapters.batch(stacks))  # [k, V]: k prompts at once

Built from a transformers `LlamaForCausalLM` (its weights, RMSNorm epsilon and rotary tables; the
HF model can be dropped afterwards). Why not the HF forward: at serving sizes on a CPU the model's
matmuls are small and the Python around them (masks, cache objects, seven separate projections and
hooks per layer) cost as much as the math. Here each layer is: RMSNorm, one fused q/k/v projection,
RoPE, a cache write, SDPA, the output projection, RMSNorm, one fused gate/up projection, SiLU*up,
the down projection; lm_head only on the positions that need logits.

Sequences live in a `SlotKVCache` (slots 0..n-1 in use); a decode step reads every running slot's
cache through views and masks each row to its own length, so sequences of any lengths, prompts and
adapters share one batch, and join or leave it between steps.

`quantize="int8"`: weights int8 per output channel, activations int8 per row (per token), integer
matmul (`torch._int_mm`, exact int32 sums), rescaled in fp32. Every row is quantized on its own, so
a row's linears never depend on which other rows share its batch (torch's dynamic quantization
takes one activation scale for the whole batch). Attention over batch-mates of other lengths may
still round differently in the last bits, which an int8 rounding can carry into the text.
LoRA runs in fp32 on the unquantized activations (`gt_ext.serve.adapter_stack`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gt_ext.errors import GtExtError
from gt_ext.serve.adapter_stack import AdapterBank, FusedLora, Layout, Target
from gt_ext.serve.kv_cache import SlotKVCache

STATIC_ROPE = ("default", "linear", "llama3", "yarn")  # rotary tables that do not depend on the length
QUANTIZE = (None, "none", "int8")


class Linear:
    """y = x @ W.T (+ bias) for x [n, in]: fp32 weights, or int8 weights with per-row int8 activations."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, int8: bool = False):
        self.out_features, self.in_features = weight.shape
        self.bias = None if bias is None else bias.detach().float().clone()
        self.int8 = int8
        w = weight.detach().float()
        if int8:
            # Symmetric per output channel: w ~= wq * ws; wq [out, in] int8, read as [in, out] by _int_mm.
            self.ws = (w.abs().amax(1) / 127.0).clamp_(min=1e-12)  # [out]
            self.wq = torch.round(w / self.ws[:, None]).clamp_(-127, 127).to(torch.int8).t()
        else:
            self.w = w.contiguous()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.int8:
            # Per-row scale: row r's result depends on row r only, and integer sums are exact.
            sx = x.abs().amax(-1, keepdim=True).div_(127.0).clamp_(min=1e-12)  # [n, 1]
            xq = torch.round(x / sx).to(torch.int8)
            y = torch._int_mm(xq, self.wq) * self.ws  # int32 [n, out] -> fp32
            y.mul_(sx)
        else:
            y = F.linear(x, self.w)
        if self.bias is not None:
            y += self.bias
        return y


class LlamaDecoder:
    """Serving forward over a `LlamaForCausalLM`'s weights, with its own KV cache and adapters."""

    def __init__(self, model: torch.nn.Module, quantize: str | None = None, max_slots: int = 8,
                 max_len: int | None = None, device: str | torch.device = "cpu"):
        cfg = model.config
        if getattr(cfg, "model_type", None) != "llama":
            raise GtExtError(f"serving decoder: model type {getattr(cfg, 'model_type', None)!r} is not supported "
                             "(LLaMA-family models only)")
        rope = (getattr(cfg, "rope_parameters", None) or {}).get("rope_type", "default")
        if rope not in STATIC_ROPE:
            raise GtExtError(f"serving decoder: rope type {rope!r} is not supported (one of {', '.join(STATIC_ROPE)})")
        if quantize not in QUANTIZE:
            raise GtExtError(f"unknown quantize mode {quantize!r}: use int8 or none")
        int8 = quantize == "int8"
        if int8 and torch.device(device).type != "cpu":
            raise GtExtError("quantize int8: the integer matmul path is for CPU; use none on a GPU")
        self.device = device
        self.n_heads = cfg.num_attention_heads
        self.n_kv = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.eps = float(cfg.rms_norm_eps)
        self.max_len = int(max_len or cfg.max_position_embeddings)
        inner = model.model
        self.embed = inner.embed_tokens.weight.detach().float()  # [V, D]
        self.layers: list[dict] = []
        layout: Layout = {}
        q_w, kv_w = self.n_heads * self.head_dim, self.n_kv * self.head_dim
        for i, layer in enumerate(inner.layers):
            at, mlp = layer.self_attn, layer.mlp
            qkv = [at.q_proj, at.k_proj, at.v_proj]
            gate_up = [mlp.gate_proj, mlp.up_proj]
            self.layers.append({
                "in_norm": layer.input_layernorm.weight.detach().float(),
                "qkv": Linear(torch.cat([m.weight for m in qkv]), _cat_bias(qkv), int8),
                "o": Linear(at.o_proj.weight, at.o_proj.bias, int8),
                "post_norm": layer.post_attention_layernorm.weight.detach().float(),
                "gate_up": Linear(torch.cat([m.weight for m in gate_up]), _cat_bias(gate_up), int8),
                "down": Linear(mlp.down_proj.weight, mlp.down_proj.bias, int8),
            })
            p = f"model.layers.{i}"
            d, f = cfg.hidden_size, mlp.gate_proj.out_features
            for name, fused, off, out_f, in_f in (
                ("self_attn.q_proj", "qkv", 0, q_w, d), ("self_attn.k_proj", "qkv", q_w, kv_w, d),
                ("self_attn.v_proj", "qkv", q_w + kv_w, kv_w, d), ("self_attn.o_proj", "o", 0, d, q_w),
                ("mlp.gate_proj", "gate_up", 0, f, d), ("mlp.up_proj", "gate_up", f, f, d),
                ("mlp.down_proj", "down", 0, d, f),
            ):
                layout[f"{p}.{name}"] = Target(f"{p}.{fused}", off, out_f, in_f)
        self.norm = inner.norm.weight.detach().float()
        self.lm_head = Linear(model.lm_head.weight, None, int8)
        self.vocab_size = self.lm_head.out_features
        # RoPE tables [max_len, head_dim] from the model's own rotary module (its scaling included).
        pos = torch.arange(self.max_len)[None]
        cos, sin = inner.rotary_emb(self.embed[:1][None], pos)
        self.cos, self.sin = cos[0].float(), sin[0].float()
        self.adapters = AdapterBank(layout)
        self.cache = SlotKVCache(len(self.layers), self.n_kv, self.head_dim, max_slots, self.max_len)
        if torch.device(device).type != "cpu":
            self._to(device)

    # ------------------------------------------------------------------------------------------ forward
    def prefill(self, slot: int, ids: list[int] | torch.Tensor, lora: dict[str, FusedLora] | None = None
                ) -> torch.Tensor:
        """Run `ids` (the prompt, or its next chunk) for the sequence in `slot`; logits [V] of the last."""
        return self.prefill_many([slot], [ids], lora)[0]

    @torch.inference_mode()
    def prefill_many(self, slots: list[int], chunks: list[list[int] | torch.Tensor],
                     lora: dict[str, FusedLora] | None = None) -> torch.Tensor:
        """Prefill `chunks[j]` for the sequence in `slots[j]`, all in one forward; logits [k, V] of
        each chunk's last position. `lora` scales have one row per chunk (or one for all).

        The linears (where the weights are read: the cost of a CPU prefill) run once over every
        chunk's tokens side by side ([T, D], T = the chunks' total); attention runs per chunk over
        its own sequence's cache. Eight 30-token prompts cost one pass over the weights, not eight."""
        ids = [torch.as_tensor(c, dtype=torch.long, device=self.device) for c in chunks]
        lens = [t.shape[0] for t in ids]
        starts = [self.cache.lengths[s] for s in slots]
        self.cache.reserve(max(s + t for s, t in zip(starts, lens, strict=True)))
        pos = torch.cat([torch.arange(s, s + t, device=self.device) for s, t in zip(starts, lens, strict=True)])
        x = self.embed[torch.cat(ids)]  # [T, D]
        cos, sin = self.cos[pos, None], self.sin[pos, None]  # [T, 1, hd]
        if lora and len(slots) > 1:  # one scale row per chunk -> one per token
            tok_row = torch.repeat_interleave(torch.arange(len(slots), device=self.device),
                                              torch.tensor(lens, device=self.device))
            lora = {k: FusedLora(f.a, f.b, f.scales.index_select(0, tok_row) if f.scales.shape[0] > 1 else f.scales)
                    for k, f in lora.items()}
        # A chunk after earlier ones sees the whole earlier cache and itself causally: [t, start + t].
        masks = [None if s == 0 else torch.ones(t, s + t, dtype=torch.bool, device=self.device).tril_(s)
                 for s, t in zip(starts, lens, strict=True)]
        bounds = [0]
        for t in lens:
            bounds.append(bounds[-1] + t)
        for i, layer in enumerate(self.layers):
            q, k, v = self._qkv(x, layer, f"model.layers.{i}", lora, cos, sin)  # [T, H|KV, hd]
            parts = []
            for j, slot in enumerate(slots):
                a, b, t = bounds[j], bounds[j + 1], lens[j]
                self.cache.write(i, slot, k[a:b].transpose(0, 1)[None], v[a:b].transpose(0, 1)[None])
                keys, values = self.cache.slot_view(i, slot, starts[j] + t)  # [1, KV, start+t, hd]
                o = F.scaled_dot_product_attention(q[a:b].transpose(0, 1)[None], keys, values,
                                                   attn_mask=masks[j], is_causal=masks[j] is None,
                                                   enable_gqa=True)  # [1, H, t, hd]
                parts.append(o[0].transpose(0, 1).reshape(t, -1))
            x = self._rest(x, parts[0] if len(parts) == 1 else torch.cat(parts), layer, f"model.layers.{i}", lora)
        for slot, t in zip(slots, lens, strict=True):
            self.cache.advance(slot, t)
        last = torch.tensor(bounds[1:], device=self.device) - 1
        return self._logits(x.index_select(0, last))

    @torch.inference_mode()
    def decode(self, slots: list[int], ids: list[int] | torch.Tensor, lora: dict[str, FusedLora] | None = None
               ) -> torch.Tensor:
        """One new token `ids[r]` for the sequence in `slots[r]` of each row; logits [n, V].

        Rows 0..n-1 in slots 0..n-1 (the usual case) read the cache through views; any other set
        of slots is gathered (a copy: only while a long prompt is still being prefilled)."""
        ids = torch.as_tensor(ids, dtype=torch.long, device=self.device)
        n = ids.shape[0]
        lengths = [self.cache.lengths[s] for s in slots]
        longest = max(lengths) + 1
        self.cache.reserve(longest)
        contiguous = list(slots) == list(range(n))
        pos = torch.tensor(lengths, dtype=torch.long, device=self.device)  # [n]: each row's new position
        rows = torch.as_tensor(slots, dtype=torch.long, device=self.device)
        # Row r sees its own positions 0..pos[r]: [n, 1, 1, longest].
        mask = (torch.arange(longest, device=self.device)[None] <= pos[:, None])[:, None, None]
        x = self.embed[ids]  # [n, D]
        cos, sin = self.cos[pos, None], self.sin[pos, None]  # [n, 1, hd]
        group = self.n_heads // self.n_kv
        for i, layer in enumerate(self.layers):
            q, k, v = self._qkv(x, layer, f"model.layers.{i}", lora, cos, sin)
            self.cache.write_rows(i, rows, pos, k, v)
            if contiguous:
                keys, values = self.cache.view(i, n, longest)  # [n, KV, longest, hd]
            else:
                keys, values = (t.index_select(0, rows) for t in self.cache.view(i, self.cache.used, longest))
            # Query heads grouped under their KV head ([n, KV, group, hd]): GQA without copying K/V.
            a = F.scaled_dot_product_attention(q.view(n, self.n_kv, group, self.head_dim), keys, values,
                                               attn_mask=mask)
            x = self._rest(x, a.reshape(n, -1), layer, f"model.layers.{i}", lora)
        for s in slots:
            self.cache.advance(s, 1)
        return self._logits(x)

    def _qkv(self, x, layer, name, lora, cos, sin):
        h = F.rms_norm(x, (x.shape[-1],), layer["in_norm"], self.eps)
        qkv = _lora(layer["qkv"](h), h, lora, f"{name}.qkv")
        t = x.shape[0]
        hq, hk = self.n_heads * self.head_dim, self.n_kv * self.head_dim
        qk = qkv[:, : hq + hk].view(t, self.n_heads + self.n_kv, self.head_dim)
        qk = qk * cos + _rotate_half(qk) * sin  # RoPE on q and k heads at once
        q, k = qk[:, : self.n_heads], qk[:, self.n_heads :]
        v = qkv[:, hq + hk :].view(t, self.n_kv, self.head_dim)
        return q, k, v

    def _rest(self, x, attn, layer, name, lora):
        x = x + _lora(layer["o"](attn), attn, lora, f"{name}.o")
        h = F.rms_norm(x, (x.shape[-1],), layer["post_norm"], self.eps)
        gu = _lora(layer["gate_up"](h), h, lora, f"{name}.gate_up")
        f = gu.shape[-1] // 2
        m = F.silu(gu[:, :f]) * gu[:, f:]
        return x + _lora(layer["down"](m), m, lora, f"{name}.down")

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.lm_head(F.rms_norm(x, (x.shape[-1],), self.norm, self.eps))

    def _to(self, device) -> None:
        for attr in ("embed", "norm", "cos", "sin"):
            setattr(self, attr, getattr(self, attr).to(device))
        for lin in [self.lm_head] + [v for layer in self.layers for v in layer.values() if isinstance(v, Linear)]:
            lin.w = lin.w.to(device)
            if lin.bias is not None:
                lin.bias = lin.bias.to(device)
        for layer in self.layers:
            layer["in_norm"], layer["post_norm"] = layer["in_norm"].to(device), layer["post_norm"].to(device)
        self.adapters.device = device
        self.cache = SlotKVCache(len(self.layers), self.n_kv, self.head_dim, self.cache.max_slots, self.max_len,
                                 device=device)


def _lora(y: torch.Tensor, x: torch.Tensor, lora: dict[str, FusedLora] | None, name: str) -> torch.Tensor:
    """y += the batch's adapters on this fused linear: ((x @ A) * row scales) @ B."""
    fl = lora.get(name) if lora else None
    if fl is None:
        return y
    h = x @ fl.a  # [n, R]
    h *= fl.scales  # [n, R] per decode row, or [1, R] for every position of a prefill
    return y.addmm_(h, fl.b)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _cat_bias(mods: list[torch.nn.Module]) -> torch.Tensor | None:
    if all(m.bias is None for m in mods):
        return None
    return torch.cat([m.bias if m.bias is not None else torch.zeros(m.out_features) for m in mods])
