"""The llama.cpp backend through the Generator API (skipped when llama-cpp-python is not built)."""

from __future__ import annotations

import pytest

from gt_ext.serve.params import SamplingParams

pytestmark = pytest.mark.integration
llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (install.sh builds it)")

MSG = [{"role": "user", "content": "What is 2+2?"}]


@pytest.fixture(scope="module")
def lgen():
    from gt_ext.models.base import smollm2_gguf_path
    from gt_ext.serve.generate import Generator

    return Generator("smollm2-135m-instruct", backend="llama.cpp", gguf_path=smollm2_gguf_path())


def test_greedy_matches_llama_cpp_itself(lgen):
    from gt_ext.models.base import smollm2_gguf_path

    ours = lgen.chat(MSG, SamplingParams(max_new_tokens=16))
    llm = llama_cpp.Llama(model_path=str(smollm2_gguf_path()), n_ctx=512, verbose=False)
    ref = llm.create_completion(lgen.render(MSG), max_tokens=16, temperature=0.0)["choices"][0]["text"]
    assert ours == ref
    assert "4" in ours


def test_stop_and_stats(lgen):
    from gt_ext.serve.generate import GenerationStats

    full = lgen.chat(MSG, SamplingParams(max_new_tokens=16))
    stop = full.split()[1]
    st = GenerationStats()
    cut = "".join(lgen.stream(MSG, SamplingParams(max_new_tokens=16, stop=[stop]), stats=st))
    assert cut == full[: full.find(stop)]
    assert st.finish_reason == "stop" and st.prompt_tokens > 0


def test_seeded_sampling_reproducible(lgen):
    p = SamplingParams(max_new_tokens=12, temperature=1.0, seed=11)
    assert lgen.chat(MSG, p) == lgen.chat(MSG, p)
