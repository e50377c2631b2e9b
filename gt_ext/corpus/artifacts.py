"""Town artifacts as corpus material: CLAUDE.md, AGENTS.md, formulas, spec and plan files.

Recency wins: a newer version of an artifact supersedes the older one. A change that puts back a
version replaced within `REVERT_WINDOW_S` (a CLAUDE.md edit undoing the last one) is not applied:
that version is flagged for review instead, and the current one stays.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from gt_ext.corpus.format import sha256_text
from gt_ext.corpus.ingest import Ingestor, Source, Tags
from gt_ext.corpus.store import Store
from gt_ext.corpus.tags import role_from_actor

log = logging.getLogger(__name__)

REVERT_WINDOW_S = 7 * 24 * 3600
MAX_BYTES = 64_000
_NAMES = {"CLAUDE.md", "AGENTS.md"}
_SKIP_DIRS = {".git", "node_modules", ".corpus", ".dolt-data", "embeddeddolt", ".venv", "__pycache__", ".runtime"}


def find_artifacts(town_root: Path, max_depth: int = 5) -> list[Path]:
    """Artifact files of a town, sorted: CLAUDE.md/AGENTS.md, `*.formula.toml`, spec*/plan* markdown."""
    town_root = Path(town_root)
    out = []
    base_depth = len(town_root.parts)
    for dirpath, dirnames, filenames in os.walk(town_root):
        d = Path(dirpath)
        dirnames[:] = [x for x in dirnames if x not in _SKIP_DIRS and not (x.startswith(".") and x != ".beads" and x != "formulas")]
        if len(d.parts) - base_depth >= max_depth:
            dirnames[:] = []
        for f in filenames:
            low = f.lower()
            if f in _NAMES or f.endswith(".formula.toml") or (low.endswith(".md") and (low.startswith("spec") or low.startswith("plan"))):
                out.append(d / f)
    return sorted(out)


def _tags_for(town_root: Path, path: Path) -> tuple[str | None, str | None, str]:
    rel = path.relative_to(town_root)
    parts = rel.parts[:-1]
    role = None
    for p in reversed(parts):
        if (role := role_from_actor(p)) is not None:
            break
    rig = parts[0] if parts and parts[0] not in ("mayor", "deacon", ".beads", "settings", "docs") else None
    return role, rig, str(rel)


def ingest_artifact(ing: Ingestor, town_root: Path, path: Path) -> str:
    """Store one artifact version; returns new | unchanged | superseded-old | revert-flagged | skipped."""
    st: Store = ing.store
    try:
        raw = path.read_bytes()
    except OSError:
        return "skipped"
    if len(raw) > MAX_BYTES:
        log.info("artifact %s over %d bytes: skipped", path, MAX_BYTES)
        return "skipped"
    text = raw.decode("utf-8", errors="replace")
    role, rig, rel = _tags_for(town_root, path)
    key = f"{rig or 'town'}:{rel}"
    h = sha256_text(text)
    versions = st.db.execute("SELECT id, source_hash, status, created FROM examples WHERE artifact_key = ? ORDER BY created DESC",
                             (key,)).fetchall()
    current = next((v for v in versions if v["status"] == "active"), None)
    if current is not None and current["source_hash"] == h:
        return "unchanged"
    earlier = next((v for v in versions if v["source_hash"] == h), None)
    now = time.time()
    if earlier is not None and current is not None:
        if now - current["created"] < REVERT_WINDOW_S:
            # Put back what a recent change replaced: flag it, do not apply it silently.
            st.db.execute("UPDATE examples SET status = 'review', reason = ? WHERE id = ?",
                          (f"reverts a recent change of {key}: review before applying", earlier["id"]))
            return "revert-flagged"
        st.db.execute("UPDATE examples SET status = 'superseded', reason = ? WHERE id = ?", (f"superseded: {key}", current["id"]))
        st.db.execute("UPDATE examples SET status = 'active', reason = NULL, created = ? WHERE id = ?", (now, earlier["id"]))
        return "superseded-old"
    what = "the formula" if rel.endswith(".formula.toml") else rel.rsplit("/", 1)[-1]
    msgs = [{"role": "user", "content": f"What does {what} at {rel} say for {'the ' + role if role else 'agents'} in {rig or 'the town'}?"},
            {"role": "assistant", "content": text}]
    src = Source("artifact", f"artifact:{key}:{h}", h, group=f"artifact:{key}")
    res = ing.ingest(msgs, Tags(role=role, task="general", rig=rig, artifact_key=key,
                                time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(path.stat().st_mtime))), src)
    if current is not None and res.inserted:
        st.db.execute("UPDATE examples SET status = 'superseded', reason = ? WHERE id = ?", (f"superseded: {key}", current["id"]))
    return "new"


def collect_artifacts(store: Store, town_root: Path) -> dict[str, int]:
    """Scan a town's artifacts into the store; returns counts per outcome."""
    from gt_ext.corpus.collect import process_lock

    counts: dict[str, int] = {}
    with process_lock(store):
        ing = Ingestor(store)
        for p in find_artifacts(town_root):
            with store.tx():
                r = ingest_artifact(ing, Path(town_root), p)
            counts[r] = counts.get(r, 0) + 1
    return counts

