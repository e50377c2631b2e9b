"""Town artifacts as corpus material: CLAUDE.md, AGENTS.md, formulas, spec and plan files, and
the real `gt prime` output of every role (source `gt-prime`).

Each artifact has a key (`<rig>:<relpath>` for files, `<rig>:gt-prime:<role>` for prime output,
`town` for town-level ones) and versions. Recency wins: a newer version supersedes the older one.
A change that puts back a version replaced within `REVERT_WINDOW_S` (a CLAUDE.md edit undoing the
last one) is not applied: that version is flagged for review instead, and the current one stays.
A version no part of which could be stored as active (quarantined for a secret, say) leaves the
current one in place. Text longer than one example allows is stored as several parts of the same
version, cut at markdown headings.

Prime output is taken with `gt prime --dry-run` (no identity lock, handoff marker, `bd prime` or
mail injection: nothing changes for the live agent) in bd's read-only mode (no patrol wisp is
spawned: the town's beads are left exactly as they were), without gt's per-run session banner. It
reflects the role's hook at that moment, so it changes when the agent's hooked work does.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path

from gt_ext.corpus.format import sha256_text
from gt_ext.corpus.gates import MAX_TOTAL_CHARS
from gt_ext.corpus.ingest import Ingestor, Source, Tags
from gt_ext.corpus.store import Store
from gt_ext.corpus.tags import role_from_actor
from gt_ext.gastown.town import STATE_DIRS

log = logging.getLogger(__name__)

REVERT_WINDOW_S = 7 * 24 * 3600
MAX_BYTES = 64_000
PRIME_SOURCE = "gt-prime"
# One example's share of a version: room is left for the system and user turns.
PART_CHARS = MAX_TOTAL_CHARS - 1_000
_NAMES = {"CLAUDE.md", "AGENTS.md"}
_SKIP_DIRS = {".git", "node_modules", ".corpus", ".venv", "__pycache__"} | STATE_DIRS


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


def _split_parts(text: str, limit: int) -> list[str]:
    """`text` in pieces of at most `limit` characters, cut before markdown headings outside code
    fences where possible, else at line ends (one piece when it fits)."""
    if len(text) <= limit:
        return [text]
    sections: list[str] = []
    cur: list[str] = []
    fenced = False
    for line in text.splitlines(keepends=True):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        if not fenced and line.startswith("#") and cur:
            sections.append("".join(cur))
            cur = []
        cur.append(line)
    if cur:
        sections.append("".join(cur))
    parts: list[str] = []
    buf = ""
    for sec in sections:
        while len(sec) > limit:  # one section longer than a part: cut at the last line end that fits
            cut = sec.rfind("\n", 0, limit) + 1 or limit
            if buf:
                parts.append(buf)
                buf = ""
            parts.append(sec[:cut])
            sec = sec[cut:]
        if len(buf) + len(sec) > limit:
            parts.append(buf)
            buf = ""
        buf += sec
    if buf:
        parts.append(buf)
    return [p for p in parts if p.strip()]


def _heading(text: str) -> str | None:
    for line in text.splitlines():
        if line.startswith("#"):
            return line.lstrip("#").strip() or None
    return None


def _store_version(ing: Ingestor, key: str, text: str, kind: str, question: str, role: str | None,
                   rig: str | None, when: float) -> str:
    """Store `text` as the newest version of artifact `key` under the recency rules (module doc).

    A version too long for one example is stored as several parts (questions numbered), all
    sharing the version's hash. Returns new | unchanged | superseded-old | revert-flagged."""
    st: Store = ing.store
    h = sha256_text(text)
    rows = st.db.execute("SELECT id, source_hash, status, created FROM examples WHERE artifact_key = ? "
                         "ORDER BY created DESC", (key,)).fetchall()
    active = [r for r in rows if r["status"] == "active"]
    current_hash = active[0]["source_hash"] if active else None
    if current_hash == h:
        return "unchanged"
    # Earlier versions that may come back; a quarantined or rejected one never does.
    earlier = [r for r in rows if r["source_hash"] == h and r["status"] in ("superseded", "review")]
    now = time.time()
    if (earlier and not active) or (not earlier and any(r["source_hash"] == h for r in rows)):
        return "unchanged"  # seen before and held back (quarantine, review): its status stands
    cur_ids = [r["id"] for r in active]
    if earlier:
        if now - max(r["created"] for r in active) < REVERT_WINDOW_S:
            # Put back what a recent change replaced: flag it, do not apply it silently.
            st.db.executemany("UPDATE examples SET status = 'review', reason = ? WHERE id = ?",
                              [(f"reverts a recent change of {key}: review before applying", r["id"]) for r in earlier])
            return "revert-flagged"
        st.db.executemany("UPDATE examples SET status = 'superseded', reason = ? WHERE id = ?",
                          [(f"superseded: {key}", i) for i in cur_ids])
        st.db.executemany("UPDATE examples SET status = 'active', reason = NULL, created = ? WHERE id = ?",
                          [(now, r["id"]) for r in earlier])
        return "superseded-old"
    # The current version steps aside first, so the new one is not refused as its near-duplicate;
    # it comes back when no part of the new one could be stored as active.
    st.db.executemany("UPDATE examples SET status = 'superseded', reason = ? WHERE id = ?",
                      [(f"superseded: {key}", i) for i in cur_ids])
    parts = _split_parts(text, PART_CHARS)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))
    stored_active = False
    for i, part in enumerate(parts):
        q = question
        if len(parts) > 1:
            head = _heading(part)
            q = f"{question} (part {i + 1} of {len(parts)}{': ' + head if head else ''})"
        msgs = [{"role": "user", "content": q}, {"role": "assistant", "content": part}]
        src = Source(kind, f"artifact:{key}:{h}" + (f"#{i}" if i else ""), h, group=f"artifact:{key}")
        res = ing.ingest(msgs, Tags(role=role, task="general", rig=rig, artifact_key=key, time=stamp), src)
        stored_active = stored_active or bool(res.inserted.get("active"))
    if cur_ids and not stored_active:
        st.db.executemany("UPDATE examples SET status = 'active', reason = NULL WHERE id = ?", [(i,) for i in cur_ids])
        log.warning("artifact %s: new version not stored as active, the current one stays", key)
    return "new"


def release_version(store: Store, example_id: str, reason: str = "released by reviewer") -> list[str]:
    """A reviewer accepts an artifact version held for review (a reversion): every part of it
    becomes the current version of its artifact (as of now), and the version it replaces is
    superseded. Returns the ids made active. Call inside `store.tx()`."""
    row = store.db.execute("SELECT artifact_key, source_hash FROM examples WHERE id = ?", (example_id,)).fetchone()
    if row is None or row["artifact_key"] is None:
        raise ValueError(f"{example_id} is not an artifact version")
    key, h = row["artifact_key"], row["source_hash"]
    store.db.execute("UPDATE examples SET status = 'superseded', reason = ? WHERE artifact_key = ? AND status = 'active' "
                     "AND source_hash != ?", (f"superseded: {key} (reviewed reversion)", key, h))
    ids = [r["id"] for r in store.db.execute("SELECT id FROM examples WHERE artifact_key = ? AND source_hash = ? "
                                             "AND status IN ('review', 'superseded')", (key, h))]
    store.db.executemany("UPDATE examples SET status = 'active', reason = ?, created = ? WHERE id = ?",
                         [(reason, time.time(), i) for i in ids])
    return ids


def ingest_artifact(ing: Ingestor, town_root: Path, path: Path) -> str:
    """Store one artifact version; returns new | unchanged | superseded-old | revert-flagged | skipped."""
    try:
        raw = path.read_bytes()
    except OSError:
        return "skipped"
    if len(raw) > MAX_BYTES:
        log.info("artifact %s over %d bytes: skipped", path, MAX_BYTES)
        return "skipped"
    text = raw.decode("utf-8", errors="replace")
    role, rig, rel = _tags_for(town_root, path)
    what = "the formula" if rel.endswith(".formula.toml") else rel.rsplit("/", 1)[-1]
    question = f"What does {what} at {rel} say for {'the ' + role if role else 'agents'} in {rig or 'the town'}?"
    return _store_version(ing, f"{rig or 'town'}:{rel}", text, "artifact", question, role, rig, path.stat().st_mtime)


def prime_key(role: str, rig: str | None) -> str:
    """Artifact key of a role's `gt prime` output: `<rig>:gt-prime:<role>` (`town:` for town roles)."""
    return f"{rig or 'town'}:gt-prime:{role}"


def ingest_prime(ing: Ingestor, role: str, rig: str | None, text: str) -> str:
    """Store one role's `gt prime` output (already run) as the newest version of its artifact."""
    where = f"rig {rig}" if rig else "the town"
    question = f"Run `gt prime`: what is your role context as the {role} in {where}?"
    return _store_version(ing, prime_key(role, rig), text, PRIME_SOURCE, question, role, rig, time.time())


def collect_prime(store: Store, town_root: Path, env: Mapping[str, str] | None = None,
                  timeout: float = 60.0) -> dict[str, int]:
    """Run the real `gt prime --dry-run` for every role of the town and store each output as
    that role's artifact (source `gt-prime`). Returns counts per outcome; a role whose prime
    could not run counts as `failed` (reason logged by gt_ext.gastown.prime)."""
    from gt_ext.corpus.collect import process_lock
    from gt_ext.gastown.binaries import find_gt
    from gt_ext.gastown.prime import gt_prime, prime_targets, stable_text

    targets = prime_targets(town_root)
    if find_gt(required=False) is None:
        log.warning("gt prime output not collected: the real gt is not installed")
        return {"skipped": len(targets)}
    counts: dict[str, int] = {}
    outputs = []
    for t in targets:  # gt first, without the lock: each run takes seconds
        # read_only: bd refuses the patrol wisp gt would spawn, so collecting leaves the town unchanged.
        out = gt_prime(t.role, town_root, t.rig, t.workdir, dry_run=True, read_only=True, timeout=timeout, env=env)
        if out is None:
            counts["failed"] = counts.get("failed", 0) + 1
            continue
        outputs.append((t, stable_text(out)))
    with process_lock(store):
        ing = Ingestor(store, judge=False)  # artifacts are no session batch: not anomaly-checked
        for t, text in outputs:
            with store.tx():
                r = ingest_prime(ing, t.role, t.rig, text)
            counts[r] = counts.get(r, 0) + 1
        ing.finish()
    return counts


def collect_artifacts(store: Store, town_root: Path, prime: bool = False,
                      env: Mapping[str, str] | None = None) -> dict[str, int]:
    """Scan a town's artifacts into the store; returns counts per outcome.

    `prime`: also store every role's `gt prime` output (`collect_prime`; needs the real gt)."""
    from gt_ext.corpus.collect import process_lock

    counts: dict[str, int] = {}
    with process_lock(store):
        ing = Ingestor(store, judge=False)  # artifacts are no session batch: not anomaly-checked
        for p in find_artifacts(town_root):
            with store.tx():
                r = ingest_artifact(ing, Path(town_root), p)
            counts[r] = counts.get(r, 0) + 1
        ing.finish()
    if prime:
        for k, v in collect_prime(store, Path(town_root), env=env).items():
            counts[f"prime-{k}"] = v
    return counts


def flag_reversion(store: Store, key: str, sha256: str) -> bool:
    """True when artifact `key` at content hash `sha256` is an EARLIER version the corpus holds
    (superseded, or already in review) rather than its current one: a reversion. Its stored
    version is then put in the review queue (status `review`), so it does not silently become the
    convention again; a reviewer releases it (`gt corpus quarantine release`) or drops it."""
    rows = store.db.execute("SELECT id, source_hash, status FROM examples WHERE artifact_key = ?", (key,)).fetchall()
    if not rows:
        return False
    current = {r["source_hash"] for r in rows if r["status"] == "active"}
    earlier = [r for r in rows if r["source_hash"] == sha256 and r["status"] in ("superseded", "review")]
    if sha256 in current or not earlier:
        return False
    with store.tx():
        store.db.executemany("UPDATE examples SET status = 'review', reason = ? WHERE id = ? AND status = 'superseded'",
                             [(f"reverts {key} to an earlier version: review before it counts", r["id"]) for r in earlier])
    return True
