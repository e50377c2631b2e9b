"""Write a node0 session as a Claude Code style JSONL transcript, so the corpus collects it.

File: `<projects>/<cwd with / as ->/<session id>.jsonl` where `<projects>` is what the corpus reads
(`gt_ext.corpus.collect.claude_projects_dir()`: $GT_EXT_CLAUDE_PROJECTS, $CLAUDE_CONFIG_DIR/projects,
~/.claude/projects). One JSON object a line, appended and flushed as the session goes, like Claude's.
"""

from __future__ import annotations

import json
import os
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gt_ext.private import FILE_MODE, private_dir


def projects_dir() -> Path:
    """The folder Claude Code (and the corpus collector) keeps transcripts in."""
    if os.environ.get("GT_EXT_CLAUDE_PROJECTS"):
        return Path(os.environ["GT_EXT_CLAUDE_PROJECTS"])
    if os.environ.get("CLAUDE_CONFIG_DIR"):
        return Path(os.environ["CLAUDE_CONFIG_DIR"]) / "projects"
    return Path.home() / ".claude" / "projects"


class Transcript:
    """Appends user / assistant / tool_result entries for one session."""

    def __init__(self, cwd: str | os.PathLike, model: str, session_id: str | None = None,
                 folder: str | os.PathLike | None = None, meta: dict[str, Any] | None = None):
        self.session_id = session_id or str(uuid.uuid4())
        self.cwd = str(Path(cwd).resolve())
        self.model = model
        self.meta = {k: v for k, v in (meta or {}).items() if v}
        base = Path(folder) if folder else projects_dir()
        self.path = base / self.cwd.replace("/", "-") / f"{self.session_id}.jsonl"
        private_dir(self.path.parent)  # a session's text: owner only, like Claude's own transcripts
        self._parent: str | None = None
        self._fh = os.fdopen(os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, FILE_MODE), "a",
                             encoding="utf-8")  # held for the session

    def _write(self, etype: str, message: dict[str, Any]) -> str:
        uid = str(uuid.uuid4())
        entry = {
            "type": etype, "sessionId": self.session_id, "cwd": self.cwd,
            "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            "uuid": uid, "parentUuid": self._parent, "userType": "external", "entrypoint": "node0-inference",
            **({"gt": self.meta} if self.meta else {}),
            "message": message,
        }
        self._fh.write(json.dumps(entry, ensure_ascii=False) + "\n")
        self._fh.flush()
        self._parent = uid
        return uid

    def user(self, text: str) -> None:
        """A prompt or nudge typed into the pane."""
        self._write("user", {"role": "user", "content": text})

    def assistant(self, text: str, tool_uses: list[tuple[str, str, dict]] | None = None,
                  usage: dict[str, int] | None = None) -> None:
        """One model reply: its prose and its tool calls as (id, name, input)."""
        blocks: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
        for tid, name, inp in tool_uses or []:
            blocks.append({"type": "tool_use", "id": tid, "name": name, "input": inp})
        self._write("assistant", {"role": "assistant", "model": self.model, "content": blocks,
                                  "usage": usage or {}})

    def tool_result(self, tool_use_id: str, output: str, is_error: bool) -> None:
        """A tool's output, as Claude writes it: a user entry with a tool_result block."""
        self._write("user", {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": tool_use_id, "content": output, "is_error": is_error}]})

    def close(self) -> None:
        """Flush and close the file (the session ends)."""
        if not self._fh.closed:
            self._fh.close()
