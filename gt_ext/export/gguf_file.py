"""Write a LLaMA-family HF folder as a GGUF file that llama.cpp loads (f32, f16 or q8_0).

    write_gguf(hf_dir, out_path, qtype="f16", name=None) -> Path

Uses `gguf.GGUFWriter` (the llama.cpp project's own Python writer). Two things matter for
llama.cpp to compute the same function as transformers:
- q_proj / k_proj rows are permuted from HF's rotate-half RoPE layout to GGML's interleaved
  pairs, per head (k with the KV head count), as llama.cpp's converter does;
- tokenizer metadata: the byte-level BPE vocabulary, merges, token types (special added tokens
  are CONTROL so `<|im_start|>` parses as one token), special ids, the chat template and the
  pre-tokenizer name ("smollm" for SmolLM2's tokenizer).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from gt_ext.errors import GtExtError

log = logging.getLogger(__name__)

QTYPES = ("f32", "f16", "q8_0")
# Tokenizers llama.cpp knows by pre-tokenizer name, recognised by their first tokens and size.
_KNOWN_PRE = {("<|endoftext|>", "<|im_start|>", "<|im_end|>", 49152): "smollm"}


def permute_rope(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF rotate-half rows -> GGML interleaved rows. w: [n_head * head_dim, in]."""
    d = w.shape[0] // n_head
    # Within each head, rows [x0..x_{d/2-1}, y0..y_{d/2-1}] become [x0, y0, x1, y1, ...].
    return w.reshape(n_head, 2, d // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _rope_theta(cfg: dict[str, Any]) -> float:
    if "rope_theta" in cfg:
        return float(cfg["rope_theta"])
    params = cfg.get("rope_parameters") or {}
    return float(params.get("rope_theta", 10000.0))


def _tokenizer_metadata(writer: Any, hf_dir: Path) -> None:
    import gguf
    from gguf.vocab import SpecialVocab

    tj_path = hf_dir / "tokenizer.json"
    if not tj_path.is_file():
        raise GtExtError(f"{hf_dir}: no tokenizer.json (GGUF export needs a fast BPE tokenizer)")
    tj = json.loads(tj_path.read_text(encoding="utf-8"))
    model = tj.get("model", {})
    if model.get("type") != "BPE" or (tj.get("decoder") or {}).get("type") != "ByteLevel":
        raise GtExtError(f"{tj_path}: only byte-level BPE tokenizers (LLaMA-3/SmolLM style) can be exported")
    vocab: dict[str, int] = dict(model["vocab"])
    added = {a["id"]: a for a in tj.get("added_tokens", [])}
    for tid, a in added.items():
        vocab.setdefault(a["content"], tid)
    n = max(vocab.values()) + 1
    tokens = [f"[PAD{i}]" for i in range(n)]
    types = [int(gguf.TokenType.UNUSED)] * n
    for text, tid in vocab.items():
        tokens[tid] = text
        types[tid] = int(gguf.TokenType.NORMAL)
    for tid, a in added.items():
        types[tid] = int(gguf.TokenType.CONTROL if a.get("special") else gguf.TokenType.USER_DEFINED)
    pre = _KNOWN_PRE.get((*tokens[:3], n), "default")
    if pre == "default":
        log.warning("%s: unknown tokenizer; GGUF gets pre-tokenizer 'default' (llama.cpp may split text differently)", hf_dir)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special = SpecialVocab(hf_dir, load_merges=True, n_vocab=n)
    special.add_to_gguf(writer, quiet=True)
    if "bos" not in special.add_special_token:
        writer.add_add_bos_token(False)
    return None


def write_gguf(hf_dir: str | Path, out_path: str | Path, qtype: str = "f16", name: str | None = None) -> Path:
    """Convert the LLaMA HF folder `hf_dir` (safetensors) to a GGUF file at `out_path`, atomically."""
    import gguf
    from safetensors.numpy import load_file

    if qtype not in QTYPES:
        raise GtExtError(f"GGUF type {qtype!r} not supported: use one of {', '.join(QTYPES)}")
    hf_dir, out_path = Path(hf_dir), Path(out_path)
    cfg = json.loads((hf_dir / "config.json").read_text())
    if cfg.get("model_type") != "llama":
        raise GtExtError(f"{hf_dir}: GGUF export supports LLaMA models, not {cfg.get('model_type')!r}")
    n_layer, n_head = int(cfg["num_hidden_layers"]), int(cfg["num_attention_heads"])
    n_kv = int(cfg.get("num_key_value_heads") or n_head)
    hidden = int(cfg["hidden_size"])
    head_dim = int(cfg.get("head_dim") or hidden // n_head)

    tensors: dict[str, np.ndarray] = {}
    for f in sorted(hf_dir.glob("*.safetensors")):
        tensors.update(load_file(str(f)))
    if not tensors:
        raise GtExtError(f"{hf_dir}: no safetensors weights")
    tied = bool(cfg.get("tie_word_embeddings", False))
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_layer)
    ftype = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
             "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[qtype]

    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out_path.name}.", suffix=".tmp", dir=out_path.parent)
    os.close(fd)
    try:
        w = gguf.GGUFWriter(tmp, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
        w.add_type(gguf.GGUFType.MODEL)
        w.add_name(name or hf_dir.name)
        w.add_context_length(int(cfg.get("max_position_embeddings", 2048)))
        w.add_embedding_length(hidden)
        w.add_block_count(n_layer)
        w.add_feed_forward_length(int(cfg["intermediate_size"]))
        w.add_head_count(n_head)
        w.add_head_count_kv(n_kv)
        w.add_layer_norm_rms_eps(float(cfg.get("rms_norm_eps", 1e-5)))
        w.add_rope_freq_base(_rope_theta(cfg))
        w.add_rope_dimension_count(head_dim)
        w.add_vocab_size(int(cfg["vocab_size"]))
        w.add_file_type(int(ftype))
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        _tokenizer_metadata(w, hf_dir)

        for hf_name in sorted(tensors):
            if hf_name == "lm_head.weight" and tied:
                continue  # llama.cpp falls back to token_embd for the output when output.weight is absent
            gname = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
            if gname is None:
                raise GtExtError(f"{hf_dir}: tensor {hf_name} has no GGUF name")
            data = tensors[hf_name].astype(np.float32)
            if hf_name.endswith("self_attn.q_proj.weight"):
                data = permute_rope(data, n_head)
            elif hf_name.endswith("self_attn.k_proj.weight"):
                data = permute_rope(data, n_kv)
            if data.ndim == 1 or qtype == "f32":
                w.add_tensor(gname, data)  # norms stay f32 (tiny, and precision matters there)
            elif qtype == "q8_0" and data.shape[-1] % 32 == 0:
                q = gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0)
                w.add_tensor(gname, q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
            else:
                w.add_tensor(gname, data.astype(np.float16))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        os.replace(tmp, out_path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return out_path
