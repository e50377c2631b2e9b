"""The llama.cpp backend: the Generator API over llama-cpp-python on a GGUF file.

Prompts are rendered with the same chat template (the HF tokenizer of the base model) as the
PyTorch path and tokenized by llama.cpp; llama.cpp computes the logits, and the shared decode loop
(`gt_ext.serve.scheduler`) samples, detokenizes and cuts stop strings exactly as for PyTorch (so
sampling options mean the same on both backends). One request runs at a time (llama-cpp-python's
`Llama` holds one sequence); waiting requests join when it finishes.

Adapters: a PEFT LoRA folder is converted once to a GGUF LoRA by llama.cpp's own
`convert_lora_to_gguf.py` (`gt_ext.export.lora_gguf`, cached by content), loaded with
`llama_adapter_lora_init`, and each request's stack is set with `llama_set_adapters_lora` when it
starts (a weight per adapter; switching stacks costs no reload). The GGUF must hold the base
weights the adapter was trained on (the base model's GGUF, not an export's merged one).
"""

from __future__ import annotations

import ctypes
import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gt_ext.errors import GtExtError

log = logging.getLogger(__name__)


def _tokenizer_for(base_model: str, gguf: Path) -> Any:
    from gt_ext.models import KNOWN_MODELS, load_tokenizer

    if base_model in KNOWN_MODELS or Path(base_model).is_dir():
        return load_tokenizer(base_model)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)


class LlamaCppEngine:
    """llama.cpp logits for the `DecodeLoop`: start / prefill / decode / finish, one row at a time."""

    max_slots = 1

    def __init__(self, base_model: str, gguf_path: str | Path | None = None, threads: int | None = None,
                 n_ctx: int = 4096):
        try:
            import llama_cpp
            from llama_cpp import Llama
        except ImportError:
            raise GtExtError("backend llama.cpp: llama-cpp-python is not installed (run ./install.sh)") from None
        gguf = Path(gguf_path or base_model)
        if not gguf.is_file() or gguf.suffix != ".gguf":
            raise GtExtError(f"backend llama.cpp: {gguf} is not a .gguf file")
        self._lc = llama_cpp
        self.gguf = gguf
        nt = threads or os.cpu_count()
        self.llm = Llama(model_path=str(gguf), n_ctx=n_ctx, n_threads=nt, n_threads_batch=nt, n_batch=512,
                         verbose=False)
        self.tokenizer = _tokenizer_for(base_model, gguf)
        self.max_context = n_ctx
        self.n_vocab = self.llm.n_vocab()
        vocab = llama_cpp.llama_model_get_vocab(self.llm._model.model)
        # End-of-generation tokens as llama.cpp itself decides them (EOS, EOT, <|im_end|>, ...).
        self.eos_ids = {t for t in range(self.n_vocab) if llama_cpp.llama_vocab_is_eog(vocab, t)}
        self.base_model = base_model
        self._adapters: dict[str, tuple[Any, float]] = {}  # key -> (llama.cpp adapter, scale correction)
        self._active: tuple = ()  # the stack set in the context now

    # -- adapters ---------------------------------------------------------------------------
    def add_adapter(self, path: str | Path) -> str:
        """Convert (cached) and load a PEFT LoRA folder; returns its key (the resolved folder)."""
        from gt_ext.export.lora_gguf import lora_gguf
        from gt_ext.models.refs import adapter_folder
        from gt_ext.serve.adapter_stack import LoraAdapter

        folder = adapter_folder(path).resolve()
        key = str(folder)
        if key in self._adapters:
            return key
        ad = LoraAdapter.load(folder)  # the PyTorch path's checks (LoRA only, no DoRA, ...)
        gguf = lora_gguf(folder, self.base_model)
        handle = self._lc.llama_adapter_lora_init(self.llm._model.model, str(gguf).encode())
        if not handle:
            raise GtExtError(f"adapter {folder}: llama.cpp refused its GGUF LoRA {gguf} (does it fit {self.gguf.name}?)")
        # llama.cpp scales by alpha/r; an rsLoRA adapter wants alpha/sqrt(r): corrected through the weight.
        correction = math.sqrt(ad.rank) if _rslora(folder) else 1.0
        self._adapters[key] = (handle, correction)
        log.info("loaded adapter %s into llama.cpp (%s)", folder, gguf.name)
        return key

    def adapter_keys(self) -> list[str]:
        return list(self._adapters)

    def _set_adapters(self, stack: list[tuple[str, float]]) -> None:
        stack = [(k, w) for k, w in stack if w != 0.0]
        if tuple(stack) == self._active:
            return
        n = len(stack)
        handles = (self._lc.llama_adapter_lora_p_ctypes * n)(*[self._adapters[k][0] for k, _ in stack])
        scales = (ctypes.c_float * n)(*[w * self._adapters[k][1] for k, w in stack])
        if self._lc.llama_set_adapters_lora(self.llm._ctx.ctx, handles if n else None, n, scales if n else None):
            raise GtExtError("llama.cpp: setting the request's LoRA adapters failed")
        self._active = tuple(stack)

    # -- the decode loop's engine calls ------------------------------------------------------
    def tokenize(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def start(self, seq: Any) -> None:
        self.llm.reset()  # a new sequence (llama-cpp-python would otherwise reuse a common prefix)
        self._set_adapters(list(seq.request.adapters))
        seq.slot = 0

    def prefill(self, seq: Any, ids: list[int]) -> torch.Tensor:
        self.llm.eval(ids)
        return self._last_logits()

    def decode(self, seqs: list[Any], ids: list[int]) -> torch.Tensor:
        if len(seqs) != 1:
            raise GtExtError(f"llama.cpp engine: one sequence at a time, got {len(seqs)}")
        self.llm.eval([ids[0]])
        return self._last_logits()[None]

    def finish(self, seq: Any) -> None:
        seq.slot = None

    def _last_logits(self) -> torch.Tensor:
        ptr = self._lc.llama_get_logits_ith(self.llm._ctx.ctx, -1)
        return torch.from_numpy(np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).copy())



def _rslora(folder: Path) -> bool:
    try:
        return bool(json.loads((folder / "adapter_config.json").read_text()).get("use_rslora"))
    except (OSError, ValueError):
        return False
