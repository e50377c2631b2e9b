"""The convention fingerprint of a training run: what the town's conventions were when a role
model was trained, kept with the run (and so with the registered model) to tell later what changed.

    fp = take_fingerprint(town_root, role, store=store)   # at training time
    write_fingerprint(run_dir, fp)                        # RUN_DIR/conventions.json
    diff = compare(fp, read_conventions(town_root, role)) # later: which items changed, how

`conventions.json`:
    {"version": 1, "role", "town", "time": epoch seconds, "digest": sha256 over the items,
     "items": {key: {"kind", "sha256", "lines": [8-hex hash per line]} | {"kind", "error"}},
     "corpus": {"examples": {role: active examples in the town's corpus}, "newest": epoch seconds}}

Per item a content hash and one short hash per line: enough to say "+3 -1 lines" and to show the
added lines from the current file, without keeping old copies of the town's files (or their secrets).
run.json carries the summary `{"digest", "file": "conventions.json", "time", "items", "corpus_examples"}`
under `convention_fingerprint`; the registry stores the digest.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gt_ext.atomic import atomic_write_json
from gt_ext.corpus.format import sha256_text  # the hash the corpus gives an artifact version
from gt_ext.errors import GtExtError

log = logging.getLogger(__name__)

FILE = "conventions.json"
VERSION = 1


def line_hashes(text: str) -> list[str]:
    """One 8-hex hash per line (trailing spaces ignored)."""
    return [hashlib.blake2b(ln.rstrip().encode(), digest_size=4).hexdigest() for ln in text.splitlines()]


def item_record(item: Any) -> dict[str, Any]:
    """The fingerprint entry of one `gastown.conventions.ConventionItem`."""
    if item.error is not None or item.text is None:
        return {"kind": item.kind, "error": item.error or "unreadable"}
    return {"kind": item.kind, "sha256": sha256_text(item.text), "lines": line_hashes(item.text)}


def digest(items: dict[str, dict[str, Any]]) -> str:
    """One hash over every item's key and content hash (errors count as their message)."""
    body = "\n".join(f"{k}\t{v.get('sha256') or 'error:' + str(v.get('error'))}" for k, v in sorted(items.items()))
    return hashlib.sha256(body.encode()).hexdigest()


def corpus_counts(store: Any) -> dict[str, Any]:
    """Active examples per role in a corpus store, and the newest one's time."""
    rows = store.db.execute("SELECT role, COUNT(*), MAX(created) FROM examples WHERE status = 'active' "
                            "GROUP BY role").fetchall()
    return {"examples": {r[0] or "-": r[1] for r in rows}, "newest": max((r[2] or 0.0 for r in rows), default=0.0)}


def take_fingerprint(town_root: str | os.PathLike, role: str, store: Any = None, prime: bool = True,
                     items: dict[str, Any] | None = None) -> dict[str, Any]:
    """The fingerprint of `role`'s conventions in a town now (reads the town; runs `gt prime`)."""
    from gt_ext.gastown.conventions import read_conventions

    current = items if items is not None else read_conventions(town_root, role, prime=prime)
    recs = {k: item_record(v) for k, v in current.items()}
    return {"version": VERSION, "role": role, "town": str(Path(town_root).resolve()), "time": time.time(),
            "digest": digest(recs), "items": recs,
            "corpus": corpus_counts(store) if store is not None else {"examples": {}, "newest": 0.0}}


def summary(fp: dict[str, Any]) -> dict[str, Any]:
    """What run.json keeps of a fingerprint (the rest is in `conventions.json`)."""
    return {"digest": fp["digest"], "file": FILE, "time": fp["time"], "items": len(fp["items"]),
            "corpus_examples": (fp.get("corpus") or {}).get("examples", {}).get(fp["role"], 0)}


def write_fingerprint(folder: str | os.PathLike, fp: dict[str, Any]) -> Path:
    """Write `<folder>/conventions.json` (atomic)."""
    path = Path(folder) / FILE
    atomic_write_json(path, fp)
    return path


def read_fingerprint(folder: str | os.PathLike) -> dict[str, Any] | None:
    """`<folder>/conventions.json`, or None when the model was trained without one."""
    p = Path(folder) / FILE
    if not p.is_file():
        return None
    try:
        fp = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise GtExtError(f"{p}: unreadable fingerprint ({type(e).__name__})") from None
    if not isinstance(fp, dict) or not isinstance(fp.get("items"), dict):
        raise GtExtError(f"{p}: not a convention fingerprint (no 'items')")
    return fp


@dataclass
class ItemChange:
    """One item that differs from the fingerprint."""

    key: str
    kind: str
    change: str  # changed | added | removed | unreadable
    summary: str = ""
    sha256: str | None = None  # the current content hash (None: removed or unreadable)
    path: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass
class Diff:
    """Every difference between a fingerprint and the town now."""

    changes: list[ItemChange] = field(default_factory=list)
    same: int = 0

    @property
    def changed(self) -> list[ItemChange]:
        return [c for c in self.changes if c.change != "unreadable"]

    @property
    def unreadable(self) -> list[ItemChange]:
        return [c for c in self.changes if c.change == "unreadable"]


def _clip(line: str, n: int = 80) -> str:
    from gt_ext.rag.redact import clean

    line = clean(line.strip())  # a settings line may hold a token: never show one
    return line if len(line) <= n else line[: n - 1] + "…"


def diff_summary(old_lines: list[str], text: str, show: int = 2) -> str:
    """"+A -R lines" between an item's recorded line hashes and its current text, with the first
    added lines quoted (from the current text; old text is never kept)."""
    lines = text.splitlines()
    new = line_hashes(text)
    added: list[int] = []
    removed = 0
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=old_lines, b=new, autojunk=False).get_opcodes():
        if op in ("replace", "delete"):
            removed += i2 - i1
        if op in ("replace", "insert"):
            added.extend(range(j1, j2))
    quoted = [f"«{_clip(lines[i])}»" for i in added if lines[i].strip()][:show]
    return f"+{len(added)} -{removed} lines" + (": " + ", ".join(quoted) if quoted else "")


def compare(fp: dict[str, Any], current: dict[str, Any]) -> Diff:
    """What changed between a fingerprint and the current `ConventionItem`s. An item unreadable
    now is reported as such (never a crash, never counted as a change)."""
    out = Diff()
    old = fp.get("items") or {}
    for key, item in current.items():
        rec = old.get(key)
        if item.error is not None or item.text is None:
            out.changes.append(ItemChange(key, item.kind, "unreadable", item.error or "unreadable", path=item.path))
            continue
        h = sha256_text(item.text)
        if rec is None:
            out.changes.append(ItemChange(key, item.kind, "added", f"new, {len(item.text.splitlines())} lines",
                                          h, item.path))
        elif rec.get("sha256") == h:
            out.same += 1
        elif rec.get("error"):
            out.changes.append(ItemChange(key, item.kind, "changed", "readable again (was: " + str(rec["error"]) + ")",
                                          h, item.path))
        else:
            out.changes.append(ItemChange(key, item.kind, "changed", diff_summary(rec.get("lines") or [], item.text),
                                          h, item.path))
    for key, rec in old.items():
        if key not in current:
            out.changes.append(ItemChange(key, str(rec.get("kind", "?")), "removed", "gone from the town"))
    return out


__all__ = ["FILE", "Diff", "ItemChange", "compare", "corpus_counts", "diff_summary", "line_hashes",
           "read_fingerprint", "summary", "take_fingerprint", "write_fingerprint"]
