"""Secrets never reach the index: every chunk's text is scrubbed before it is hashed or embedded.

Uses the corpus scrubber (`gt_ext.corpus.scrub`: regexes + detect-secrets). The corpus keeps
uncertain findings and quarantines the example for a human; the index has no human in the loop,
so here uncertain spans are redacted too.
"""

from __future__ import annotations

import functools
from typing import Any

REDACTED = "<REDACTED>"


@functools.lru_cache(maxsize=1)
def _scrubber() -> Any:
    from gt_ext.corpus.scrub import Scrubber

    return Scrubber()


def clean(text: str) -> str:
    """`text` with every finding replaced: certain ones by their typed placeholder, others by <REDACTED>."""
    if not text:
        return text
    findings = _scrubber().scan(text)
    out = text
    for f in sorted(findings, key=lambda f: f.start, reverse=True):  # right to left keeps spans valid
        out = out[: f.start] + (f.placeholder or REDACTED) + out[f.end :]
    return out
