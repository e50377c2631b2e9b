"""The exported GGUF runs in llama.cpp (llama-cpp-python) and decodes like the torch model."""

from __future__ import annotations

import pytest
import torch
from export_fixtures import make_run

from gt_ext.export.export import export_run

try:
    import llama_cpp
except ImportError as e:  # not built, or built with --no-deps and a dependency (diskcache) missing
    pytest.skip(f"llama-cpp-python is not importable ({e}); install.sh builds it", allow_module_level=True)

PROMPT = [{"role": "user", "content": "Polecat nux has been idle for 40 minutes on bead gt-12. What do you do?"}]
N = 16


def torch_greedy(model, ids: list[int], n: int) -> list[int]:
    """n greedy tokens with the KV cache, no stopping (llama.cpp's generate does not stop either)."""
    out: list[int] = []
    with torch.no_grad():
        res = model(input_ids=torch.tensor([ids]), use_cache=True)
        for _ in range(n):
            out.append(int(res.logits[0, -1].argmax()))
            res = model(input_ids=torch.tensor([[out[-1]]]), past_key_values=res.past_key_values, use_cache=True)
    return out


def llama_greedy(path, ids: list[int], n: int) -> list[int]:
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=512, n_threads=2, verbose=False, seed=0)
    toks = []
    for t in llm.generate(ids, temp=0.0, top_k=1, top_p=1.0, repeat_penalty=1.0, reset=True):
        toks.append(int(t))
        if len(toks) == n:
            break
    return toks


@pytest.mark.integration
def test_smollm2_gguf_greedy_matches_torch(tmp_path):
    from transformers import AutoModelForCausalLM

    run = make_run(tmp_path / "run", base_model="smollm2-135m-instruct", scale=0.003)
    export_run(run, tmp_path / "out", quantized=["q8_0"])
    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "out" / "merged")).eval()
    from gt_ext.models import load_tokenizer

    tok = load_tokenizer(str(tmp_path / "out" / "merged"))
    ids = tok.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=True, return_dict=False)
    expected = torch_greedy(merged, ids, N)
    # llama.cpp tokenizes the same text to the same ids (pre-tokenizer, special tokens)
    llm = llama_cpp.Llama(model_path=str(tmp_path / "out" / "model-f16.gguf"), n_ctx=512, verbose=False)
    text = tok.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=False)
    assert llm.tokenize(text.encode(), add_bos=False, special=True) == ids
    del llm
    got = llama_greedy(tmp_path / "out" / "model-f16.gguf", ids, N)
    assert got == expected, (tok.decode(got), tok.decode(expected))
    q8 = llama_greedy(tmp_path / "out" / "model-q8_0.gguf", ids, N)
    assert len(q8) == N and q8[0] == expected[0]
