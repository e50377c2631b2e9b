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
