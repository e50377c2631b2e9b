"""Cheaper training kernels for the same function: a fused LoRA linear and a one-kernel RMSNorm.

    fuse_lora(model) -> int      # PEFT LoRA linears run through `LoraLinear` while training
    fuse_rms_norm(model) -> int  # LLaMA RMSNorms run through torch's rms_norm

PEFT computes a LoRA linear as `base(x) + lora_B(lora_A(dropout(x))) * scaling`: two full-size
elementwise passes over the [N, out] output (scale, add) forward, more backward, and a float32
detour when the base is bf16. `LoraLinear` computes the same y = x W^T + s (x A^T) B^T with the
add folded into the second matmul (`addmm_`, beta = 1) and a hand-written backward:
    dX = dY W + s (dY B) A        dA = s (dY B)^T X        dB = s dY^T (X A^T)
(W frozen: no weight gradient). Matmuls run in the base weight's dtype (bf16 on GPUs); the
adapter's own float32 weights get their gradients cast back to float32.

Both patches leave the modules and their state dicts as they were (saving, loading, merging and
`disable_adapter` work unchanged); a layer whose situation the fused path does not cover (dropout,
DoRA, several active adapters, merged weights, adapters disabled) runs PEFT's own forward.
"""

from __future__ import annotations

import types
from typing import Any

import torch
import torch.nn.functional as F


class LoraLinear(torch.autograd.Function):
    """y = x W^T + b + s (x A^T) B^T. x [..., in], W [out, in] frozen, A [r, in], B [out, r]."""

    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, scaling: float):  # type: ignore[override]
        dt = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else weight.dtype
        with torch.autocast(x.device.type, enabled=False):
            x2 = x.reshape(-1, x.shape[-1]).to(dt)  # [N, in]
            w = weight.to(dt)
            a, b = lora_a.to(dt), lora_b.to(dt)
            y = F.linear(x2, w, None if bias is None else bias.to(dt))  # [N, out]
            xa = x2 @ a.t()  # [N, r]
            y.addmm_(xa, b.t(), alpha=scaling)  # y += s * xa @ B^T, one pass over y
        ctx.save_for_backward(x2, xa, w, a, b)
        ctx.scaling, ctx.x_shape, ctx.x_dtype = scaling, x.shape, x.dtype
        ctx.a_dtype, ctx.b_dtype = lora_a.dtype, lora_b.dtype
        return y.view(*x.shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx, grad_y):  # type: ignore[override]
        x2, xa, w, a, b = ctx.saved_tensors
        s = ctx.scaling
        g = grad_y.reshape(-1, grad_y.shape[-1]).to(w.dtype)  # [N, out]
        gxa = (g @ b).mul_(s)  # [N, r]: gradient at x A^T
        grad_x = grad_a = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = g @ w  # [N, in]
            grad_x.addmm_(gxa, a)
            grad_x = grad_x.view(ctx.x_shape).to(ctx.x_dtype)
        if ctx.needs_input_grad[3]:
            grad_a = (gxa.t() @ x2).to(ctx.a_dtype)  # [r, in]
        if ctx.needs_input_grad[4]:
            grad_b = (g.t() @ xa).mul_(s).to(ctx.b_dtype)  # [out, r]
        return grad_x, None, None, grad_a, grad_b, None


def _fused_forward(self: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """Forward of a PEFT `lora.Linear` through `LoraLinear` when it computes the same thing."""
    active = self.active_adapters
    if (args or kwargs or self.disable_adapters or self.merged or len(active) != 1
            or active[0] not in self.lora_A or active[0] in getattr(self, "lora_variant", {})
            or not isinstance(self.lora_dropout[active[0]], torch.nn.Identity)
            or type(self.base_layer) is not torch.nn.Linear):
        return type(self).forward(self, x, *args, **kwargs)
    name = active[0]
    base = self.base_layer
    return LoraLinear.apply(x, base.weight, base.bias, self.lora_A[name].weight, self.lora_B[name].weight,
                            float(self.scaling[name]))


def fuse_lora(model: Any) -> int:
    """Route every PEFT LoRA linear of `model` through `LoraLinear`; returns how many."""
    from peft.tuners.lora.layer import Linear as LoraLayer

    n = 0
    for module in model.modules():
        if type(module) is LoraLayer:
            module.forward = types.MethodType(_fused_forward, module)
            n += 1
    return n


def _rms_forward(self: Any, x: torch.Tensor) -> torch.Tensor:
    """x * rsqrt(mean(x^2) + eps) * weight in float32 inside, x's dtype out (as LlamaRMSNorm)."""
    if torch.is_autocast_enabled(x.device.type):
        with torch.autocast(x.device.type, enabled=False):
            return F.rms_norm(x, self.weight.shape, self.weight.to(x.dtype), self.variance_epsilon)
    return F.rms_norm(x, self.weight.shape, self.weight.to(x.dtype), self.variance_epsilon)


def fuse_rms_norm(model: Any) -> int:
    """Run LLaMA-style RMSNorm modules (weight + variance_epsilon) through `F.rms_norm`; returns how many."""
    n = 0
    for module in model.modules():
        if type(module).__name__.endswith("RMSNorm") and hasattr(module, "variance_epsilon") \
                and isinstance(getattr(module, "weight", None), torch.nn.Parameter):
            module.forward = types.MethodType(_rms_forward, module)
            n += 1
    return n
