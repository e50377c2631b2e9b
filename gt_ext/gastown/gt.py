"""Run the real `gt` (never our shim) for a town, with errors that carry gt's message and exit code."""

from __future__ import annotations

import json
import logging
import os
import subprocess
from pathlib import Path
from typing import Any

from gt_ext.errors import GtExtError
from gt_ext.gastown.binaries import find_gt

log = logging.getLogger(__name__)


class GtError(GtExtError):
    """The real gt failed: `gt_message` is its last error line, `gt_exit_code` its status."""

    def __init__(self, message: str, exit_code: int, command: str):
        super().__init__(f"{command}: {message}", exit_code=exit_code if exit_code > 0 else 1)
        self.gt_message = message
        self.gt_exit_code = exit_code


def _error_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    for ln in lines:  # cobra prints "Error: ..." first, then usage
        if ln.startswith("Error:"):
            return ln[len("Error:"):].strip()
    return lines[-1] if lines else "(no message)"


class Gt:
    """The real gt, run in a town root (cwd) with GT_TOWN_ROOT set."""

    def __init__(self, town_root: str | os.PathLike | None = None, env: dict[str, str] | None = None,
                 timeout: float = 300.0):
        self.bin = find_gt()
        self.town_root = Path(town_root) if town_root else None
        self.env = dict(os.environ if env is None else env)
        if self.town_root:
            self.env["GT_TOWN_ROOT"] = str(self.town_root)
        self.timeout = timeout

    def run(self, *args: str, check: bool = True, input: str | None = None,
            cwd: str | os.PathLike | None = None) -> subprocess.CompletedProcess[str]:
        """Run `gt ARGS` in `cwd` (default: the town root); raise GtError (gt's message, exit code)
        when `check` and it fails, and on a timeout."""
        log.debug("gt %s", " ".join(args))
        cmd = f"gt {args[0]}" if args else "gt"
        try:
            res = subprocess.run([self.bin, *args], cwd=cwd or self.town_root, env=self.env, capture_output=True,
                                 text=True, timeout=self.timeout, input=input,
                                 stdin=None if input is not None else subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise GtError(f"timed out after {self.timeout:.0f} s", 124, cmd) from None
        if check and res.returncode != 0:
            raise GtError(_error_line(res.stderr or res.stdout), res.returncode, cmd)
        return res

    def json(self, *args: str) -> Any:
        """Run `gt ARGS --json` and parse its stdout."""
        out = self.run(*args, "--json").stdout
        try:
            return json.loads(out)
        except json.JSONDecodeError:
            raise GtError(f"printed non-JSON output: {out.strip()[:200]}", 1, f"gt {args[0]}") from None

    def version(self) -> str:
        """`gt version` output, e.g. 'gt version 1.0.1 (dev)'."""
        return self.run("version").stdout.strip()
