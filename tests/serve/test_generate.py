"""Generator on tiny-llama: matches transformers, seeded sampling, stops, limits, adapters, batches."""

from __future__ import annotations

import pytest
import torch

from gt_ext.errors import GtExtError
from gt_ext.serve.generate import GenerationStats, Generator
from gt_ext.serve.params import SamplingParams

MSG = [{"role": "user", "content": "Say something about beads and rigs."}]


@pytest.fixture(scope="module")
def hf_model():
    """The transformers model the Generator's decoder was built from (the reference)."""
    from gt_ext.models import load_model

    return load_model("tiny-llama")[0].eval()


def hf_greedy(gen: Generator, model, messages, n: int) -> str:
    tok = gen.tokenizer
    enc = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=n, do_sample=False, eos_token_id=sorted(gen._engine.eos_ids),
                             pad_token_id=tok.pad_token_id)
    return tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)


def test_greedy_matches_transformers_generate(gen, hf_model):
    ours = gen.chat(MSG, SamplingParams(max_new_tokens=24))
    assert ours == hf_greedy(gen, hf_model, MSG, 24)
    assert ours  # the random model does produce text


def test_stream_concatenates_to_chat_and_fills_stats(gen):
    st = GenerationStats()
    pieces = list(gen.stream(MSG, SamplingParams(max_new_tokens=12), stats=st))
    assert len(pieces) > 1
    assert "".join(pieces) == gen.chat(MSG, SamplingParams(max_new_tokens=12))
    assert st.prompt_tokens == gen.count_tokens(MSG)
    assert 0 < st.completion_tokens <= 12
    assert st.finish_reason in ("stop", "length")
    assert 0 < st.ttft_s <= st.total_s


def test_max_new_tokens_limits_length(gen):
    st = GenerationStats()
    gen.chat(MSG, SamplingParams(max_new_tokens=5), stats=st)
    assert st.completion_tokens <= 5
    if st.completion_tokens == 5:
        assert st.finish_reason == "length"


def test_seeded_sampling_is_reproducible_and_seed_dependent(gen):
    p = dict(max_new_tokens=16, temperature=1.0, top_p=0.95, top_k=50)
    a = gen.chat(MSG, SamplingParams(seed=7, **p))
    b = gen.chat(MSG, SamplingParams(seed=7, **p))
    c = gen.chat(MSG, SamplingParams(seed=8, **p))
    assert a == b
    assert a != c
    assert a != gen.chat(MSG, SamplingParams(max_new_tokens=16))  # sampling is not greedy


def test_top_k_one_is_greedy(gen):
    greedy = gen.chat(MSG, SamplingParams(max_new_tokens=10))
    assert gen.chat(MSG, SamplingParams(max_new_tokens=10, temperature=1.5, top_k=1, seed=3)) == greedy


def test_repetition_penalty_changes_output(gen):
    plain = gen.chat(MSG, SamplingParams(max_new_tokens=20))
    assert gen.chat(MSG, SamplingParams(max_new_tokens=20, repetition_penalty=5.0)) != plain


def test_stop_string_cuts_output_and_is_never_streamed(gen):
    full = gen.chat(MSG, SamplingParams(max_new_tokens=24))
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    cut = full[: full.find(stop)]
    st = GenerationStats()
    pieces = list(gen.stream(MSG, SamplingParams(max_new_tokens=24, stop=[stop]), stats=st))
    assert "".join(pieces) == cut
    assert st.finish_reason == "stop"


def test_adapter_changes_output_per_request_without_reload(gen, adapters):
    base = gen.chat(MSG, SamplingParams(max_new_tokens=12))
    with_a = gen.chat(MSG, SamplingParams(max_new_tokens=12), adapters=[(adapters["a"], 1.0)])
    decoder = id(gen._engine.decoder)
    assert with_a != base
    assert gen.chat(MSG, SamplingParams(max_new_tokens=12), adapters=[]) == base  # switched back
    assert gen.chat(MSG, SamplingParams(max_new_tokens=12), adapters=[(adapters["a"], 0.0)]) == base
    assert id(gen._engine.decoder) == decoder


def decoder_logits(gen, keys, ids: list[int]) -> torch.Tensor:
    """The serving decoder's logits [V] for the last of `ids`, with adapter stack `keys`."""
    dec = gen._engine.decoder
    slot = dec.cache.claim()
    try:
        return dec.prefill(slot, ids, dec.adapters.batch([keys]))
    finally:
        dec.cache.release(slot)


def _merged_logits(hf_model, stack, ids):
    """Reference: the base model with each adapter's weight*scale*B@A added into its weights."""
    import copy

    from gt_ext.serve.adapter_stack import LoraAdapter

    model = copy.deepcopy(hf_model)
    mods = dict(model.named_modules())
    with torch.no_grad():
        for path, w in stack:
            ad = LoraAdapter.load(path)
            for name, (a, b) in ad.weights.items():
                mods[name].weight += w * ad.scale * (b @ a)
        return model(input_ids=torch.tensor([ids])).logits[0, -1]


def test_decoder_logits_equal_transformers(gen, hf_model):
    ids = [1, 5, 9, 200, 31, 7]
    with torch.no_grad():
        ref = hf_model(input_ids=torch.tensor([ids])).logits[0, -1]
    torch.testing.assert_close(decoder_logits(gen, [], ids), ref, atol=1e-5, rtol=1e-5)


def test_weighted_adapter_stack_equals_merged_weights(gen, adapters, hf_model):
    stack = [(adapters["a"], 0.7), (adapters["b"], -1.3)]
    keys = gen.load_adapters(stack)
    ids = [1, 5, 9, 200, 31, 7]
    ours = decoder_logits(gen, keys, ids)
    base = decoder_logits(gen, [], ids)
    ref = _merged_logits(hf_model, stack, ids)
    assert not torch.allclose(base, ref, atol=1e-3)
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)


def test_adapter_matches_peft(gen, adapters, hf_model):
    import copy

    from peft import PeftModel

    peft_model = PeftModel.from_pretrained(copy.deepcopy(hf_model), str(adapters["b"])).eval()
    ids = [1, 17, 400, 3, 88]
    keys = gen.load_adapters([(adapters["b"], 1.0)])
    with torch.no_grad():
        ref = peft_model(input_ids=torch.tensor([ids])).logits[0, -1]
    torch.testing.assert_close(decoder_logits(gen, keys, ids), ref, atol=1e-4, rtol=1e-4)


def test_batch_with_mixed_adapters_equals_single_requests(gen, adapters):
    p = SamplingParams(max_new_tokens=10)
    msgs = [MSG, [{"role": "user", "content": "hi"}], [{"role": "system", "content": "You are a witness."}] + MSG]
    stacks = [[], [(adapters["a"], 1.0)], [(adapters["a"], 0.5), (adapters["b"], 0.5)]]
    singles = [gen.chat(m, p, adapters=s) for m, s in zip(msgs, stacks, strict=True)]
    reqs = [gen.request(m, p, s) for m, s in zip(msgs, stacks, strict=True)]
    texts = ["", "", ""]
    for i, piece in gen.stream_batch(reqs):
        texts[i] += piece
    assert texts == singles
    assert all(r.stats.completion_tokens > 0 for r in reqs)


@pytest.mark.parametrize(
    "messages,fragment",
    [
        ([], "non-empty list"),
        ([{"role": "wizard", "content": "x"}], "messages[0].role"),
        ([{"role": "user", "content": 3}], "messages[0].content"),
        ("hello", "non-empty list"),
    ],
)
def test_bad_messages_are_one_line_errors(gen, messages, fragment):
    with pytest.raises(GtExtError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        gen.chat(messages, SamplingParams(max_new_tokens=2))


@pytest.mark.parametrize(
    "kwargs,field",
    [
        (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(temperature=-1), "temperature"),
        (dict(top_p=0), "top_p"),
        (dict(top_k=-2), "top_k"),
        (dict(repetition_penalty=0), "repetition_penalty"),
        (dict(stop=[""]), "stop"),
        (dict(seed="x"), "seed"),
    ],
)
def test_bad_sampling_params(kwargs, field):
    with pytest.raises(GtExtError, match=field):
        SamplingParams(**kwargs)


def test_bad_adapters(gen, tmp_path):
    with pytest.raises(GtExtError, match="no LoRA adapter"):
        gen.chat(MSG, adapters=[(tmp_path, 1.0)])
    with pytest.raises(GtExtError, match="expected"):
        gen.chat(MSG, adapters=["just-a-path"])


def test_adapter_for_other_model_is_refused(gen, tmp_path):
    import json

    from safetensors.torch import save_file

    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 2}))
    save_file(
        {
            "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(2, 576),
            "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": torch.zeros(576, 2),
        },
        str(tmp_path / "adapter_model.safetensors"),
    )
    with pytest.raises(GtExtError, match="do not fit"):
        gen.load_adapters([(tmp_path, 1.0)])


def test_prompt_longer_than_context_is_refused(gen):
    with pytest.raises(GtExtError, match="exceeds the model's context"):
        gen.chat(MSG, SamplingParams(max_new_tokens=10_000))


def test_unknown_backend():
    with pytest.raises(GtExtError, match="unknown backend"):
        Generator("tiny-llama", backend="vllm")


def test_int8_engine_with_adapter(adapters):
    g8 = Generator("tiny-llama", quantize="int8")
    base = g8.chat(MSG, SamplingParams(max_new_tokens=8))
    assert base
    assert g8.chat(MSG, SamplingParams(max_new_tokens=8), adapters=[(adapters["a"], 1.0)]) != base
    with pytest.raises(GtExtError, match="quantize"):
        Generator("tiny-llama", quantize="int3")


@pytest.mark.parametrize("quantize", [None, "int8"])
def test_prefill_many_equals_one_prompt_at_a_time(adapters, quantize):
    """Several prompts in one forward (first chunks, and a later chunk after a cached one), each
    with its own adapter stack, give the logits and cache each would get alone."""
    from gt_ext.models import load_model
    from gt_ext.serve.llama_decoder import LlamaDecoder

    model = load_model("tiny-llama")[0]
    together, alone = (LlamaDecoder(model, quantize=quantize, max_slots=4) for _ in range(2))
    keys = [[], [(together.adapters.add(adapters["a"]), 1.0)],
            [(together.adapters.add(adapters["a"]), 0.5), (together.adapters.add(adapters["b"]), -1.0)]]
    for k in keys:
        for key, _ in k:
            alone.adapters.add(key)
    first = [[1, 5, 9, 200, 31, 7], [4, 8], [300, 2, 2, 17, 90]]
    second = [[11, 12, 13], [60], [5, 6]]
    for d in (together, alone):
        for _ in first:
            d.cache.claim()
    for chunks in (first, second):
        got = together.prefill_many([0, 1, 2], chunks, together.adapters.batch(keys))  # [3, V]
        want = torch.stack([alone.prefill(s, c, alone.adapters.batch([keys[s]])) for s, c in enumerate(chunks)])
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    # The later chunk (attending to the cache) ends where one whole-prompt prefill ends.
    whole = LlamaDecoder(model, quantize=quantize, max_slots=1)
    for s in range(3):
        for key, _ in keys[s]:
            whole.adapters.add(key)
        whole.cache.claim()
        ref = whole.prefill(0, first[s] + second[s], whole.adapters.batch([keys[s]]))
        whole.cache.release(0)
        torch.testing.assert_close(got[s], ref, atol=1e-4, rtol=1e-4)
    assert together.cache.lengths == alone.cache.lengths == [9, 3, 7]
    for layer in range(len(together.layers)):
        torch.testing.assert_close(together.cache.view(layer, 3, 9), alone.cache.view(layer, 3, 9),
                                   atol=1e-5, rtol=1e-5)
    ids = [3, 3, 3]  # and decoding from those caches agrees too
    torch.testing.assert_close(together.decode([0, 1, 2], ids, together.adapters.batch(keys)),
                               alone.decode([0, 1, 2], ids, alone.adapters.batch(keys)), atol=1e-4, rtol=1e-4)
