"""Re-scrub stored examples when the scrubber's detectors change (`gt corpus rescan`).

Examples are scrubbed once, when they are stored. The store remembers which detectors did that
(`scrub.detectors_fingerprint`: patterns, detect-secrets version and plugins, user names). When a
release adds or tightens a detector, examples stored earlier may hold what it now finds: `rescan`
runs the current scrubber over every stored example that could still be exported (active, under
review, superseded) and sends each one with a new finding to quarantine, with the finding types in
the reason (never the values), for a reviewer to release or drop. What was found is sealed
(`gt_ext.corpus.seal`: encrypted apart, a marker in the text), so quarantine holds no verbatim
secret; the reviewer decides what goes back. Nothing happens when the detectors are the ones the store was scrubbed with,
unless forced.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from typing import Any

from gt_ext.corpus import seal
from gt_ext.corpus.scrub import Scrubber, default_scrubber, detectors_fingerprint
from gt_ext.corpus.store import Store

log = logging.getLogger(__name__)

META_KEY = "scrub_detectors"
RESCANNED = ("active", "review", "superseded")


def note_detectors(store: Store, scrubber: Scrubber) -> None:
    """Record the detectors a store is first scrubbed with (a store made before this existed gets
    the current ones: it cannot tell what scrubbed it)."""
    if store.get_meta(META_KEY) is not None:
        return
    if store.db.in_transaction:  # inside the caller's transaction
        store.set_meta(META_KEY, detectors_fingerprint(scrubber))
        return
    with store.tx():
        if store.get_meta(META_KEY) is None:
            store.set_meta(META_KEY, detectors_fingerprint(scrubber))


def detectors_changed(store: Store, scrubber: Scrubber | None = None) -> bool:
    """True when the store's examples were scrubbed by other detectors than the current ones."""
    have = store.get_meta(META_KEY)
    return have is not None and have != detectors_fingerprint(scrubber or default_scrubber())


def rescan(store: Store, scrubber: Scrubber | None = None, force: bool = False) -> dict[str, Any]:
    """Quarantine every stored example in which the current detectors find something (see the
    module doc). Returns {previous, current, rescanned, quarantined, findings: {type: n}, skipped}."""
    from gt_ext.corpus.collect import process_lock

    sc = scrubber or default_scrubber()
    current = detectors_fingerprint(sc)
    previous = store.get_meta(META_KEY)
    report: dict[str, Any] = {"previous": previous, "current": current, "rescanned": 0, "quarantined": 0,
                              "findings": {}, "skipped": False}
    if previous == current and not force:
        report["skipped"] = True
        return report
    found: Counter[str] = Counter()
    sealer = seal.Sealer(store.root)
    with process_lock(store):
        rows = [e for status in RESCANNED for e in store.query(status=status) if e.messages]
        with store.tx():
            for e in rows:
                hits = [f for m in e.messages for f in sc.scan(m["content"])]
                report["rescanned"] += 1
                if not hits:
                    continue
                types = sorted({f"{f.type} ({f.confidence})" for f in hits})
                found.update(f.type for f in hits)
                reason = f"rescan with detectors {current}: new finding(s) {', '.join(types)}"
                # What the new detectors found is sealed (encrypted apart), never kept verbatim in
                # quarantine; release puts uncertain values back and certain ones as placeholders.
                counter = seal.counter_from(len(store.sealed(e.id)))
                msgs, new_findings = [], []
                for i, m in enumerate(e.messages):
                    mh = sc.scan(m["content"])
                    text, s = seal.seal_findings(m["content"], mh, sealer, counter, seal_certain=True)
                    store.add_sealed(e.id, s)
                    msgs.append({**m, "content": text})
                    new_findings += [f.to_dict() | {"msg": i, "rescan": True} for f in mh]
                store.db.execute("UPDATE examples SET status = 'quarantined', reason = ?, findings = ?, messages = ? "
                                 "WHERE id = ?", (reason, json.dumps(e.findings + new_findings),
                                                  json.dumps(msgs, ensure_ascii=False), e.id))
                report["quarantined"] += 1
            store.set_meta(META_KEY, current)
    report["findings"] = dict(sorted(found.items()))
    log.info("rescan: %d example(s) scanned, %d quarantined", report["rescanned"], report["quarantined"])
    return report
