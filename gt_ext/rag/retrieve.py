"""Retrieval: from an agent's prompt, role and rig to one context block under a token budget.

    context_for("which polecats are stuck?", "witness", rig="demo") -> "## Town context ..."

Steps: filter (role: the role's own chunks and role-neutral ones; rig: the rig's and town-wide
ones; beads: only active statuses unless asked), nearest neighbours by cosine, a recency boost
(newer beads/config edits rank higher), a staleness boost (files changed since the role's deployed
model was trained, `gt_ext.rag.boost`), MMR to avoid five near-copies of one bead, then pack the
chunks into the budget counted in the serving model's tokens (SmolLM2's tokenizer by default). The
default budget is the role's (`role_budget`: a fifth of what `gt prime` gives that role).
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass
from typing import Any

from gt_ext.errors import GtExtError
from gt_ext.rag.boost import BOOST, boosted
from gt_ext.rag.chunk import ANY
from gt_ext.roles import check_role

log = logging.getLogger(__name__)

# Bead statuses worth showing an agent by default ("" = not a bead: docs, settings, formulas).
ACTIVE_STATUSES: tuple[str, ...] = ("open", "in_progress", "blocked", "hooked", "pinned", "deferred")
DEFAULT_TOKENIZER = "smollm2-135m-instruct"
RECENCY_WEIGHT = 0.1  # added to cosine similarity for a chunk updated just now
HALF_LIFE_DAYS = 7.0  # ... and half of that for one a week old
MMR_LAMBDA = 0.7  # 1.0 = pure relevance, 0.0 = pure diversity

# The context block stands in for a role's `gt prime` priming, so its default size follows the
# role's: the goal is at most a fifth of what gt primes the role with; 18% leaves room for gt prime
# varying between runs and towns (measured -5%), rounded down to 50 tokens, at most 2,500.
# GT_PRIME_TOKENS: full `gt prime` per role in SmolLM2 tokens, real gt v1.0.1, a fresh town from
# `gt install` + `gt rig add demo` (bench/rag.py reprints them; a busy town's priming is larger).
# See docs/rag.md for why, and for what these budgets cost in recall.
GT_PRIME_TOKENS: dict[str, int] = {"mayor": 5537, "deacon": 7136, "boot": 2543, "dog": 3662, "witness": 4695,
                                   "refinery": 13842, "polecat": 5935, "crew": 6026}
MAX_BUDGET = 2500
PRIME_FRACTION = 0.18


# A patrol decision (gt_ext.corpus.patrol: step, allowed actions, evidence; 340-560 SmolLM2 tokens
# with the system turn) must fit 3K tokens with its RAG context and its answer.
DECISION_LIMIT = 3000


def decision_budget(role: str, prompt_tokens: int, answer_tokens: int = 64, cap: int | None = None) -> int:
    """RAG budget for one decision prompt of `prompt_tokens`: the role's budget (or `cap`, the one a
    deployment gave), cut so that prompt + context + answer stay within DECISION_LIMIT tokens (0
    when the prompt alone fills it)."""
    limit = role_budget(role) if cap is None else cap
    return max(0, min(limit, DECISION_LIMIT - int(prompt_tokens) - int(answer_tokens)))


def role_budget(role: str) -> int:
    """Default context budget (tokens) for `role`: 18% of its measured `gt prime`, at most 2,500."""
    check_role(role)
    prime = GT_PRIME_TOKENS.get(role)
    if prime is None:
        return MAX_BUDGET
    return min(MAX_BUDGET, int(prime * PRIME_FRACTION) // 50 * 50)


@dataclass
class Hit:
    """One retrieved chunk: `similarity` is cosine to the prompt, `score` adds the recency boost."""

    id: str
    text: str
    meta: dict[str, Any]
    similarity: float
    score: float

    @property
    def source(self) -> str:
        return str(self.meta.get("source", "?"))

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "source": self.source, "kind": self.meta.get("kind"), "rig": self.meta.get("rig"),
                "role": self.meta.get("role"), "status": self.meta.get("status"),
                "similarity": round(self.similarity, 4), "score": round(self.score, 4), "text": self.text}


def build_where(role: str | None, rig: str | None, statuses: tuple[str, ...] | None) -> dict[str, Any] | None:
    """Chroma `where` for the filters; None statuses = every status."""
    conds: list[dict[str, Any]] = []
    if role:
        conds.append({"role": {"$in": [role, ANY]}})
    if rig:
        conds.append({"rig": {"$in": [rig, ANY]}})
    if statuses is not None:
        conds.append({"status": {"$in": ["", *statuses]}})
    if not conds:
        return None
    return conds[0] if len(conds) == 1 else {"$and": conds}


def recency_boost(updated: float, now: float, weight: float = RECENCY_WEIGHT,
                  half_life_days: float = HALF_LIFE_DAYS) -> float:
    """weight * 0.5 ** (age / half-life); 0 for unknown times."""
    if not updated or updated <= 0:
        return 0.0
    age_days = max(0.0, now - updated) / 86400.0
    return weight * 0.5 ** (age_days / half_life_days)


def mmr(relevance: list[float], vectors: Any, k: int, lam: float = MMR_LAMBDA) -> list[int]:
    """Maximal marginal relevance: indices of `k` items trading relevance against redundancy.

    `vectors` is (n, d) with unit rows, so `vectors @ vectors.T` is the cosine matrix (n, n).
    """
    import numpy as np

    n = len(relevance)
    if n == 0 or k <= 0:
        return []
    rel = np.asarray(relevance, dtype=np.float64)
    v = np.asarray(vectors, dtype=np.float64)
    sim = v @ v.T  # (n, n)
    chosen = [int(rel.argmax())]
    max_sim = sim[chosen[0]].copy()  # (n,) similarity of each item to its nearest chosen one
    while len(chosen) < min(k, n):
        score = lam * rel - (1 - lam) * max_sim
        score[chosen] = -np.inf
        nxt = int(score.argmax())
        chosen.append(nxt)
        max_sim = np.maximum(max_sim, sim[nxt])
    return chosen


def retrieve(prompt: str, role: str | None = None, rig: str | None = None, town: Any = None, k: int = 8,
             statuses: tuple[str, ...] | None = ACTIVE_STATUSES, candidates: int = 40,
             lam: float = MMR_LAMBDA, now: float | None = None) -> list[Hit]:
    """The `k` best chunks for `prompt` after filters, recency boost and MMR (best first).

    Returns [] when the town has no index yet (logged); raises GtExtError for a bad role or town.
    """
    from gt_ext.rag.index import open_collection, rag_dir
    from gt_ext.rag.sources import resolve_town

    if role is not None:
        check_role(role)
    root = resolve_town(town)
    col = open_collection(root, create=False)
    if col is None:
        log.warning("no RAG index at %s: run `gt-ext rag reindex`", rag_dir(root))
        return []
    # No col.count() here: n_results may exceed what the filters leave (Chroma returns fewer), and
    # the candidates' own embeddings come back with them for MMR (nothing is embedded twice).
    res = col.query(query_texts=[prompt], n_results=max(1, candidates), where=build_where(role, rig, statuses),
                    include=["documents", "metadatas", "distances", "embeddings"])
    ids = res["ids"][0]
    if not ids:
        if col.count() == 0:
            log.warning("RAG index at %s is empty: run `gt-ext rag reindex`", rag_dir(root))
        return []
    now = time.time() if now is None else now
    sims = [1.0 - float(d) for d in res["distances"][0]]  # cosine space: distance = 1 - cos
    metas = res["metadatas"][0]
    boost = boosted(root, role)  # files changed since the role's deployed model was trained
    scores = [s + recency_boost(float((m or {}).get("updated", 0.0)), now)
              + (BOOST if (m or {}).get("source") in boost else 0.0) for s, m in zip(sims, metas, strict=True)]
    order = mmr(scores, res["embeddings"][0], k, lam)
    return [Hit(ids[i], res["documents"][0][i], dict(metas[i] or {}), sims[i], scores[i]) for i in order]


@functools.lru_cache(maxsize=4)
def _tokenizer(name: str) -> Any:
    from gt_ext.models import load_tokenizer

    return load_tokenizer(name)


def count_tokens(text: str, tokenizer: Any) -> int:
    """Tokens of `text` in the serving model's tokenizer (no special tokens)."""
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def assemble(hits: list[Hit], budget_tokens: int, tokenizer: Any, header: str = "## Town context") -> str:
    """Pack hits (in order) into one block of at most `budget_tokens` tokens; skips what does not fit.

    The first hit is truncated to fit if even it alone is too long, so a non-empty retrieval never
    yields an empty block.
    """
    if budget_tokens <= 0 or not hits:
        return ""
    parts = [header]
    used = count_tokens(header, tokenizer)
    for h in hits:
        piece = f"\n\n[{h.source}]\n{h.text}"
        n = count_tokens(piece, tokenizer)
        if used + n <= budget_tokens:
            parts.append(piece)
            used += n
        elif len(parts) == 1 and budget_tokens - used > 16:
            ids = tokenizer(piece, add_special_tokens=False)["input_ids"][: budget_tokens - used - 2]
            cut = tokenizer.decode(ids)
            while cut and count_tokens(cut, tokenizer) > budget_tokens - used:
                cut = cut[:-8]  # decode/encode may not round-trip exactly at the cut
            if cut:
                parts.append(cut)
                used += count_tokens(cut, tokenizer)
    return "".join(parts) if len(parts) > 1 else ""


def context_for(prompt: str, role: str, rig: str | None = None, town: Any = None, budget_tokens: int | None = None,
                tokenizer: str = DEFAULT_TOKENIZER) -> str:
    """The context block for an agent of `role` (in `rig`) about to answer `prompt`; "" if no index.

    At most `budget_tokens` tokens of `tokenizer` (the serving model's; SmolLM2 by default);
    None = the role's default, `role_budget(role)`.
    """
    if budget_tokens is None:
        budget_tokens = role_budget(role)
    if budget_tokens < 0:
        raise GtExtError(f"budget_tokens must be >= 0, got {budget_tokens}")
    hits = retrieve(prompt, role=role, rig=rig, town=town, k=24)
    where = f"role {role}" + (f", rig {rig}" if rig else "")
    return assemble(hits, budget_tokens, _tokenizer(tokenizer), header=f"## Town context ({where})")


def index_exists(town: Any = None) -> bool:
    """True if the town has a RAG index folder."""
    from gt_ext.rag.index import rag_dir
    from gt_ext.rag.sources import resolve_town

    return (rag_dir(resolve_town(town)) / "chroma").is_dir()

