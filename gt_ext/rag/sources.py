"""What the index holds, found in a town: beads, settings, CLAUDE.md/AGENTS.md, directives,
formulas and recent corpus sessions. Each is a `Group` (one beads dir, one file, one session
folder) that the indexer syncs as a unit: load its chunks, diff by id against the index.

Layout (see docs of Gas Town): town beads `<town>/.beads/`, rig beads `<town>/<rig>/mayor/rig/.beads/`,
settings `<town>/settings/{config,agents}.json` and `<town>/<rig>/settings/...`, formulas in
`<beads dir>/formulas/*.formula.toml`, role directives `<town>/directives/<role>.md` and
`<town>/<rig>/directives/<role>.md`, sessions = the newest active examples of the town's corpus store
(`<town>/.corpus/corpus.db`) and/or an exported corpus folder (`sft/<role>/<task>/*.jsonl`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gt_ext.corpus.shards import iter_records, shard_files
from gt_ext.digest import sha256_file
from gt_ext.errors import GtExtError
from gt_ext.gastown import settings
from gt_ext.gastown.bd import Bd, beads_fingerprint
from gt_ext.gastown.town import STATE_DIRS, Town, is_town, require_town
from gt_ext.rag.chunk import (
    ANY,
    Chunk,
    bead_source,
    chunk_bead,
    chunk_formula,
    chunk_markdown,
    chunk_session,
    chunk_settings,
)
from gt_ext.roles import ROLES

log = logging.getLogger(__name__)

DOC_NAMES = ("CLAUDE.md", "AGENTS.md")
# Folders never walked for docs: VCS, our own index, gt/Dolt state, dependency trees.
SKIP_DIRS = {".git", ".rag", "node_modules", ".venv", "__pycache__"} | STATE_DIRS
DOC_MAX_DEPTH = 5
# How many of the newest corpus sessions the index keeps.
MAX_SESSIONS = 200
# Town-level beads are visible from every rig.
TOWN_RIG = ANY
_PATH_ROLES = {"mayor": "mayor", "deacon": "deacon", "boot": "boot", "dogs": "dog", "dog": "dog",
               "witness": "witness", "refinery": "refinery", "polecats": "polecat", "crew": "crew"}


@dataclass
class Group:
    """A unit of sync.

    `fingerprint()` says whether the group changed since the last sync (same value = unchanged);
    None means "always reload" (nothing cheap tells). `quick` is a cheaper signal checked first
    (a file's mtime and size): when it is the same, the group is not even read. `load()` gives all
    its chunks; `load_beads(ids)` (beads groups) only those of some beads, {source: chunks}, for a
    sync of just what bd hooks named."""

    key: str
    fingerprint: Callable[[], str | None]
    load: Callable[[], list[Chunk]]
    beads_dir: Path | None = None
    quick: str | None = None
    load_beads: Callable[[set[str]], dict[str, list[Chunk]]] | None = None


# ------------------------------------------------------------------------------------------ town

def resolve_town(town: Any = None) -> Path:
    """Accept a Town object, a path, or None (find it from the cwd/env); raise if there is none."""
    if town is not None and not isinstance(town, str | os.PathLike) and hasattr(town, "root"):
        return Path(town.root)  # a gt_ext.gastown Town
    if town is not None:
        p = Path(town).expanduser()
        if not is_town(p):
            raise GtExtError(f"{p}: not a Gas Town (no mayor/town.json)")
        return p.resolve()
    return require_town().root


def rig_names(town_root: Path) -> list[str]:
    """Names of the town's rigs (mayor/rigs.json)."""
    return [r.name for r in Town(Path(town_root)).rigs()]


def beads_dirs(town_root: Path) -> list[tuple[str, Path]]:
    """(rig, beads dir) pairs; the town's own (hq) beads get rig "*" (visible from every rig)."""
    return [(TOWN_RIG if name == "hq" else name, d) for name, d in Town(Path(town_root)).beads_dirs().items()]


def list_beads(beads_dir: Path) -> list[dict[str, Any]]:
    """All beads of a beads dir, every status (`bd list --all --limit 0 --json` through `Bd`)."""
    return [i.model_dump(exclude_none=True) for i in Bd(beads_dir).list(all=True, limit=0)]


def _beads_group(town_root: Path, rig: str, d: Path) -> Group:
    key = f"beads:{_rel(town_root, d)}"

    def load() -> list[Chunk]:
        chunks: list[Chunk] = []
        for bead in list_beads(d):
            chunks.extend(chunk_bead(bead, rig=rig, group=key))
        return chunks

    def load_beads(ids: set[str]) -> dict[str, list[Chunk]]:
        found = Bd(d).show_many(sorted(ids))
        return {bead_source(rig, i): [] if b is None else chunk_bead(b.model_dump(exclude_none=True), rig=rig, group=key)
                for i, b in found.items()}

    return Group(key, lambda: beads_fingerprint(d, town_root), load, beads_dir=d, load_beads=load_beads)


# ------------------------------------------------------------------------------------------ files

def _rel(root: Path, p: Path) -> str:
    try:
        return p.relative_to(root).as_posix()
    except ValueError:
        return p.as_posix()


def _file_fp(p: Path) -> str:
    st = p.stat()
    return f"{st.st_mtime_ns}:{st.st_size}"


def _content_fp(p: Path) -> Callable[[], str | None]:
    """A file's fingerprint is its content hash: a touch or a save of the same text is no change."""
    def fp() -> str | None:
        try:
            return sha256_file(p)
        except OSError:
            return None
    return fp


def _path_context(town_root: Path, p: Path, rigs: set[str]) -> tuple[str, str]:
    """(rig, role) a file belongs to, from where it sits in the town."""
    parts = p.relative_to(town_root).parts[:-1]
    rig = parts[0] if parts and parts[0] in rigs else ANY
    role = ANY
    for i, part in enumerate(parts):
        if part == "mayor" and i + 1 < len(parts) and parts[i + 1] == "rig":
            continue  # <rig>/mayor/rig is the rig's canonical clone, not the mayor's room
        if part in _PATH_ROLES:
            role = _PATH_ROLES[part]
    return rig, role


def _file_group(town_root: Path, p: Path, kind: str, rigs: set[str]) -> Group:
    rel = _rel(town_root, p)
    key = f"file:{rel}"
    rig, role = _path_context(town_root, p, rigs)

    def load() -> list[Chunk]:
        try:
            text = p.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return []
        mtime = p.stat().st_mtime
        if kind == "settings":
            try:
                obj = settings.load(p).data  # gt's settings are read through the town door
            except GtExtError as e:
                log.warning("%s, skipped", e)
                return []
            return chunk_settings(obj, source=key, group=key, rig=rig, updated=mtime)
        if kind == "formula":
            try:
                return chunk_formula(text, source=key, group=key, rig=rig, updated=mtime)
            except ValueError as e:
                log.warning("%s: not valid TOML (%s), skipped", rel, str(e).splitlines()[0])
                return []
        if kind == "directive" and p.stem in ROLES:
            return chunk_markdown(text, source=key, group=key, kind=kind, rig=rig, role=p.stem, updated=mtime)
        return chunk_markdown(text, source=key, group=key, kind=kind, rig=rig, role=role, updated=mtime)

    return Group(key, _content_fp(p), load, quick=_file_fp(p))


def _walk_docs(town_root: Path) -> Iterator[Path]:
    base_depth = len(town_root.parts)
    for root, dirs, files in os.walk(town_root):
        depth = len(Path(root).parts) - base_depth
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and (depth < DOC_MAX_DEPTH))
        for f in sorted(files):
            if f in DOC_NAMES:
                yield Path(root) / f


def file_groups(town_root: Path) -> list[Group]:
    """Settings, docs, directives and formulas of the town and its rigs."""
    rigs = set(rig_names(town_root))
    groups: list[Group] = []
    groups += [_file_group(town_root, p, "settings", rigs) for p in settings.settings_files(Town(Path(town_root)))]
    homes = [town_root] + [town_root / r for r in sorted(rigs)]
    for home in homes:
        ddir = home / "directives"
        if ddir.is_dir():
            groups += [_file_group(town_root, p, "directive", rigs) for p in sorted(ddir.glob("*.md"))]
    for _rig, bdir in beads_dirs(town_root):
        fdir = bdir / "formulas"
        if fdir.is_dir():
            groups += [_file_group(town_root, p, "formula", rigs) for p in sorted(fdir.glob("*.formula.toml"))]
    groups += [_file_group(town_root, p, "doc", rigs) for p in _walk_docs(town_root)]
    return groups


# ------------------------------------------------------------------------------------------ sessions

def sessions_dir() -> Path | None:
    """The exported corpus folder whose sessions are indexed: $GT_EXT_RAG_SESSIONS, if set."""
    v = os.environ.get("GT_EXT_RAG_SESSIONS")
    return Path(v) if v else None


def session_group(corpus_dir: Path, limit: int = MAX_SESSIONS) -> Group | None:
    """The newest `limit` SFT records of an exported corpus (already scrubbed by the corpus)."""
    files = shard_files(corpus_dir, kinds=("sft",))
    if not files:
        return None
    fp = ";".join(f"{f.name}:{_file_fp(f)}" for f in files)
    key = f"sessions:{corpus_dir.name}"

    def load() -> list[Chunk]:
        recs = list(iter_records(files))  # a bad line is an error naming file:line, as in training
        recs.sort(key=lambda r: str((r.get("provenance") or {}).get("time", "")), reverse=True)
        out: list[Chunk] = []
        for r in recs[:limit]:
            out += chunk_session(r, source=f"session:{r.get('id', '?')}", group=key)
        return out

    return Group(key, lambda: fp, load)


def store_group(town_root: Path, limit: int = MAX_SESSIONS) -> Group | None:
    """The newest `limit` active examples of the town's corpus store (`<town>/.corpus/corpus.db`)."""
    db = town_root / ".corpus" / "corpus.db"
    if not db.is_file():
        return None
    fp = ";".join(_file_fp(f) for f in (db, db.with_name("corpus.db-wal")) if f.is_file())
    key = "sessions:corpus-store"

    def load() -> list[Chunk]:
        from gt_ext.corpus.store import Store

        with Store.open(db.parent) as store:
            examples = store.query(status="active")
        examples.sort(key=lambda e: (e.time or "", e.created), reverse=True)
        out: list[Chunk] = []
        for e in examples[:limit]:
            rec = {"id": e.id, "role": e.role, "task": e.task, "messages": e.messages or [],
                   "provenance": e.provenance()}
            out += chunk_session(rec, source=f"session:{e.id}", group=key)
        return out

    return Group(key, lambda: fp, load)


def scan(town_root: Path, corpus_dir: Path | None = None) -> list[Group]:
    """Every group of the town, in a stable order: beads dirs, files, then sessions."""
    groups = [_beads_group(town_root, rig, d) for rig, d in beads_dirs(town_root)]
    groups += file_groups(town_root)
    sg = store_group(town_root)
    if sg is not None:
        groups.append(sg)
    sd = corpus_dir or sessions_dir()
    if sd is not None and sd.is_dir():
        g = session_group(sd)
        if g is not None:
            groups.append(g)
    return groups
