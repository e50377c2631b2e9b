"""Structural chunking: deterministic ids, sections, steps, beads, settings."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gt_ext.rag.chunk import (
    ANY,
    MAX_CHARS,
    chunk_bead,
    chunk_formula,
    chunk_id,
    chunk_markdown,
    chunk_session,
    chunk_settings,
    markdown_sections,
    parse_time,
    split_long,
)
from tests.rag.townkit import FORMULA, TOWN_CLAUDE


def test_ids_depend_on_source_and_content():
    assert chunk_id("file:a.md", "x") == chunk_id("file:a.md", "x")
    assert chunk_id("file:a.md", "x") != chunk_id("file:b.md", "x")
    assert chunk_id("file:a.md", "x") != chunk_id("file:a.md", "y")


def test_markdown_splits_by_heading_and_keeps_fences_whole():
    md = "# Top\nintro\n## A\nalpha\n```\n# not a heading\n```\n## B\nbeta\n### B1\ndeep\n"
    secs = markdown_sections(md)
    assert [h for h, _ in secs] == ["Top", "Top > A", "Top > B", "Top > B > B1"]
    assert "# not a heading" in secs[1][1]


def test_chunk_markdown_is_deterministic_and_dedups():
    a = chunk_markdown(TOWN_CLAUDE, source="file:CLAUDE.md", group="file:CLAUDE.md")
    b = chunk_markdown(TOWN_CLAUDE, source="file:CLAUDE.md", group="file:CLAUDE.md")
    assert [c.id for c in a] == [c.id for c in b]
    assert len(a) == 3 and "Commits" in a[1].text
    twice = chunk_markdown("## X\nsame\n## X\nsame\n", source="file:d.md", group="g")
    assert len(twice) == 1


def test_edit_changes_only_the_edited_section():
    a = chunk_markdown(TOWN_CLAUDE, source="file:CLAUDE.md", group="g")
    b = chunk_markdown(TOWN_CLAUDE.replace("imperative mood", "past tense"), source="file:CLAUDE.md", group="g")
    assert len({c.id for c in a} ^ {c.id for c in b}) == 2  # one removed, one added


def test_formula_one_chunk_per_step_plus_header():
    chunks = chunk_formula(FORMULA, source="file:f.formula.toml", group="g")
    assert len(chunks) == 4
    assert chunks[0].text.startswith("formula patrol-witness (workflow)")
    assert "var rig (required)" in chunks[0].text
    assert "needs: nudge-idle" in chunks[3].text
    assert all(c.meta["kind"] == "formula" for c in chunks)


def test_formula_bad_toml_raises():
    with pytest.raises(ValueError):
        chunk_formula("formula = [", source="file:x", group="g")


def test_bead_chunk_has_fields_and_metadata():
    bead = {"id": "dm-1", "title": "Fix it", "description": "details", "status": "blocked", "priority": 1,
            "issue_type": "bug", "assignee": "furiosa", "labels": ["role:witness", "urgent"],
            "dependencies": [{"issue_id": "dm-1", "depends_on_id": "dm-0", "type": "blocks"}],
            "updated_at": "2026-01-02T03:04:05Z"}
    [c] = chunk_bead(bead, rig="demo", group="beads:demo")
    assert c.text.splitlines()[0] == "bead dm-1 [blocked] P1 bug: Fix it"
    assert "assignee: furiosa" in c.text and "depends on: dm-0 (blocks)" in c.text
    assert c.meta["status"] == "blocked" and c.meta["role"] == "witness" and c.meta["rig"] == "demo"
    assert c.meta["updated"] == parse_time("2026-01-02T03:04:05Z") > 0
    closed = chunk_bead({**bead, "status": "closed"}, rig="demo", group="beads:demo")[0]
    assert closed.id != c.id and closed.meta["source"] == c.meta["source"]


def test_settings_scalars_together_agents_apart():
    obj = {"type": "town-settings", "version": 1, "default_agent": "claude",
           "agents": {"a": {"command": "x"}, "b": {"command": "y"}}, "role_agents": {"witness": "a"}}
    chunks = chunk_settings(obj, source="file:settings/config.json", group="g")
    assert len(chunks) == 4
    assert 'default_agent = "claude"' in chunks[0].text
    assert any("agent b" in c.text for c in chunks)


def test_session_record_chunk():
    rec = {"id": "s1", "role": "witness", "task": "patrol",
           "messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": "check rig"},
                        {"role": "assistant", "content": "all polecats busy"}],
           "provenance": {"session": "abc", "rig": "demo", "time": "2026-01-01T00:00:00Z"}}
    [c] = chunk_session(rec, source="session:s1", group="sessions:x")
    assert "user: check rig" in c.text and "sys" not in c.text
    assert c.meta["role"] == "witness" and c.meta["rig"] == "demo"
    assert chunk_session({"messages": []}, source="s", group="g") == []


def test_metadata_is_chroma_safe():
    [c] = chunk_bead({"id": "x"}, rig=ANY, group="g")
    assert all(isinstance(v, str | int | float) for v in c.meta.values())


@given(st.text(min_size=0, max_size=5000))
def test_split_long_bounds_and_keeps_text(text):
    pieces = split_long(text)
    assert all(len(p) <= MAX_CHARS for p in pieces) or pieces == [text]
    joined = "".join("".join(p.split()) for p in pieces)
    assert joined == "".join(text.split())


def test_secrets_never_reach_a_chunk():
    key, tok = "AKIA" + "IOSFODNN7EXAMPLE", "ghp_" + "abcdefghijklmnopqrstuvwxyz0123456789"
    bead = {"id": "dm-9", "title": f"leaked {key}", "description": f"push with token {tok} failed",
            "status": "open"}
    [c] = chunk_bead(bead, rig="demo", group="g")
    assert key not in c.text and tok not in c.text and key not in c.meta["title"]
    assert "<SECRET:aws_access_key>" in c.text and "<SECRET:github_token>" in c.text
    md = chunk_markdown(f"## Deploy\npassword = hunter2hunter2\nuse {key}\n", source="file:x.md", group="g")
    assert all("hunter2hunter2" not in m.text and key not in m.text for m in md)
