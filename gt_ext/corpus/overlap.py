"""N-gram overlap between training text and evaluation prompts: the contamination guard.

`check_no_overlap(train_texts, eval_texts)` raises when any training text shares a long word
n-gram (default 8 words, the usual contamination test) with an evaluation prompt. The evals
package can call `overlapping(...)` for a report instead.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from gt_ext.errors import GtExtError

_WORD = re.compile(r"[a-z0-9]+")


def ngrams(text: str, n: int = 8) -> set[tuple[str, ...]]:
    """Lower-cased word n-grams of `text` (punctuation and markup ignored)."""
    words = _WORD.findall(text.lower())
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def overlapping(train_texts: Iterable[str], eval_texts: Iterable[str], n: int = 8) -> list[tuple[int, int, str]]:
    """Pairs (train index, eval index, shared n-gram) for every training text that shares an
    n-gram with an eval text (first shared n-gram reported per pair)."""
    index: dict[tuple[str, ...], int] = {}
    for j, t in enumerate(eval_texts):
        for g in ngrams(t, n):
            index.setdefault(g, j)
    hits = []
    for i, t in enumerate(train_texts):
        seen: set[int] = set()
        for g in ngrams(t, n):
            j = index.get(g)
            if j is not None and j not in seen:
                seen.add(j)
                hits.append((i, j, " ".join(g)))
    return hits


def check_no_overlap(train_texts: Iterable[str], eval_texts: Iterable[str], n: int = 8, what: str = "training data") -> None:
    """Raise `GtExtError` naming the first overlap between `train_texts` and `eval_texts`."""
    hits = overlapping(list(train_texts), list(eval_texts), n)
    if hits:
        i, j, g = hits[0]
        raise GtExtError(f"{what} item {i} shares the {n}-gram {g!r} with eval prompt {j} ({len(hits)} overlaps)")


def eval_prompts() -> list[str]:
    """Prompts of this project's own eval tasks, when the evals package provides them (else [])."""
    try:
        from gt_ext.evals import tasks as _tasks  # type: ignore[attr-defined]
    except ImportError:
        return []
    fn = getattr(_tasks, "all_prompts", None)
    return list(fn()) if callable(fn) else []
