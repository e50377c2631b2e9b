"""The registry's intent journal while other processes finish their own commands."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from gt_ext.registry.journal import Journal


def test_records_that_finish_while_being_listed_are_skipped_not_errors(tmp_path: Path, caplog,
                                                                       monkeypatch: pytest.MonkeyPatch):
    """A concurrent deploy ends (deletes) its record between `pending`'s listing and its stat or
    read: that record finished, so it is neither an error nor an "unreadable record" warning."""
    j = Journal(tmp_path)
    left = j.begin("deploy", {"role": "deacon"})
    gone_at_stat = j.begin("deploy", {"role": "witness"})
    gone_at_read = j.begin("deploy", {"role": "dog"})
    stat, read_text = Path.stat, Path.read_text

    def finishing_stat(self: Path, *a, **kw):
        if self == gone_at_stat:
            Journal.end(self)  # the other process's command completes just now
        return stat(self, *a, **kw)

    def finishing_read(self: Path, *a, **kw):
        if self == gone_at_read:
            Journal.end(self)
        return read_text(self, *a, **kw)

    monkeypatch.setattr(Path, "stat", finishing_stat)
    monkeypatch.setattr(Path, "read_text", finishing_read)
    with caplog.at_level(logging.WARNING, logger="gt_ext.registry.journal"):
        pending = j.pending("deploy")
    assert [(p, d["role"]) for p, d in pending] == [(left, "deacon")]
    assert not caplog.records


def test_an_unparsable_record_is_dropped_with_a_warning(tmp_path: Path, caplog):
    j = Journal(tmp_path)
    ok = j.begin("prune", {"ref": "deacon:1"})
    bad = j.dir / "prune-0123456789ab.json"
    bad.write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="gt_ext.registry.journal"):
        assert [p for p, _ in j.pending("prune")] == [ok]
    assert not bad.exists() and "unreadable journal record dropped" in caplog.text
