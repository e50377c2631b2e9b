"""The llama.cpp backend: the Generator API over llama-cpp-python on a GGUF file.

Prompts are rendered with the same chat template (the HF tokenizer of the base model) as the
PyTorch path, then completed by llama.cpp. Adapters cannot be stacked per request here: serve an
export's merged GGUF, or use the PyTorch backend for run-time adapters. Requests of a batch run
one after the other (llama-cpp-python's high-level API holds one sequence).

Sampling differences to know: llama.cpp applies the repetition penalty over the last 64 tokens
(the PyTorch path over the whole context), and min_p is switched off to match the PyTorch path.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gt_ext.errors import GtExtError

log = logging.getLogger(__name__)


def _tokenizer_for(base_model: str, gguf: Path) -> Any:
    from gt_ext.models import KNOWN_MODELS, load_tokenizer

    if base_model in KNOWN_MODELS or Path(base_model).is_dir():
        return load_tokenizer(base_model)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)


class LlamaCppEngine:
    """Runs requests on llama.cpp; same `run(requests, render)` contract as the PyTorch engine."""

    def __init__(self, base_model: str, gguf_path: str | Path | None = None, threads: int | None = None,
                 n_ctx: int = 4096):
        try:
            from llama_cpp import Llama
        except ImportError:
            raise GtExtError("backend llama.cpp: llama-cpp-python is not installed (run ./install.sh)") from None
        gguf = Path(gguf_path or base_model)
        if not gguf.is_file() or gguf.suffix != ".gguf":
            raise GtExtError(f"backend llama.cpp: {gguf} is not a .gguf file")
        self.gguf = gguf
        nt = threads or os.cpu_count()
        self.llm = Llama(model_path=str(gguf), n_ctx=n_ctx, n_threads=nt, n_threads_batch=nt, n_batch=512,
                         verbose=False)
        self.tokenizer = _tokenizer_for(base_model, gguf)
        self.max_context = n_ctx

    def add_adapter(self, path: str | Path) -> str:
        raise GtExtError(f"adapter {path}: the llama.cpp backend serves merged GGUFs only; "
                         "use --backend torch to stack adapters at run time")

    def adapter_keys(self) -> list[str]:
        return []

    def run(self, requests: list, render) -> Iterator[tuple[int, str]]:
        for i, r in enumerate(requests):
            yield from ((i, piece) for piece in self._one(r, render))

    def _one(self, r: Any, render) -> Iterator[str]:
        t0 = time.perf_counter()
        prompt = render(r.messages)
        ids = self.llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
        p = r.params
        if len(ids) + p.max_new_tokens > self.max_context:
            raise GtExtError(f"prompt is {len(ids)} tokens; with max_new_tokens {p.max_new_tokens} it exceeds "
                             f"the llama.cpp context of {self.max_context}")
        r.stats.prompt_tokens = len(ids)
        self.llm.reset()  # a new sequence; llama-cpp-python would otherwise reuse a common prefix
        chunks = self.llm.create_completion(
            ids, max_tokens=p.max_new_tokens, temperature=float(p.temperature), top_p=float(p.top_p),
            top_k=int(p.top_k), min_p=0.0, typical_p=1.0, repeat_penalty=float(p.repetition_penalty),
            stop=list(p.stop) or None, seed=p.seed if p.seed is not None else -1, stream=True,
        )
        n = 0
        for ch in chunks:
            if getattr(r, "cancel", None) is not None and r.cancel.is_set():  # its client went away
                r.stats.finish_reason = "cancelled"
                break
            choice = ch["choices"][0]
            text = choice.get("text") or ""
            if text:
                n += 1
                if n == 1:
                    r.stats.ttft_s = time.perf_counter() - t0
                yield text
            if choice.get("finish_reason"):
                r.stats.finish_reason = choice["finish_reason"]
        r.stats.completion_tokens = n
        r.stats.total_s = time.perf_counter() - t0
