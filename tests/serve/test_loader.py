"""Backend choice for a resolved model (the resolver itself: tests/models/test_refs.py)."""

from __future__ import annotations

import pytest

from gt_ext.errors import GtExtError
from gt_ext.models.refs import ResolvedModel
from gt_ext.serve.loader import choose_backend, llama_cpp_available


def test_backend_choice(tmp_path):
    base = ResolvedModel(ref="base:x", base_model="x", gguf_path=tmp_path / "m.gguf")
    with_adapter = ResolvedModel(ref="w:1", base_model="x", adapters=[(tmp_path, 1.0)], gguf_path=tmp_path / "m.gguf")
    assert choose_backend(with_adapter, [], "auto") == "torch"  # unmerged adapter: PyTorch applies it
    assert choose_backend(base, [(tmp_path, 1.0)], "auto") == "torch"
    assert choose_backend(base, [], "auto") == ("llama.cpp" if llama_cpp_available() else "torch")
    assert choose_backend(base, [], "torch") == "torch"
    assert choose_backend(base, [], "auto", purpose="api") == "torch"  # batching + per-request adapters
    with pytest.raises(GtExtError, match="--backend"):
        choose_backend(base, [], "vllm")
    with pytest.raises(GtExtError, match="llama.cpp"):
        choose_backend(with_adapter, [], "llama.cpp")


def test_adapters_go_on_the_base_gguf_for_llama_cpp(tmp_path):
    """A base model with a GGUF of its own takes an unmerged adapter stack as GGUF LoRAs; an
    export's merged GGUF is used alone."""
    from gt_ext.serve.loader import llama_cpp_gguf

    base_file = tmp_path / "base.gguf"
    base_file.write_bytes(b"GGUF")
    merged = tmp_path / "merged.gguf"
    run = ResolvedModel(ref="w:1", base_model=str(base_file), adapters=[(tmp_path / "role", 1.0)])
    assert llama_cpp_gguf(run, [(tmp_path / "task", 0.5)]) == (base_file, [(tmp_path / "role", 1.0),
                                                                          (tmp_path / "task", 0.5)])
    export = ResolvedModel(ref="w:2", base_model=str(base_file), adapters=[(tmp_path / "role", 1.0)],
                           gguf_path=merged, merged_dir=tmp_path)
    assert llama_cpp_gguf(export, []) == (merged, [])
    assert llama_cpp_gguf(export, [(tmp_path / "task", 1.0)])[0] == base_file  # extra adapter: unmerged stack
    if llama_cpp_available():
        assert choose_backend(run, [], "auto") == "llama.cpp"
        assert choose_backend(run, [], "auto", purpose="api") == "torch"


def test_threads_reach_prefill_and_decode_and_zero_means_every_core(monkeypatch):
    """The agent's one thread and the API's every core both reach the decode step (it once kept a
    fixed single thread whatever `--threads` said); a negative count is refused before loading."""
    import os

    from gt_ext.serve.loader import load_generator

    gen, _ = load_generator("base:tiny-llama", backend="torch", threads=0, purpose="api")
    assert gen._engine.decode_threads == gen._engine.prefill_threads == (os.cpu_count() or 1)
    gen, _ = load_generator("base:tiny-llama", backend="torch", threads=1)
    assert gen._engine.decode_threads == gen._engine.prefill_threads == 1
    with pytest.raises(GtExtError, match="threads -1"):
        load_generator("base:tiny-llama", backend="torch", threads=-1)
