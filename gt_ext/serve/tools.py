"""Run the model's tool calls in the work dir: guarded, time-limited, output-limited."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gt_ext.serve import guard

log = logging.getLogger(__name__)


@dataclass
class ToolResult:
    """What goes back to the model as the tool turn."""

    output: str
    is_error: bool
    refused: bool = False
    exit_code: int | None = None


def clip(text: str, limit: int) -> str:
    """Keep the head and the tail of a long output, saying how much was cut."""
    if len(text) <= limit:
        return text
    head, tail = limit * 2 // 3, limit // 3
    return f"{text[:head]}\n[... {len(text) - head - tail} characters cut ...]\n{text[-tail:]}"


class ToolRunner:
    """Executes `Bash` (and `Read`) tool calls for the agent loop."""

    def __init__(self, workdir: str | os.PathLike, timeout_s: float = 120.0, max_output: int = 4000,
                 env: dict[str, str] | None = None):
        self.workdir = Path(workdir).resolve()
        self.timeout_s = timeout_s
        self.max_output = max_output
        self.env = env

    def run(self, call: dict[str, Any], timeout_s: float | None = None) -> ToolResult:
        """Run one parsed tool call `{"name", "input"}`."""
        name, inp = call.get("name"), call.get("input") or {}
        if name == "Bash":
            cmd = inp.get("command")
            if not isinstance(cmd, str) or not cmd.strip():
                return ToolResult("error: Bash needs input.command (a non-empty string)", True)
            return self.bash(cmd, timeout_s)
        if name == "Read":
            return self.read(inp.get("file_path") or inp.get("path"))
        return ToolResult(f"error: unknown tool {name!r}; tools are Bash (input.command) and Read (input.file_path)",
                          True)

    def bash(self, command: str, timeout_s: float | None = None) -> ToolResult:
        """Run a shell command after the guard agrees; kill its whole process group on timeout."""
        reason = guard.check(command, self.workdir)
        if reason:
            log.info("guard refused a command: %s", reason)
            return ToolResult(f"{reason}. The command was not run.", True, refused=True)
        timeout = min(self.timeout_s, timeout_s) if timeout_s else self.timeout_s
        proc = subprocess.Popen(
            ["bash", "-c", command], cwd=self.workdir, env=self.env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
        )
        try:
            out, _ = proc.communicate(timeout=max(timeout, 0.1))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # only the group this call started
            out, _ = proc.communicate()
            text = clip(out.decode("utf-8", "replace"), self.max_output)
            return ToolResult(f"{text}\n[timed out after {timeout:.0f} s; the command was killed]", True)
        text = clip(out.decode("utf-8", "replace"), self.max_output)
        if proc.returncode:
            text += f"\n[exit code {proc.returncode}]"
        return ToolResult(text, proc.returncode != 0, exit_code=proc.returncode)

    def read(self, path: Any) -> ToolResult:
        """Read a text file inside the work dir."""
        if not isinstance(path, str) or not path:
            return ToolResult("error: Read needs input.file_path", True)
        p = Path(path)
        p = (p if p.is_absolute() else self.workdir / p).resolve()
        if p != self.workdir and self.workdir not in p.parents:
            return ToolResult(f"refused: Read {path}: outside the work dir {self.workdir}", True, refused=True)
        try:
            return ToolResult(clip(p.read_text(errors="replace"), self.max_output), False)
        except OSError as e:
            return ToolResult(f"error: Read {path}: {e.strerror}", True)
