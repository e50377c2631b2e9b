"""Model references, one meaning for evals, serve, the API and the agent: base:, known base names,
run/export folders (with a task adapter's parent stacked first), GGUF files, registry refs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gt_ext.errors import GtExtError
from gt_ext.models.refs import from_registry, parse_adapters, resolve


def _adapter(folder: Path) -> Path:
    """An adapter folder as the resolver sees it (it reads layout only, never the weights)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text("{}")
    return folder


def _run(folder: Path, **run_json) -> Path:
    _adapter(folder / "adapter")
    (folder / "run.json").write_text(json.dumps({"role": "witness", "base_model": "tiny-llama", **run_json}))
    return folder


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("GT_EXT_HOME", str(tmp_path / "gthome"))


def test_base_refs_bare_known_names_and_results_dir(tmp_path):
    m = resolve("base:smollm2-135m-instruct")
    assert m.base_model == "smollm2-135m-instruct" and m.adapters == []
    assert m.gguf_path is not None and m.gguf_path.suffix == ".gguf"
    bare = resolve("tiny-llama")
    assert bare.ref == "base:tiny-llama" and bare.gguf_path is None
    assert bare.results_dir == tmp_path / "gthome" / "evals" / "base-tiny-llama"
    assert bare.torch_weights() == ("tiny-llama", [])


def test_run_and_export_folders(tmp_path):
    run = _run(tmp_path / "run")
    m = resolve(str(run))
    assert (m.base_model, m.role, m.adapters) == ("tiny-llama", "witness", [(run / "adapter", 1.0)])
    assert m.gguf_path is None and m.merged_dir is None and m.results_dir == run
    assert m.torch_weights() == ("tiny-llama", [(run / "adapter", 1.0)])
    (run / "model-f16.gguf").write_bytes(b"GGUF")
    (run / "model-q8_0.gguf").write_bytes(b"GGUF")
    (run / "merged").mkdir()
    (run / "merged" / "config.json").write_text("{}")
    m = resolve(str(run))
    assert m.gguf_path == run / "model-q8_0.gguf" and m.merged_dir == run / "merged"
    assert m.torch_weights() == (str(run / "merged"), [])  # the merged folder holds the adapter already


def test_export_folder_with_manifest_only_and_merged_only(tmp_path):
    exp = tmp_path / "export"
    (exp / "merged").mkdir(parents=True)
    (exp / "merged" / "config.json").write_text("{}")
    (exp / "manifest.json").write_text(json.dumps({"base_model": "smollm2-135m-instruct", "role": "deacon"}))
    m = resolve(str(exp))
    assert m.base_model == "smollm2-135m-instruct" and m.role == "deacon" and m.adapters == []
    assert m.torch_weights() == (str(exp / "merged"), [])


def test_gguf_file_and_plain_hf_folder(tmp_path):
    g = tmp_path / "m.gguf"
    g.write_bytes(b"GGUF")
    m = resolve(str(g))
    assert m.gguf_path == g and m.base_model == str(g) and m.results_dir.name == "base-m.gguf"
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    assert resolve(str(hf)).base_model == str(hf)


@pytest.mark.parametrize(
    "ref,fragment",
    [("", "empty"), ("base:", "missing"), ("/no/such/dir", "no such file"), ("no such!", "no such file")],
)
def test_bad_refs(ref, fragment):
    with pytest.raises(GtExtError, match=fragment):
        resolve(ref)


def test_folders_that_are_not_models(tmp_path):
    with pytest.raises(GtExtError, match="no run.json"):
        resolve(str(tmp_path))
    (tmp_path / "run.json").write_text("{broken")
    with pytest.raises(GtExtError, match="run.json: unreadable"):
        resolve(str(tmp_path))
    (tmp_path / "run.json").write_text("{}")
    with pytest.raises(GtExtError, match="no run.json/manifest.json with base_model"):
        resolve(str(tmp_path))
    # A run folder without its adapter is not the base model in disguise: it is an error.
    (tmp_path / "run.json").write_text(json.dumps({"base_model": "tiny-llama"}))
    with pytest.raises(GtExtError, match="no adapter/"):
        resolve(str(tmp_path))


def test_adapter_list_with_weights(tmp_path):
    a, b = _adapter(tmp_path / "a"), _adapter(tmp_path / "b")
    assert parse_adapters(f"{a}=0.25,{b}") == [(a, 0.25), (b, 1.0)]
    # An extra adapter is its own folder only: the served model below it carries its parent.
    task = _run(tmp_path / "task", parent=str(a))
    assert parse_adapters(f"{a},{task}=0.5") == [(a, 1.0), (task / "adapter", 0.5)]
    with pytest.raises(GtExtError, match="not a number"):
        parse_adapters(f"{a}=lots")


def test_task_adapter_run_stacks_its_role_adapter_first(tmp_path):
    """A run trained on top of a role adapter (run.json `parent`) is role + task adapter."""
    role = _adapter(tmp_path / "role-adapter")
    run = _run(tmp_path / "task-run", parent=str(role))
    assert resolve(str(run)).adapters == [(role, 1.0), (run / "adapter", 1.0)]
    (role / "adapter_config.json").unlink()
    with pytest.raises(GtExtError, match="which is gone"):
        resolve(str(run))


def test_registry_refs_stack_the_parent_version(tmp_path, monkeypatch):
    """A registered task adapter whose run.json names its role model `name:ver` resolves to the
    role model's adapter and then its own, both from the registry's copies."""
    from gt_ext.registry import Registry

    monkeypatch.setenv("GT_EXT_MODELS", str(tmp_path / "models"))
    monkeypatch.setenv("GT_EXT_REGISTRY_BACKEND", "sqlite")
    monkeypatch.delenv("GT_ROOT", raising=False)
    monkeypatch.delenv("GT_TOWN_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    role_run = _run(tmp_path / "role-run", status="done")
    (role_run / "adapter" / "adapter_model.safetensors").write_bytes(b"0")
    with Registry.open() as reg:
        role_rec = reg.register(role_run)
    task_run = _run(tmp_path / "task-run", status="done", task="patrol", parent=role_rec.ref)
    (task_run / "adapter" / "adapter_model.safetensors").write_bytes(b"1")
    with Registry.open() as reg:
        task_rec = reg.register(task_run, name="witness-patrol")
    m = resolve(task_rec.ref)
    assert m.registry_ref == task_rec.ref and m.results_dir == Path(task_rec.path)
    assert m.adapters == [(Path(role_rec.adapter_dir), 1.0), (Path(task_rec.adapter_dir), 1.0)]
    assert from_registry(role_rec.ref).adapters == [(Path(role_rec.adapter_dir), 1.0)]
    # what a remote API request may name: registry refs only, never a folder
    with pytest.raises(GtExtError):
        from_registry(str(role_run))
