"""Fixtures for the training tests (corpus writer in train_corpus.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from train_corpus import write_corpus


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    return write_corpus(tmp_path / "corpus")
