"""Run the model's tool calls: each command in the bubblewrap sandbox, after the policy check.

The sandbox (`gt_ext.serve.sandbox`) is the boundary: writes only in the work dir and the paths the
role needs, secrets unreadable, a clean environment, no privileges, no processes or network
outside. The policy check (`gt_ext.serve.guard`) runs first and refuses, with a reason the model
can read, what Gas Town forbids even inside the work dir (force pushes, hard resets onto remote
branches, mass kills, ...). Without a working sandbox no command runs at all.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gt_ext.serve import guard
from gt_ext.serve.sandbox import Sandbox, SandboxPolicy

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


def default_policy(workdir: str | os.PathLike) -> SandboxPolicy:
    """The sandbox for a work dir with no town settings: the defaults of `agentcfg.build_policy`."""
    from gt_ext.serve.agentcfg import build_policy
    from gt_ext.serve.rolecard import AgentEnv

    return build_policy(workdir, AgentEnv.from_environ(workdir=str(workdir)))


class ToolRunner:
    """Executes `Bash` (and `Read`) tool calls for the agent loop."""

    def __init__(self, workdir: str | os.PathLike, timeout_s: float = 120.0, max_output: int = 4000,
                 sandbox: Sandbox | None = None):
        self.workdir = Path(workdir).resolve()
        self.timeout_s = timeout_s
        self.max_output = max_output
        self.sandbox = sandbox or Sandbox(default_policy(self.workdir))

    def unavailable(self) -> str | None:
        """Why no tool can run here (no usable sandbox), or None."""
        return self.sandbox.unavailable()

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
        """Run a shell command in the sandbox after the policy check agrees."""
        why = self.unavailable()
        if why:
            return ToolResult(f"refused: tools are disabled: no sandbox ({why}). The command was not run.", True,
                              refused=True)
        reason = guard.check(command, self.workdir)
        if reason:
            log.info("policy refused a command: %s", reason)
            return ToolResult(f"{reason}. The command was not run.", True, refused=True)
        timeout = min(self.timeout_s, timeout_s) if timeout_s else self.timeout_s
        res = self.sandbox.run([shutil.which("bash") or "/bin/bash", "-c", command], timeout,
                               keep_bytes=max(4 * self.max_output, 16384))
        text = clip(res.output, self.max_output)
        if res.timed_out:
            return ToolResult(f"{text}\n[timed out after {timeout:.0f} s; the command was killed]", True)
        if res.returncode:
            text += f"\n[exit code {res.returncode}]"
        return ToolResult(text, res.returncode != 0, exit_code=res.returncode)

    def read(self, path: Any) -> ToolResult:
        """Read a text file inside the work dir (never one of the sandbox's denied paths)."""
        if not isinstance(path, str) or not path:
            return ToolResult("error: Read needs input.file_path", True)
        p = Path(path)
        p = (p if p.is_absolute() else self.workdir / p).resolve()
        if p != self.workdir and self.workdir not in p.parents:
            return ToolResult(f"refused: Read {path}: outside the work dir {self.workdir}", True, refused=True)
        for d in self.sandbox.policy.deny:
            d = Path(d).resolve()
            if p == d or d in p.parents:
                return ToolResult(f"refused: Read {path}: a protected path", True, refused=True)
        try:
            with open(p, errors="replace") as f:
                return ToolResult(clip(f.read(1 << 20), self.max_output), False)
        except OSError as e:
            return ToolResult(f"error: Read {path}: {e.strerror}", True)
