"""One way to write tool calls and chat examples, shared by the corpus, training and serving.

A tool call inside assistant text is rendered as

    <tool_call>{"name": "Bash", "input": {"command": "bd list --json"}}</tool_call>

(compact JSON, keys sorted inside ``input`` so that the same call always renders the same bytes),
and a tool result is its own ``{"role": "tool", "content": ...}`` turn. Serving's agent loop
parses model output with `parse_tool_calls`, so both sides must go through these functions.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from gt_ext.errors import GtExtError

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"
CHAT_ROLES: tuple[str, ...] = ("system", "user", "assistant", "tool")

# Non-greedy up to the first closing tag. JSON does not escape "<" or "/", so a tool input that
# itself contains "</tool_call>" would end the block early: render_tool_call writes "</" as "<\/"
# (still valid JSON, decodes to the same string) to keep the closing tag unambiguous.
_CALL_RE = re.compile(re.escape(TOOL_CALL_OPEN) + r"(.*?)" + re.escape(TOOL_CALL_CLOSE), re.DOTALL)


def render_tool_call(name: str, input: dict[str, Any] | None = None) -> str:  # noqa: A002 - contract name
    """Render one tool call as the fenced block that every model in this project reads and writes."""
    if not isinstance(name, str) or not name.strip():
        raise GtExtError("tool call: name must be a non-empty string")
    if input is None:
        input = {}
    if not isinstance(input, dict):
        raise GtExtError(f"tool call {name!r}: input must be a JSON object, got {type(input).__name__}")
    # "name" first for readability; keys inside input sorted so one call has one rendering.
    inner = json.dumps(input, ensure_ascii=False, sort_keys=True, separators=(", ", ": "))
    body = '{"name": ' + json.dumps(name, ensure_ascii=False) + ', "input": ' + inner + "}"
    return TOOL_CALL_OPEN + body.replace("</", "<\\/") + TOOL_CALL_CLOSE


def parse_tool_calls(text: str) -> list[dict[str, Any]]:
    """Find every well-formed tool call block in `text`, in order: ``[{"name", "input"}, ...]``.

    Blocks whose body is not a JSON object with a string ``name`` are skipped (a model may emit
    half a block); ``input`` defaults to ``{}`` and a non-object input is kept under ``{"value": x}``
    so callers always get a dict.
    """
    calls: list[dict[str, Any]] = []
    for m in _CALL_RE.finditer(text or ""):
        try:
            obj = json.loads(m.group(1).strip())
        except json.JSONDecodeError:
            continue
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not obj["name"].strip():
            continue
        inp = obj.get("input", obj.get("arguments", {}))
        if inp is None:
            inp = {}
        if not isinstance(inp, dict):
            inp = {"value": inp}
        calls.append({"name": obj["name"], "input": inp})
    return calls


def strip_tool_calls(text: str) -> str:
    """`text` without its tool call blocks (the prose the assistant said around them)."""
    return _CALL_RE.sub("", text or "").strip()


def message(role: str, content: str) -> dict[str, str]:
    """One chat turn, checked: role is system/user/assistant/tool and content a string."""
    if role not in CHAT_ROLES:
        raise GtExtError(f"chat message: unknown role {role!r}: roles are {', '.join(CHAT_ROLES)}")
    if not isinstance(content, str):
        raise GtExtError(f"chat message ({role}): content must be a string")
    return {"role": role, "content": content}


def validate_messages(messages: Any, where: str = "messages") -> list[dict[str, str]]:
    """Check a chat example and return it normalised (only role/content kept); raise on bad input."""
    if not isinstance(messages, list) or not messages:
        raise GtExtError(f"{where}: expected a non-empty list of messages")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise GtExtError(f"{where}[{i}]: expected an object with role and content")
        role, content = m.get("role"), m.get("content")
        if role not in CHAT_ROLES:
            raise GtExtError(f"{where}[{i}]: unknown role {role!r}")
        if not isinstance(content, str):
            raise GtExtError(f"{where}[{i}] ({role}): content must be a string")
        out.append({"role": role, "content": content})
    if not any(m["role"] == "assistant" for m in out):
        raise GtExtError(f"{where}: no assistant turn")
    return out


def canonical_json(obj: Any) -> str:
    """Deterministic JSON (sorted keys, compact) used for every hash in the corpus."""
    return json.dumps(obj, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def sha256_text(text: str) -> str:
    """Hex sha256 of UTF-8 text."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def example_id(messages: list[dict[str, str]]) -> str:
    """The contract's SFT id: sha256 of the canonical messages."""
    return sha256_text(canonical_json([{"role": m["role"], "content": m["content"]} for m in messages]))


def dpo_id(prompt: list[dict[str, str]], chosen: str, rejected: str) -> str:
    """Id of a DPO pair: sha256 over prompt, chosen and rejected."""
    return sha256_text(canonical_json({"prompt": prompt, "chosen": chosen, "rejected": rejected}))
