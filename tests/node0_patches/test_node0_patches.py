"""node0 adapters: run against an upstream node0 checkout named by $NODE0_PATH, skip without one.

node0 is not installable from any registry and is never vendored here; the final CI (or a user)
provides a checkout: `git clone https://github.com/PluralisResearch/node0 && NODE0_PATH=$PWD/node0`.
"""

from __future__ import annotations

import os

import pytest

from gt_ext.errors import GtExtError

needs_node0 = pytest.mark.skipif(
    not os.environ.get("NODE0_PATH"),
    reason="no node0 checkout: set NODE0_PATH to a clone of github.com/PluralisResearch/node0",
)


def test_missing_checkout_is_a_one_line_error(tmp_path, monkeypatch):
    from node0_patches import load_node0

    monkeypatch.delenv("NODE0_PATH", raising=False)
    with pytest.raises(GtExtError, match="NODE0_PATH"):
        load_node0()
    with pytest.raises(GtExtError, match="not a node0 checkout"):
        load_node0(tmp_path)


def _tiny_args():
    from node0.models.llama.arguments import LlamaArguments

    return LlamaArguments(hidden_dim=32, n_heads=4, n_kv_heads=2, num_hidden_layers=2, vocab_size=100,
                          multiple_of=16, max_seq_len=16, ss_component=None, stage=0)


@needs_node0
def test_lora_body_expert_trains_only_adapters():
    import torch

    from node0_patches import load_node0
    from node0_patches.lora import LORA_NAMES, register_lora_experts

    load_node0()
    from hivemind.moe.server.layers.custom_experts import name_to_block

    classes = register_lora_experts(r=4)
    assert set(classes) == set(LORA_NAMES.values())
    assert name_to_block["lm_body_lora"] is classes["lm_body_lora"]
    assert "lm_body" in name_to_block and name_to_block["lm_body"] is not classes["lm_body_lora"]

    torch.manual_seed(0)
    expert = classes["lm_body_lora"](_tiny_args())
    trainable = {n for n, p in expert.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert not any(".wo." in n or ".w2." in n for n in trainable)  # compressed outputs untouched

    x = torch.randn(2, 8, 32)
    with torch.no_grad():
        base_out = expert(x)
    # LoRA B starts at zero: the adapted stage computes exactly node0's function at first.
    for n, p in expert.named_parameters():
        if "lora_B" in n:
            assert torch.count_nonzero(p) == 0
    expert(x).pow(2).mean().backward()
    grads = {n for n, p in expert.named_parameters() if p.grad is not None}
    assert grads and grads <= trainable
    with torch.no_grad():
        for n, p in expert.named_parameters():
            if "lora_B" in n:
                p.add_(0.1)
        assert not torch.allclose(expert(x), base_out)


@needs_node0
def test_optimizer_subclass_skips_nan_instead_of_killing():
    from node0_patches.optim import trainable_autostep_optimizer_class

    cls = trainable_autostep_optimizer_class()
    from node0.server.optim import AutoStepOptimizer

    assert issubclass(cls, AutoStepOptimizer)
    # The override must not call os.killpg: it is defined on the subclass itself.
    assert "_check_and_accumulate_gradients" in cls.__dict__
