"""Any LLaMA-family base: tokenizer families, `gt-ext models add|show|list`, and per family the
whole way through: register -> train -> export (llama.cpp's converter) -> llama.cpp tokenizes
like HF and computes the same logits -> served by both engines with the same answer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from families import TEXT, build_base
from train_corpus import write_corpus

from gt_ext.cli import main
from gt_ext.errors import GtExtError
from gt_ext.models import registered, resolve_model_dir
from gt_ext.models.family import describe, tokenizer_family

FAMILIES = ("llama-spm", "llama3-bpe", "smollm-bpe")
CHAT = [{"role": "system", "content": "You are the witness of rig demo."},
        {"role": "user", "content": "Polecat nux idle 40 min on gt-12?  Grüße 你好 🦙\n\tdef f(x): return x**2"}]


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bases")
    return {fam: build_base(fam, root / fam) for fam in FAMILIES}


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("GT_EXT_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_families_detected(bases):
    for fam, folder in bases.items():
        assert tokenizer_family(folder) == fam
    info = {fam: describe(folder) for fam, folder in bases.items()}
    assert info["llama-spm"]["llama_cpp_pre"] == "default" and info["llama-spm"]["chat_template"] == "custom"
    assert info["llama3-bpe"]["llama_cpp_pre"] == "llama-bpe" and info["llama3-bpe"]["chat_template"] == "llama3"
    assert info["smollm-bpe"]["llama_cpp_pre"] == "smollm" and info["smollm-bpe"]["chat_template"] == "chatml"
    # the built-in SmolLM2 base splits digits like SmolLM2's own tokenizer (and llama.cpp)
    assert tokenizer_family(resolve_model_dir("tiny-llama")) == "smollm-bpe"


def test_models_add_show_list(bases, home, capsys):
    (bases["llama3-bpe"] / "README.md").write_text("---\nlicense: llama3.2\ntags: [x]\n---\n# card\n")
    assert main(["models", "add", str(bases["llama3-bpe"]), "--name", "my-llama3", "--json"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["name"] == "my-llama3" and rec["tokenizer_family"] == "llama3-bpe" and rec["license"] == "llama3.2"
    assert main(["models", "add", str(bases["llama-spm"]), "--name", "my-spm", "--license", "MIT"]) == 0
    capsys.readouterr()
    assert main(["models", "list", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["my-spm"]["tokenizer_family"] == "llama-spm" and rows["my-spm"]["license"] == "MIT"
    assert rows["my-llama3"]["kind"] == "registered" and rows["tiny-llama"]["kind"] == "built-in"
    assert main(["models", "show", "my-spm", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["path"] == str(bases["llama-spm"].resolve()) and shown["num_key_value_heads"] == 2
    assert resolve_model_dir("my-spm") == bases["llama-spm"].resolve()  # a registered name is a base name
    # bad input: one line, exit 2
    for argv, needle in ((["models", "add", str(home / "nope")], "no such folder"),
                         (["models", "add", str(bases["llama-spm"]), "--name", "tiny-llama"], "built-in"),
                         (["models", "add", str(bases["llama-spm"]), "--name", "Bad Name"], "lowercase"),
                         (["models", "show", "nobody"], "unknown base model")):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and needle in err, (argv, err)


def test_sliding_window_refused_and_other_architectures(bases, tmp_path, home):
    mistral = tmp_path / "mistral"
    mistral.mkdir()
    for f in bases["llama-spm"].iterdir():
        (mistral / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((mistral / "config.json").read_text())
    cfg.update(model_type="mistral", architectures=["MistralForCausalLM"], sliding_window=4096,
               max_position_embeddings=32768)
    (mistral / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(GtExtError, match="sliding-window attention .sliding_window=4096. is not supported"):
        registered.add(mistral)
    with pytest.raises(GtExtError, match="sliding-window"):
        resolve_model_dir(str(mistral))
    cfg["sliding_window"] = None  # Mistral v0.2+: no window, a plain LLaMA-family model
    (mistral / "config.json").write_text(json.dumps(cfg))
    assert registered.add(mistral)["tokenizer_family"] == "llama-spm"
    cfg["model_type"] = "gpt2"
    (mistral / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(GtExtError, match="'gpt2' is not a LLaMA-family model"):
        resolve_model_dir(str(mistral))


def _llama_logits(path: Path, ids: list[int]) -> torch.Tensor:
    import llama_cpp
    import numpy as np

    llm = llama_cpp.Llama(model_path=str(path), n_ctx=512, n_threads=2, verbose=False, logits_all=True, seed=0)
    llm.eval(ids)
    out = torch.tensor(np.array(llm.scores[: len(ids)]))
    llm.close()
    return out


@pytest.mark.integration
@pytest.mark.parametrize("family", FAMILIES)
def test_family_trains_exports_and_serves(family, bases, tmp_path, home):
    llama_cpp = pytest.importorskip("llama_cpp", reason="install.sh builds llama-cpp-python")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from gt_ext.export.export import export_run
    from gt_ext.serve.generate import Generator
    from gt_ext.serve.params import SamplingParams
    from gt_ext.train.run import prepare, run_training

    name = f"base-{family}"
    registered.add(bases[family], name=name)
    corpus = write_corpus(tmp_path / "corpus", tasks=("patrol",), n_train=6, n_val=2)
    p = prepare("witness", corpus, "patrol", None, [f"base_model={name}", "max_steps=2", "lora.r=4",
                                                    "optim.lr=5e-2", "data.batch_size=2", "data.pack_length=512"])
    run = run_training(p, tmp_path / "run", progress=False)
    assert run["status"] == "done" and run["base_model"] == name
    export_run(tmp_path / "run", tmp_path / "out", quantized=[])
    out = tmp_path / "out"
    tok = AutoTokenizer.from_pretrained(str(out / "merged"))
    llm = llama_cpp.Llama(model_path=str(out / "model-f16.gguf"), n_ctx=512, verbose=False)
    # llama.cpp splits and merges multilingual text, code and whitespace exactly as HF does
    assert llm.tokenize(TEXT.encode(), add_bos=False, special=False) == tok(TEXT, add_special_tokens=False)["input_ids"]
    prompt = tok.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False)
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    assert llm.tokenize(prompt.encode(), add_bos=False, special=True) == ids  # control tokens too
    llm.close()
    # ... and computes the trained model's function: the same next token at every position
    merged = AutoModelForCausalLM.from_pretrained(str(out / "merged")).eval()
    with torch.no_grad():
        ref = merged(torch.tensor([ids])).logits[0]
    got = _llama_logits(out / "model-f16.gguf", ids)
    assert len(set(ref.argmax(-1).tolist())) > 5  # a test that can fail: the picks vary
    assert torch.equal(got.argmax(-1), ref.argmax(-1))
    assert float((got - ref).abs().max()) < 0.05  # f16 weights
    # greedy decoding: the same tokens in llama.cpp as in torch
    with torch.no_grad():
        want = merged.generate(torch.tensor([ids]), max_new_tokens=6, do_sample=False,
                               pad_token_id=tok.pad_token_id)[0, len(ids):].tolist()
    llm = llama_cpp.Llama(model_path=str(out / "model-f16.gguf"), n_ctx=512, verbose=False)
    got_ids = []
    for t in llm.generate(ids, temp=0.0, top_k=1, top_p=1.0, repeat_penalty=1.0, reset=True):
        got_ids.append(int(t))
        if len(got_ids) == len(want):
            break
    llm.close()
    assert got_ids == want
    # served by name: our torch engine on the registered base with the run's adapter answers what the
    # merged model answers; llama.cpp's engine serves the export
    params = SamplingParams(max_new_tokens=6)
    eos = want.index(tok.eos_token_id) if tok.eos_token_id in want else len(want)
    assert Generator(name, [(tmp_path / "run" / "adapter", 1.0)]).chat(CHAT, params) == \
        tok.decode(want[:eos], skip_special_tokens=True)
    served = Generator(str(out / "merged"), backend="llama.cpp", gguf_path=out / "model-f16.gguf", threads=2)
    assert isinstance(served.chat(CHAT, params), str)
