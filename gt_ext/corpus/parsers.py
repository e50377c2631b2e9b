"""Parsers from raw session material to chat messages: Claude Code JSONL, pi session JSONL, tmux
pane text, markdown, and curated chat JSON/JSONL.

Every parser returns `ParsedSession`s whose messages follow CONTRACTS.md: roles system/user/
assistant/tool, tool calls rendered with `format.render_tool_call`, thinking dropped. Malformed
input raises `GtExtError` naming the file and line, never quoting the offending content (it may
hold a secret).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gt_ext.corpus.format import CHAT_ROLES, render_tool_call
from gt_ext.errors import GtExtError
from gt_ext.jsonl import iter_jsonl

log = logging.getLogger(__name__)


# The node0 agent (gt_ext.serve.transcript) writes Claude Code's transcript format with this
# `entrypoint` and its tags in a `gt` object on each entry.
NODE0_ENTRYPOINT = "node0-inference"
NODE0_META = ("role", "rig", "actor", "bead", "model", "session", "town")


@dataclass
class ParsedSession:
    """Messages of one session or curated example, plus what the source said about itself."""

    messages: list[dict[str, str]]
    session: str = ""
    cwd: str = ""
    time: str = ""  # ISO-8601 of the last entry
    meta: dict[str, Any] = field(default_factory=dict)  # role/task/rig/... given by the source
    format: str = ""  # agent transcripts: "claude", "node0" or "pi"


def _append(messages: list[dict[str, str]], role: str, content: str) -> None:
    """Add a turn, merging consecutive user/assistant turns (Claude writes one block per entry)."""
    content = content.strip("\n")
    if not content.strip():
        return
    if messages and messages[-1]["role"] == role and role in ("user", "assistant", "system"):
        messages[-1]["content"] += "\n" + content
    else:
        messages.append({"role": role, "content": content})


def _tool_result_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for b in content:
            if isinstance(b, dict) and b.get("type") == "text":
                parts.append(str(b.get("text", "")))
            elif isinstance(b, dict) and b.get("type") == "image":
                parts.append("[image]")
            elif isinstance(b, str):
                parts.append(b)
        return "\n".join(parts)
    return "" if content is None else json.dumps(content)


def parse_claude_entries(entries: list[tuple[int, Any]], where: str) -> ParsedSession:
    """Turn decoded Claude Code transcript entries ``(line_no, obj)`` into a session."""
    msgs: list[dict[str, str]] = []
    session = cwd = ts = ""
    meta: dict[str, Any] = {}
    node0 = False
    for line_no, e in entries:
        if not isinstance(e, dict):
            raise GtExtError(f"{where}:{line_no}: transcript entry is not a JSON object")
        etype = e.get("type")
        session = e.get("sessionId") or session
        cwd = e.get("cwd") or cwd
        ts = e.get("timestamp") or ts
        node0 = node0 or e.get("entrypoint") == NODE0_ENTRYPOINT
        if isinstance(e.get("gt"), dict):  # the node0 agent's tags (role, rig, actor, bead, model)
            meta.update({k: str(v) for k, v in e["gt"].items() if k in NODE0_META and v})
        if etype not in ("user", "assistant") or e.get("isMeta"):
            continue  # summary, system, file-history snapshots: not conversation
        msg = e.get("message")
        if not isinstance(msg, dict):
            raise GtExtError(f"{where}:{line_no}: {etype} entry has no message object")
        if etype == "assistant" and isinstance(msg.get("model"), str) and msg["model"] and "model" not in meta:
            meta["model"] = msg["model"]  # Claude names its model on every reply
        for b in content_blocks(msg.get("content"), f"{where}:{line_no}"):
            bt = b.get("type")
            if bt == "text":
                _append(msgs, "assistant" if etype == "assistant" else "user", str(b.get("text", "")))
            elif bt == "tool_use" and etype == "assistant":
                name = b.get("name")
                if not isinstance(name, str) or not name:
                    raise GtExtError(f"{where}:{line_no}: tool_use block without a name")
                inp = b.get("input") if isinstance(b.get("input"), dict) else {}
                _append(msgs, "assistant", render_tool_call(name, inp))
            elif bt == "tool_result":
                text = _tool_result_text(b.get("content"))
                msgs.append({"role": "tool", "content": text})
            # thinking, redacted_thinking, image: dropped
    return ParsedSession(messages=msgs, session=session, cwd=cwd, time=ts, meta=meta,
                         format="node0" if node0 else "claude")


def content_blocks(content: Any, at: str) -> list[dict[str, Any]]:
    """A message's content as a list of blocks (a plain string is one text block), as Claude and pi
    both write it; a one-line `GtExtError` at `at` (file:line) for anything else."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise GtExtError(f"{at}: message content must be a string or a list of blocks")
    for b in content:
        if not isinstance(b, dict):
            raise GtExtError(f"{at}: content block is not an object")
    return content


def read_jsonl(path: Path, what: str) -> list[tuple[int, Any]]:
    """(line number, object) for each non-blank line of a JSONL file; a one-line `GtExtError` with
    file:line (never the content) on a missing, non-UTF-8 or invalid file."""
    return list(iter_jsonl(path, what))


def parse_claude_jsonl(path: str | Path) -> ParsedSession:
    """Parse one Claude Code transcript file (``~/.claude/projects/*/<session>.jsonl``), or a
    node0 agent's (same format, `entrypoint` "node0-inference", tags in each entry's `gt`)."""
    path = Path(path)
    s = parse_claude_entries(read_jsonl(path, "transcript"), str(path))
    if not s.session:
        s.session = path.stem
    return s


def is_node0_transcript(path: str | Path) -> bool:
    """True when the first entry of a JSONL file was written by the node0 agent (reads one line)."""
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    obj = json.loads(line)
                    return isinstance(obj, dict) and obj.get("entrypoint") == NODE0_ENTRYPOINT
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return False


# --- pi (github.com/badlogic/pi-mono, packages/coding-agent/docs/session.md) ---------------------
# A pi session file is JSONL: line 1 is the header {"type":"session","version":3,"id","timestamp",
# "cwd"[,"parentSession"]}; every later line is an entry {"type","id","parentId","timestamp",...}.
# Entries form a tree through parentId (version 2 on; version 1 files are a plain sequence without
# ids), and the session's current branch is the path from the last entry back to the root.
# Conversation lives in "message" entries ({"message": {"role": "user"|"assistant"|"toolResult"|
# "bashExecution"|"custom", ...}}) and in "custom_message" / "branch_summary" entries, which pi
# sends to the model as user turns; model/thinking changes, labels, names, extension state and
# compaction summaries are bookkeeping.
PI_SESSION_VERSION = 3  # the newest session file version pi documents
_PI_USER_LIKE = ("custom", "hookMessage")  # extension messages (hookMessage: its name before v3)


def pi_header(path: str | Path) -> dict[str, Any] | None:
    """The session header when `path` is a pi session file (first non-blank line is an object with
    ``"type": "session"`` and a string ``id``), else None. Reads only that line; an unreadable or
    non-JSON file is not pi's (the Claude parser then reports it)."""
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    obj = json.loads(line)
                    break
            else:
                return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if isinstance(obj, dict) and obj.get("type") == "session" and isinstance(obj.get("id"), str) and obj["id"]:
        return obj
    return None


def _pi_text(content: Any, where: str) -> str:
    """Text of a pi user/custom message content: a string or a list of text/image blocks (images
    are dropped, as in Claude user turns)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise GtExtError(f"{where}: message content must be a string or a list of blocks")
    parts = []
    for b in content:
        if not isinstance(b, dict):
            raise GtExtError(f"{where}: content block is not an object")
        if b.get("type") == "text":
            parts.append(str(b.get("text", "")))
    return "\n".join(parts)


def _pi_bash_text(m: dict[str, Any]) -> str:
    """A command the user ran with ``!cmd`` in pi: shown to the model as a user turn."""
    text = f"$ {m.get('command', '')}\n{m.get('output') or '(no output)'}"
    code = m.get("exitCode")
    if m.get("cancelled"):
        text += "\n(cancelled)"
    elif isinstance(code, int) and code != 0:
        text += f"\n(exit code {code})"
    return text


def _pi_branch(entries: list[tuple[int, dict[str, Any]]], tree: bool, where: str) -> list[tuple[int, dict[str, Any]]]:
    """The entries of the session's current branch, root first: in a tree (version >= 2) the path
    from the last entry up its parentId links, in a version 1 file every entry in order."""
    if not tree or not entries:
        return entries
    by_id: dict[str, tuple[int, dict[str, Any]]] = {}
    for line_no, e in entries:
        eid = e.get("id")
        if not isinstance(eid, str) or not eid:
            raise GtExtError(f"{where}:{line_no}: entry has no id")
        by_id[eid] = (line_no, e)
    path = []
    cur: tuple[int, dict[str, Any]] | None = entries[-1]
    seen: set[str] = set()
    while cur is not None:
        line_no, e = cur
        if e["id"] in seen:
            raise GtExtError(f"{where}:{line_no}: parentId links form a cycle")
        seen.add(e["id"])
        path.append(cur)
        parent = e.get("parentId")
        if parent is None:
            break
        if not isinstance(parent, str) or parent not in by_id:
            raise GtExtError(f"{where}:{line_no}: parentId names no entry of this session")
        cur = by_id[parent]
    path.reverse()
    return path


def parse_pi_entries(entries: list[tuple[int, Any]], where: str) -> ParsedSession:
    """Turn decoded pi session lines ``(line_no, obj)`` (header first) into a session.

    Thinking is dropped, tool calls are rendered with `render_tool_call` (pi's own tool names and
    arguments), tool results become tool turns, and extension messages, branch summaries and the
    user's ``!`` commands become user turns, as pi sends them to the model."""
    if not entries:
        raise GtExtError(f"{where}: empty pi session file")
    line_no, header = entries[0]
    if not (isinstance(header, dict) and header.get("type") == "session"
            and isinstance(header.get("id"), str) and header["id"]):
        raise GtExtError(f"{where}:{line_no}: not a pi session: the first line is not a session header with an id")
    version = header.get("version", 1)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise GtExtError(f"{where}:{line_no}: session header version must be a positive integer")
    if version > PI_SESSION_VERSION:
        log.warning("%s: pi session version %d is newer than %d; parsing it as version %d",
                    where, version, PI_SESSION_VERSION, PI_SESSION_VERSION)
    body: list[tuple[int, dict[str, Any]]] = []
    for line_no, e in entries[1:]:
        if not isinstance(e, dict):
            raise GtExtError(f"{where}:{line_no}: session entry is not a JSON object")
        if not isinstance(e.get("type"), str):
            raise GtExtError(f"{where}:{line_no}: session entry has no type")
        if e["type"] == "session":
            raise GtExtError(f"{where}:{line_no}: a second session header")
        body.append((line_no, e))

    msgs: list[dict[str, str]] = []
    ts = str(header.get("timestamp") or "")
    for line_no, e in _pi_branch(body, version >= 2, where):
        at = f"{where}:{line_no}"
        if isinstance(e.get("timestamp"), str) and e["timestamp"]:
            ts = e["timestamp"]
        etype = e["type"]
        if etype == "custom_message":
            _append(msgs, "user", _pi_text(e.get("content"), at))
        elif etype == "branch_summary":
            if isinstance(e.get("summary"), str):
                _append(msgs, "user", e["summary"])
        elif etype == "message":
            _pi_message(msgs, e.get("message"), at)
        # compaction (the full history is still on the branch), model/thinking changes, labels,
        # session names and extension state: not conversation
    return ParsedSession(messages=msgs, session=header["id"], cwd=str(header.get("cwd") or ""), time=ts,
                         format="pi")


def _pi_message(msgs: list[dict[str, str]], m: Any, at: str) -> None:
    """Add the turns of one pi ``message`` entry's AgentMessage."""
    if not isinstance(m, dict):
        raise GtExtError(f"{at}: message entry has no message object")
    role = m.get("role")
    if role == "user" or role in _PI_USER_LIKE:
        _append(msgs, "user", _pi_text(m.get("content"), at))
    elif role == "assistant":
        for b in content_blocks(m.get("content"), at):
            bt = b.get("type")
            if bt == "text":
                _append(msgs, "assistant", str(b.get("text", "")))
            elif bt == "toolCall":
                name = b.get("name")
                if not isinstance(name, str) or not name:
                    raise GtExtError(f"{at}: toolCall block without a name")
                args = b.get("arguments")
                if args is not None and not isinstance(args, dict):
                    raise GtExtError(f"{at}: toolCall arguments must be a JSON object")
                # pi's shell tool is `bash {command}`; Claude's and the node0 agent's is `Bash
                # {command}`: one name in the corpus, so a role model learns one tool vocabulary.
                _append(msgs, "assistant", render_tool_call(_PI_TOOL_NAMES.get(name, name), args or {}))
            # thinking (also redacted): dropped
    elif role == "toolResult":
        msgs.append({"role": "tool", "content": _tool_result_text(m.get("content"))})
    elif role == "bashExecution":
        if not m.get("excludeFromContext"):  # "!!cmd": the user kept it from the model
            _append(msgs, "user", _pi_bash_text(m))
    elif not isinstance(role, str):
        raise GtExtError(f"{at}: message has no role")
    # other roles (a newer pi's): skipped


# pi tool names whose arguments match Claude's tool of another name (only the shell tool does).
_PI_TOOL_NAMES = {"bash": "Bash"}


def parse_pi_jsonl(path: str | Path) -> ParsedSession:
    """Parse one pi session file (``~/.pi/agent/sessions/--<cwd>--/<time>_<id>.jsonl``): the
    current branch's conversation; session id and cwd from the header, time of the last entry."""
    path = Path(path)
    return parse_pi_entries(read_jsonl(path, "pi session file"), str(path))


# Claude Code's terminal UI: "> prompt" or "❯ prompt" for the user, "● text" / "⏺ text" for the
# assistant, "● Bash(cmd)" for a tool call and "⎿ output" under it.
_PANE_USER = re.compile(r"^\s*(?:>|❯)\s+(.*)$")
_PANE_ASSIST = re.compile(r"^\s*(?:●|⏺)\s+(.*)$")
_PANE_TOOL = re.compile(r"^([A-Z][A-Za-z]+)\((.*)\)\s*$")
_PANE_RESULT = re.compile(r"^\s*⎿\s?(.*)$")
_TOOL_ARG = {"Bash": "command", "Read": "file_path", "Write": "file_path", "Edit": "file_path",
             "Grep": "pattern", "Glob": "pattern", "WebFetch": "url"}


def parse_pane_text(text: str, where: str = "pane") -> ParsedSession:
    """Parse a ``tmux capture-pane -p -J`` dump of an agent pane into chat turns.

    Lines before the first recognised marker are ignored (banner, scrollback noise). A pane with no
    markers at all raises, since there is no telling who said what.
    """
    msgs: list[dict[str, str]] = []
    cur_role: str | None = None
    buf: list[str] = []

    def flush() -> None:
        nonlocal buf
        if cur_role is not None and buf:
            if cur_role == "tool":
                msgs.append({"role": "tool", "content": "\n".join(buf).strip("\n")})
            else:
                _append(msgs, cur_role, "\n".join(buf))
        buf = []

    for line in text.splitlines():
        if m := _PANE_USER.match(line):
            flush()
            cur_role, buf = "user", [m.group(1)]
        elif m := _PANE_ASSIST.match(line):
            flush()
            body = m.group(1)
            if t := _PANE_TOOL.match(body):
                name, arg = t.group(1), t.group(2)
                _append(msgs, "assistant", render_tool_call(name, {_TOOL_ARG.get(name, "input"): arg}))
                cur_role, buf = None, []
            else:
                cur_role, buf = "assistant", [body]
        elif m := _PANE_RESULT.match(line):
            if cur_role != "tool":
                flush()
                cur_role, buf = "tool", []
            buf.append(m.group(1))
        elif cur_role is not None:
            buf.append(line.strip() if cur_role != "tool" else line.strip())
    flush()
    if not any(m["role"] == "assistant" for m in msgs):
        raise GtExtError(f"{where}: no agent turns recognised in pane text")
    return ParsedSession(messages=msgs)


_MD_FRONT = re.compile(r"\A---\s*\n(.*?)\n---\s*\n", re.DOTALL)
_MD_HEAD = re.compile(r"^(?:#{1,4}\s*|\*\*)(system|user|assistant|tool)(?::\*\*|\*\*:?|:)?\s*$", re.IGNORECASE | re.MULTILINE)


def parse_markdown(text: str, where: str = "markdown") -> ParsedSession:
    """Parse a curated markdown example: optional ``---`` front matter (key: value lines), then
    sections headed ``## User`` / ``## Assistant`` / ``## System`` / ``## Tool``."""
    meta: dict[str, Any] = {}
    if m := _MD_FRONT.match(text):
        for line in m.group(1).splitlines():
            if ":" in line:
                k, v = line.split(":", 1)
                meta[k.strip()] = v.strip()
        text = text[m.end():]
    heads = list(_MD_HEAD.finditer(text))
    if not heads:
        raise GtExtError(f"{where}: no '## User' / '## Assistant' sections found")
    msgs: list[dict[str, str]] = []
    for i, h in enumerate(heads):
        end = heads[i + 1].start() if i + 1 < len(heads) else len(text)
        body = text[h.end():end].strip("\n")
        role = h.group(1).lower()
        if role == "tool":
            msgs.append({"role": "tool", "content": body.strip()})
        else:
            _append(msgs, role, body.strip())
    return ParsedSession(messages=msgs, meta=meta)


def _chat_obj(obj: Any, where: str) -> ParsedSession:
    if isinstance(obj, list) and obj and all(isinstance(m, dict) and "role" in m for m in obj):
        obj = {"messages": obj}
    if not isinstance(obj, dict) or not isinstance(obj.get("messages"), list):
        raise GtExtError(f"{where}: expected an object with a 'messages' list")
    msgs = []
    for j, m in enumerate(obj["messages"]):
        if not isinstance(m, dict) or m.get("role") not in CHAT_ROLES or not isinstance(m.get("content"), str):
            raise GtExtError(f"{where}: messages[{j}] needs role in {'/'.join(CHAT_ROLES)} and string content")
        msgs.append({"role": m["role"], "content": m["content"]})
    meta = {k: obj[k] for k in ("role", "task", "rig", "bead", "outcome", "session", "user") if k in obj}
    return ParsedSession(messages=msgs, meta=meta, session=str(obj.get("session", "")))


def parse_chat_file(path: str | Path) -> list[ParsedSession]:
    """Curated examples: a ``.json`` file (one example or a list), ``.jsonl`` (one a line) or ``.md``."""
    path = Path(path)
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise GtExtError(f"{path}: file not found") from None
    except UnicodeDecodeError as e:
        raise GtExtError(f"{path}: not UTF-8 text (byte {e.start})") from None
    suffix = path.suffix.lower()
    if suffix in (".md", ".markdown"):
        return [parse_markdown(raw, str(path))]
    if suffix == ".jsonl":
        out = []
        for i, obj in iter_jsonl(path):
            # Agent transcripts are also JSONL: recognise them by their first entry's shape.
            if not out and isinstance(obj, dict) and obj.get("type") == "session" and "messages" not in obj:
                return [parse_pi_jsonl(path)]
            if isinstance(obj, dict) and obj.get("type") in ("user", "assistant", "summary", "system") and "messages" not in obj:
                return [parse_claude_jsonl(path)]
            out.append(_chat_obj(obj, f"{path}:{i}"))
        if not out:
            raise GtExtError(f"{path}: no examples")
        return out
    if suffix == ".json":
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as e:
            raise GtExtError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
        if isinstance(obj, list) and obj and all(isinstance(x, dict) and "messages" in x for x in obj):
            return [_chat_obj(x, f"{path}[{k}]") for k, x in enumerate(obj)]
        return [_chat_obj(obj, str(path))]
    raise GtExtError(f"{path}: unsupported file type {suffix or '(none)'}: use .json, .jsonl or .md")
