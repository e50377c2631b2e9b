"""pi session files (github.com/badlogic/pi-mono, packages/coding-agent/docs/session.md) in the corpus:
the parser, and the spool -> process path the pi extension feeds."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from gt_ext.corpus.collect import process_spool
from gt_ext.corpus.format import parse_tool_calls, render_tool_call
from gt_ext.corpus.parsers import parse_chat_file, parse_claude_jsonl, parse_pi_jsonl, pi_header
from gt_ext.corpus.store import Store
from gt_ext.errors import GtExtError
from tests.corpus.helpers import claude_entries, make_town_dirs, write_transcript

REPO = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
PI_SESSION = FIXTURES / "pi_session.jsonl"  # a polecat's session as pi v3 writes it
PI_MALFORMED = FIXTURES / "pi_session_malformed.jsonl"  # the same, cut mid-line 8
SESSION_ID = "0195a3c2-7e41-7a9b-b1d4-3f60c2e8a917"


def _write(path: Path, entries: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(e, separators=(",", ":")) + "\n" for e in entries))
    return path


def _header(sid: str = "s-pi", version: int | None = 3) -> dict:
    h = {"type": "session", "id": sid, "timestamp": "2026-03-02T09:00:00.000Z", "cwd": "/srv/gt/demo/crew/ann"}
    if version is not None:
        h["version"] = version
    return h


def _msg(eid: str, parent: str | None, message: dict, ts: str = "2026-03-02T09:00:01.000Z") -> dict:
    return {"type": "message", "id": eid, "parentId": parent, "timestamp": ts, "message": message}


def _assistant(*blocks: dict) -> dict:
    return {"role": "assistant", "content": list(blocks), "provider": "anthropic", "model": "claude-sonnet-4-5",
            "stopReason": "stop", "timestamp": 0}


def _text(t: str) -> dict:
    return {"type": "text", "text": t}


def test_fixture_session_turns_tool_calls_and_no_thinking():
    s = parse_pi_jsonl(PI_SESSION)
    assert s.session == SESSION_ID and s.cwd == "/srv/gt/demo/polecats/nux" and s.format == "pi"
    assert s.time == "2026-03-02T09:15:06.017Z"  # the last entry's, not the header's
    assert [m["role"] for m in s.messages] == ["user"] + ["assistant", "tool"] * 5 + ["assistant"]
    # The gastown extension's injected prime context is sent to the model as a user turn.
    assert s.messages[0]["content"] == ("Run the bead on your hook.\n# Polecat nux (rig demo)\n"
                                        "You work one bead at a time. Your hook: dm-7. Finish with `gt done`.")
    assert s.messages[1]["content"] == "Checking my hook first.\n" + render_tool_call("Bash", {"command": "gt hook"})
    calls = [c for m in s.messages for c in parse_tool_calls(m["content"])]
    assert calls == [
        {"name": "Bash", "input": {"command": "gt hook"}},
        {"name": "read", "input": {"path": "src/auth/login.py", "offset": 1, "limit": 40}},
        {"name": "edit", "input": {"path": "src/auth/login.py", "oldText": "TIMEOUT_S = 5", "newText": "TIMEOUT_S = 30"}},
        {"name": "Bash", "input": {"command": "make test", "timeout": 600}},
        {"name": "Bash", "input": {"command": "gt done"}},
    ]
    assert s.messages[2] == {"role": "tool", "content": "dm-7: login times out after 5s (hooked to demo/polecats/nux)"}
    assert s.messages[-1]["content"].startswith("Done: dm-7 is submitted")
    text = json.dumps(s.messages)
    for gone in ("The prime says dm-7", "Look at the timeout", "thinkingSignature", "tests-green", "claude-sonnet"):
        assert gone not in text


def test_same_conversation_from_claude_and_pi_gives_the_same_messages(tmp_path):
    """Tool calls rendered one way everywhere: pi's toolCall/toolResult and Claude's tool_use/
    tool_result of one conversation become identical turns."""
    steps = [("Reading hook.", "gt hook", "dm-1: fix it"), ("Testing.", "make test", "3 passed")]
    claude = write_transcript(tmp_path / "projects", "s-c", "/w", "Run your hook", steps)
    entries, parent = [_header()], None
    for i, e in enumerate(claude_entries("s-c", "/w", "Run your hook", steps)):
        content = e["message"]["content"]
        if e["type"] == "user" and isinstance(content, str):
            m = {"role": "user", "content": [_text(content)], "timestamp": 0}
        elif e["type"] == "user":
            m = {"role": "toolResult", "toolCallId": content[0]["tool_use_id"], "toolName": "bash",
                 "content": [_text(content[0]["content"])], "isError": False, "timestamp": 0}
        else:
            blocks = []
            for b in content:
                if b["type"] == "thinking":
                    blocks.append({"type": "thinking", "thinking": b["thinking"]})
                elif b["type"] == "text":
                    blocks.append(b)
                else:
                    # pi calls its shell tool `bash`; the corpus names it `Bash`, as Claude does.
                    blocks.append({"type": "toolCall", "id": b["id"], "name": b["name"].lower(), "arguments": b["input"]})
            m = _assistant(*blocks)
        entries.append(_msg(f"e{i:07d}", parent, m))
        parent = f"e{i:07d}"
    pi = _write(tmp_path / "pi.jsonl", entries)
    assert parse_pi_jsonl(pi).messages == parse_claude_jsonl(claude).messages


def test_only_the_current_branch_with_its_summary(tmp_path):
    """After /tree back to an earlier entry, the file holds both branches; the session is the path
    from the last entry to the root, and pi's branch summary is a user turn on it."""
    p = _write(tmp_path / "tree.jsonl", [
        _header(),
        _msg("a0000001", None, {"role": "user", "content": "Tidy the build folder.", "timestamp": 0}),
        _msg("a0000002", "a0000001", _assistant(_text("Wiping it the quick way."), {
            "type": "toolCall", "id": "c1", "name": "bash", "arguments": {"command": "rm -rf build"}})),
        _msg("a0000003", "a0000002", {"role": "toolResult", "toolCallId": "c1", "toolName": "bash",
                                      "content": [_text("removed")], "isError": False, "timestamp": 0}),
        {"type": "branch_summary", "id": "a0000004", "parentId": "a0000001", "timestamp": "2026-03-02T09:05:00.000Z",
         "fromId": "a0000003", "summary": "Deleting build/ by hand lost the cache."},
        _msg("a0000005", "a0000004", _assistant(_text("Using the make target instead."), {
            "type": "toolCall", "id": "c2", "name": "bash", "arguments": {"command": "make clean"}}),
             ts="2026-03-02T09:06:00.000Z"),
    ])
    s = parse_pi_jsonl(p)
    assert [m["role"] for m in s.messages] == ["user", "assistant"]
    assert s.messages[0]["content"] == "Tidy the build folder.\nDeleting build/ by hand lost the cache."
    assert parse_tool_calls(s.messages[1]["content"]) == [{"name": "Bash", "input": {"command": "make clean"}}]
    assert "rm -rf" not in json.dumps(s.messages) and s.time == "2026-03-02T09:06:00.000Z"


def test_version_1_file_user_commands_and_extension_messages(tmp_path):
    """Version 1 files have no ids (a plain sequence); v2's `hookMessage` is v3's `custom`; the
    user's `!cmd` is a user turn unless `!!` kept it from the model; compaction is bookkeeping."""
    p = _write(tmp_path / "v1.jsonl", [
        _header(version=None),
        {"type": "message", "timestamp": "2026-03-02T09:00:01.000Z",
         "message": {"role": "user", "content": "What is on my hook?", "timestamp": 0}},
        {"type": "message", "message": {"role": "hookMessage", "customType": "gastown-mail", "display": False,
                                        "content": [_text("Mail from witness: rebase first.")], "timestamp": 0}},
        {"type": "message", "message": {"role": "bashExecution", "command": "git status --short", "output": " M a.py",
                                        "exitCode": 1, "cancelled": False, "truncated": False, "timestamp": 0}},
        {"type": "message", "message": {"role": "bashExecution", "command": "cat ~/.netrc", "output": "secret",
                                        "exitCode": 0, "cancelled": False, "truncated": False,
                                        "excludeFromContext": True, "timestamp": 0}},
        {"type": "compaction", "summary": "Earlier: nothing.", "firstKeptEntryIndex": 1, "tokensBefore": 900},
        {"type": "message", "message": _assistant({"type": "thinking", "thinking": "hmm", "redacted": True},
                                                  _text("Rebasing first, as the witness asked."))},
    ])
    s = parse_pi_jsonl(p)
    assert s.messages == [
        {"role": "user", "content": "What is on my hook?\nMail from witness: rebase first.\n"
                                    "$ git status --short\n M a.py\n(exit code 1)"},
        {"role": "assistant", "content": "Rebasing first, as the witness asked."},
    ]
    assert s.time == "2026-03-02T09:00:01.000Z" and s.session == "s-pi"


@pytest.mark.parametrize(("lines", "error"), [
    (["{\"type\":\"user\",\"message\":{}}"], r"bad.jsonl:1: not a pi session"),
    ([json.dumps(_header(version=0))], r"bad.jsonl:1: .*version"),
    ([json.dumps(_header()), "", "[1, 2]"], r"bad.jsonl:3: session entry is not a JSON object"),
    ([json.dumps(_header()), json.dumps({"type": "message", "id": "x1", "parentId": None})],
     r"bad.jsonl:2: message entry has no message object"),
    ([json.dumps(_header()), json.dumps(_msg("x1", None, _assistant({"type": "toolCall", "arguments": {}})))],
     r"bad.jsonl:2: toolCall block without a name"),
    ([json.dumps(_header()), json.dumps(_msg("x1", None, _assistant(
        {"type": "toolCall", "name": "bash", "arguments": "ls"})))], r"bad.jsonl:2: toolCall arguments"),
    ([json.dumps(_header()), json.dumps(_msg("x1", None, {"role": "user", "content": 42}))],
     r"bad.jsonl:2: message content must be"),
    ([json.dumps(_header()), json.dumps(_msg("x1", "gone", {"role": "user", "content": "hi"}))],
     r"bad.jsonl:2: parentId names no entry"),
    ([json.dumps(_header()), json.dumps({"type": "message", "parentId": None, "message": {"role": "user", "content": "x"}})],
     r"bad.jsonl:2: entry has no id"),
])
def test_malformed_sessions_name_file_and_line(tmp_path, lines, error):
    p = tmp_path / "bad.jsonl"
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(GtExtError, match=error):
        parse_pi_jsonl(p)


def test_malformed_fixture_names_the_line_but_not_its_content():
    with pytest.raises(GtExtError) as e:
        parse_pi_jsonl(PI_MALFORMED)
    assert f"{PI_MALFORMED}:8: invalid JSON" in str(e.value)
    assert "hunter2" not in str(e.value)


def test_line_separator_inside_a_string_is_not_a_line_break(tmp_path):
    # JSON.stringify leaves U+2028 unescaped; the line must stay one entry.
    p = tmp_path / "ls.jsonl"
    p.write_text(json.dumps(_header()) + "\n" + json.dumps(
        _msg("x1", None, _assistant(_text("first\u2028second part of the answer"))), ensure_ascii=False) + "\n",
        encoding="utf-8")
    assert parse_pi_jsonl(p).messages == [{"role": "assistant", "content": "first\u2028second part of the answer"}]


def test_format_detection_and_corpus_add(tmp_path):
    assert pi_header(PI_SESSION)["id"] == SESSION_ID
    claude = write_transcript(tmp_path, "s-c", "/w", "hi", [("a", "ls", "b")])
    broken = tmp_path / "broken.jsonl"
    broken.write_text("{not json\n")
    assert pi_header(claude) is None and pi_header(broken) is None and pi_header(tmp_path / "none") is None
    # `corpus add` of a pi session file reads it as one.
    [s] = parse_chat_file(PI_SESSION)
    assert s.format == "pi" and s.session == SESSION_ID


# --- spool -> process ------------------------------------------------------------------------------
def _shutdown_hook(tmp_path: Path) -> Path:
    """The hook script as `gt-ext hooks install` names it for session shutdown."""
    hook = tmp_path / "hooks" / "session_shutdown"
    hook.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "hooks" / "on_close", hook)
    return hook


def _spool_pi_shutdown(hook: Path, spool: Path, session_file: Path) -> None:
    """What the pi extension does on session_shutdown: run the hook with the session file, stdin open."""
    env = {"PATH": os.environ["PATH"], "GT_EXT_SPOOL": str(spool), "GT_EXT_NO_AUTOPROCESS": "1",
           "GT_ROLE": "demo/polecats/nux", "GT_RIG": "demo", "BD_ACTOR": "demo/polecats/nux"}
    subprocess.run([str(hook), str(session_file)], env=env, check=True, stdin=subprocess.PIPE, timeout=60)


def test_spooled_pi_session_is_stored_tagged_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv("PI_CODING_AGENT_DIR", str(tmp_path / "pi-agent"))  # its sessions/ is a transcript root
    town = make_town_dirs(tmp_path / "town")
    sessions = tmp_path / "pi-agent" / "sessions" / "--srv-gt-demo-polecats-nux--"
    session_file = sessions / f"2026-03-02T09-14-05-120Z_{SESSION_ID}.jsonl"
    sessions.mkdir(parents=True)
    shutil.copy(PI_SESSION, session_file)
    hook = _shutdown_hook(tmp_path)
    with Store.open(town / ".corpus") as st:
        _spool_pi_shutdown(hook, st.spool_dir, session_file)
        rep = process_spool(st, town, tmp_path / "no-claude")
        assert rep.errors == [] and rep.sessions == 1 and rep.stored == {"active": 1}
        [e] = st.query()
        assert e.source == "pi-jsonl" and e.source_key == f"pi:{SESSION_ID}"
        assert e.session == SESSION_ID and e.role == "polecat" and e.rig == "demo" and e.user == "demo/polecats/nux"
        assert e.time == "2026-03-02T09:15:06.017Z"
        assert e.messages[0]["role"] == "system"  # the role's training system turn
        assert {"name": "Bash", "input": {"command": "gt done"}} in [
            c for m in e.messages for c in parse_tool_calls(m["content"])]
        assert list(st.spool_dir.glob("*.json")) == []
        # The session resumed and shut down again: the grown file replaces the stored one.
        grown = session_file.read_text() + json.dumps(_msg(
            "b0000001", "a1b2c311", {"role": "user", "content": "Also note the change in CHANGELOG.md.", "timestamp": 0},
            ts="2026-03-02T10:00:00.000Z"), separators=(",", ":")) + "\n" + json.dumps(_msg(
            "b0000002", "b0000001", _assistant(_text("Noted the timeout change in CHANGELOG.md under Fixed.")),
            ts="2026-03-02T10:00:09.000Z"), separators=(",", ":")) + "\n"
        session_file.write_text(grown)
        _spool_pi_shutdown(hook, st.spool_dir, session_file)
        rep = process_spool(st, town, tmp_path / "no-claude")
        assert rep.errors == [] and rep.stored == {"active": 1}
        [e] = st.query()
        assert e.time == "2026-03-02T10:00:09.000Z" and "CHANGELOG.md under Fixed" in json.dumps(e.messages)


def test_spooled_malformed_pi_session_is_quarantined_as_pi(tmp_path, monkeypatch):
    monkeypatch.setenv("PI_CODING_AGENT_DIR", str(tmp_path))  # pi's sessions/ folder: a transcript root
    town = make_town_dirs(tmp_path / "town")
    bad = tmp_path / "sessions" / f"2026-03-02T09-14-05-120Z_{SESSION_ID}.jsonl"
    bad.parent.mkdir(parents=True)
    shutil.copy(PI_MALFORMED, bad)
    with Store.open(town / ".corpus") as st:
        _spool_pi_shutdown(_shutdown_hook(tmp_path), st.spool_dir, bad)
        rep = process_spool(st, town, tmp_path / "no-claude")
        assert len(rep.errors) == 1 and f"{bad.name}:8: invalid JSON" in rep.errors[0]
        [q] = st.query(status="quarantined")
        assert q.source == "pi-jsonl" and q.session == SESSION_ID and q.role == "polecat" and q.rig == "demo"
        assert q.messages is None and q.reason.startswith("parse error") and "hunter2" not in q.reason


def test_batch_sweep_takes_pi_sessions_no_hook_spooled(tmp_path, monkeypatch):
    """`corpus process --scan` reads pi's session folder too (the file pi writes for a session no
    hook spooled), tags it from the work dir in its header, and never takes a session twice."""
    from gt_ext.cli import main
    from gt_ext.corpus.collect import scan_transcripts

    town = make_town_dirs(tmp_path / "town")
    agent = tmp_path / "pi-agent"
    header = json.loads(PI_SESSION.read_text().splitlines()[0])
    body = PI_SESSION.read_text().split("\n", 1)[1]
    cwd = town / "demo" / "polecats" / "nux"
    session_file = agent / "sessions" / "--town-demo-polecats-nux--" / f"2026-03-02T09-14-05-120Z_{SESSION_ID}.jsonl"
    session_file.parent.mkdir(parents=True)
    session_file.write_text(json.dumps({**header, "cwd": str(cwd)}) + "\n" + body)
    monkeypatch.setenv("PI_CODING_AGENT_DIR", str(agent))
    with Store.open(town / ".corpus") as st:
        rep = scan_transcripts(st, tmp_path / "no-claude", town_root=town)
        assert rep.errors == [] and rep.sessions == 1 and rep.stored == {"active": 1}
        [e] = st.query()
        assert (e.source, e.source_key, e.session) == ("pi-jsonl", f"pi:{SESSION_ID}", SESSION_ID)
        assert (e.role, e.rig, e.user) == ("polecat", "demo", "demo/polecats/nux")
        again = scan_transcripts(st, tmp_path / "no-claude", town_root=town)
        assert again.stored == {} and len(st.query(status=None)) == 1
    # The CLI sweep (what the corpus-collect formula runs) finds it too, in a fresh store.
    monkeypatch.setenv("GT_EXT_CLAUDE_PROJECTS", str(tmp_path / "no-claude"))
    assert main(["corpus", "--store", str(tmp_path / "fresh"), "--town", str(town), "process", "--scan", "--json"]) == 0
    with Store.open(tmp_path / "fresh") as st:
        assert [e.source_key for e in st.query()] == [f"pi:{SESSION_ID}"]
