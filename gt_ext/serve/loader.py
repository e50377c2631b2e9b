"""Build a Generator from a `--model` reference and `--adapters`, choosing the backend.

`backend="auto"` picks by what bench/serve.py measured (docs/serve.md): for the agent (one stream)
llama.cpp when llama-cpp-python is installed and a GGUF holds the weights to serve (a base model,
an export's merged GGUF) or the base model's own GGUF is there to apply the adapter stack on (as
GGUF LoRAs), else the PyTorch engine with int8 linears; for the API (concurrent requests,
per-request adapters) the PyTorch engine, which batches.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import Any

from gt_ext.errors import GtExtError
from gt_ext.models.refs import ResolvedModel, base_gguf, parse_adapters, resolve

log = logging.getLogger(__name__)
BACKEND_CHOICES = ("auto", "torch", "llama.cpp", "pipeline")


def llama_cpp_available() -> bool:
    """True when llama-cpp-python is importable (it is a long source build, so it may be absent)."""
    return importlib.util.find_spec("llama_cpp") is not None


def choose_backend(model: ResolvedModel, extra_adapters: list, requested: str = "auto",
                   purpose: str = "agent") -> str:
    """The backend to use for `model` (+ extra adapters); raise if `requested` cannot serve it.

    `purpose="agent"` (one stream): llama.cpp when a GGUF holds all the weights, or the base
    model's GGUF takes the adapters as GGUF LoRAs (`llama_cpp_gguf`; measured faster than our
    PyTorch int8 engine single-stream, docs/serve.md); `purpose="api"` (concurrent requests, adapters chosen per
    request): PyTorch, whose batched decode measured >10x llama.cpp's aggregate at 8 streams.
    """
    if requested not in BACKEND_CHOICES:
        raise GtExtError(f"--backend {requested}: choose one of {', '.join(BACKEND_CHOICES)}")
    if requested == "pipeline":  # only when asked: the stages must be running (docs/pipeline.md)
        return "pipeline"
    on_gguf = llama_cpp_gguf(model, extra_adapters) is not None
    if requested == "llama.cpp":
        if not llama_cpp_available():
            raise GtExtError("--backend llama.cpp: llama-cpp-python is not installed (run ./install.sh)")
        if not on_gguf:
            raise GtExtError(f"--backend llama.cpp: {model.ref} has no GGUF holding its weights and adapters, and "
                             "its base model no GGUF of its own to apply them on; use --backend torch")
        return "llama.cpp"
    if requested == "torch":
        return "torch"
    if purpose == "api":
        return "torch"
    return "llama.cpp" if on_gguf and llama_cpp_available() else "torch"


def llama_cpp_gguf(model: ResolvedModel, extra_adapters: list) -> tuple[Path, list] | None:
    """(GGUF, adapters to apply at run time) for llama.cpp, or None when there is no fitting GGUF.

    An export's GGUF is merged (adapter already inside): used alone, never with its adapters again.
    Otherwise the adapters (the model's stack and the extra ones) go as GGUF LoRAs on the base
    model's own GGUF."""
    if model.gguf_path is not None and not extra_adapters and (not model.adapters or model.merged_dir is not None):
        return Path(model.gguf_path), []
    gguf = base_gguf(model.base_model)
    return (gguf, list(model.adapters) + list(extra_adapters)) if gguf is not None else None


def load_generator(model_ref: str, adapters: str | None = None, backend: str = "auto",
                   quantize: str | None = "int8", threads: int | None = 1, purpose: str = "agent",
                   pipeline: Any = None):
    """(Generator, ResolvedModel) for a model reference; adapters = `a,b=0.5` (see `gt_ext.models.refs`).

    Serving defaults, from bench/serve.py on the 2-core machines here: int8 linears; `threads` CPU
    threads for prefill and decode, 0 = every core. One thread (the agent's default) suits a host
    shared with busy agents, where a second intra-op thread made steps 4x slower; every core (the
    API's default) suits a batched server with a host to itself, where int8 decode of 8 rows ran
    1.4x faster on 2 threads than on 1 (docs/serve.md).
    `backend="pipeline"` generates through node0 stage servers (`pipeline`: a
    `gt_ext.serve.pipeline.PipelineTarget`): the base model's layers there, the model's adapter
    stack (never a merged copy) and the extra adapters applied per request at every stage.
    """
    from gt_ext.serve.generate import Generator

    if threads is not None and threads < 0:
        raise GtExtError(f"threads {threads}: must be 0 (every core) or more")
    if threads == 0:
        threads = os.cpu_count() or 1
    model = resolve(model_ref)
    extra = parse_adapters(adapters)
    chosen = choose_backend(model, extra, backend, purpose)
    log.info("serving %s on %s", model.ref, chosen)
    if chosen == "pipeline":
        gen = Generator(model.base_model, list(model.adapters) + extra, backend="pipeline", pipeline=pipeline)
    elif chosen == "llama.cpp":
        gguf, stack = llama_cpp_gguf(model, extra)
        gen = Generator(model.base_model, stack, backend="llama.cpp", gguf_path=gguf, threads=threads)
    else:
        base, stack = model.torch_weights()
        gen = Generator(base, stack + extra, backend="torch", quantize=quantize, threads=threads,
                        decode_threads=threads)
    return gen, model
