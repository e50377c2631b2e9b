"""Attention over packed examples without a dense T x T mask.

A micro-batch is run as ONE flat row of its real tokens ([1, N], no padding); each example is a
segment of it, `cu_seqlens` = [0, len0, len0+len1, ..., N] (int32). Attention is causal inside a
segment and never crosses one, so a packed example computes exactly what it computes alone.

Backends (chosen once per model by `choose_backend`):
    "varlen"  CUDA, bf16/fp16: FlashAttention-2's variable-length kernel (PyTorch's own build,
              `aten._flash_attention_forward/backward`): no mask, no padding, no wasted blocks.
    "segments" any device: `scaled_dot_product_attention(is_causal=True)` per example, outputs
              concatenated. Exact and free of masked-out work; one kernel call per example, which
              is cheap on CPU (few, long examples) and the fallback on CUDA.
    "dense"   the padded [B, T] rows with a block-diagonal [B, 1, T, T] mask (any model, no
              registration needed; what a plain transformers model gets).

The first two need the attention function registered with transformers under `ATTN_NAME`
(`install(model, backend)`); the per-batch segment layout travels as keyword arguments of the
model call (transformers passes unknown keyword arguments down to the attention function).
A call without them (e.g. `generate` on a training model) gets ordinary causal SDPA.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F

from gt_ext.errors import GtExtError

log = logging.getLogger(__name__)

ATTN_NAME = "gt_packed"
BACKENDS = ("auto", "varlen", "segments", "dense")


class _FlashVarlen(torch.autograd.Function):
    """Causal FlashAttention over segments. q [N, H, D], k/v [N, Hkv, D] (Hkv divides H)."""

    @staticmethod
    def forward(ctx, q, k, v, cu_seqlens, max_len: int, scale: float):  # type: ignore[override]
        out, lse, rng, unused, _ = torch.ops.aten._flash_attention_forward(
            q, k, v, cu_seqlens, cu_seqlens, max_len, max_len, 0.0, True, False, scale=scale)
        ctx.save_for_backward(q, k, v, out, lse, cu_seqlens, rng, unused)
        ctx.max_len, ctx.scale = max_len, scale
        return out

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        q, k, v, out, lse, cu, rng, unused = ctx.saved_tensors
        dq, dk, dv = torch.ops.aten._flash_attention_backward(
            grad_out.contiguous(), q, k, v, out, lse, cu, cu, ctx.max_len, ctx.max_len, 0.0, True, rng, unused,
            scale=ctx.scale)
        return dq, dk, dv, None, None, None


def flash_varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor, max_len: int,
                 scale: float) -> torch.Tensor:
    """Causal attention inside each segment: q [N, H, D], k/v [N, Hkv, D] -> [N, H, D]."""
    return _FlashVarlen.apply(q.contiguous(), k.contiguous(), v.contiguous(), cu_seqlens, max_len, scale)


def segment_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seq_lens: tuple[int, ...],
                      scale: float) -> torch.Tensor:
    """Causal SDPA per segment: q [1, H, N, D], k/v [1, Hkv, N, D] -> [1, H, N, D]."""
    gqa = q.shape[1] != k.shape[1]
    outs, start = [], 0
    for n in seq_lens:
        s = slice(start, start + n)
        outs.append(F.scaled_dot_product_attention(q[:, :, s], k[:, :, s], v[:, :, s], is_causal=True,
                                                   scale=scale, enable_gqa=gqa))
        start += n
    return torch.cat(outs, dim=2)


def packed_attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                     **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers attention function. query [1, H, N, D], key/value [1, Hkv, N, D] -> ([1, N, H, D], None).

    Keyword arguments set by `gt_ext.train.losses`: `gt_backend` ("varlen" | "segments"),
    `gt_cu_seqlens` (int32 [n+1] on the device), `gt_max_seqlen` (int), `gt_seq_lens` (tuple of int).
    """
    backend = kwargs.get("gt_backend")
    if backend is None:  # not a packed call: plain causal SDPA, as the "sdpa" implementation would do
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    if dropout:
        raise GtExtError("packed attention does not support attention dropout (config attention_dropout > 0)")
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    if backend == "varlen":
        # [1, H, N, D] -> [N, H, D]: the flat token axis first, as the varlen kernel wants it
        q, k, v = (t.squeeze(0).transpose(0, 1) for t in (query, key, value))  # views; free in backward
        out = flash_varlen(q, k, v, kwargs["gt_cu_seqlens"], kwargs["gt_max_seqlen"], scale)  # [N, H, D]
        return out.unsqueeze(0), None
    out = segment_attention(query, key, value, kwargs["gt_seq_lens"], scale)  # [1, H, N, D]
    return out.transpose(1, 2), None


def register() -> None:
    """Make `ATTN_NAME` a known attention implementation for transformers models (idempotent)."""
    from transformers import AttentionInterface

    AttentionInterface.register(ATTN_NAME, packed_attention)


def _self_test_varlen(device: torch.device, dtype: torch.dtype, n_heads: int, n_kv: int, head_dim: int) -> str | None:
    """Run the varlen kernel on a small random input (forward and backward) against per-segment SDPA.

    Returns None when it agrees, else the reason it cannot be used.
    """
    torch.manual_seed(1234)
    lens = (37, 5, 90)
    n = sum(lens)
    q = torch.randn(n, n_heads, head_dim, device=device, dtype=dtype, requires_grad=True)
    k = torch.randn(n, n_kv, head_dim, device=device, dtype=dtype, requires_grad=True)
    v = torch.randn(n, n_kv, head_dim, device=device, dtype=dtype, requires_grad=True)
    cu = torch.tensor([0, 37, 42, 132], device=device, dtype=torch.int32)
    try:
        out = flash_varlen(q, k, v, cu, max(lens), head_dim ** -0.5)
        out.float().square().sum().backward()
    except Exception as e:  # noqa: BLE001 - any failure means "not usable here"
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    got = [out.detach().float(), q.grad.float(), k.grad.float(), v.grad.float()]
    q2, k2, v2 = (t.detach().float().requires_grad_() for t in (q, k, v))
    ref = segment_attention(q2.transpose(0, 1)[None], k2.transpose(0, 1)[None], v2.transpose(0, 1)[None], lens,
                            head_dim ** -0.5)[0].transpose(0, 1)
    ref.square().sum().backward()
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, [ref.detach(), q2.grad, k2.grad, v2.grad], strict=True):
        err = float((a - b).norm() / b.norm().clamp_min(1e-6))
        if not err < 2e-2:  # bf16 operands: ~1e-3 to 1e-2
            return f"varlen {name} differs from per-segment SDPA (relative error {err:.3g})"
    return None


def choose_backend(requested: str, device: torch.device, dtype: torch.dtype, config: Any) -> str:
    """The backend to use for a model on `device` in `dtype` (see module doc); raise if `requested` cannot run."""
    if requested not in BACKENDS:
        raise GtExtError(f"attention={requested!r}: choose one of {', '.join(BACKENDS)}")
    if requested in ("dense", "segments"):
        return requested
    flash_ok = device.type == "cuda" and dtype in (torch.bfloat16, torch.float16)
    if not flash_ok:
        if requested == "varlen":
            raise GtExtError(f"attention=varlen needs CUDA and bfloat16/float16 (have {device.type}, {dtype})")
        return "segments"
    n_heads = int(config.num_attention_heads)
    n_kv = int(getattr(config, "num_key_value_heads", None) or n_heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // n_heads)
    why = _self_test_varlen(device, dtype, n_heads, n_kv, head_dim)
    if why is None:
        return "varlen"
    if requested == "varlen":
        raise GtExtError(f"attention=varlen: the FlashAttention varlen kernel failed its check here ({why})")
    log.warning("FlashAttention varlen kernel not usable (%s); using per-example SDPA", why)
    return "segments"


def install(model: Any, backend: str) -> None:
    """Point `model` (a transformers model or a PEFT wrapper) at the packed attention function."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if backend == "dense":
        base._gt_attention = "dense"
        return
    if float(getattr(base.config, "attention_dropout", 0.0) or 0.0) > 0:
        raise GtExtError("packed attention: the model's attention_dropout is > 0; use attention=dense")
    register()
    base.set_attn_implementation(ATTN_NAME)
    base._gt_attention = backend


def model_backend(model: Any) -> str:
    """The backend `install` set on `model` ("dense" for a model it never saw)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(base, "_gt_attention", "dense")
