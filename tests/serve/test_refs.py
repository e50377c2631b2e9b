"""Model references: base:, run/export folders, GGUF files, registry refs; backend choice."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gt_ext.errors import GtExtError
from gt_ext.serve.loader import choose_backend, llama_cpp_available
from gt_ext.serve.refs import parse_adapters, resolve_model


def test_base_ref():
    m = resolve_model("base:smollm2-135m-instruct")
    assert m.base_model == "smollm2-135m-instruct" and m.adapters == []
    assert m.gguf_path is not None and m.gguf_path.suffix == ".gguf"
    assert resolve_model("base:tiny-llama").gguf_path is None


def test_run_and_export_folders(tmp_path, adapters):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(adapters["a"], run / "adapter")
    (run / "run.json").write_text(json.dumps({"role": "witness", "base_model": "tiny-llama"}))
    m = resolve_model(str(run))
    assert (m.base_model, m.role, m.adapters) == ("tiny-llama", "witness", [(run / "adapter", 1.0)])
    assert m.gguf_path is None and m.merged_dir is None
    (run / "model-q8_0.gguf").write_bytes(b"GGUF")
    (run / "merged").mkdir()
    (run / "merged" / "config.json").write_text("{}")
    m = resolve_model(str(run))
    assert m.gguf_path == run / "model-q8_0.gguf" and m.merged_dir == run / "merged"


@pytest.mark.parametrize(
    "ref,fragment",
    [("", "empty"), ("base:", "missing"), ("/no/such/dir", "no such file")],
)
def test_bad_refs(ref, fragment):
    with pytest.raises(GtExtError, match=fragment):
        resolve_model(ref)


def test_folder_without_run_json(tmp_path):
    with pytest.raises(GtExtError, match="neither run.json"):
        resolve_model(str(tmp_path))
    (tmp_path / "run.json").write_text("{broken")
    with pytest.raises(GtExtError, match="run.json: unreadable"):
        resolve_model(str(tmp_path))


def test_adapter_list_with_weights(adapters):
    got = parse_adapters(f"{adapters['a']}=0.25,{adapters['b']}")
    assert got == [(Path(adapters["a"]), 0.25), (Path(adapters["b"]), 1.0)]
    with pytest.raises(GtExtError, match="not a number"):
        parse_adapters(f"{adapters['a']}=lots")


def test_backend_choice(tmp_path):
    from gt_ext.serve.refs import ResolvedModel

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


def test_task_adapter_run_stacks_its_role_adapter_first(tmp_path, adapters):
    """A run trained on top of a role adapter (run.json `parent`) serves as role + task adapter."""
    import shutil

    run = tmp_path / "task-run"
    shutil.copytree(adapters["b"], run / "adapter")
    (run / "run.json").write_text(json.dumps({"role": "witness", "base_model": "tiny-llama",
                                              "parent": str(adapters["a"])}))
    assert resolve_model(str(run)).adapters == [(Path(adapters["a"]), 1.0), (run / "adapter", 1.0)]
    (run / "run.json").write_text(json.dumps({"base_model": "tiny-llama", "parent": str(tmp_path / "gone")}))
    with pytest.raises(GtExtError, match="which is gone"):
        resolve_model(str(run))
