"""A run folder made by hand: tiny-llama + a LoRA with random (non-zero) B, saved like a finished run."""

from __future__ import annotations

import json
from pathlib import Path

import torch


def make_run(root: Path, base_model: str = "tiny-llama", scale: float = 0.05, targets=("q_proj", "k_proj", "v_proj", "o_proj")) -> Path:
    from gt_ext.models import load_model
    from gt_ext.train.config import LoraSettings
    from gt_ext.train.lora import add_lora, save_adapter

    model, _ = load_model(base_model)
    torch.manual_seed(1)
    model = add_lora(model, LoraSettings(r=4, alpha=8, targets=list(targets)))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, scale)  # a fresh LoRA has B = 0, which would make merging trivially exact
    root.mkdir(parents=True, exist_ok=True)
    save_adapter(model, root / "adapter")
    (root / "run.json").write_text(json.dumps({
        "role": "witness", "task": None, "base_model": base_model, "config": {}, "corpus_hash": "c0ffee",
        "examples": 1, "dpo_pairs": 0, "lora": {"r": 4, "alpha": 8, "targets": list(targets)},
        "metrics": {}, "status": "done", "parent": None}))
    return root
