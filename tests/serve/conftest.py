"""Shared fixtures for serving tests: a tiny-llama Generator and real PEFT adapters for it."""

from __future__ import annotations

from pathlib import Path

import pytest


def make_adapter(out: Path, seed: int, targets=("q_proj", "v_proj"), r: int = 4, alpha: int = 8,
                 base: str = "tiny-llama") -> Path:
    """Write a real PEFT LoRA adapter for `base` with non-zero (random) A and B, so it changes outputs."""
    import torch
    from peft import LoraConfig, get_peft_model

    from gt_ext.models import load_model

    model, _ = load_model(base)
    torch.manual_seed(seed)
    cfg = LoraConfig(r=r, lora_alpha=alpha, target_modules=list(targets), init_lora_weights=False)
    peft_model = get_peft_model(model, cfg)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # big enough that greedy text differs from the base model's
    peft_model.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def adapters(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {
        "a": make_adapter(root / "a", seed=1),
        "b": make_adapter(root / "b", seed=2, targets=("q_proj", "v_proj", "down_proj"), r=2, alpha=4),
    }


@pytest.fixture(scope="session")
def gen():
    from gt_ext.serve.generate import Generator

    return Generator("tiny-llama")


@pytest.fixture(scope="session")
def adapter_factory():
    """`make_adapter(out, seed, ...)` for tests that need their own adapter folders."""
    return make_adapter
