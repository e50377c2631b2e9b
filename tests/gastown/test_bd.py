"""The bd client against the real `bd` binary."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from gt_ext.gastown.bd import Bd, BdError, Issue, _error_message


@pytest.mark.integration
def test_create_list_show_update_close(beads_dir: Path) -> None:
    bd = Bd(beads_dir)
    a = bd.create("first bead", description="do the thing", priority=1, labels=["x"])
    assert isinstance(a, Issue) and a.id.startswith("t-") and a.status == "open" and a.priority == 1
    b = bd.create("second bead", issue_type="bug")
    ids = {i.id for i in bd.list()}
    assert {a.id, b.id} <= ids
    shown = bd.show(a.id)
    assert shown.title == "first bead" and shown.description == "do the thing" and "x" in (shown.labels or [])
    upd = bd.update(a.id, status="in_progress")
    assert upd.status == "in_progress"
    closed = bd.close(b.id, reason="fixed")
    assert closed.status == "closed"
    assert b.id not in {i.id for i in bd.list()}  # default list hides closed beads
    assert b.id in {i.id for i in bd.list(all=True)}


@pytest.mark.integration
def test_error_carries_bd_message_and_exit_code(beads_dir: Path) -> None:
    bd = Bd(beads_dir)
    with pytest.raises(BdError) as ei:
        bd.show("t-doesnotexist")
    assert ei.value.bd_exit_code != 0
    assert "no issue" in ei.value.bd_message.lower()
    assert "\n" not in str(ei.value)


@pytest.mark.integration
def test_config_set_roundtrip(beads_dir: Path) -> None:
    bd = Bd(beads_dir)
    bd.config_set("status.custom", "review:wip")
    got = bd.config_get("status.custom")
    assert "review:wip" in json.dumps(got)


@pytest.mark.integration
def test_on_create_hook_fires(beads_dir: Path, tmp_path: Path) -> None:
    """bd runs <beads>/hooks/on_create with the issue JSON on stdin (BD_NO_HOOKS unset)."""
    out = tmp_path / "hook-out.json"
    hooks = beads_dir / "hooks"
    hooks.mkdir(exist_ok=True)
    hook = hooks / "on_create"
    hook.write_text(f"#!/bin/sh\ncat > {out}.tmp && mv {out}.tmp {out}\n")
    hook.chmod(0o755)
    issue = Bd(beads_dir).create("hooked bead")
    for _ in range(100):  # bd runs hooks in the background and does not wait
        if out.exists():
            break
        time.sleep(0.1)
    assert out.exists(), "on_create hook did not run"
    assert json.loads(out.read_text())["id"] == issue.id


def test_missing_binary_is_one_line_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gt_ext.errors import GtExtError

    monkeypatch.setenv("BD_BIN", str(tmp_path / "nope"))
    with pytest.raises(GtExtError, match="BD_BIN"):
        Bd(tmp_path)


@pytest.mark.parametrize(("stdout", "stderr", "want"), [
    ('{"error": "boom"}', "Error: boom\n", "boom"),
    ("", "Error: plain failure\nsecond line\n", "Error: plain failure / second line"),
    ("", "", "(no message)"),
])
def test_error_message_parsing(stdout: str, stderr: str, want: str) -> None:
    assert _error_message(stdout, stderr) == want


def test_bd_env_does_not_leak(beads_dir: Path) -> None:
    bd = Bd(beads_dir, env={"PATH": os.environ["PATH"], "HOME": str(beads_dir.parent)})
    assert bd._env["BEADS_DIR"] == str(beads_dir.resolve())


@pytest.mark.integration
def test_list_limit_and_ready(beads_dir: Path) -> None:
    bd = Bd(beads_dir)
    made = [bd.create(f"bead {i}").id for i in range(3)]
    assert len(bd.list(limit=2)) == 2
    assert set(made) <= {i.id for i in bd.list()}
    assert set(made) <= {i.id for i in bd.ready()}
