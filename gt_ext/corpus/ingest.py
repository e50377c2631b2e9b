"""From parsed messages to stored examples: tag, scrub, gate, dedupe, store.

Callers wrap each unit of work (one spool entry, one file) in `store.tx()`, so a processor killed
midway leaves every source either fully stored or not at all, and a rerun neither loses nor
duplicates anything (ids are content hashes, sources are keyed).
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from dataclasses import dataclass, field

from gt_ext.corpus import gates, seal
from gt_ext.corpus.format import example_id, sha256_text
from gt_ext.corpus.scrub import Scrubber, default_scrubber
from gt_ext.corpus.store import Store, StoredExample
from gt_ext.corpus.tags import Tags, check_role_tag, system_prompt, task_from_content

log = logging.getLogger(__name__)

SOURCES = ("claude-jsonl", "node0-jsonl", "pi-jsonl", "pane", "markdown", "curated", "artifact", "gt-prime", "sample")
# Sessions served by this project's own models (the node0 agent): a model's own outputs.
NODE0_SOURCE = "node0-jsonl"


@dataclass
class Source:
    """Where material came from: kind (contract's provenance.source), dedupe key, content hash,
    and the group that per-source caps count against (a user, a curated file)."""

    kind: str
    key: str
    hash: str
    group: str | None = None


@dataclass
class IngestResult:
    """Counts for one call: inserted ids by status, skipped duplicates, unchanged sources."""

    inserted: dict[str, list[str]] = field(default_factory=dict)
    duplicates: int = 0
    unchanged: bool = False

    def add(self, status: str, ex_id: str) -> None:
        self.inserted.setdefault(status, []).append(ex_id)


def _chunks(messages: list[dict[str, str]], limit: int) -> list[list[dict[str, str]]]:
    """Split a long session at user turns so each piece stays under `limit` characters."""
    if sum(len(m["content"]) for m in messages) <= limit:
        return [messages]
    system = [m for m in messages[:1] if m["role"] == "system"]
    body = messages[len(system):]
    out, cur, size = [], [], 0
    for m in body:
        if m["role"] == "user" and cur and size + len(m["content"]) > limit:
            out.append(system + cur)
            cur, size = [], 0
        cur.append(m)
        size += len(m["content"])
    if cur:
        out.append(system + cur)
    return out


class Ingestor:
    """Stores examples of one processing batch; `finish()` runs the batch anomaly check.

    The batch is journaled as open (table `open_batches`) before its first example is stored and
    closed in the same transaction that records its verdict. A processor killed in between leaves
    it open: the next Ingestor (callers hold the store's processing lock) judges it first, and
    export leaves open batches out meanwhile, so no batch skips the anomaly gate. `judge=False`
    (artifacts) records the batch without judging it."""

    def __init__(self, store: Store, scrubber: Scrubber | None = None, batch: str | None = None,
                 check_near_dups: bool = True, judge: bool = True):
        self.store = store
        self.scrubber = scrubber or default_scrubber()
        self.batch = batch or f"{time.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(3)}"
        from gt_ext.corpus.rescan import note_detectors

        note_detectors(store, self.scrubber)
        self.check_near_dups = check_near_dups
        self.judge = judge
        self.total = IngestResult()
        self.sealer = seal.Sealer(store.root)  # its key is made on the first suspected secret
        if not store.db.in_transaction:
            recover_open_batches(store)
        self._write(lambda: store.db.execute("INSERT OR IGNORE INTO open_batches VALUES (?, ?, ?)",
                                             (self.batch, int(judge), time.time())))

    def _write(self, fn) -> None:
        if self.store.db.in_transaction:
            fn()
        else:
            with self.store.tx():
                fn()

    def ingest(self, messages: list[dict[str, str]], tags: Tags, source: Source) -> IngestResult:
        """Tag, scrub, gate and store one session (call inside `store.tx()`)."""
        res = IngestResult()
        st = self.store
        old = st.source_hash(source.key)
        if old == source.hash:
            self._retag(source.key, tags)
            res.unchanged = True
            return res
        if old is not None and source.kind != "artifact":
            # Same session, new content (a transcript grows with every Stop): the newer replaces it.
            for (eid,) in st.db.execute("SELECT id FROM examples WHERE source_key = ?", (source.key,)).fetchall():
                st.db.execute("DELETE FROM lsh WHERE example_id = ?", (eid,))
                st.db.execute("DELETE FROM sealed WHERE example_id = ?", (eid,))
            st.db.execute("DELETE FROM examples WHERE source_key = ?", (source.key,))
        tags = tags.merged(st.link(tags.session) if tags.session else None)
        role = check_role_tag(tags.role)
        msgs = [dict(m) for m in messages if m.get("content", "").strip()]
        if role and (not msgs or msgs[0]["role"] != "system"):
            msgs.insert(0, {"role": "system", "content": system_prompt(role, tags.rig)})
        for chunk in _chunks(msgs, gates.MAX_TOTAL_CHARS):
            self._one(chunk, tags, role, source, res)
        st.mark_source(source.key, source.hash)
        for status, ids in res.inserted.items():
            for i in ids:
                self.total.add(status, i)
        self.total.duplicates += res.duplicates
        return res

    def _one(self, msgs: list[dict[str, str]], tags: Tags, role: str | None, source: Source, res: IngestResult) -> None:
        st = self.store
        findings: list[dict] = []
        clean = []
        sealed: list[seal.Sealed] = []
        counter = seal.counter_from()
        for i, m in enumerate(msgs):
            r = self.scrubber.scrub(m["content"])
            text = r.text
            if r.quarantine:
                # A suspected secret is never stored verbatim: its span becomes a marker and its
                # value is kept encrypted apart, for the reviewer (gt_ext.corpus.seal).
                text, s = seal.seal_findings(m["content"], r.findings, self.sealer, counter)
                sealed += s
            clean.append({"role": m["role"], "content": text})
            findings.extend(f.to_dict() | {"msg": i} for f in r.findings)
        ex_id = example_id(clean)
        if st.db.execute("SELECT 1 FROM examples WHERE id = ?", (ex_id,)).fetchone():
            res.duplicates += 1
            return
        status, reason, label = "active", None, "neutral"
        uncertain = sorted({f["type"] for f in findings if f["confidence"] == "uncertain"})
        viol = gates.violations(clean)
        if not any(m["role"] == "assistant" for m in clean):
            status, reason = "rejected", "no assistant turn"
        elif uncertain:
            status, reason = "quarantined", "uncertain findings: " + ", ".join(uncertain)
        elif (p := gates.size_problem(clean) or gates.garbage_problem(clean)):
            status, reason = "rejected", p
        if viol:
            label = "bad"
            reason = reason or "violations: " + ", ".join(viol)
        elif tags.outcome == "failure":
            label = "bad"
        elif tags.outcome == "success":
            label = "good"
        sig = gates.minhash(clean)
        buckets = gates.lsh_buckets(sig)
        if status == "active" and self.check_near_dups:
            for cand in st.lsh_candidates(buckets):
                row = st.db.execute("SELECT minhash, label, status FROM examples WHERE id = ?", (cand,)).fetchone()
                # Success and failure of one task look alike on purpose (DPO pairs): compare within a label.
                if row and row["status"] == "active" and row["label"] == label and row["minhash"] and \
                        gates.jaccard_estimate(sig, json.loads(row["minhash"])) >= gates.NEAR_DUP_THRESHOLD:
                    status, reason = "rejected", f"near-duplicate of {cand[:12]}"
                    break
        if status == "active" and source.group:
            n = st.db.execute("SELECT COUNT(*) FROM examples WHERE grp = ? AND status = 'active'", (source.group,)).fetchone()[0]
            if n >= gates.source_cap(st.count(status="active")):
                status, reason = "rejected", "per-source cap reached"
        task = tags.task or task_from_content(clean, role)
        ex = StoredExample(**(tags.to_dict() | {"role": role, "task": task}),
                           id=ex_id, source=source.kind, source_key=source.key, source_hash=source.hash,
                           messages=clean, label=label, status=status, reason=reason, findings=findings,
                           minhash=sig, batch=self.batch, grp=source.group, created=time.time())
        if st.insert(ex) and sealed:
            st.add_sealed(ex_id, sealed)
        if status == "active":
            st.lsh_add(ex_id, buckets)
        res.add(status, ex_id)
        log.info("stored %s %s role=%s task=%s status=%s", source.kind, ex_id[:12], role, task, status)

    def _retag(self, source_key: str, tags: Tags) -> None:
        """A known source seen again with new tags (a bead closed after its session was taken)."""
        sets, args = [], []
        for col in ("bead", "rig", "role", "task", "user"):
            v = check_role_tag(tags.role) if col == "role" else getattr(tags, col)
            if v:
                sets.append(f"{col} = COALESCE({col}, ?)")
                args.append(v)
        if tags.outcome != "unknown":
            sets.append("outcome = ?")
            args.append(tags.outcome)
            sets.append("label = CASE WHEN label = 'bad' OR ? = 'failure' THEN 'bad' ELSE 'good' END")
            args.append(tags.outcome)
        if sets:
            self.store.db.execute(f"UPDATE examples SET {', '.join(sets)} WHERE source_key = ?", (*args, source_key))
        role = check_role_tag(tags.role)
        if role and not tags.task:
            # A role learnt late (bead link, session event) refines a task guessed without it.
            for r in self.store.db.execute("SELECT id, messages FROM examples WHERE source_key = ? AND task = 'general' "
                                           "AND messages IS NOT NULL", (source_key,)).fetchall():
                task = task_from_content(json.loads(r["messages"]), role)
                self.store.db.execute("UPDATE examples SET task = ? WHERE id = ?", (task, r["id"]))

    def record_failure(self, source: Source, reason: str, tags: Tags | None = None) -> str:
        """Quarantine a source that could not be parsed (no content kept, only the reason)."""
        tags = tags or Tags()
        ex_id = "unparsed-" + sha256_text(source.key + "\0" + source.hash)[:40]
        ex = StoredExample(role=check_role_tag(tags.role), task=tags.task, rig=tags.rig, bead=tags.bead,
                           session=tags.session, id=ex_id, source=source.kind, source_key=source.key,
                           source_hash=source.hash, messages=None, status="quarantined", reason=reason,
                           batch=self.batch, grp=source.group, created=time.time())
        if self.store.insert(ex):
            self.total.add("quarantined", ex_id)
        self.store.mark_source(source.key, source.hash)
        return ex_id

    def finish(self) -> list[str]:
        """Compare this batch with the corpus before it; flag the batch for review if it departs.
        Closes the batch (see the class doc)."""
        return close_batch(self.store, self.batch, self.judge)


def recover_open_batches(store: Store) -> dict[str, list[str]]:
    """Judge (and close) every batch a killed processor left open; {batch: flags}. Call with the
    store's processing lock held, or in a process that is the store's only writer."""
    out = {}
    for row in store.db.execute("SELECT batch, judge FROM open_batches ORDER BY created").fetchall():
        log.warning("batch %s was left open by a processor that stopped midway: judging it now", row["batch"])
        out[row["batch"]] = close_batch(store, row["batch"], bool(row["judge"]))
    return out


def close_batch(store: Store, batch: str, judge: bool = True) -> list[str]:
    """The batch anomaly check of one batch against the rest of the corpus (when `judge`), its
    verdict recorded and the batch closed, in one transaction. Returns the flags."""
    st = store
    with st.tx():
        rows = st.db.execute(
            "SELECT LENGTH(messages) AS chars, reason, status, outcome FROM examples WHERE batch = ? AND messages IS NOT NULL",
            (batch,)).fetchall()
        flags: list[str] = []
        stats: dict = {"n": 0}
        if rows:
            stats = gates.batch_stats([{"chars": r["chars"] or 0, "violations": (r["reason"] or "").startswith("violations"),
                                        "quarantined": r["status"] == "quarantined", "outcome": r["outcome"]} for r in rows])
        if rows and judge:
            c = st.db.execute(
                "SELECT COUNT(*), AVG(LENGTH(messages)), AVG(reason LIKE 'violations:%'), AVG(status = 'quarantined'), "
                "AVG(outcome = 'failure') FROM examples WHERE batch != ? AND messages IS NOT NULL", (batch,)).fetchone()
            corpus = {"n": c[0], "mean_chars": c[1] or 0, "violation_rate": c[2] or 0, "quarantine_rate": c[3] or 0,
                      "failure_rate": c[4] or 0}
            flags = gates.batch_anomalies(stats, corpus)
            if flags:
                st.db.execute("UPDATE examples SET status = 'review', reason = ? WHERE batch = ? AND status = 'active'",
                              ("batch anomaly: " + "; ".join(flags), batch))
                log.warning("batch %s flagged for review: %s", batch, "; ".join(flags))
        if rows:
            st.db.execute("INSERT OR REPLACE INTO batches VALUES (?, ?, ?, ?)",
                          (batch, time.time(), json.dumps(stats), json.dumps(flags)))
        st.db.execute("DELETE FROM open_batches WHERE batch = ?", (batch,))
    return flags
