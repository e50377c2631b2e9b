"""Checkpoint gathering: every stage's LoRA weights collected into one PEFT adapter.

    state, step = gather_adapter(client, route)       # {PEFT name with global layer index: tensor}
    GatheredAdapter(state, lora, base_dir).save_pretrained(folder)

Stages name their LoRA weights as the full model does (`base_model.model.model.layers.<i>...`),
so the union of the stages' weights IS the adapter a single process would have saved: export,
serving and the registry take it unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from gt_ext.errors import GtExtError
from gt_ext.train.config import LoraSettings


def gather_adapter(client: Any, route: list[list[Any]]) -> tuple[dict[str, torch.Tensor], int]:
    """Collect the live LoRA weights of every span (one replica each); all must be at one step."""
    state: dict[str, torch.Tensor] = {}
    steps = {}
    for replicas in route:
        part, step = client.adapter(replicas)
        overlap = set(part) & set(state)
        if overlap:
            raise GtExtError(f"stages overlap: {sorted(overlap)[0]} comes from two spans")
        state.update(part)
        steps[replicas[0].span_label] = step
    if len(set(steps.values())) > 1:
        raise GtExtError(f"stages are at different steps while gathering: {steps}")
    return state, next(iter(steps.values()))


class GatheredAdapter:
    """A PEFT adapter held as a state dict; `save_pretrained` writes the folder PEFT would."""

    def __init__(self, state: dict[str, torch.Tensor], lora: LoraSettings, base_model_dir: str | Path):
        self.state, self.lora, self.base = state, lora, str(base_model_dir)

    def peft_config(self) -> Any:
        from peft import LoraConfig

        return LoraConfig(r=self.lora.r, lora_alpha=self.lora.alpha, lora_dropout=self.lora.dropout,
                          target_modules=list(self.lora.targets), bias="none", task_type="CAUSAL_LM",
                          base_model_name_or_path=self.base)

    def save_pretrained(self, folder: str | Path) -> None:
        """adapter_config.json + adapter_model.safetensors, as `PeftModel.save_pretrained`."""
        from safetensors.torch import save_file

        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        self.peft_config().save_pretrained(str(out))
        save_file({k: v.contiguous() for k, v in self.state.items()}, str(out / "adapter_model.safetensors"),
                  metadata={"format": "pt"})
