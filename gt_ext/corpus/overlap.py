"""N-gram overlap between training text and evaluation prompts: the contamination guard.

`check_no_overlap(train_texts, eval_texts)` raises when any training text shares a long word
n-gram (default 8 words, the usual contamination test) with an evaluation prompt. The evals
package can call `overlapping(...)` for a report instead.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

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


def eval_prompts(tasks_dir: str | Path | None = None) -> list[str]:
    """Task texts of this project's eval suites: every string in the ``vars`` of every test in
    ``gt_ext/evals/tasks/*/*.yaml`` (the task-specific part; shared prompt templates are left out,
    since they legitimately repeat role descriptions). Empty when there are no suites yet."""
    import yaml

    root = Path(tasks_dir) if tasks_dir else Path(__file__).resolve().parent.parent / "evals" / "tasks"
    out: list[str] = []
    for f in sorted(root.glob("*/*.yaml")) if root.is_dir() else []:
        try:
            data = yaml.safe_load(f.read_text(encoding="utf-8"))
        except yaml.YAMLError:
            continue
        tests = data if isinstance(data, list) else (data.get("tests") if isinstance(data, dict) else None)
        for t in tests if isinstance(tests, list) else []:
            vars_ = t.get("vars") if isinstance(t, dict) else None
            if isinstance(vars_, dict):
                text = " ".join(str(v) for v in vars_.values() if isinstance(v, str | int | float))
                if text.strip():
                    out.append(text)
    return out
