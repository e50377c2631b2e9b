"""LoRA adapters through PEFT: role adapters on a base model, task adapters on a role model.

Public API (stable; the swarm loop builds on it):

    load_base_for_training(cfg) -> (model, tokenizer)   # base (+ role adapter merged) with a fresh LoRA
    lora_for_training(model, cfg, device, dtype) -> PeftModel   # the same for a model already loaded
    add_lora(model, lora_settings, seed=None) -> PeftModel  # trainable LoRA, everything else frozen
    init_lora_by_name(model, seed)                       # LoRA A from (seed, module name): split-invariant
    apply_role_adapter(model, role_adapter_dir) -> model # base + role LoRA merged: a role model
    trainable_parameters(model) -> list[Parameter]
    save_adapter(model, folder)                          # PEFT save_pretrained, atomic (temp dir + rename)
    load_adapter_weights(model, folder)                  # restore LoRA weights into an existing PeftModel

A role model is base + role LoRA. A task adapter trains on top of the role model with the role
LoRA merged into the frozen weights, and is saved as its own PEFT folder. Because LoRA deltas add
(W + dW_role + dW_task), serving can stack the two adapter files on the base model and get the
same function.

With a seed, LoRA A of every adapted module is drawn from a generator seeded by (seed, the module's
name in the base model, e.g. `model.layers.3.self_attn.q_proj`), not from the global RNG stream.
The initial adapter is then the same whether one process wraps the whole model or pipeline stages
each wrap their own layers (gt_ext.pipeline).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from gt_ext.atomic import replace_dir
from gt_ext.errors import GtExtError
from gt_ext.train.config import LoraSettings, TrainConfig

log = logging.getLogger(__name__)


def base_module_name(name: str) -> str:
    """A module's name in the bare base model: PEFT's `base_model.model.` prefix removed."""
    prefix = "base_model.model."
    return name[len(prefix):] if name.startswith(prefix) else name


def init_lora_by_name(model: Any, seed: int) -> None:
    """Re-draw every LoRA A (kaiming-uniform, as PEFT does) from a generator seeded by (seed, the
    module's base-model name), and zero every LoRA B, so the initial adapter does not depend on
    which other modules the same process wrapped."""
    for name, module in model.named_modules():
        lora_a = getattr(module, "lora_A", None)
        if not isinstance(lora_a, torch.nn.ModuleDict):
            continue
        digest = hashlib.sha256(f"{seed}/{base_module_name(name)}".encode()).digest()
        gen = torch.Generator().manual_seed(int.from_bytes(digest[:8], "big") & (2**63 - 1))
        with torch.no_grad():
            for adapter, a in lora_a.items():
                w = torch.empty(a.weight.shape, dtype=torch.float32)
                torch.nn.init.kaiming_uniform_(w, a=math.sqrt(5), generator=gen)
                a.weight.copy_(w)
                module.lora_B[adapter].weight.zero_()


def add_lora(model: Any, lora: LoraSettings, seed: int | None = None) -> Any:
    """Wrap `model` with a trainable LoRA adapter; base weights are frozen. With `seed`, the adapter's
    initial weights come from `init_lora_by_name` (the same for any split of the model)."""
    from peft import LoraConfig, get_peft_model

    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    missing = [t for t in lora.targets if t not in names]
    if missing:
        raise GtExtError(f"lora.targets: {', '.join(missing)} not found in the model (e.g. q_proj, k_proj, v_proj, o_proj)")
    cfg = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.targets),
        bias="none",
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, cfg)
    if seed is not None:
        init_lora_by_name(peft_model, seed)
    return peft_model


def apply_role_adapter(model: Any, role_adapter: str | Path) -> Any:
    """Merge a role LoRA into `model`'s weights and return the plain (merged) model.

    `role_adapter` is a registry ref `name:ver` or an adapter/run/export folder; its own parent
    stack (if any) goes in first (`gt_ext.models.refs.parent_stack`)."""
    from peft import PeftModel

    from gt_ext.models.refs import parent_stack

    for folder in parent_stack(str(role_adapter), f"role adapter {role_adapter}"):
        model = PeftModel.from_pretrained(model, str(folder)).merge_and_unload()
    return model


def load_base_for_training(cfg: TrainConfig) -> tuple[Any, Any]:
    """Base model (plus merged role adapter when `cfg.role_adapter`) with a fresh trainable LoRA,
    on `cfg.device` in `cfg.dtype`, with the speed settings of `cfg` switched on (`accel.prepare`)."""
    from gt_ext.models import load_model
    from gt_ext.train import accel

    device = accel.resolve_device(cfg.device)
    dtype = accel.resolve_dtype(cfg.dtype, device)
    torch.manual_seed(cfg.seed)  # LoRA A init draws from the global RNG
    model, tok = load_model(cfg.base_model, dtype=dtype, device=str(device))
    if cfg.role_adapter:
        model = apply_role_adapter(model, cfg.role_adapter)
    return lora_for_training(model, cfg, device, dtype), tok


def lora_for_training(model: Any, cfg: TrainConfig, device: Any, dtype: str) -> Any:
    """A loaded base model (on `device`, in `dtype`) -> PEFT model with a fresh LoRA (seeded) and
    the speed settings of `cfg`; `model._gt_setup` says what was switched on."""
    from gt_ext.train import accel

    model.config.use_cache = False
    torch.manual_seed(cfg.seed)
    peft_model = add_lora(model, cfg.lora, seed=cfg.seed)
    peft_model._gt_setup = accel.prepare(peft_model, cfg, device, dtype)
    return peft_model


def trainable_parameters(model: Any) -> list[torch.nn.Parameter]:
    """Parameters that require grad (the adapter's)."""
    return [p for p in model.parameters() if p.requires_grad]


def save_adapter(model: Any, folder: str | Path) -> Path:
    """`save_pretrained` the adapter into `folder` atomically: a temp sibling folder, then rename."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        model.save_pretrained(str(tmp))
        os.chmod(tmp, 0o755)  # mkdtemp creates it private
        replace_dir(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def load_adapter_weights(model: Any, folder: str | Path) -> None:
    """Load LoRA weights from a PEFT folder into an existing PeftModel (same shape)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    f = Path(folder) / "adapter_model.safetensors"
    if not f.is_file():
        raise GtExtError(f"{folder}: no adapter_model.safetensors")
    result = set_peft_model_state_dict(model, load_file(str(f)))
    unexpected = getattr(result, "unexpected_keys", None)
    if unexpected:
        raise GtExtError(f"{folder}: adapter does not fit this model ({len(unexpected)} unexpected tensors)")
