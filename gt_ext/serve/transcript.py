"""Write a node0 session as a transcript the corpus reads: Claude Code's JSONL format, tagged.

File: `<projects>/<cwd with / as ->/<session id>.jsonl` where `<projects>` is where Claude Code and
the corpus collector look (`gt_ext.paths.claude_projects_dir()`). One JSON object a line, appended
and flushed as the session goes, like Claude's. Every entry names `"entrypoint": "node0-inference"`
and carries the session's tags in a `gt` object: role, rig, actor (BD_ACTOR), bead (when known),
model (the registry `name:version` that wrote the assistant turns), tmux session and town. The
session id is gt's own when gt gave one (`gt_ext.gastown.session.session_id_from_env`).
"""

from __future__ import annotations

import json
import os
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gt_ext.corpus.parsers import NODE0_ENTRYPOINT, NODE0_META
from gt_ext.paths import claude_projects_dir
from gt_ext.private import FILE_MODE, private_dir


class Transcript:
    """Appends user / assistant / tool_result entries for one session."""

    def __init__(self, cwd: str | os.PathLike, model: str, session_id: str | None = None,
                 folder: str | os.PathLike | None = None, meta: dict[str, Any] | None = None):
        self.session_id = session_id or str(uuid.uuid4())
        self.cwd = str(Path(cwd).resolve())
        self.model = model
        self.meta = {k: v for k, v in {**(meta or {}), "model": model}.items() if v and k in NODE0_META}
        base = Path(folder) if folder else claude_projects_dir()
        self.path = base / self.cwd.replace("/", "-") / f"{self.session_id}.jsonl"
        private_dir(self.path.parent)  # a session's text: owner only, like Claude's own transcripts
        self._parent: str | None = None
        self._fh = os.fdopen(os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, FILE_MODE), "a",
                             encoding="utf-8")  # held for the session

    def set_bead(self, bead: str | None) -> None:
        """Tag the entries written from now on with the bead the session works (first one wins)."""
        if bead and not self.meta.get("bead"):
            self.meta["bead"] = bead

    def _write(self, etype: str, message: dict[str, Any]) -> str:
        uid = str(uuid.uuid4())
        entry = {
            "type": etype, "sessionId": self.session_id, "cwd": self.cwd,
            "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            "uuid": uid, "parentUuid": self._parent, "userType": "external", "entrypoint": NODE0_ENTRYPOINT,
            "gt": self.meta,
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

    @property
    def written(self) -> bool:
        """True once an entry is in the file (an empty session leaves nothing to collect)."""
        return self._parent is not None

    def close(self) -> None:
        """Flush and close the file (the session ends)."""
        if not self._fh.closed:
            self._fh.close()
