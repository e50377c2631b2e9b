"""The hook scripts and `gt_ext.corpus.spool` write the same spool record.

The hooks (hooks/on_close, and session_shutdown, a link to it) are standard-library scripts that
bd and the agent runtimes start in milliseconds, so they carry their own copy of the writer;
`corpus.spool.write_event` is the library's. This test runs the real hook and the library side by
side on the same input and compares the records field by field, so neither can drift.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gt_ext.corpus import spool

HOOKS = Path(__file__).resolve().parents[2] / "hooks"
ENV = {"GT_ROLE": "polecat", "GT_RIG": "demo", "BD_ACTOR": "demo/polecats/nux", "GT_SESSION_ID": "s-42",
       "GT_ROOT": "/town", "ANTHROPIC_API_KEY": "sk-never-spooled"}


def _hook_env_keys() -> tuple[str, ...]:
    tree = ast.parse((HOOKS / "on_close").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "ENV_KEYS":
            return tuple(ast.literal_eval(node.value))
    raise AssertionError("hooks/on_close defines no ENV_KEYS")


def _run_hook(tmp_path: Path, name: str, argv: list[str], stdin: bytes) -> tuple[dict, Path, Path]:
    """Run a copy of the real hook under `name` (in a fake `<beads>/hooks/`); its record, file, cwd."""
    hooks = tmp_path / "beads" / "hooks"
    hooks.mkdir(parents=True)
    script = hooks / name
    shutil.copy2(HOOKS / "on_close", script)
    out = tmp_path / "hook-spool"
    cwd = tmp_path / "work"
    cwd.mkdir()
    env = {"PATH": os.environ["PATH"], "GT_EXT_SPOOL": str(out), "GT_EXT_NO_AUTOPROCESS": "1", **ENV}
    r = subprocess.run([sys.executable, str(script), *argv], input=stdin, env=env, cwd=cwd, capture_output=True)
    assert r.returncode == 0, r.stderr
    [f] = list(out.glob("*.json"))
    return json.loads(f.read_text()), f, cwd


def _library(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cwd: Path, **kw) -> tuple[dict, Path]:
    monkeypatch.chdir(cwd)
    f = spool.write_event(tmp_path / "lib-spool", env=ENV, **kw)
    return json.loads(f.read_text()), f


def _same(hook: dict, lib: dict, hook_file: Path, lib_file: Path) -> None:
    assert set(hook) == set(lib)
    for key in hook:
        if key != "time":
            assert hook[key] == lib[key], key
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", hook["time"]) and len(lib["time"]) == len(hook["time"])
    name = re.compile(r"\d{20}-\d+-[0-9a-f]{8}\.json")
    assert name.fullmatch(hook_file.name) and name.fullmatch(lib_file.name)
    assert hook_file.stat().st_mode & 0o777 == lib_file.stat().st_mode & 0o777 == 0o600
    assert "sk-never-spooled" not in hook_file.read_text() + lib_file.read_text()


def test_env_keys_are_the_same_list() -> None:
    assert _hook_env_keys() == spool.ENV_KEYS


def test_bead_close_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    issue = {"id": "dm-7", "status": "closed", "title": "fix the \u2028 split"}
    hook, hf, cwd = _run_hook(tmp_path, "on_close", ["dm-7", "close"], json.dumps(issue).encode())
    lib, lf = _library(tmp_path, monkeypatch, cwd, kind="bead_close", payload=issue, argv=["dm-7", "close"],
                       beads_dir=str(tmp_path / "beads"))
    assert hook["kind"] == "bead_close" and hook["payload"] == issue
    _same(hook, lib, hf, lf)


def test_session_stop_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stop = {"session_id": "s-42", "transcript_path": "/home/u/.claude/projects/x/s-42.jsonl"}
    hook, hf, cwd = _run_hook(tmp_path, "session_shutdown", [], json.dumps(stop).encode())
    lib, lf = _library(tmp_path, monkeypatch, cwd, kind="session_stop", payload=stop)
    assert hook["kind"] == "session_stop" and "beads_dir" not in hook
    _same(hook, lib, hf, lf)


def test_pi_shutdown_record_names_the_session_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hook, hf, cwd = _run_hook(tmp_path, "session_shutdown", ["/s/2026_abc.jsonl"], b"")
    lib, lf = _library(tmp_path, monkeypatch, cwd, kind="session_stop",
                       payload={"transcript_path": "/s/2026_abc.jsonl"}, argv=["/s/2026_abc.jsonl"])
    _same(hook, lib, hf, lf)


def test_unparseable_stdin_is_kept_raw_by_both(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hook, hf, cwd = _run_hook(tmp_path, "on_close", ["dm-8", "close"], b"not json")
    lib, lf = _library(tmp_path, monkeypatch, cwd, kind="bead_close", payload={"raw": "not json"},
                       argv=["dm-8", "close"], beads_dir=str(tmp_path / "beads"))
    _same(hook, lib, hf, lf)
