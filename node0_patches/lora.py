"""LoRA stages for node0: node0's head/body/tail experts with PEFT LoRA on the attention inputs.

`register_lora_experts()` registers `lm_head_lora`, `lm_body_lora`, `lm_tail_lora` (new names;
node0's own `lm_*` classes stay as they are) with hivemind's expert registry. Each is the node0
class with its weights frozen and LoRA adapters injected by PEFT into `targets`.

Default targets are the q/k/v input projections (`wq`, `wk`, `wv`). The output projections `wo`
and `w2` are left out on purpose: with activation compression node0 keeps their outputs inside
the `rcv` subspace, and an unprojected LoRA delta there breaks compressed training.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from node0_patches import load_node0

log = logging.getLogger(__name__)

DEFAULT_TARGETS: tuple[str, ...] = ("wq", "wk", "wv")
LORA_NAMES = {"lm_head": "lm_head_lora", "lm_body": "lm_body_lora", "lm_tail": "lm_tail_lora"}


def add_lora(module: Any, r: int = 8, alpha: float = 16.0, targets: Sequence[str] = DEFAULT_TARGETS) -> Any:
    """Freeze `module` and inject trainable LoRA adapters (PEFT) into the named linear layers."""
    from peft import LoraConfig, inject_adapter_in_model

    for p in module.parameters():
        p.requires_grad_(False)
    cfg = LoraConfig(r=r, lora_alpha=alpha, target_modules=list(targets), lora_dropout=0.0, bias="none")
    inject_adapter_in_model(cfg, module)
    n = sum(p.numel() for p in module.parameters() if p.requires_grad)
    log.info("LoRA r=%d on %s: %d trainable parameters", r, ",".join(targets), n)
    return module


def register_lora_experts(r: int = 8, alpha: float = 16.0, targets: Sequence[str] = DEFAULT_TARGETS) -> dict[str, type]:
    """Register LoRA variants of node0's stage experts under new names; return {name: class}."""
    load_node0()
    from hivemind.moe.server.layers.custom_experts import name_to_block, register_expert_class
    from node0.models.llama import layers

    bases = {"lm_head": (layers.HeadExpert, layers.head_sample_input),
             "lm_body": (layers.BodyExpert, layers.body_sample_input),
             "lm_tail": (layers.TailExpert, layers.tail_sample_input)}
    out: dict[str, type] = {}
    for base_name, (base_cls, sample_input) in bases.items():
        name = LORA_NAMES[base_name]
        if name in name_to_block:  # registering twice is an error in hivemind
            out[name] = name_to_block[name]
            continue

        def __init__(self, model_args, _base=base_cls):  # noqa: N807 - a method body for type()
            _base.__init__(self, model_args)
            add_lora(self, r=r, alpha=alpha, targets=targets)

        cls = type(f"{base_cls.__name__}Lora", (base_cls,), {"__init__": __init__})
        register_expert_class(name, sample_input)(cls)
        out[name] = cls
    return out
