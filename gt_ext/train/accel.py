"""Where and how fast a model trains: device and dtype, attention backend, fused kernels,
activation checkpointing, compilation.

    resolve_device("auto") -> torch.device          # CUDA when there is one, else CPU
    resolve_dtype("auto", device) -> "bfloat16" | "float32"
    prepare(model, cfg, device, dtype) -> dict       # what was switched on (logged, put in run.json)

`prepare` works on a PEFT model whose base is already on `device` in `dtype`. It never changes
the function the model computes (tests compare every switch against the plain path); it changes
how many kernels, how much padding and how much memory that takes.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from gt_ext.errors import GtExtError
from gt_ext.train import attention
from gt_ext.train.config import TrainConfig

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """`auto` -> cuda if available else cpu; `cuda`/`cuda:N`/`cpu` checked against this machine."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise GtExtError(f"device={name!r}: use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise GtExtError(f"device={name}: no CUDA device on this machine (use device=auto or cpu)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise GtExtError(f"device={name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type != "cpu":
        raise GtExtError(f"device={name!r}: use auto, cpu, cuda or cuda:N")
    return dev


def resolve_dtype(name: str, device: torch.device) -> str:
    """`auto` -> bfloat16 on CUDA (where bf16 matmuls run at full rate), float32 on CPU."""
    if name != "auto":
        return name
    return "bfloat16" if device.type == "cuda" else "float32"


def prepare(model: Any, cfg: TrainConfig, device: torch.device, dtype: str) -> dict[str, Any]:
    """Switch on the speed settings of `cfg` for the PEFT `model` (in place); returns them."""
    from gt_ext.train.fused import fuse_lora, fuse_rms_norm

    base = model.get_base_model()
    torch_dtype = getattr(torch, dtype)
    backend = attention.choose_backend(cfg.attention, device, torch_dtype, base.config)
    attention.install(model, backend)
    # bf16 base: autocast makes the float32 adapter weights compute in bf16 as well.
    base._gt_autocast = torch.bfloat16 if torch_dtype == torch.bfloat16 else None
    done: dict[str, Any] = {"device": str(device), "dtype": dtype, "attention": backend}
    if cfg.fused:
        done["fused_lora_layers"] = fuse_lora(model)
        done["fused_rms_norms"] = fuse_rms_norm(model)
    if cfg.gradient_checkpointing:
        if hasattr(base, "activation_checkpointing_enable"):  # transformers >= 5.2x
            base.activation_checkpointing_enable({"use_reentrant": False})
        else:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        done["gradient_checkpointing"] = True
    compile_layers = cfg.compile if cfg.compile != "auto" else (device.type == "cuda" and backend == "varlen")
    if compile_layers:
        if backend == "segments":
            raise GtExtError("compile=true needs attention varlen or dense (per-example segments recompile every batch)")
        if cfg.compile == "auto":
            from torch._dynamo import config as dynamo_config

            dynamo_config.suppress_errors = True  # auto: a layer that cannot compile runs eagerly
        # One graph serves every layer (same code, parameters as inputs); dynamic: token counts vary per step.
        body = getattr(base, base.base_model_prefix)
        for layer in body.layers:
            layer.compile(dynamic=True)
        done["compiled_layers"] = len(body.layers)
    log.info("training setup: %s", done)
    return done
