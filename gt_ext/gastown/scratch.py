"""A scratch town for staging patrol scenarios: real `bd`, `git`, `tmux` and `dolt` in a temp folder.

The patrol corpus (`gt_ext.corpus.patrol`) stages a situation here (beads with statuses and
assignees, polecat worktrees that are dirty or ahead of their upstream, tmux sessions whose agent
process is alive or gone, files with old modification times, Dolt databases) and then records what
the patrol's own commands print about it. Every line of evidence is a real tool's output.

- `ScratchTown.sh(cmd)` stages (its output is not evidence); `ScratchTown.show(cmd)` runs a command
  and returns `$ cmd` plus what it printed, with the temp path written as `~/gt`.
- tmux runs on a private server (a `tmux` wrapper early on PATH adds `-L <socket> -f /dev/null`),
  so what the transcript shows is the command that ran, and the user's own tmux is never touched.
- An agent process is `claude` (a link to `sleep` named like the agent CLI, so tmux reports
  `pane_current_command` = claude, as gt's liveness check reads it).
- `close()` kills the private tmux server and every process started under the folder.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from gt_ext.errors import GtExtError
from gt_ext.gastown.binaries import find_bd, find_dolt

log = logging.getLogger(__name__)

TOWN_DISPLAY = "~/gt"
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class ScratchTown:
    """A temp town folder with its own HOME, beads database, tmux server and tool wrappers."""

    def __init__(self, prefix: str = "gt", base: Path | None = None, beads: bool = True, seed: str = "0"):
        import random

        from gt_ext.gastown.testing import isolated_env

        self.rng = random.Random(seed)
        self._pending: list[dict] = []
        self._ids: list[str] = []
        self.base = Path(tempfile.mkdtemp(prefix="gt-scratch-", dir=base))
        self.root = self.base / "gt"
        self.root.mkdir()
        self.bin = self.base / "bin"
        self.bin.mkdir()
        self.socket = f"gtx-{os.getpid()}-{self.base.name[-8:]}"
        tmux = shutil.which("tmux")
        if tmux is None:
            raise GtExtError("tmux not found: the patrol scratch town needs tmux >= 3.0 on PATH")
        (self.bin / "tmux").write_text(f'#!/bin/sh\nexec {tmux} -L {self.socket} -f /dev/null "$@"\n')
        (self.bin / "tmux").chmod(0o755)
        os.symlink(shutil.which("sleep") or "/bin/sleep", self.bin / "claude")
        self.env = isolated_env(self.base / "home", {"PATH": f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}",
                                                   "TZ": "UTC", "BD_NO_HOOKS": "1", "NO_COLOR": "1",
                                                   "GIT_PAGER": "cat", "PAGER": "cat", "BD_ACTOR": "patrol"})
        for tool in (find_bd(required=False), find_dolt(required=False)):
            if tool and not (self.bin / Path(tool).name).exists():
                os.symlink(tool, self.bin / Path(tool).name)
        self.prefix = prefix
        if beads:
            self.sh(f"bd init --prefix {prefix} --quiet --skip-hooks --skip-agents --non-interactive", timeout=300)
            # gt's own bead types (gt v1.0.1 registers these in every beads database it makes).
            self.sh("bd config set types.custom merge-request,agent,role,convoy,gate --quiet", check=False)

    # ------------------------------------------------------------------ running commands
    def _run(self, cmd: str, cwd: Path | None, timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", "-c", cmd], cwd=cwd or self.root, env=self.env, capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL)

    def sh(self, cmd: str, cwd: Path | None = None, timeout: float = 120, check: bool = True) -> str:
        """Stage: run `cmd` with bash; its stdout (stripped) is returned, never shown as evidence."""
        res = self._run(cmd, cwd, timeout)
        if check and res.returncode != 0:
            tail = (res.stderr or res.stdout).strip()[-400:]
            raise GtExtError(f"scratch town: `{cmd[:120]}` exited {res.returncode}: {tail}")
        return res.stdout.strip()

    def show(self, cmd: str, cwd: Path | None = None, timeout: float = 120) -> str:
        """Evidence: `$ cmd` and what it printed (stdout and stderr, as a terminal shows them)."""
        self.flush()
        res = subprocess.run(["bash", "-c", cmd + " 2>&1"], cwd=cwd or self.root, env=self.env,
                             capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        out = self.display(res.stdout.rstrip("\n"))
        return f"$ {cmd}" + (f"\n{out}" if out else "")

    def display(self, text: str) -> str:
        """Tool output with this town's temp paths written as the usual town root."""
        text = _ANSI.sub("", text).replace("\r", "")
        return (text.replace(str(self.root), TOWN_DISPLAY).replace(str(self.base / "git"), "/srv/git")
                .replace(str(self.base), "/tmp").replace(f"/tmp/tmux-{os.getuid()}/{self.socket}",
                                                         f"/tmp/tmux-{os.getuid()}/default"))

    # ------------------------------------------------------------------ staging helpers
    def bead(self, title: str, *, type_: str = "task", status: str = "open", assignee: str = "",
             labels: str = "", description: str = "") -> str:
        """A bead with this id, status and assignee; returns its id. Beads are written with one
        `bd import` before the next evidence command (one bd call per scenario, not one per bead)."""
        import json
        from datetime import UTC, datetime

        if type_ == "message":  # mail is a wisp bd makes itself (bd import would store a plain issue)
            argv = f"bd create {_q(title)} --type message --json"
            for flag, val in (("--assignee", assignee), ("--labels", labels), ("--description", description)):
                argv += f" {flag} {_q(val)}" if val else ""
            bid = json.loads(self.sh(argv))["id"]
            self._ids.append(bid)
            return bid
        while True:
            bid = f"{self.prefix}-" + "".join(self.rng.choice("0123456789abcdefghijklmnopqrstuvwxyz") for _ in range(3))
            if bid not in self._ids:
                break
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        rec = {"id": bid, "title": title, "status": status, "priority": 2, "issue_type": type_,
               "created_at": now, "updated_at": now}
        if assignee:
            rec["assignee"] = assignee
        if labels:
            rec["labels"] = labels.split(",")
        if description:
            rec["description"] = description
        if status == "closed":
            rec["closed_at"], rec["close_reason"] = now, "done"
        self._pending.append(rec)
        self._ids.append(bid)
        return bid

    def flush(self) -> None:
        """Write the pending beads with the real `bd import`."""
        import json

        if not self._pending:
            return
        f = self.base / "import.jsonl"
        f.write_text("".join(json.dumps(r) + "\n" for r in self._pending))
        self._pending = []
        self.sh(f"bd import {f} --quiet >/dev/null")

    def remote(self, name: str) -> str:
        """A bare git repository `name` outside the town (a rig's origin); returns its path."""
        path = self.base / "git" / f"{name}.git"
        if not path.exists():
            self.sh(f"git init -q --bare {_q(str(path))}")
        return str(path)

    def touch_ago(self, path: str, minutes: int) -> None:
        """Create `path` (under the town) with a modification time `minutes` in the past."""
        p = self.root / path
        p.parent.mkdir(parents=True, exist_ok=True)
        self.sh(f"touch -d '-{int(minutes)} minutes' {_q(str(p))}")

    def session(self, name: str, agent: bool = True, first: str = "") -> None:
        """A tmux session `name`: `first` runs in it, then the agent (`claude`) or a bare shell."""
        tail = "exec claude 100000" if agent else "exec bash --norc -i"
        body = f"{first}; {tail}" if first else tail
        self.sh(f"tmux new-session -d -s {_q(name)} -x 120 -y 20 {_q(body)}")

    def reset(self) -> None:
        """Back to an empty town between scenarios: no tmux server, no beads, no staged files."""
        self._run("tmux kill-server", None, 20)
        self._pending = []
        if self._ids:
            self.sh("bd delete --force " + " ".join(self._ids) + " >/dev/null 2>&1", check=False, timeout=300)
            self._ids = []
        # bd re-imports its own issues.jsonl export into an empty database: drop that export too.
        (self.root / ".beads" / "issues.jsonl").unlink(missing_ok=True)
        for p in self.root.iterdir():
            if p.name != ".beads":
                shutil.rmtree(p) if p.is_dir() else p.unlink()
        shutil.rmtree(self.base / "git", ignore_errors=True)

    def close(self) -> None:
        """Stop the private tmux server and everything started under this folder; remove it."""
        from gt_ext.gastown.testing import _reap_under

        try:
            self._run("tmux kill-server", None, 20)
        except (subprocess.TimeoutExpired, OSError) as e:
            log.warning("scratch tmux kill-server: %s", e)
        _reap_under(self.base)
        self._run(f"chmod -R u+w {_q(str(self.base))}", self.base.parent, 60)
        shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> ScratchTown:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _q(s: str) -> str:
    """Shell-quote for bash -c."""
    import shlex

    return shlex.quote(s)


__all__ = ["TOWN_DISPLAY", "ScratchTown"]
