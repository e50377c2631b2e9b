"""Fixtures for the export tests (run-folder maker in export_fixtures.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from export_fixtures import make_run


@pytest.fixture
def tiny_run(tmp_path: Path) -> Path:
    return make_run(tmp_path / "run")
