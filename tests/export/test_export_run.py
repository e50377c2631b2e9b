"""Export: layout and manifest, merged == base + adapter, GGUF read back by transformers and llama.cpp."""

from __future__ import annotations

import json

import pytest
import torch
from export_fixtures import make_run

from gt_ext.cli import main
from gt_ext.errors import GtExtError
from gt_ext.export.convert import write_ggufs
from gt_ext.export.export import export_run, verify_export

PROMPT = [{"role": "user", "content": "Polecat nux has been idle for 40 minutes. What do you do?"}]


def _ids(tok):
    return torch.tensor([tok.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=True, return_dict=False)])


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("exp")
    run = make_run(root / "run")
    manifest = export_run(run, root / "out", quantized=["q8_0", "f32"])
    return run, root / "out", manifest


def test_layout_and_manifest(exported):
    _, out, manifest = exported
    for rel in ("adapter/adapter_config.json", "adapter/adapter_model.safetensors", "merged/model.safetensors",
                "merged/config.json", "merged/tokenizer.json", "model-f16.gguf", "model-q8_0.gguf",
                "model-f32.gguf", "run.json", "manifest.json"):
        assert (out / rel).is_file(), rel
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk == manifest and manifest["base_model"] == "tiny-llama" and manifest["role"] == "witness"
    assert set(manifest["files"]) == {p.relative_to(out).as_posix() for p in out.rglob("*")
                                      if p.is_file() and p.name != "manifest.json"}
    assert verify_export(out) == []
    (out / "run.json").write_text("{}")
    assert verify_export(out) == ["run.json"]


def test_merged_logits_match_base_plus_adapter(exported):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from gt_ext.models import load_model

    run, out, _ = exported
    base, tok = load_model("tiny-llama")
    with_adapter = PeftModel.from_pretrained(base, str(run / "adapter")).eval()
    merged = AutoModelForCausalLM.from_pretrained(str(out / "merged")).eval()
    ids = _ids(tok)
    with torch.no_grad():
        a = with_adapter(input_ids=ids).logits
        b = merged(input_ids=ids).logits
        with with_adapter.disable_adapter():
            plain = with_adapter(input_ids=ids).logits
    assert (a - b).abs().max() < 1e-4
    assert (a - plain).abs().max() > 1e-3  # the adapter really changes the model


def test_gguf_reads_back_in_transformers(exported):
    """transformers' GGUF loader undoes the q/k permutation: f32 logits must match the merged model."""
    from transformers import AutoModelForCausalLM

    _, out, _ = exported
    merged = AutoModelForCausalLM.from_pretrained(str(out / "merged")).eval()
    ids = torch.tensor([[1, 9690, 198, 3108, 314, 260, 1345, 28, 2]])
    with torch.no_grad():
        ref = merged(input_ids=ids).logits
        for q, tol in (("f32", 1e-4), ("f16", 2e-2)):
            g = AutoModelForCausalLM.from_pretrained(str(out), gguf_file=f"model-{q}.gguf", dtype=torch.float32).eval()
            assert (g(input_ids=ids).logits - ref).abs().max() < tol, q


def test_gguf_tokenizer_metadata_matches_smollm2_release(exported):
    from gguf import GGUFReader

    from gt_ext.models.base import smollm2_gguf_path

    _, out, _ = exported
    ours, theirs = GGUFReader(str(out / "model-f16.gguf")), GGUFReader(str(smollm2_gguf_path()))
    for key in ("tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type",
                "tokenizer.ggml.merges", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
                "tokenizer.ggml.add_bos_token", "tokenizer.chat_template"):
        assert ours.fields[key].contents() == theirs.fields[key].contents(), key


def test_bad_inputs(tmp_path, tiny_run):
    with pytest.raises(GtExtError, match="no run.json"):
        export_run(tmp_path, tmp_path / "o")
    with pytest.raises(GtExtError, match="q4_k"):
        export_run(tiny_run, tmp_path / "o", quantized=["q4_k"])
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    with pytest.raises(GtExtError, match="not empty"):
        export_run(tiny_run, tmp_path / "busy")
    with pytest.raises(GtExtError, match="not supported"):
        write_ggufs(tiny_run, {"q2": tmp_path / "x.gguf"})
    assert main(["export", str(tmp_path / "nope"), "--to", str(tmp_path / "o2")]) == 2
    assert not (tmp_path / "o").exists() and not (tmp_path / "o2").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp leftovers


def test_cli_export(tmp_path, tiny_run, capsys):
    rc = main(["export", str(tiny_run), "--to", str(tmp_path / "cli"), "--gguf", "none", "--json"])
    assert rc == 0
    m = json.loads(capsys.readouterr().out)
    assert m["gguf"] == ["model-f16.gguf"] and (tmp_path / "cli" / "model-f16.gguf").is_file()


def test_export_to_a_file_is_one_line_and_leaves_it_alone(tmp_path, capsys):
    """Issue #20: `gt-ext export RUN --to FILE` printed a traceback."""
    run = tmp_path / "run"
    (run / "adapter").mkdir(parents=True)
    (run / "adapter" / "adapter_config.json").write_text("{}")
    (run / "run.json").write_text(json.dumps({"role": "witness", "base_model": "tiny-llama", "status": "done"}))
    target = tmp_path / "a-file"
    target.write_text("keep")
    for to in (target, target / "sub"):
        assert main(["export", str(run), "--to", str(to)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and str(target) in err and "is a file" in err, err
    assert target.read_text() == "keep" and sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "run"]
