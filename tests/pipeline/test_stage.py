"""The stage module alone (no node0, no network): spans of a real tiny LLaMA compute exactly what the
whole model computes, with LoRA, packed block-diagonal batches and a KV cache."""

from __future__ import annotations

import pytest
import torch

from gt_ext.errors import GtExtError
from gt_ext.pipeline.records import StageRecord, plan_route, uncovered
from gt_ext.pipeline.stage import Span, load_stage, parse_span, split_layers
from gt_ext.train.config import LoraSettings
from gt_ext.train.data import dense_mask

LORA = LoraSettings(r=4, targets=["q_proj", "v_proj", "o_proj", "down_proj"])


def _packed_batch() -> dict[str, torch.Tensor]:
    """Two rows: two packed examples, and one example followed by padding."""
    ex = torch.tensor([[0] * 5 + [1] * 7, [2] * 9 + [-1] * 3])
    pos = torch.tensor([list(range(5)) + list(range(7)), list(range(9)) + list(range(3))])
    torch.manual_seed(1)
    return {"input_ids": torch.randint(0, 1000, (2, 12)), "position_ids": pos, "example_index": ex}


def _single_and_stages(tiny4):
    from gt_ext.models import load_model
    from gt_ext.train.lora import add_lora

    model, _ = load_model(str(tiny4))
    peft = add_lora(model, LORA, seed=0)
    with torch.no_grad():  # a non-zero adapter, so LoRA takes part in the comparison
        for n, p in peft.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn_like(p) * 0.1)
    stages = [load_stage(tiny4, s, LORA, seed=0) for s in split_layers(4, 3)]
    full = {n.replace(".default.", "."): p.detach() for n, p in peft.named_parameters() if "lora_" in n}
    for st in stages:
        st.load_adapter_state(full)
    return peft, stages


def test_spans_split_and_parse():
    assert split_layers(4, 3) == [Span(0, 2, 4), Span(2, 3, 4), Span(3, 4, 4)]
    assert parse_span("1/3", 4) == Span(2, 3, 4) and parse_span("0:4", 4).kind == "head"
    assert Span(3, 4, 4).kind == "tail" and Span(3, 4, 4).label() == "layers 3-3"
    for bad in ("3/3", "2:2", "x", "0:9"):
        with pytest.raises(GtExtError):
            parse_span(bad, 4)


def test_a_stage_loads_only_its_span_and_lora_inits_like_one_process(tiny4):
    peft_model, stages = _single_and_stages(tiny4)
    body = stages[1]
    names = {n for n, _ in body.named_parameters()}
    assert not any("embed_tokens" in n or "lm_head" in n or "model.norm" in n for n in names)
    assert {n.split(".")[2] for n in names if n.startswith("model.layers.")} == {"2"}
    assert all(p.requires_grad == (".lora_" in n) for n, p in body.named_parameters())
    # LoRA A is drawn from (seed, module name): a fresh stage has the single process's initial A.
    fresh = load_stage(tiny4, Span(3, 4, 4), LORA, seed=0)
    single_a = dict(peft_model.named_parameters())["base_model.model.model.layers.3.self_attn.q_proj.lora_A.default.weight"]
    assert torch.equal(dict(fresh.named_parameters())["model.layers.3.self_attn.q_proj.lora_A.default.weight"], single_a)
    # Adapter names are PEFT's, with global layer indices: the stages together are the whole adapter.
    gathered = {k for st in stages for k in st.adapter_state()}
    assert gathered == {n.replace(".default.", ".") for n, _ in peft_model.named_parameters() if "lora_" in n}


def test_stages_in_a_row_equal_the_whole_model(tiny4):
    peft_model, stages = _single_and_stages(tiny4)
    b = _packed_batch()
    mask = dense_mask(b["example_index"])
    with torch.no_grad():
        ref = peft_model.get_base_model().model(input_ids=b["input_ids"], position_ids=b["position_ids"],
                                                 attention_mask=mask, use_cache=False).last_hidden_state
        h = b["input_ids"]
        for st in stages:
            h = st(h, b["position_ids"], mask)
        assert torch.equal(h, ref)
        # LoRA off on every stage = the base model (the DPO reference policy).
        with peft_model.disable_adapter():
            base = peft_model.get_base_model().model(input_ids=b["input_ids"], position_ids=b["position_ids"],
                                                      attention_mask=mask, use_cache=False).last_hidden_state
        h = b["input_ids"]
        for st in stages:
            with st.adapters_disabled():
                h = st(h, b["position_ids"], mask)
        assert torch.equal(h, base) and not torch.equal(base, ref)


def test_kv_cache_decoding_equals_the_full_forward(tiny4):
    _, stages = _single_and_stages(tiny4)
    ids = torch.randint(0, 1000, (1, 10))
    with torch.no_grad():
        full = ids
        for st in stages:
            full = st(full, torch.arange(10)[None])
        caches = [st.new_cache() for st in stages]
        h, outs = ids[:, :6], []
        for st, c in zip(stages, caches, strict=True):  # the prompt, then one token at a time
            h = st(h, torch.arange(6)[None], cache=c)
        outs.append(h)
        for t in range(6, 10):
            h = ids[:, t:t + 1]
            for st, c in zip(stages, caches, strict=True):
                h = st(h, torch.tensor([[t]]), cache=c)
            outs.append(h)
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=1e-5, rtol=1e-5)
    logits = stages[-1].logits(full[:, -1:])
    assert logits.shape == (1, 1, stages[-1].config.vocab_size)


def test_serving_adapters_run_untouched_layers_as_the_base_model_and_restore_them(tiny4):
    """Generation with no serving adapter = the base model (the trained, non-zero adapter off), with
    the wrapped layers' own forward back afterwards, also when the step fails half-way."""
    peft_model, stages = _single_and_stages(tiny4)
    st, plain = stages[0], load_stage(tiny4, Span(0, 2, 4))  # the same layers without LoRA
    ids, pos = torch.randint(0, 1000, (1, 7)), torch.arange(7)[None]
    wrapped = [m for _, m in st.lora_modules()]
    with torch.no_grad():
        trained, base = st(ids, pos), plain(ids, pos)
        assert not torch.equal(trained, base)
        with st.serving_adapters([]):
            assert torch.equal(st(ids, pos), base)
        with pytest.raises(RuntimeError), st.serving_adapters([]):
            raise RuntimeError("a step failed")
        assert all("forward" not in m.__dict__ for m in wrapped)
        assert torch.equal(st(ids, pos), trained)  # the trained adapter is on again
        # One serving adapter on one layer: that layer takes it, the others stay the base model.
        g = torch.Generator().manual_seed(3)
        a, b = torch.randn(2, 64, generator=g) * 0.3, torch.randn(64, 2, generator=g) * 0.3
        st.add_serving_adapter("kq", 2.0, {"model.layers.1.self_attn.q_proj": (a, b)})
        plain.get_submodule("model.layers.1.self_attn.q_proj").weight += 0.5 * 2.0 * (b @ a)
        with st.serving_adapters([("kq", 0.5)]):
            torch.testing.assert_close(st(ids, pos), plain(ids, pos), atol=1e-5, rtol=1e-5)
        assert torch.equal(st(ids, pos), trained)


def _rec(first: int, last: int, peer: str = "p", base: str = "b", settings: str = "s") -> StageRecord:
    return StageRecord(peer=peer + str(first), uid=f"r-L{first}-{last}.0.1", first=first, last=last, total=6,
                       base_hash=base, settings_hash=settings)


def test_route_names_uncovered_layers_and_refuses_mixed_models():
    route = plan_route([_rec(0, 2), _rec(2, 4), _rec(2, 4, peer="q"), _rec(4, 6)], "r")
    assert [len(g) for g in route] == [1, 2, 1]
    assert uncovered([(0, 2), (4, 6)], 6) == [(2, 4)]
    with pytest.raises(GtExtError, match="no live stage serves layers 2-3 of 6 layers"):
        plan_route([_rec(0, 2), _rec(4, 6)], "r")
    with pytest.raises(GtExtError, match="different base models"):
        plan_route([_rec(0, 2), _rec(2, 6, base="other")], "r")
    with pytest.raises(GtExtError, match="this trainer: base mine"):
        plan_route([_rec(0, 6)], "r", base_hash="mine")
    with pytest.raises(GtExtError, match="different training settings"):
        plan_route([_rec(0, 2), _rec(2, 6, settings="x")], "r")
    with pytest.raises(GtExtError, match="overlap"):
        plan_route([_rec(0, 3), _rec(2, 6)], "r")
    with pytest.raises(GtExtError, match="no live stage"):
        plan_route([], "r")
