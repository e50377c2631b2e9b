"""The one JSONL reader: agent transcripts, curated files and corpus shards all read through it.

Records end at "\\n" only: writers (JSON.stringify among them) leave U+2028/U+2029 unescaped inside
strings, and `str.splitlines` would cut a record there. A bad line is a one-line `GtExtError`
naming `file:line` (never the content: it may hold a secret).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

from gt_ext.errors import GtExtError


def iter_jsonl(path: str | os.PathLike, what: str = "file") -> Iterator[tuple[int, Any]]:
    """(line number, value) for each non-blank line of a JSONL file, streamed."""
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed by the with below; open errors named first
    except FileNotFoundError:
        raise GtExtError(f"{path}: {what} not found") from None
    with f:
        for lineno, raw in enumerate(f, 1):  # binary lines end at b"\n" only
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise GtExtError(f"{path}:{lineno}: not UTF-8 text (byte {e.start})") from None
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as e:
                raise GtExtError(f"{path}:{lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
