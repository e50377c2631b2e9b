"""Settings files in gt's schema: unknown keys kept byte-for-byte, atomic writes, clear errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gt_ext.errors import ConfigError
from gt_ext.gastown import jsonedit
from gt_ext.gastown import settings as gs
from gt_ext.gastown.town import Town

# Shaped like gt's settings/config.json, plus keys this project does not know, odd spacing and
# number spellings that a re-serialiser would change (1e3, 1.50, \u escapes).
TOWN_SETTINGS = """{
  "type": "town-settings",
  "version": 1,
  "default_agent": "claude",
  "future_key":   {"nested": [1, 2.50, 1e3], "s": "caf\\u00e9"} ,
  "agents": {
    "claude-haiku": {
      "command": "claude",
      "args": ["--model", "haiku"],
      "x_unknown_runtime_field": true
    }
  },
  "web_timeouts": {"cmd": 30}
}
"""


def _write(tmp_path: Path, text: str = TOWN_SETTINGS) -> Path:
    p = tmp_path / "settings" / "config.json"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p


def test_roundtrip_untouched_is_byte_identical(tmp_path: Path) -> None:
    p = _write(tmp_path)
    gs.load(p).save()
    assert p.read_text() == TOWN_SETTINGS


def test_edit_keeps_unknown_keys_byte_for_byte(tmp_path: Path) -> None:
    p = _write(tmp_path)
    sf = gs.load(p)
    sf.set_agent("node0-polecat", gs.RuntimeConfig(provider="node0", command="node0-inference",
                                                   args=["--role", "polecat"],
                                                   tmux=gs.RuntimeTmux(ready_prompt_prefix="node0> ")))
    sf.set_role_agent("polecat", "node0-polecat")
    sf.save()
    text = p.read_text()
    data = json.loads(text)
    assert data["role_agents"] == {"polecat": "node0-polecat"}
    assert data["agents"]["node0-polecat"] == {"provider": "node0", "command": "node0-inference",
                                               "args": ["--role", "polecat"],
                                               "tmux": {"ready_prompt_prefix": "node0> "}}
    # untouched members keep their exact original text
    assert '"future_key":   {"nested": [1, 2.50, 1e3], "s": "caf\\u00e9"} ,' in text
    assert '"x_unknown_runtime_field": true' in text
    assert '"web_timeouts": {"cmd": 30}' in text
    # and the backup is the old file
    assert (p.parent / "config.json.bak").read_text() == TOWN_SETTINGS


def test_remove_role_agent_and_agent(tmp_path: Path) -> None:
    p = _write(tmp_path)
    sf = gs.load(p)
    sf.set_role_agent("polecat", "x")
    sf.save()
    sf = gs.load(p)
    sf.set_role_agent("polecat", None)
    sf.remove_agent("claude-haiku")
    sf.save()
    data = json.loads(p.read_text())
    assert data["role_agents"] == {} and data["agents"] == {}
    assert data["future_key"]["nested"] == [1, 2.5, 1000.0]


def test_malformed_json_names_file_and_line(tmp_path: Path) -> None:
    p = _write(tmp_path, '{\n  "type": "town-settings",\n  "agents": {,}\n}\n')
    with pytest.raises(ConfigError) as ei:
        gs.load(p)
    msg = str(ei.value)
    assert f"{p}:3:" in msg and "\n" not in msg


def test_wrong_shape_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'agents' must be an object"):
        gs.load(_write(tmp_path, '{"agents": []}'))
    with pytest.raises(ConfigError, match="JSON object"):
        gs.load(_write(tmp_path, "[1, 2]"))


def test_invalid_runtime_config_refused(tmp_path: Path) -> None:
    sf = gs.load(_write(tmp_path))
    with pytest.raises(ConfigError, match=r"agents\.bad\.args"):
        sf.set_agent("bad", {"command": "x", "args": "not-a-list"})


def test_failed_write_leaves_original_intact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = _write(tmp_path)
    sf = gs.load(p)
    sf.set_role_agent("witness", "node0-witness")

    def boom(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", boom)  # the temp file's write fails before the rename
    with pytest.raises(OSError):
        sf.save(backup=False)
    monkeypatch.undo()
    assert p.read_text() == TOWN_SETTINGS
    assert sorted(x.name for x in p.parent.iterdir()) == ["config.json"]  # no temp file left


def test_missing_file_gets_gt_defaults(tmp_path: Path) -> None:
    town = Town(tmp_path)
    sf = gs.town_settings(town)
    assert not sf.exists and sf.data == {"type": "town-settings", "version": 1}
    sf.set_role_agent("deacon", "node0-deacon")
    sf.save()
    assert json.loads((tmp_path / "settings" / "config.json").read_text())["role_agents"] == {"deacon": "node0-deacon"}
    reg = gs.agents_registry(town)
    assert reg.data == {"version": 1, "agents": {}}


def test_resolve_role_agent_order(tmp_path: Path) -> None:
    (tmp_path / "mayor").mkdir()
    (tmp_path / "mayor" / "town.json").write_text('{"type": "town", "version": 2, "name": "t"}')
    (tmp_path / "mayor" / "rigs.json").write_text('{"version": 1, "rigs": {"r": {"git_url": "x"}}}')
    town = Town(tmp_path)
    rig = town.rig("r")
    assert gs.resolve_role_agent(town, "witness", rig) == "claude"
    ts = gs.town_settings(town)
    ts.data["default_agent"] = "codex"
    ts.save()
    assert gs.resolve_role_agent(town, "witness", rig) == "codex"
    rs = gs.rig_settings(rig)
    rs.data["agent"] = "gemini"
    rs.save()
    assert gs.resolve_role_agent(town, "witness", rig) == "gemini"
    ts = gs.town_settings(town)
    ts.set_role_agent("witness", "node0-witness")
    ts.save()
    assert gs.resolve_role_agent(town, "witness", rig) == "node0-witness"
    rs = gs.rig_settings(rig)
    rs.set_role_agent("witness", "rig-witness")
    rs.save()
    assert gs.resolve_role_agent(town, "witness", rig) == "rig-witness"
    assert gs.resolve_role_agent(town, "witness") == "node0-witness"


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12)


@settings(max_examples=150, deadline=None)
@given(old=st.dictionaries(st.text(max_size=6), _json, max_size=5),
       new=st.dictionaries(st.text(max_size=6), _json, max_size=5), indent=st.sampled_from([None, 2, 4]))
def test_jsonedit_render_is_correct(old: dict, new: dict, indent: int | None) -> None:
    """Whatever the edit, the result parses back to the new value; no edit means same bytes."""
    text = json.dumps(old, indent=indent)
    doc = jsonedit.parse(text)
    assert jsonedit.render(old, doc) == text
    merged = {**old, **new}
    assert json.loads(jsonedit.render(merged, doc)) == merged
    assert json.loads(jsonedit.render(new, doc)) == new
