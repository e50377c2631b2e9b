"""The registry's intent journal: what a register, prune, deploy or rollback was about to do, so that
the next registry command can finish or undo it after a kill -9.

Each write that spans two stores (files and metadata, or a settings file and the deployment
history) first writes one small JSON file `<models root>/.journal/<kind>-<key>.json` (atomic), then
does its steps in a fixed order, then deletes the file. A file still there means the command died
between the first step and the last; `Registry.recover` reads it and brings the stores back into
agreement (see the `recover_*` functions next to each command).
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from pathlib import Path
from typing import Any

from gt_ext.atomic import atomic_write_json

log = logging.getLogger(__name__)

JOURNAL_DIR = ".journal"


class Journal:
    """Intent records under `<root>/.journal/`."""

    def __init__(self, root: str | os.PathLike):
        self.dir = Path(root) / JOURNAL_DIR

    def begin(self, kind: str, data: dict[str, Any]) -> Path:
        """Record that a `kind` write is starting; returns the record to `end` when it is done."""
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / f"{kind}-{uuid.uuid4().hex[:12]}.json"
        atomic_write_json(path, {"kind": kind, **data})
        return path

    @staticmethod
    def end(path: Path) -> None:
        """The write is complete (or fully undone): forget it."""
        path.unlink(missing_ok=True)

    def pending(self, kind: str) -> list[tuple[Path, dict[str, Any]]]:
        """Records of `kind` left by commands that did not finish (oldest first)."""
        if not self.dir.is_dir():
            return []
        # Another process's command may finish (and delete its record) at any moment while this
        # one lists them: a record gone between the listing and the read simply finished.
        found = []
        for p in self.dir.glob(f"{kind}-*.json"):
            try:
                found.append((p.stat().st_mtime_ns, p))
            except FileNotFoundError:
                continue
        out = []
        for _mtime, p in sorted(found):
            try:
                data = json.loads(p.read_text(encoding="utf-8"))
            except FileNotFoundError:
                continue
            except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
                # atomic_write_json never leaves half a record; a file that does not parse was not
                # written by us: it says nothing, so it is dropped.
                log.warning("%s: unreadable journal record dropped (%s)", p, e)
                p.unlink(missing_ok=True)
                continue
            out.append((p, data))
        return out
