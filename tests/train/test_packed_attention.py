"""Packed rows reach PyTorch's SDPA kernel the way the training code lays them out.

Follows the code rather than a fixed layout: the model comes from `load_base_for_training` (which
picks the attention backend for this device), the inputs from `losses.model_inputs` (the one
function that builds the attention inputs of a batch), the forward from `losses.hidden_states`.
On CPU that is SDPA: per example with `is_causal` ("segments", the default), or once per layer
with the block-diagonal mask ("dense"). Either way each example attends to itself only.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from train_corpus import write_corpus

from gt_ext.train import data, losses
from gt_ext.train.attention import model_backend
from gt_ext.train.config import load_config
from gt_ext.train.lora import load_base_for_training


@pytest.fixture(scope="module")
def sft(tmp_path_factory):
    from gt_ext.models import load_tokenizer

    corpus = write_corpus(tmp_path_factory.mktemp("c"), tasks=("patrol",), n_train=3, n_val=1)
    tok = load_tokenizer("tiny-llama")
    items, _ = data.load_items(corpus, "sft", "witness", "patrol", "train", tok, 512)
    return items, tok


@pytest.mark.parametrize("attention, backend", [("auto", "segments"), ("dense", "dense")])
@torch.no_grad()
def test_packed_row_goes_through_sdpa_and_stays_in_its_example(sft, monkeypatch, attention, backend):
    items, tok = sft
    cfg = load_config(None, ["base_model=tiny-llama", "device=cpu", f"attention={attention}", "lora.r=4"])
    model, _ = load_base_for_training(cfg)
    assert model_backend(model) == backend  # what the trainer would run on this machine
    n_layers = model.get_base_model().config.num_hidden_layers
    packed = data.fixed_batches(items, 1, True, 4096, tok.pad_token_id)[0]
    assert packed["input_ids"].shape[0] == 1 and packed["n_examples"] == len(items) > 1  # one row, all examples
    inputs = losses.model_inputs(packed, torch.device("cpu"), backend)

    calls = []
    real = F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kw):
        calls.append({"len": q.shape[2], "mask": attn_mask, "causal": kw.get("is_causal", False)})
        return real(q, k, v, attn_mask=attn_mask, **kw)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    h = losses.hidden_states(model, packed, inputs)[0]  # [T, H] dense, [N real tokens, H] segments
    monkeypatch.undo()

    lens = torch.bincount(packed["example_index"][packed["example_index"] >= 0]).tolist()
    if backend == "segments":  # one causal call per example and layer, over that example's tokens only
        assert [c["len"] for c in calls] == lens * n_layers
        assert all(c["causal"] and c["mask"] is None for c in calls)
        example_of = packed["example_index"][packed["example_index"] >= 0]
    else:  # one call per layer over the whole row, under the mask model_inputs built
        assert len(calls) == n_layers
        assert all(torch.equal(c["mask"], inputs.kwargs["attention_mask"]) for c in calls)
        example_of = packed["example_index"][0]

    for k, item in enumerate(items):  # each example computes exactly what it computes alone
        alone = data.fixed_batches([item], 1, False, 4096, tok.pad_token_id)[0]
        h_alone = losses.hidden_states(model, alone)[0]
        torch.testing.assert_close(h[example_of == k], h_alone[: lens[k]], atol=1e-5, rtol=1e-4)
