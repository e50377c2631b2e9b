"""What a local HF base-model folder is: LLaMA-family checks, tokenizer family, chat template, license.

    check_architecture(folder) -> dict           # config.json; GtExtError for what we cannot train/export
    tokenizer_family(folder) -> str | None       # "llama-spm" | "llama3-bpe" | "smollm-bpe" | "gpt2-bpe" | None
    describe(folder) -> dict                     # everything `gt-ext models add/show` records

The tokenizer family decides the GGUF tokenizer metadata: llama.cpp tokenizes SentencePiece models
("llama" tokenizer model, scores, byte-fallback tokens) and byte-level BPE models ("gpt2" model,
merges) differently, and a BPE model also needs the right pre-tokenizer (the regex that splits text
before merging). llama.cpp's converter recognises known tokenizers by hashing how they encode a test
string; a tokenizer it has never seen (a new vocabulary with a known splitting rule, such as the
locally built ones in the tests) is recognised here by the structure of its tokenizer.json instead
(`llama_cpp_pre`). Reads files only: no torch, no transformers.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from gt_ext.errors import GtExtError

FAMILIES = {
    "llama-spm": "SentencePiece BPE with byte fallback (LLaMA-2, Mistral v0.1-0.3, TinyLlama)",
    "llama3-bpe": "byte-level BPE split by LLaMA-3's regex (LLaMA-3.x)",
    "smollm-bpe": "byte-level BPE, GPT-2 regex after single-digit splitting (SmolLM, SmolLM2)",
    "gpt2-bpe": "byte-level BPE split by GPT-2's regex",
}
# llama.cpp's name for each family's pre-tokenizer (tokenizer.ggml.pre); SentencePiece has none.
LLAMA_CPP_PRE = {"llama-spm": "default", "llama3-bpe": "llama-bpe", "smollm-bpe": "smollm", "gpt2-bpe": "gpt-2"}
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
SUPPORTED_TYPES = ("llama", "mistral")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise GtExtError(f"{path}: unreadable ({type(e).__name__})") from None
    if not isinstance(data, dict):
        raise GtExtError(f"{path}: expected a JSON object")
    return data


def check_architecture(folder: str | Path) -> dict[str, Any]:
    """config.json of a LLaMA-family folder; raise `GtExtError` naming what is not supported."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise GtExtError(f"{folder}: not a model folder (no config.json)")
    cfg = _read_json(folder / "config.json")
    mtype = cfg.get("model_type")
    if mtype not in SUPPORTED_TYPES:
        raise GtExtError(f"{folder}: model_type {mtype!r} is not a LLaMA-family model "
                         f"(supported: {', '.join(SUPPORTED_TYPES)})")
    window = cfg.get("sliding_window")
    if window is not None and cfg.get("use_sliding_window", True) \
            and int(window) < int(cfg.get("max_position_embeddings") or 0):
        raise GtExtError(f"{folder}: sliding-window attention (sliding_window={window}) is not supported: "
                         "packed training attends over whole examples and the GGUF export would not window; "
                         "use a model without a window (Mistral v0.2 and later set sliding_window: null)")
    return cfg


def _steps(part: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The steps of a tokenizer.json pre_tokenizer or decoder (a Sequence or a single step)."""
    if not part:
        return []
    if part.get("type") == "Sequence":
        return list(part.get("pretokenizers") or part.get("decoders") or [])
    return [part]


def _split_pattern(step: dict[str, Any]) -> str | None:
    pat = step.get("pattern") or {}
    return pat.get("Regex") or pat.get("String")


def tokenizer_family(folder: str | Path) -> str | None:
    """The tokenizer family of a folder (see FAMILIES), None when it is none of them."""
    folder = Path(folder)
    tj_path = folder / "tokenizer.json"
    if not tj_path.is_file():
        return "llama-spm" if (folder / "tokenizer.model").is_file() else None
    tj = _read_json(tj_path)
    model = tj.get("model") or {}
    if model.get("type") != "BPE":
        return None
    decoders = _steps(tj.get("decoder"))
    if model.get("byte_fallback") and any(d.get("type") == "ByteFallback" for d in decoders):
        return "llama-spm"
    steps = _steps(tj.get("pre_tokenizer"))
    kinds = [s.get("type") for s in steps]
    if not kinds or kinds[-1] != "ByteLevel" or not any(d.get("type") == "ByteLevel" for d in decoders):
        return None
    last = steps[-1]
    if kinds == ["Split", "ByteLevel"] and _split_pattern(steps[0]) == LLAMA3_SPLIT and not last.get("use_regex", True):
        return "llama3-bpe"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and last.get("use_regex", True) \
            and not last.get("add_prefix_space", False):
        return "smollm-bpe"
    if kinds == ["ByteLevel"] and last.get("use_regex", True) and not last.get("add_prefix_space", False):
        return "gpt2-bpe"
    return None


def llama_cpp_pre(folder: str | Path) -> str | None:
    """llama.cpp's pre-tokenizer name for the folder's tokenizer, None if its family is unknown."""
    fam = tokenizer_family(folder)
    return LLAMA_CPP_PRE.get(fam) if fam else None


def chat_template(folder: str | Path) -> str | None:
    """The chat template text (chat_template.jinja, or tokenizer_config.json's), None if there is none."""
    folder = Path(folder)
    if (folder / "chat_template.jinja").is_file():
        return (folder / "chat_template.jinja").read_text(encoding="utf-8")
    tc = folder / "tokenizer_config.json"
    if tc.is_file():
        t = _read_json(tc).get("chat_template")
        if isinstance(t, list):  # named templates: the default one
            t = next((x.get("template") for x in t if isinstance(x, dict) and x.get("name") == "default"), None)
        return t if isinstance(t, str) else None
    return None


def template_style(template: str | None) -> str | None:
    """A short name for a chat template by its markers: chatml, llama3, llama2 or custom."""
    if template is None:
        return None
    if "<|im_start|>" in template:
        return "chatml"
    if "<|start_header_id|>" in template:
        return "llama3"
    if "[INST]" in template:
        return "llama2"
    return "custom"


def license_of(folder: str | Path) -> str | None:
    """The license a model card (README.md front matter `license:`) or a LICENSE file names."""
    folder = Path(folder)
    readme = folder / "README.md"
    if readme.is_file():
        text = readme.read_text(encoding="utf-8", errors="replace")
        front = re.match(r"---\n(.*?)\n---", text, re.S)
        if front:
            m = re.search(r"^license:\s*['\"]?([^'\"\n]+)", front.group(1), re.M)
            if m:
                return m.group(1).strip()
    for name in ("LICENSE", "LICENSE.txt", "LICENSE.md"):
        if (folder / name).is_file():
            first = next((ln.strip() for ln in (folder / name).read_text(errors="replace").splitlines() if ln.strip()), "")
            return first[:80] or name
    return None


def describe(folder: str | Path) -> dict[str, Any]:
    """What `gt-ext models add/show` records about a base folder (raises for unsupported ones)."""
    folder = Path(folder).expanduser().resolve()
    cfg = check_architecture(folder)
    fam = tokenizer_family(folder)
    tmpl = chat_template(folder)
    n_heads = int(cfg.get("num_attention_heads") or 0)
    return {
        "path": str(folder),
        "architecture": (cfg.get("architectures") or ["?"])[0],
        "model_type": cfg.get("model_type"),
        "hidden_size": cfg.get("hidden_size"),
        "num_hidden_layers": cfg.get("num_hidden_layers"),
        "num_attention_heads": n_heads,
        "num_key_value_heads": cfg.get("num_key_value_heads") or n_heads,
        "vocab_size": cfg.get("vocab_size"),
        "max_position_embeddings": cfg.get("max_position_embeddings"),
        "tokenizer_family": fam,
        "tokenizer_family_description": FAMILIES.get(fam or "", "unknown: training works, GGUF export is refused"),
        "llama_cpp_pre": LLAMA_CPP_PRE.get(fam or ""),
        "chat_template": template_style(tmpl),
        "license": license_of(folder),
    }
