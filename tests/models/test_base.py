"""Base-model resolution and the cached tiny model."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from gt_ext.errors import GtExtError
from gt_ext.models import KNOWN_MODELS, load_model, resolve_model_dir


def test_unknown_name_lists_known() -> None:
    with pytest.raises(GtExtError) as ei:
        resolve_model_dir("gpt-17")
    for name in KNOWN_MODELS:
        assert name in str(ei.value)


def test_folder_without_config_refused(tmp_path: Path) -> None:
    with pytest.raises(GtExtError, match="no config.json"):
        resolve_model_dir(str(tmp_path))


def test_tiny_llama_loads_and_runs() -> None:
    import torch

    model, tok = load_model("tiny-llama")
    ids = tok("hello world", return_tensors="pt")["input_ids"]  # [1, T]
    with torch.inference_mode():
        logits = model(ids).logits  # [1, T, vocab]
    assert logits.shape == (1, ids.shape[1], len(tok))
    assert tok.chat_template  # the real tokenizer's chat template came along


def test_hf_folder_path_and_cache_rebuild(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = resolve_model_dir("tiny-llama")
    copy = tmp_path / "my-model"
    shutil.copytree(folder, copy)
    assert resolve_model_dir(str(copy)) == copy  # a plain HF folder is used as is
    # A cache whose checksum no longer matches is rebuilt rather than trusted.
    monkeypatch.setenv("GT_EXT_CACHE", str(tmp_path / "cache"))
    built = resolve_model_dir("tiny-llama")
    assert built.is_relative_to(tmp_path / "cache")
    weights = next(built.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-8] + b"corrupt!")
    rebuilt = resolve_model_dir("tiny-llama")
    assert rebuilt == built and (rebuilt / "CHECKSUM").is_file()
    from gt_ext.models.base import _cache_ok

    assert _cache_ok(rebuilt)
