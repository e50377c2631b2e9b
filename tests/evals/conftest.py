"""Shared helpers for the evals tests."""

from __future__ import annotations

from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"


def echo_generate(batch, params):
    """promptfoo's `echo` provider: the answer is the rendered prompt (last user turn) itself."""
    return [msgs[-1]["content"] for msgs in batch]


@pytest.fixture
def fixtures() -> Path:
    return FIXTURES


@pytest.fixture
def echo():
    return echo_generate


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    # Results of base: models go under $GT_EXT_HOME/evals; keep them out of the real home.
    monkeypatch.setenv("GT_EXT_HOME", str(tmp_path / "gthome"))
