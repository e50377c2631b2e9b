"""Losses: exact values against plain full-logit computations, packing equivalence, DPO."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from train_corpus import write_corpus

from gt_ext.train import data, losses
from gt_ext.train.config import LoraSettings
from gt_ext.train.lora import add_lora


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from gt_ext.models import load_model

    model, tok = load_model("tiny-llama")
    torch.manual_seed(0)
    model = add_lora(model, LoraSettings(r=4, targets=["q_proj", "v_proj"]))
    # Non-zero B so the adapter actually changes the function (fresh LoRA has B = 0).
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    corpus = write_corpus(tmp_path_factory.mktemp("c"), tasks=("patrol",), n_train=8, n_val=2)
    sft, _ = data.load_items(corpus, "sft", "witness", "patrol", "train", tok, 512)
    dpo, _ = data.load_items(corpus, "dpo", "witness", "patrol", "train", tok, 512)
    return model, tok, sft, dpo


def _reference_nll(model, items):
    """Plain HF path: full logits of each example alone, log_softmax, gather the targets."""
    total, count = 0.0, 0
    for it in items:
        for ex in it.examples:
            logits = model(input_ids=torch.tensor([ex.input_ids])).logits[0].double()
            tgt = torch.tensor(ex.targets)
            sel = tgt != data.IGNORE
            logp = logits.log_softmax(-1)[sel].gather(1, tgt[sel, None])
            total -= float(logp.sum())
            count += int(sel.sum())
    return total / count, count


@torch.no_grad()
def test_sft_loss_exact_against_full_logits(setup):
    model, tok, sft, _ = setup
    batch = data.fixed_batches(sft[:3], 3, False, 1024, tok.pad_token_id)[0]
    s, n = losses.sft_loss_sum(model, batch)
    ref, count = _reference_nll(model, sft[:3])
    assert n == count
    assert abs(float(s) / n - ref) < 1e-5
    # and the mean helper agrees with the sum helper
    assert abs(float(losses.sft_loss(model, batch)) - float(s) / n) < 1e-6


@torch.no_grad()
def test_packed_loss_equals_unpacked(setup):
    model, tok, sft, _ = setup
    packed = data.fixed_batches(sft, 2, True, 400, tok.pad_token_id)
    unpacked = data.fixed_batches(sft, 2, False, 400, tok.pad_token_id)
    assert sum(b["input_ids"].shape[0] for b in packed) < len(sft)  # really packed
    sp = sum(losses.sft_loss_sum(model, b)[0] for b in packed)
    np_ = sum(losses.sft_loss_sum(model, b)[1] for b in packed)
    su = sum(losses.sft_loss_sum(model, b)[0] for b in unpacked)
    nu = sum(losses.sft_loss_sum(model, b)[1] for b in unpacked)
    assert np_ == nu
    assert abs(float(sp) / np_ - float(su) / nu) < 1e-5
    # per-example log-probs too, not just the average
    lp = torch.cat([losses.sequence_logps(model, b) for b in packed])
    lu = torch.cat([losses.sequence_logps(model, b) for b in unpacked])
    assert torch.allclose(lp, lu, atol=1e-4, rtol=1e-5)


def test_packed_gradients_equal_unpacked(setup):
    model, tok, sft, _ = setup
    grads = []
    for pack in (True, False):
        model.zero_grad()
        b = data.fixed_batches(sft[:4], 4, pack, 1024, tok.pad_token_id)[0]
        losses.sft_loss(model, b).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad]))
    model.zero_grad()
    assert torch.allclose(grads[0], grads[1], atol=1e-6, rtol=1e-4)


def test_dpo_loss_formula():
    pc, pr = torch.tensor([-10.0, -5.0]), torch.tensor([-12.0, -4.0])
    rc, rr = torch.tensor([-11.0, -5.0]), torch.tensor([-11.0, -5.0])
    loss, m = losses.dpo_loss(pc, pr, rc, rr, beta=0.5)
    margins = [0.5 * ((-10 + 11) - (-12 + 11)), 0.5 * ((-5 + 5) - (-4 + 5))]  # [1.0, -0.5]
    expected = sum(-math.log(1 / (1 + math.exp(-x))) for x in margins) / 2
    assert abs(float(loss) - expected) < 1e-6
    assert m["reward_acc"] == 0.5


@torch.no_grad()
def test_dpo_reference_is_model_without_adapter(setup):
    model, tok, _, dpo = setup
    batch = data.fixed_batches(dpo[:2], 2, True, 1024, tok.pad_token_id)[0]
    ref = losses.reference_logps(model, batch)
    with model.disable_adapter():
        base = losses.sequence_logps(model, batch)
    pol = losses.sequence_logps(model, batch)
    assert torch.allclose(ref, base) and not torch.allclose(ref, pol)
    # Against the plain per-example computation of the base model.
    ex = dpo[0].examples[1]
    with model.disable_adapter():
        logits = model(input_ids=torch.tensor([ex.input_ids])).logits[0]
    tgt = torch.tensor(ex.targets)
    sel = tgt != data.IGNORE
    expected = F.log_softmax(logits, -1)[sel].gather(1, tgt[sel, None]).sum()
    assert abs(float(ref[1]) - float(expected)) < 1e-3
    # Policy == reference gives exactly log 2.
    loss, _ = losses.dpo_batch_loss(model, batch, beta=0.1, ref=pol)
    assert abs(float(loss) - math.log(2)) < 1e-6
