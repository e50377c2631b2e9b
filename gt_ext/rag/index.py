"""The town's RAG index: one Chroma collection under `<town>/.rag/`, kept in sync by ONE indexer.

Chroma is not process-safe, so every write happens inside `reindex()`, which holds an exclusive
`flock` on `<town>/.rag/indexer.lock`; a second indexer is refused (or waits, if asked). bd hooks
never write here: they `queue.enqueue` events, and the indexer drains them.

A run: scan the sources into groups (a beads dir, a file, the session folder); for each group that
changed (fingerprint differs, a queued event names it, or `full`), load its chunks and diff their
ids against what the index holds for that group: add the new ids, delete the missing ones. A file's
fingerprint is its content hash, read only when its mtime or size moved; a beads dir's is Dolt's
hash of its database; queued bd hook events name the beads to fetch alone. Ids are
content hashes, so an unchanged chunk is never re-embedded and nothing is ever duplicated. Groups
that no longer exist are deleted. A run killed midway leaves the state file un-updated for the
group it was in, so the next run re-diffs that group and converges.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gt_ext.atomic import atomic_write_json
from gt_ext.errors import GtExtError
from gt_ext.rag import queue
from gt_ext.rag.chunk import Chunk

log = logging.getLogger(__name__)

COLLECTION = "town"
BATCH = 64  # chunks embedded and written per Chroma call


class IndexerBusy(GtExtError):
    """Another process holds the town's indexer lock."""


def rag_dir(town_root: Path) -> Path:
    """`<town>/.rag/`: the Chroma store, the state file, the lock and the reindex queue."""
    return Path(town_root) / queue.RAG_DIRNAME


_stamps: dict[str, int] = {}
_readers: dict[str, tuple[int, Any]] = {}  # store path -> (stamp, collection) for open_collection(create=False)


def _client(path: Path) -> Any:
    """A PersistentClient for `path`, reopened when another run has written the index since.

    Chroma keeps one in-memory system per path for the life of the process, which would never see
    the indexer process's later writes; state.json and Chroma's sqlite files change with every
    write, so their mtimes tell a long-lived reader (the serving agent) when to drop its cached system.
    """
    import chromadb
    from chromadb.api.shared_system_client import SharedSystemClient
    from chromadb.config import Settings

    key = str(path)
    if key in _stamps and _stamps[key] != _stamp(path):
        # Drop (not stop) the cached system: collection objects callers still hold keep working on
        # the old one, and the next open gets a fresh view of what the indexer wrote.
        SharedSystemClient._identifier_to_system.pop(key, None)
        SharedSystemClient._identifier_to_refcount.pop(key, None)
    client = chromadb.PersistentClient(path=key, settings=Settings(anonymized_telemetry=False))
    # Opening a system writes to chroma.sqlite3 itself: stamp after the open, or every call would
    # see its own open as a foreign write and reopen (and reload the HNSW index) again.
    _stamps[key] = _stamp(path)
    return client


def _stamp(path: Path) -> int:
    """Newest mtime (ns) of the files an indexer run writes: state.json and Chroma's sqlite files."""
    stamp = 0
    for f in (path.parent / "state.json", path / "chroma.sqlite3", path / "chroma.sqlite3-wal"):
        try:
            stamp = max(stamp, f.stat().st_mtime_ns)
        except FileNotFoundError:
            pass
    return stamp


def open_collection(town_root: Path, create: bool = True) -> Any | None:
    """The town's collection (with the MiniLM embedding function), or None if there is no index yet."""
    from gt_ext.rag.embed import MiniLMEmbedding

    store = rag_dir(town_root) / "chroma"
    if not create and not store.is_dir():
        return None
    if not create:  # a reader (every agent turn): reuse its collection until the indexer writes
        cached = _readers.get(str(store))
        if cached is not None and cached[0] == _stamp(store):
            return cached[1]
    client = _client(store)
    if create:
        return client.get_or_create_collection(
            COLLECTION, embedding_function=MiniLMEmbedding(), configuration={"hnsw": {"space": "cosine"}}
        )
    try:
        col = client.get_collection(COLLECTION, embedding_function=MiniLMEmbedding())
    except Exception:  # chromadb raises NotFoundError/ValueError depending on version
        return None
    _readers[str(store)] = (_stamps[str(store)], col)
    return col


@contextmanager
def indexer_lock(town_root: Path, wait: bool = False):
    """Hold the one-writer lock for the town's index; raise if another indexer holds it."""
    d = rag_dir(town_root)
    d.mkdir(parents=True, exist_ok=True)
    if not (d / ".gitignore").exists():  # a town is often a git repo: the index is never committed
        (d / ".gitignore").write_text("*\n")
    path = d / "indexer.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise IndexerBusy(f"RAG indexer already running for {town_root} (pid {holder}); try again when it ends") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the flock


def lock_holder(town_root: Path) -> int | None:
    """Pid of a running indexer, or None (probes the lock without taking it for long)."""
    path = rag_dir(town_root) / "indexer.lock"
    if not path.is_file():
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            txt = os.pread(fd, 32, 0).decode(errors="replace").strip()
            return int(txt) if txt.isdigit() else -1
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _state_path(town_root: Path) -> Path:
    return rag_dir(town_root) / "state.json"


def load_state(town_root: Path) -> dict[str, Any]:
    """The indexer's bookkeeping: `{"groups": {key: {"fingerprint", "quick", "chunks", "synced",
    "full_synced"}}, "last_run": {...}}`."""
    p = _state_path(town_root)
    if not p.is_file():
        return {"groups": {}, "last_run": None}
    try:
        st = json.loads(p.read_text())
        st.setdefault("groups", {})
        st.setdefault("last_run", None)
        return st
    except ValueError:
        log.warning("%s is not valid JSON; treating every source as changed", p)
        return {"groups": {}, "last_run": None}


@dataclass
class ReindexReport:
    """What one indexer run did."""

    groups_scanned: int = 0
    groups_synced: int = 0
    added: int = 0
    deleted: int = 0
    unchanged: int = 0
    groups_removed: int = 0
    events: int = 0
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0
    total: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _dirty_groups(town_root: Path, events: list[dict[str, Any]]) -> dict[str, set[str] | None]:
    """Group keys named by queued events -> the bead ids they name (a bead event dirties its beads
    dir), or None when the whole group must be re-read (a file event, a bead event without an id)."""
    out: dict[str, set[str] | None] = {}
    for ev in events:
        for field_ in ("beads_dir", "path"):
            v = ev.get(field_)
            if v:
                p = Path(v)
                try:
                    rel = p.resolve().relative_to(Path(town_root).resolve()).as_posix()
                except ValueError:
                    rel = p.as_posix()
                key = ("beads:" if field_ == "beads_dir" else "file:") + rel
                bead = ev.get("id") if field_ == "beads_dir" else None
                if bead and (key not in out or out[key] is not None):
                    out.setdefault(key, set()).add(str(bead))  # type: ignore[union-attr]
                else:
                    out[key] = None
    return out


def sync_chunks(col: Any, group: str, chunks: list[Chunk], progress: Any = None,
                source: str | None = None) -> tuple[int, int, int]:
    """Make the collection hold exactly `chunks` for `group` (or for one `source` of it):
    returns (added, deleted, unchanged)."""
    where = {"group": group} if source is None else {"$and": [{"group": group}, {"source": source}]}
    existing = set(col.get(where=where, include=[])["ids"])
    want = {c.id: c for c in chunks}
    # Shortest first: each embedding batch holds texts of similar length, so little is padding.
    new = sorted((c for cid, c in want.items() if cid not in existing), key=lambda c: (len(c.text), c.id))
    gone = sorted(existing - want.keys())
    for i in range(0, len(new), BATCH):
        b = new[i : i + BATCH]
        col.upsert(ids=[c.id for c in b], documents=[c.text for c in b], metadatas=[c.meta for c in b])
        if progress is not None:
            progress.update(len(b))
        _maybe_crash()
    # Delete only after the new chunks are in: a reader never sees the group empty mid-update.
    for i in range(0, len(gone), 1000):
        col.delete(ids=gone[i : i + 1000])
    return len(new), len(gone), len(want) - len(new)


_batches_written = 0


def _maybe_crash() -> None:
    """Fault injection for the crash-recovery test: SIGKILL this process after N written batches
    when $GT_EXT_RAG_CRASH_AFTER_BATCHES=N (a real kill -9 mid-run, at a reproducible point)."""
    global _batches_written
    limit = os.environ.get("GT_EXT_RAG_CRASH_AFTER_BATCHES")
    if not limit:
        return
    _batches_written += 1
    if _batches_written >= int(limit):
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def _all_groups(col: Any) -> Counter:
    """group key -> chunk count, over the whole collection."""
    counts: Counter = Counter()
    total = col.count()
    for off in range(0, total, 5000):
        for m in col.get(include=["metadatas"], limit=5000, offset=off)["metadatas"]:
            counts[(m or {}).get("group", "?")] += 1
    return counts


# A sync of only the beads hooks named trusts that nothing else changed the beads database; a full
# re-list at least this often bounds how long a change made without hooks (BD_NO_HOOKS, a `bd dolt
# pull` from another clone) can stay unseen.
FULL_RELIST_S = 600.0


def reindex(town_root: Path, full: bool = False, progress: bool = False, wait: bool = False,
            corpus_dir: Path | None = None) -> ReindexReport:
    """Bring `<town>/.rag/` in line with the town (see module docstring); the one writer entry point.

    Work is proportional to what changed: a file whose mtime and size are the same is not read; one
    whose content hash is the same is not re-chunked; a beads database whose fingerprint is the
    same is not listed; beads named by queued bd hook events are fetched alone (`bd show`)."""
    from tqdm import tqdm

    from gt_ext.rag import sources

    t0 = time.time()
    rep = ReindexReport()
    town_root = Path(town_root)
    with indexer_lock(town_root, wait=wait):
        pending = queue.pending(town_root, [d for _rig, d in sources.beads_dirs(town_root)])
        events = queue.read_queued(pending)
        rep.events = len(events)
        dirty = _dirty_groups(town_root, events)
        state = load_state(town_root)
        col = open_collection(town_root)
        groups = sources.scan(town_root, corpus_dir)
        rep.groups_scanned = len(groups)
        bar = tqdm(total=len(groups), desc="rag: sources", unit="src", disable=not progress, leave=False)
        emb = tqdm(desc="rag: embedding", unit="chunk", disable=not progress, leave=False)
        for g in groups:
            bar.update(1)
            prev = state["groups"].get(g.key, {})
            named = g.key in dirty
            if not full and not named and g.quick is not None and prev.get("quick") == g.quick:
                rep.unchanged += int(prev.get("chunks", 0))
                continue
            fp = g.fingerprint()
            if not full and not named and fp is not None and prev.get("fingerprint") == fp:
                rep.unchanged += int(prev.get("chunks", 0))
                if g.quick is not None and prev.get("quick") != g.quick:  # touched, same content
                    state["groups"][g.key] = {**prev, "quick": g.quick}
                    atomic_write_json(_state_path(town_root), state)
                continue
            ids = dirty.get(g.key)
            partial = (not full and ids and g.load_beads is not None and prev.get("fingerprint") is not None
                       and time.time() - float(prev.get("full_synced", 0)) < FULL_RELIST_S)
            try:
                if partial:
                    added = deleted = same = 0
                    for source, chunks in g.load_beads(ids).items():
                        a, d, u = sync_chunks(col, g.key, chunks, progress=emb, source=source)
                        added, deleted, same = added + a, deleted + d, same + u
                    count = int(prev.get("chunks", 0)) + added - deleted
                else:
                    chunks = g.load()
                    added, deleted, same = sync_chunks(col, g.key, chunks, progress=emb)
                    count = len(chunks)
            except GtExtError as e:
                # Keep what the index has for this group; say which source failed, not its content.
                rep.errors.append(str(e))
                log.warning("rag: %s", e)
                continue
            rep.added += added
            rep.deleted += deleted
            rep.unchanged += same
            rep.groups_synced += 1
            now = time.time()
            state["groups"][g.key] = {"fingerprint": fp, "quick": g.quick, "chunks": count, "synced": now,
                                      "full_synced": prev.get("full_synced", 0) if partial else now}
            atomic_write_json(_state_path(town_root), state)
        bar.close()
        emb.close()
        # Sources that disappeared: whatever the index holds for a group the scan no longer has.
        live = {g.key for g in groups}
        for key in sorted(set(_all_groups(col)) | set(state["groups"])):
            if key not in live:
                ids = col.get(where={"group": key}, include=[])["ids"]
                if ids:
                    col.delete(ids=ids)
                rep.deleted += len(ids)
                rep.groups_removed += 1
                state["groups"].pop(key, None)
        rep.total = col.count()
        rep.seconds = round(time.time() - t0, 3)
        state["last_run"] = {"time": time.time(), "full": full, **rep.to_dict()}
        atomic_write_json(_state_path(town_root), state)
        queue.ack(pending)  # only now: a crash before this re-processes the events (idempotent)
    return rep


def trigger(town_root: Path, corpus_dir: Path | None = None) -> ReindexReport | None:
    """What a bd hook starts in the background: reindex unless another indexer is at it.

    No event is left behind: hooks queue before they trigger, and the holder looks at the queue
    again after its run, so an event queued while it worked is either in its run or in the next
    one. Returns the last run's report, or None when another indexer was busy."""
    from gt_ext.rag.sources import beads_dirs

    last: ReindexReport | None = None
    while True:
        try:
            last = reindex(town_root, corpus_dir=corpus_dir)
        except IndexerBusy:
            return last
        if not queue.pending(town_root, [d for _rig, d in beads_dirs(town_root)]):
            return last


def status(town_root: Path) -> dict[str, Any]:
    """Counts by kind and group, last run, pending spool events and whether an indexer runs now."""
    town_root = Path(town_root)
    state = load_state(town_root)
    out: dict[str, Any] = {
        "town": str(town_root),
        "index": str(rag_dir(town_root) / "chroma"),
        "exists": (rag_dir(town_root) / "chroma").is_dir(),
        "chunks": 0,
        "kinds": {},
        "groups": len(state["groups"]),
        "pending_events": len(queue.pending(town_root)),
        "indexer_pid": lock_holder(town_root),
        "last_run": state["last_run"],
    }
    col = open_collection(town_root, create=False) if out["exists"] else None
    if col is not None:
        out["chunks"] = col.count()
        kinds: Counter = Counter()
        for off in range(0, out["chunks"], 5000):
            for m in col.get(include=["metadatas"], limit=5000, offset=off)["metadatas"]:
                kinds[(m or {}).get("kind", "?")] += 1
        out["kinds"] = dict(sorted(kinds.items()))
    return out
