"""Benchmark: the work one bead close costs as gt's event log grows, ours against the old way.

    .venv/bin/python bench/bead_close.py [--events 1000000] [--beads 10000] [--closes 20]

A synthetic town log: 10K beads over 300 polecats, each bead slung (`sling`), worked in one or
two sessions (`session_start`, sometimes a crash `session_death`), finished (`done`), merged,
with the rest of a busy town's traffic in between (nudges, mail, patrol, spawn/kill: ~95% of the
lines), spread over the whole log. The log is grown to each size in `--sizes` (fractions of `--events`); at each size a few
new events arrive for each of `--closes` beads and then the bead closes.

- ours: `EventIndex.sync()` (the bytes appended since the last close) + `sessions_for_bead` on the
  index: what `gt corpus process` does per bead close now.
- baseline: the code before this change, copied below: read and validate the whole `.events.jsonl`
  (`gastown.events.town_events`) and scan it per actor and per linked session.
Both give the same sessions (checked). Ours should stay flat as the log grows; the baseline grows
with it. Absolute times move with the machine's load: compare within one run.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from gt_ext.corpus.collect import sessions_for_bead
from gt_ext.corpus.eventindex import EventIndex
from gt_ext.corpus.store import Store
from gt_ext.corpus.tags import attempt_outcome
from gt_ext.gastown.events import town_events

NOISE = ("nudge", "mail", "patrol_started", "patrol_complete", "spawn", "kill", "mass_death", "handoff", "feed")


# --- the baseline: sessions_for_bead before the event index (commit 8e42f4a), unchanged logic --------
def _old_session_window(events: list[dict], start: int) -> list[dict]:
    actor = events[start].get("actor")
    out = []
    for e in events[start + 1:]:
        if e.get("actor") != actor:
            continue
        if e.get("type") == "session_start":
            break
        out.append(e)
    return out


def _old_bead_span(events: list[dict], actor: str, bead: str) -> tuple[int, int]:
    def about(e: dict, types: tuple[str, ...]) -> bool:
        p = e.get("payload") if isinstance(e.get("payload"), dict) else {}
        return e.get("type") in types and p.get("bead") == bead

    hi = len(events)
    for i in range(len(events) - 1, -1, -1):
        if events[i].get("actor") == actor and about(events[i], ("done",)):
            hi = i + 1
            break
    for i in range(hi - 1, -1, -1):
        e = events[i]
        p = e.get("payload") if isinstance(e.get("payload"), dict) else {}
        if about(e, ("sling", "hook")) and actor in (p.get("target"), p.get("actor")):
            return i, hi
        if e.get("actor") == actor and e.get("type") == "done" and p.get("bead") != bead:
            return i, hi
    return -1, hi


def baseline_sessions(issue: dict[str, Any], town_root: Path) -> dict[str, str | None]:
    bead = issue.get("id")
    actors = {a for a in (issue.get("assignee"),) if a}
    events = town_events(town_root)
    for e in events:
        p = e.get("payload") or {}
        if p.get("bead") == bead and e.get("type") in ("sling", "hook"):
            actors.add(p.get("target") or p.get("actor"))
        elif p.get("bead") == bead and e.get("type") in ("done", "merged", "merge_failed"):
            actors.add(e.get("actor") or p.get("actor"))
    actors.discard(None)
    spans = {a: _old_bead_span(events, a, str(bead)) for a in actors}
    found = {}
    for i, e in enumerate(events):
        p = e.get("payload") or {}
        a = e.get("actor")
        if e.get("type") == "session_start" and a in spans and p.get("session_id") and spans[a][0] < i < spans[a][1]:
            found[p["session_id"]] = attempt_outcome(_old_session_window(events, i), str(bead))
    return found


# --- the synthetic town ----------------------------------------------------------------------------
class LogWriter:
    """Appends a busy town's events: each bead's story, interleaved with noise."""

    def __init__(self, path: Path, beads: int, events: int, seed: int = 0):
        self.path, self.rng = path, random.Random(seed)
        # Noise per gap (three gaps a story) so the beads spread over the whole log.
        self.noise = max(1, (events // max(beads, 1) - 6) // 3)
        self.polecats = [f"webapp/polecats/p{i}" for i in range(300)]
        self.pending = [f"wa-{i:05d}" for i in range(beads)]
        self.n = self.sid = 0
        self.f = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed by close()

    def _ev(self, typ: str, actor: str, **payload: Any) -> None:
        self.f.write(json.dumps({"ts": "2026-12-04T10:00:00Z", "source": "gt", "type": typ, "actor": actor,
                                 "payload": payload, "visibility": "feed"}) + "\n")
        self.n += 1

    def _noise(self, k: int) -> None:
        for _ in range(k):
            self._ev(self.rng.choice(NOISE), self.rng.choice(self.polecats + ["mayor", "deacon", "webapp/witness"]),
                     to="webapp/witness", note="x" * self.rng.randint(10, 60))

    def bead_story(self, bead: str, actor: str | None = None, noise: int = 0) -> str:
        """sling, one or two sessions (a crash before the second), done, merged."""
        actor = actor or self.rng.choice(self.polecats)
        self._ev("sling", "mayor", bead=bead, target=actor)
        self._noise(noise)
        for attempt in range(1 + (self.rng.random() < 0.2)):
            self.sid += 1
            self._ev("session_start", actor, session_id=f"s{self.sid}", role="polecat", cwd=f"/town/{actor}")
            self._noise(noise)
            if attempt == 0 and self.rng.random() < 0.2:
                self._ev("session_death", actor, reason="crashed with exit code 1")
        self._ev("done", actor, bead=bead, branch=f"polecat/{bead}")
        self._ev("merged", "webapp/refinery", bead=bead)
        return actor

    def grow_to(self, total: int) -> None:
        """Append bead stories (each with ~80% noise) until the log has `total` events."""
        while self.n < total and self.pending:
            self.bead_story(self.pending.pop(), noise=self.noise)
        if self.n < total:
            self._noise(total - self.n)
        self.f.flush()

    def close(self) -> None:
        self.f.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--beads", type=int, default=10_000)
    ap.add_argument("--closes", type=int, default=20, help="bead closes timed per size (ours)")
    ap.add_argument("--baseline-closes", type=int, default=2, help="bead closes timed per size (baseline)")
    ap.add_argument("--sizes", default="0.1,0.25,0.5,1.0", help="log sizes, as fractions of --events")
    a = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-bead-close-"))
    town, projects = tmp / "town", tmp / "projects"
    (town / "mayor").mkdir(parents=True)
    (town / "mayor" / "town.json").write_text("{}")
    projects.mkdir()
    log = LogWriter(town / ".events.jsonl", a.beads, a.events)
    rows = []
    with Store.open(tmp / "corpus") as store:
        index = EventIndex(store, town)
        for frac in [float(x) for x in a.sizes.split(",")]:
            size = int(a.events * frac)
            log.grow_to(size)
            t0 = time.perf_counter()
            added = index.sync()  # catching up on the growth between sizes: not a close's work
            catch_up = time.perf_counter() - t0
            ours, base = [], []
            for k in range(max(a.closes, a.baseline_closes)):
                bead = f"wa-new-{size}-{k}"
                actor = log.bead_story(bead, noise=20)  # what happens between two closes
                log.f.flush()
                issue = {"id": bead, "assignee": actor, "status": "closed"}
                t0 = time.perf_counter()
                index.sync()
                got = {s["session"]: s["attempt"] for s in sessions_for_bead(issue, index, town, projects)}
                if k < a.closes:
                    ours.append(time.perf_counter() - t0)
                if k < a.baseline_closes:
                    t0 = time.perf_counter()
                    want = baseline_sessions(issue, town)
                    base.append(time.perf_counter() - t0)
                    if got != want:
                        print(f"MISMATCH for {bead}: ours {got} baseline {want}", file=sys.stderr)
                        return 1
            rows.append((log.n, added, catch_up, statistics.median(ours) * 1000, max(ours) * 1000,
                         statistics.median(base) * 1000))
            print(f"log {log.n:>9,} events: ours {rows[-1][3]:8.2f} ms/close (max {rows[-1][4]:.2f}), "
                  f"baseline {rows[-1][5]:10.1f} ms/close, ratio {rows[-1][5] / rows[-1][3]:9.0f}x "
                  f"(index caught up on {added:,} link events in {catch_up:.1f} s)", flush=True)
    log.close()
    first, last = rows[0], rows[-1]
    print(f"\nper-close time from {first[0]:,} to {last[0]:,} events ({last[0] / first[0]:.0f}x the log): "
          f"ours {first[3]:.2f} -> {last[3]:.2f} ms ({last[3] / first[3]:.2f}x), "
          f"baseline {first[5]:.0f} -> {last[5]:.0f} ms ({last[5] / first[5]:.2f}x)")
    print(f"index size: {(tmp / 'corpus' / 'corpus.db').stat().st_size / 1e6:.0f} MB for {last[0]:,} events; "
          f"log {(town / '.events.jsonl').stat().st_size / 1e6:.0f} MB")
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
