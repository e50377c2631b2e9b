"""Quality gates an example passes before it joins the corpus.

- size limits (too short to teach anything, too long to train on)
- garbage (binary noise, one line repeated, mostly unreadable)
- exact duplicates (same id) and near duplicates (MinHash over word shingles, LSH buckets)
- convention violations (pkill, force pushes, skipped hooks, raw shell instead of gt/bd): never
  labelled good; such examples become DPO "rejected" material at most
- anomaly checks of a new batch against the corpus so far, and per-source caps against poisoning
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

from gt_ext.corpus.format import parse_tool_calls

MIN_ASSISTANT_CHARS = 20
MAX_TOTAL_CHARS = 48_000
MAX_TURNS = 400
NEAR_DUP_THRESHOLD = 0.85
NUM_PERM = 64
BANDS = 16  # 16 bands x 4 rows: pairs at Jaccard 0.85 collide in some band with p > 0.99
ROWS = NUM_PERM // BANDS
_MASK = (1 << 61) - 1


@dataclass
class GateResult:
    """Verdict on one example: rejected (with reason) or accepted, plus its violation tags."""

    rejected: str | None = None
    violations: list[str] = field(default_factory=list)


# --- conventions ---------------------------------------------------------------------------------
# Patterns over the commands an agent ran (tool call inputs) and its own text. Each names a Gas Town
# convention: processes are stopped through gt, history is never rewritten on shared branches, hooks
# are never skipped, and beads/town state is changed only through bd/gt.
VIOLATIONS: list[tuple[str, re.Pattern]] = [
    ("pkill", re.compile(r"\b(?:pkill|killall)\b")),
    ("kill-9", re.compile(r"\bkill\s+-(?:9|KILL|s\s+KILL)\b")),
    ("force-push", re.compile(r"\bgit\s+push\b[^\n]*\s(?:--force(?!-with-lease)\b|-f\b|\+\w)")),
    ("skip-hooks", re.compile(r"--no-verify\b|\bgit\s+commit\b[^\n]*\s-n\b|\bHUSKY=0\b|\bBD_NO_HOOKS=1\b")),
    ("reset-hard-shared", re.compile(r"\bgit\s+reset\s+--hard\s+origin/")),
    ("raw-beads-db", re.compile(r"\b(?:sqlite3|dolt\s+sql)\b[^\n]*\.beads|\.beads/[\w./]*(?:issues\.jsonl|embeddeddolt)")),
    ("raw-tmux", re.compile(r"\btmux\s+(?:kill-session|kill-server|send-keys)\b")),
    ("rm-rf-town", re.compile(r"\brm\s+-[a-zA-Z]*r[a-zA-Z]*f?\s+(?:~|/|\$HOME|\.beads|\.\s|\*)")),
]


def _commands(messages: list[dict[str, str]]) -> list[str]:
    """What the assistant did: tool call inputs (as text) of every assistant turn."""
    out = []
    for m in messages:
        if m["role"] != "assistant":
            continue
        for c in parse_tool_calls(m["content"]):
            out.append(" ".join(str(v) for v in c["input"].values()))
    return out


def violations(messages: list[dict[str, str]]) -> list[str]:
    """Names of the conventions the assistant's commands break (empty when none)."""
    found = []
    cmds = _commands(messages)
    for name, rx in VIOLATIONS:
        if any(rx.search(c) for c in cmds):
            found.append(name)
    return found


# --- size and garbage ----------------------------------------------------------------------------
def size_problem(messages: list[dict[str, str]]) -> str | None:
    """Why the example is out of size bounds, or None."""
    total = sum(len(m["content"]) for m in messages)
    assistant = sum(len(m["content"]) for m in messages if m["role"] == "assistant")
    if assistant < MIN_ASSISTANT_CHARS:
        return f"too short: {assistant} assistant characters (< {MIN_ASSISTANT_CHARS})"
    if total > MAX_TOTAL_CHARS:
        return f"too long: {total} characters (> {MAX_TOTAL_CHARS})"
    if len(messages) > MAX_TURNS:
        return f"too many turns: {len(messages)} (> {MAX_TURNS})"
    return None


def garbage_problem(messages: list[dict[str, str]]) -> str | None:
    """Why the assistant text looks like noise rather than language, or None."""
    text = "\n".join(m["content"] for m in messages if m["role"] == "assistant")
    if not text:
        return "no assistant text"
    bad = sum(1 for ch in text if ch == "\ufffd" or (ord(ch) < 32 and ch not in "\n\t\r"))
    if bad / len(text) > 0.01:
        return f"garbage: {bad} control/replacement characters"
    letters = sum(ch.isalpha() for ch in text)
    if letters / len(text) < 0.25:
        return "garbage: under 25% letters"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if len(lines) >= 8 and len(set(lines)) / len(lines) < 0.2:
        return "garbage: one line repeated"
    words = re.findall(r"[A-Za-z]+", text)
    if len(words) >= 20 and sum(len(w) > 25 for w in words) / len(words) > 0.3:
        return "garbage: mostly unbroken letter runs"
    return None


# --- near duplicates: MinHash + LSH -------------------------------------------------------------
def _shingles(text: str, k: int = 5) -> set[str]:
    words = re.findall(r"\w+", text.lower())
    if len(words) < k:
        return {" ".join(words)} if words else set()
    return {" ".join(words[i:i + k]) for i in range(len(words) - k + 1)}


# Fixed (seeded) permutation parameters: signatures must stay comparable across runs.
_PARAMS = [(int.from_bytes(hashlib.sha256(f"a{i}".encode()).digest()[:8], "big") | 1,
            int.from_bytes(hashlib.sha256(f"b{i}".encode()).digest()[:8], "big")) for i in range(NUM_PERM)]


def minhash(messages: list[dict[str, str]]) -> list[int]:
    """MinHash signature (NUM_PERM ints) of an example's user+assistant text."""
    text = "\n".join(m["content"] for m in messages if m["role"] in ("user", "assistant"))
    hs = [int.from_bytes(hashlib.blake2b(s.encode(), digest_size=8).digest(), "big") for s in _shingles(text)]
    if not hs:
        return [_MASK] * NUM_PERM
    return [min(((a * h + b) & _MASK) for h in hs) for a, b in _PARAMS]


def lsh_buckets(sig: list[int]) -> list[str]:
    """One bucket key per band."""
    return [hashlib.blake2b(repr(sig[i * ROWS:(i + 1) * ROWS]).encode(), digest_size=8).hexdigest() for i in range(BANDS)]


def jaccard_estimate(a: list[int], b: list[int]) -> float:
    """Share of equal MinHash slots: an unbiased estimate of the shingle-set Jaccard similarity."""
    return sum(x == y for x, y in zip(a, b, strict=True)) / len(a)


# --- batches: anomalies and caps ----------------------------------------------------------------
def batch_stats(examples: list[dict]) -> dict[str, float]:
    """Summary of a batch: size, mean length, violation / quarantine / failure rates."""
    n = len(examples)
    if not n:
        return {"n": 0}
    return {
        "n": n,
        "mean_chars": sum(e["chars"] for e in examples) / n,
        "violation_rate": sum(bool(e["violations"]) for e in examples) / n,
        "quarantine_rate": sum(e["quarantined"] for e in examples) / n,
        "failure_rate": sum(e["outcome"] == "failure" for e in examples) / n,
    }


def batch_anomalies(batch: dict[str, float], corpus: dict[str, float], min_corpus: int = 50) -> list[str]:
    """Ways a new batch departs from the corpus so far (empty when it looks like the rest).

    Only judged once the corpus has `min_corpus` examples; rates are compared with an absolute
    margin (a batch of 5 cannot be judged by a z-score), lengths by ratio.
    """
    if corpus.get("n", 0) < min_corpus or batch.get("n", 0) < 5:
        return []
    flags = []
    for key in ("violation_rate", "quarantine_rate", "failure_rate"):
        if batch[key] > corpus[key] + 0.3:
            flags.append(f"{key} {batch[key]:.2f} vs corpus {corpus[key]:.2f}")
    if corpus["mean_chars"] and not (0.2 <= batch["mean_chars"] / corpus["mean_chars"] <= 5.0):
        flags.append(f"mean length {batch['mean_chars']:.0f} vs corpus {corpus['mean_chars']:.0f}")
    return flags


def source_cap(corpus_total: int, floor: int = 200, share: float = 0.2) -> int:
    """Most examples one source group (a user, a curated file) may hold: max(floor, share*corpus)."""
    return max(floor, int(share * corpus_total))
