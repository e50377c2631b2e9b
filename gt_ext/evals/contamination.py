"""Contamination guard: refuse eval tasks whose prompts share word n-grams with the training corpus.

Uses the corpus package's n-gram definition (`gt_ext.corpus.overlap.ngrams`: lower-cased word
8-grams, punctuation ignored) so the two guards agree. A task's overlap is the share of its own
n-grams (the task-specific text: promptfoo vars, sandbox prompt; not the shared role template) that
also occur anywhere in the corpus. Tasks above `max_overlap` (default 0: any shared 8-gram) are
refused and reported.

Corpus sources: an exported corpus folder (its shards, read by `gt_ext.corpus.shards`), a JSONL file of
SFT/DPO records, or a folder of `.jsonl`/`.txt`/`.md` files.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gt_ext.corpus.overlap import ngrams
from gt_ext.corpus.shards import is_export, iter_records, shard_files
from gt_ext.errors import GtExtError

log = logging.getLogger(__name__)

N = 8
DEFAULT_MAX_OVERLAP = 0.0


@dataclass
class OverlapReport:
    """Per-task overlap shares and the tasks refused."""

    n: int
    max_overlap: float
    overlap: dict[str, float] = field(default_factory=dict)
    examples: dict[str, str] = field(default_factory=dict)  # task -> one shared n-gram
    refused: list[str] = field(default_factory=list)
    corpus_ngrams: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-able report (stored in the EvalResult)."""
        return {"n": self.n, "max_overlap": self.max_overlap, "corpus_ngrams": self.corpus_ngrams,
                "refused": self.refused, "overlap": {k: round(v, 4) for k, v in self.overlap.items()},
                "examples": self.examples}


def _record_texts(rec: dict[str, Any]) -> Iterator[str]:
    for key in ("messages", "prompt"):
        for m in rec.get(key) or []:
            if isinstance(m, dict) and isinstance(m.get("content"), str):
                yield m["content"]
    for key in ("chosen", "rejected", "text", "content"):
        if isinstance(rec.get(key), str):
            yield rec[key]


def _jsonl_texts(path: Path) -> Iterator[str]:
    for rec in iter_records([path]):  # the shard reader: a bad line is an error naming file:line
        yield from _record_texts(rec)


def corpus_texts(corpus: str | Path) -> Iterator[str]:
    """Every text of a corpus folder or file (see module doc)."""
    p = Path(corpus).expanduser()
    if p.is_file():
        if p.suffix == ".jsonl":
            yield from _jsonl_texts(p)
        else:
            yield p.read_text(encoding="utf-8", errors="replace")
        return
    if not p.is_dir():
        raise GtExtError(f"{p}: corpus not found")
    if is_export(p):
        for f in shard_files(p):
            yield from _jsonl_texts(f)
        return
    files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in (".jsonl", ".txt", ".md"))
    if not files:
        raise GtExtError(f"{p}: no .jsonl/.txt/.md files in this corpus folder")
    for f in files:
        yield from (_jsonl_texts(f) if f.suffix == ".jsonl" else [f.read_text(encoding="utf-8", errors="replace")])


def corpus_ngrams(texts: Iterable[str], n: int = N) -> set[tuple[str, ...]]:
    """Union of the word n-grams of all texts."""
    out: set[tuple[str, ...]] = set()
    for t in texts:
        out |= ngrams(t, n)
    return out


def check_texts(items: dict[str, str], corpus: str | Path | Iterable[str], max_overlap: float | None = None,
                n: int = N) -> OverlapReport:
    """Overlap of each named text with the corpus; names above `max_overlap` are refused."""
    thr = DEFAULT_MAX_OVERLAP if max_overlap is None else float(max_overlap)
    if not 0.0 <= thr <= 1.0:
        raise GtExtError(f"--max-overlap must be in [0, 1], got {thr}")
    texts = corpus_texts(corpus) if isinstance(corpus, str | Path) else corpus
    grams = corpus_ngrams(texts, n)
    rep = OverlapReport(n=n, max_overlap=thr, corpus_ngrams=len(grams))
    for name, text in items.items():
        own = ngrams(text, n)
        shared = own & grams
        share = len(shared) / len(own) if own else 0.0
        rep.overlap[name] = share
        if shared:
            rep.examples[name] = " ".join(sorted(shared)[0])
        if share > thr:
            rep.refused.append(name)
    log.info("contamination: %d of %d task(s) over %.2f", len(rep.refused), len(items), thr)
    return rep


def check_tasks(tasks: list[Any], corpus: str | Path | Iterable[str], max_overlap: float | None = None,
                n: int = N) -> OverlapReport:
    """`check_texts` over suite tasks (their `overlap_text()`)."""
    return check_texts({t.id: t.overlap_text() for t in tasks}, corpus, max_overlap, n)
