"""Fixtures of the pipeline tests: a 4-layer tiny LLaMA (3 stages need more layers than the
2-layer `tiny-llama`), a swarm key, and node0 from the upstream snapshot unless $NODE0_PATH says
otherwise (see pipeline_helpers)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pipeline_helpers import node0_path

os.environ.setdefault("NODE0_PATH", str(node0_path()))


@pytest.fixture(scope="session")
def tiny4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 4-layer LLaMA (hidden 64) with SmolLM2's tokenizer, as an HF folder."""
    from gt_ext.models.base import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny4") / "model", num_layers=4)


@pytest.fixture(scope="session")
def pipeline_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A swarm key file shared by the module's stages and trainers."""
    from gt_ext.swarm.auth import SwarmKey

    p = tmp_path_factory.mktemp("key") / "swarm.key"
    SwarmKey.generate().save(p)
    return p
