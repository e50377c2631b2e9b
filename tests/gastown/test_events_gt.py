"""gt's event log reader and the real-gt runner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gt_ext.gastown.events import read_events
from gt_ext.gastown.gt import Gt, GtError


def test_read_events_filters_and_skips_bad_lines(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    p = tmp_path / ".events.jsonl"
    lines = [
        {"ts": "2026-01-01T00:00:00Z", "source": "gt", "type": "session_start", "actor": "demo/witness",
         "payload": {"session_id": "s1", "role": "witness"}, "visibility": "audit", "extra": 1},
        {"ts": "2026-01-01T00:01:00Z", "source": "gt", "type": "done", "actor": "demo/polecats/nux",
         "payload": {"bead": "dm-1", "branch": "b"}},
    ]
    p.write_text(json.dumps(lines[0]) + "\nnot json\n" + json.dumps(lines[1]) + "\n{\"type\": \"do")
    evs = list(read_events(p))
    assert [e.type for e in evs] == ["session_start", "done"]
    assert evs[0].payload["role"] == "witness" and evs[0].model_extra == {"extra": 1}
    assert evs[1].line == 3
    assert [e.type for e in read_events(p, types=["done"])] == ["done"]
    assert "line" not in caplog.text or ":2:" in caplog.text
    assert list(read_events(tmp_path / "missing.jsonl")) == []


@pytest.mark.integration
def test_gt_runner_version_and_error(gt_bin: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GT_REAL_BIN", gt_bin)
    monkeypatch.setenv("HOME", str(tmp_path))
    gt = Gt()
    assert gt.version().startswith("gt version")
    with pytest.raises(GtError) as ei:
        gt.run("formula", "run", "a", "b")
    assert ei.value.gt_exit_code != 0 and "at most 1 arg" in ei.value.gt_message
    assert "\n" not in str(ei.value)
