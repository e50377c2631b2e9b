"""Read prompts from the pane's tty line by line, joining pasted or nudged multi-line input.

gt delivers a nudge as `send-keys -l TEXT`, then `Escape`, ~0.6 s later `Enter` (and more Enters
if the pane did not change). So a prompt is complete when a line ends in ESC; lines that arrive in
one burst are a paste and are joined until a quiet gap; a single typed line stands alone; a line
ending in a backslash continues on the next. Terminal escape sequences and stray control
characters are removed.
"""

from __future__ import annotations

import os
import re
import select

_ESC_SEQ = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-Z\\-_]|\x1b")
_CTRL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def clean(line: str) -> str:
    """Strip escape sequences and control characters (keeps the text)."""
    return _CTRL.sub("", _ESC_SEQ.sub("", line)).rstrip()


class PromptReader:
    """`read()` returns the next prompt (possibly multi-line) or None at EOF."""

    def __init__(self, fd: int = 0, single_gap: float = 0.05, paste_gap: float = 1.2):
        self.fd = fd
        self.single_gap = single_gap  # how long to wait after one lone line for a paste to follow
        self.paste_gap = paste_gap  # quiet time that ends a multi-line paste / nudge
        self._buf = b""
        self._eof = False

    def _fill(self, timeout: float | None) -> bool:
        """Read what is available (waiting up to `timeout`, None = forever); False on timeout."""
        if self._eof:
            return False
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return False
        chunk = os.read(self.fd, 65536)
        if not chunk:
            self._eof = True
            return False
        self._buf += chunk
        return True

    def _take_lines(self) -> list[str]:
        *lines, self._buf = self._buf.split(b"\n")
        return [ln.decode("utf-8", "replace") for ln in lines]

    def read(self) -> str | None:
        """Block until a complete prompt: its text ("" for a blank line), or None at end of input."""
        lines: list[str] = []
        while True:
            got = self._take_lines()
            if not got:
                if self._eof:
                    tail = self._buf.decode("utf-8", "replace")
                    self._buf = b""
                    if tail:
                        lines.append(tail)
                    if not lines:
                        return None
                    break
                self._fill(None)
                continue
            lines.extend(got)
            if lines[-1].endswith("\\"):  # explicit continuation
                lines[-1] = lines[-1][:-1]
                continue
            if "\x1b" in lines[-1]:  # a gt nudge ends with Escape before its Enter
                break
            gap = self.paste_gap if len(lines) > 1 or self._buf else self.single_gap
            if self._buf or self._fill(gap):
                continue
            break
        text = "\n".join(clean(x) for x in lines).strip("\n")
        return text if text.strip() else ""
