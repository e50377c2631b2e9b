"""Speed settings compute the same function: packed segments, fused LoRA/RMSNorm, bf16, checkpointing."""

from __future__ import annotations

import pytest
import torch
from train_corpus import write_corpus

from gt_ext.errors import GtExtError
from gt_ext.train import accel, attention, data, losses
from gt_ext.train.config import LoraSettings, load_config
from gt_ext.train.fused import LoraLinear
from gt_ext.train.lora import add_lora


def _model(overrides=(), scale=0.05):
    """tiny-llama (4 heads, 2 KV heads: GQA) + a LoRA with non-zero B on every projection, prepared."""
    from gt_ext.models import load_model

    cfg = load_config(None, ["base_model=tiny-llama", "device=cpu", *overrides])
    dtype = accel.resolve_dtype(cfg.dtype, torch.device("cpu"))
    model, tok = load_model("tiny-llama", dtype=dtype)
    torch.manual_seed(0)
    model = add_lora(model, LoraSettings(r=4, targets=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                      "up_proj", "down_proj"]))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, scale)
    setup = accel.prepare(model, cfg, torch.device("cpu"), dtype)
    return model, tok, setup


@pytest.fixture(scope="module")
def sft(tmp_path_factory):
    from gt_ext.models import load_tokenizer

    corpus = write_corpus(tmp_path_factory.mktemp("c"), tasks=("patrol",), n_train=6, n_val=2)
    items, _ = data.load_items(corpus, "sft", "witness", "patrol", "train", load_tokenizer("tiny-llama"), 512)
    return items


def _loss_and_grads(model, batches):
    model.zero_grad()
    total = sum(int((b["targets"] != data.IGNORE).sum()) for b in batches)
    value = 0.0
    for b in batches:
        s, _ = losses.sft_loss_sum(model, b)
        (s / total).backward()
        value += float(s.detach()) / total
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    return value, grads


def test_defaults_on_cpu_pick_segments_fp32_and_fuse():
    model, _, setup = _model()
    assert setup["attention"] == "segments" and setup["dtype"] == "float32"
    assert "compiled_layers" not in setup  # compile: auto compiles on CUDA only
    assert setup["fused_lora_layers"] == 2 * 7 and setup["fused_rms_norms"] == 2 * 2 + 1
    assert attention.model_backend(model) == "segments"
    assert model.get_base_model().config._attn_implementation == attention.ATTN_NAME


def test_varlen_needs_cuda_and_bad_names_refused():
    cfg = load_config(None, ["base_model=tiny-llama"])
    with pytest.raises(GtExtError, match="varlen needs CUDA"):
        attention.choose_backend("varlen", torch.device("cpu"), torch.float32, None)
    with pytest.raises(GtExtError, match="device=.gpu0."):
        accel.resolve_device("gpu0")
    assert accel.resolve_device(cfg.device).type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_packed_segments_equal_plain_unpacked_model(sft):
    """The whole fast path (flat packed row, per-example attention, fused LoRA and RMSNorm) against
    the plain path (one padded row per example, dense mask, PEFT's own forward): same loss, same
    adapter gradients."""
    fast, tok, _ = _model()
    plain, _, _ = _model(["attention=dense", "fused=false"])
    packed = data.fixed_batches(sft, 3, True, 400, tok.pad_token_id)
    unpacked = data.fixed_batches(sft, 3, False, 400, tok.pad_token_id)
    assert sum(b["input_ids"].shape[0] for b in packed) < len(sft)  # really packed
    lf, gf = _loss_and_grads(fast, packed)
    lp, gp = _loss_and_grads(plain, unpacked)
    assert lf == pytest.approx(lp, abs=1e-5)
    assert gf.keys() == gp.keys() and len(gf) == 2 * 2 * 7
    for n in gf:
        torch.testing.assert_close(gf[n], gp[n], atol=1e-6, rtol=1e-4, msg=n)


def test_fused_lora_linear_matches_peft_in_fp32_and_bf16():
    torch.manual_seed(3)
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    w, bias = torch.randn(12, 16, dtype=torch.float64), torch.randn(12, dtype=torch.float64)
    a, b = torch.randn(4, 16, dtype=torch.float64), torch.randn(12, 4, dtype=torch.float64)
    torch.autograd.gradcheck(lambda x, a, b: LoraLinear.apply(x, w, bias, a, b, 0.7),
                             (x.requires_grad_(), a.requires_grad_(), b.requires_grad_()))
    # bf16 base and activations, float32 adapter (as a bf16 training run): close to the fp64 truth
    xb = x.detach().to(torch.bfloat16).requires_grad_()
    af, bf = a.detach().float().requires_grad_(), b.detach().float().requires_grad_()
    y = LoraLinear.apply(xb, w.to(torch.bfloat16), bias.to(torch.bfloat16), af, bf, 0.7)
    assert y.dtype == torch.bfloat16
    y.float().square().sum().backward()
    x64, a64, b64 = (t.detach().clone().requires_grad_() for t in (x, a, b))
    ref = x64 @ w.t() + bias + 0.7 * (x64 @ a64.t()) @ b64.t()
    ref.square().sum().backward()
    assert af.grad.dtype == torch.float32 and bf.grad.dtype == torch.float32
    for got, want in ((y, ref), (xb.grad, x64.grad), (af.grad, a64.grad), (bf.grad, b64.grad)):
        err = float((got.double() - want).norm() / want.norm())
        assert err < 3e-2, err


def test_bf16_autocast_close_to_fp32(sft):
    m32, tok, _ = _model()
    m16, _, setup = _model(["dtype=bfloat16"])
    assert setup["dtype"] == "bfloat16" and m16.get_base_model()._gt_autocast == torch.bfloat16
    # adapters stay float32 (master weights); the base is bf16
    assert {p.dtype for p in m16.parameters() if p.requires_grad} == {torch.float32}
    assert m16.get_base_model().model.layers[0].mlp.up_proj.base_layer.weight.dtype == torch.bfloat16
    batch = data.fixed_batches(sft, 4, True, 1024, tok.pad_token_id)
    l32, g32 = _loss_and_grads(m32, batch)
    l16, g16 = _loss_and_grads(m16, batch)
    assert l16 == pytest.approx(l32, rel=2e-2)
    for n in g32:
        assert float((g16[n] - g32[n]).norm() / g32[n].norm()) < 0.1, n


def test_gradient_checkpointing_same_gradients(sft):
    plain, tok, _ = _model()
    ckpt, _, setup = _model(["gradient_checkpointing=true"])
    assert setup["gradient_checkpointing"]
    plain.train()
    ckpt.train()
    batch = data.fixed_batches(sft, 4, True, 1024, tok.pad_token_id)
    lp, gp = _loss_and_grads(plain, batch)
    lc, gc = _loss_and_grads(ckpt, batch)
    assert lc == pytest.approx(lp, abs=1e-6)
    for n in gp:
        torch.testing.assert_close(gc[n], gp[n], atol=1e-7, rtol=1e-5)


def test_disable_adapter_still_works_when_fused(sft):
    """DPO's reference model (adapters disabled) goes through PEFT's own path, not the fused one."""
    fast, tok, _ = _model()
    plain, _, _ = _model(["attention=dense", "fused=false"])
    batch = data.fixed_batches(sft, 2, True, 1024, tok.pad_token_id)[0]
    with torch.no_grad():
        ref_fast, ref_plain = losses.reference_logps(fast, batch), losses.reference_logps(plain, batch)
        pol = losses.sequence_logps(fast, batch)
    torch.testing.assert_close(ref_fast, ref_plain, atol=1e-4, rtol=1e-5)
    assert not torch.allclose(ref_fast, pol)
