"""Fixtures of the swarm tests (helpers live in swarm_helpers.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from swarm_helpers import Peers, write_corpus


@pytest.fixture
def peers(tmp_path: Path) -> Iterator[Peers]:
    """Peer processes reaped at teardown (pass or fail)."""
    ps = Peers(tmp_path)
    try:
        yield ps
    finally:
        ps.close()


@pytest.fixture
def swarm_key(tmp_path: Path) -> Path:
    """A fresh swarm key file."""
    from gt_ext.swarm.auth import SwarmKey

    p = tmp_path / "swarm.key"
    SwarmKey.generate().save(p)
    return p


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """A small witness/patrol corpus."""
    return write_corpus(tmp_path / "corpus")
