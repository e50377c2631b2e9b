"""Adapters on the llama.cpp backend: a PEFT LoRA converted by llama.cpp's own converter, set per
request (skipped when llama-cpp-python or the converter is not installed)."""

from __future__ import annotations

import pytest
import torch

from gt_ext.serve.params import SamplingParams

pytestmark = pytest.mark.integration
llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (install.sh builds it)")

BASE = "smollm2-135m-instruct"
MSG = [{"role": "user", "content": "What is 2+2?"}]


@pytest.fixture(scope="module")
def smol_adapter(tmp_path_factory, adapter_factory):
    from gt_ext.export.convert import converter_dir

    if not (converter_dir() / "convert_lora_to_gguf.py").is_file():
        pytest.skip("llama.cpp's convert_lora_to_gguf.py is not unpacked (./install.sh)")
    return adapter_factory(tmp_path_factory.mktemp("smol") / "a", seed=3, base=BASE,
                           targets=("q_proj", "k_proj", "v_proj", "down_proj"))


@pytest.fixture(scope="module")
def lgen():
    from gt_ext.models.base import smollm2_gguf_path
    from gt_ext.serve.generate import Generator

    return Generator(BASE, backend="llama.cpp", gguf_path=smollm2_gguf_path())


def _logits(gen, stack) -> torch.Tensor:
    """Next-token logits [V] of the prompt under adapter stack `stack` ([(key, weight)])."""
    eng = gen._engine
    seq = type("Seq", (), {})()
    seq.request = type("Req", (), {"adapters": stack})()
    eng.start(seq)
    try:
        return eng.prefill(seq, eng.tokenize(gen.render(MSG)))
    finally:
        eng.finish(seq)


def test_adapter_per_request_and_switching_back(lgen, smol_adapter):
    p = SamplingParams(max_new_tokens=12)
    base = lgen.chat(MSG, p)
    with_a = lgen.chat(MSG, p, adapters=[(smol_adapter, 1.0)])
    assert with_a != base
    assert lgen.chat(MSG, p, adapters=[]) == base  # no reload, just another stack
    assert lgen.chat(MSG, p, adapters=[(smol_adapter, 0.0)]) == base
    assert lgen.chat(MSG, p, adapters=[(smol_adapter, 1.0)]) == with_a


def test_lora_delta_matches_the_torch_path(lgen, smol_adapter):
    """What the adapter adds to the logits in llama.cpp is what it adds in our PyTorch decoder on the
    same (dequantized) weights: the base models differ by llama.cpp's Q4/Q8 arithmetic only."""
    from gt_ext.serve.generate import Generator

    tgen = Generator(BASE)
    for w in (1.0, 0.5):
        lk = lgen.load_adapters([(smol_adapter, w)])
        tk = tgen.load_adapters([(smol_adapter, w)])
        l_delta = _logits(lgen, lk) - _logits(lgen, [])
        dec = tgen._engine.decoder
        ids = tgen._engine.tokenize(tgen.render(MSG))
        slot = dec.cache.claim()
        try:
            t_with = dec.prefill(slot, ids, dec.adapters.batch([tk]))
        finally:
            dec.cache.release(slot)
        slot = dec.cache.claim()
        try:
            t_base = dec.prefill(slot, ids, {})
        finally:
            dec.cache.release(slot)
        t_delta = t_with - t_base
        assert t_delta.abs().max() > 1.0  # the adapter does change the logits
        cos = torch.nn.functional.cosine_similarity(l_delta, t_delta, dim=0)
        assert cos > 0.98, (w, float(cos))
        torch.testing.assert_close(l_delta.norm(), t_delta.norm(), rtol=0.1, atol=0.0)  # Q4_1 base


def test_adapter_for_another_base_is_refused(lgen, adapters):
    from gt_ext.errors import GtExtError

    with pytest.raises(GtExtError, match="convert_lora_to_gguf.py failed"):
        lgen.chat(MSG, adapters=[(adapters["a"], 1.0)])  # made for tiny-llama
