"""Small builders for corpus tests: Claude transcripts and town layouts on disk."""

from __future__ import annotations

import json
from pathlib import Path


def claude_entries(session: str, cwd: str, prompt: str, steps: list[tuple[str, str, str]]) -> list[dict]:
    """Transcript entries: a user prompt, then per step (text, bash command, tool output)."""
    out = [{"type": "user", "sessionId": session, "cwd": cwd, "timestamp": "2026-11-29T06:00:00Z",
            "message": {"role": "user", "content": prompt}}]
    for i, (text, cmd, result) in enumerate(steps):
        out.append({"type": "assistant", "sessionId": session, "cwd": cwd, "timestamp": "2026-11-29T06:00:01Z",
                    "message": {"role": "assistant", "content": [
                        {"type": "thinking", "thinking": "private reasoning"},
                        {"type": "text", "text": text},
                        {"type": "tool_use", "id": f"t{i}", "name": "Bash", "input": {"command": cmd}}]}})
        out.append({"type": "user", "sessionId": session, "cwd": cwd,
                    "message": {"role": "user", "content": [{"type": "tool_result", "tool_use_id": f"t{i}", "content": result}]}})
    out.append({"type": "assistant", "sessionId": session, "cwd": cwd,
                "message": {"role": "assistant", "content": [{"type": "text", "text": "All done, submitted with gt done."}]}})
    return out


def write_transcript(projects: Path, session: str, cwd: str, prompt: str, steps) -> Path:
    d = projects / cwd.replace("/", "-")
    d.mkdir(parents=True, exist_ok=True)
    p = d / f"{session}.jsonl"
    p.write_text("".join(json.dumps(e) + "\n" for e in claude_entries(session, cwd, prompt, steps)))
    return p


def make_town_dirs(root: Path) -> Path:
    """A minimal town layout (mayor/town.json) at `root`."""
    (root / "mayor").mkdir(parents=True, exist_ok=True)
    (root / "mayor" / "town.json").write_text(json.dumps({"name": "testtown"}))
    return root


def add_session_events(town: Path, actor: str, session: str, cwd: str, bead: str, role: str = "polecat") -> None:
    with open(town / ".events.jsonl", "a") as f:
        f.write(json.dumps({"ts": "2026-11-29T06:00:00Z", "source": "gt", "type": "session_start", "actor": actor,
                            "payload": {"session_id": session, "role": role, "cwd": cwd}}) + "\n")
        f.write(json.dumps({"ts": "2026-11-29T06:05:00Z", "source": "gt", "type": "done", "actor": actor,
                            "payload": {"bead": bead, "branch": f"polecat/{bead}"}}) + "\n")
