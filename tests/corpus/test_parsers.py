import json

import pytest

from gt_ext.corpus.format import parse_tool_calls
from gt_ext.corpus.parsers import parse_chat_file, parse_claude_jsonl, parse_markdown, parse_pane_text
from gt_ext.errors import GtExtError
from tests.corpus.helpers import write_transcript


def test_claude_jsonl_text_tools_results_and_no_thinking(tmp_path):
    p = write_transcript(tmp_path, "s1", "/w/rig/polecats/nux", "Run your hook",
                         [("Checking the hook.", "gt hook", "dm-1: fix it")])
    s = parse_claude_jsonl(p)
    roles = [m["role"] for m in s.messages]
    assert roles == ["user", "assistant", "tool", "assistant"]
    assert parse_tool_calls(s.messages[1]["content"]) == [{"name": "Bash", "input": {"command": "gt hook"}}]
    assert s.messages[2]["content"] == "dm-1: fix it"
    assert "private reasoning" not in json.dumps(s.messages)
    assert s.session == "s1" and s.cwd == "/w/rig/polecats/nux"


def test_malformed_transcript_names_file_and_line_but_not_content(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"type": "user", "message": {"role": "user", "content": "hi"}}\n{"type": "assistant", "password": "hunter22\n')
    with pytest.raises(GtExtError) as e:
        parse_claude_jsonl(p)
    assert f"{p}:2" in str(e.value)
    assert "hunter22" not in str(e.value)


def test_entry_without_message_is_an_error(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text('{"type": "assistant", "sessionId": "s"}\n')
    with pytest.raises(GtExtError, match=r"x.jsonl:1"):
        parse_claude_jsonl(p)


def test_pane_text():
    pane = """Claude Code v2
> check the polecats
● Let me list them.
● Bash(gt polecat list demo --json)
  ⎿ [{"name": "nux"}]
● nux is working; nothing to do.
"""
    s = parse_pane_text(pane)
    assert [m["role"] for m in s.messages] == ["user", "assistant", "tool", "assistant"]
    assert parse_tool_calls(s.messages[1]["content"])[0]["input"] == {"command": "gt polecat list demo --json"}
    with pytest.raises(GtExtError, match="no agent turns"):
        parse_pane_text("just a shell prompt\n$ ls\n")


def test_markdown_with_front_matter():
    s = parse_markdown("---\nrole: witness\ntask: patrol\n---\n## User\nPatrol demo.\n## Assistant\nAll polecats are working.\n")
    assert s.meta == {"role": "witness", "task": "patrol"}
    assert s.messages == [{"role": "user", "content": "Patrol demo."},
                          {"role": "assistant", "content": "All polecats are working."}]
    with pytest.raises(GtExtError, match="sections"):
        parse_markdown("no headings here")


def test_chat_files(tmp_path):
    j = tmp_path / "a.json"
    j.write_text(json.dumps({"role": "crew", "messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]}))
    assert parse_chat_file(j)[0].meta == {"role": "crew"}
    jl = tmp_path / "b.jsonl"
    jl.write_text(json.dumps({"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]}) + "\n"
                  + json.dumps({"messages": [{"role": "robot", "content": "x"}]}) + "\n")
    with pytest.raises(GtExtError, match=r"b.jsonl:2: messages\[0\]"):
        parse_chat_file(jl)
    with pytest.raises(GtExtError, match="unsupported"):
        (tmp_path / "c.txt").write_text("x")
        parse_chat_file(tmp_path / "c.txt")


def test_raw_line_separator_inside_a_string_is_not_a_record_break(tmp_path):
    """JSON writers may leave U+2028 unescaped in strings; only "\\n" ends a JSONL record."""
    p = write_transcript(tmp_path, "s2", "/w/rig/polecats/nux", "first\u2028second", [])
    text = p.read_text(encoding="utf-8").replace("\\u2028", "\u2028")
    assert "\u2028" in text
    p.write_text(text, encoding="utf-8")
    s = parse_claude_jsonl(p)
    assert s.messages[0]["content"] == "first\u2028second"
