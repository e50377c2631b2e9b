"""Benchmark: the RAG index at N documents, our path against plain Chroma, in one process.

Indexing (docs/s): ours = structural chunks + scrub + batched embed/upsert with the id diff
(`gt_ext.rag.index.sync_chunks`), then a no-change re-sync (what every incremental run does);
baseline = plain Chroma `collection.add` one document at a time (a hook-driven indexer without
batching), on a subset, same embedding model. Query latency (p50/p95 ms): ours = `retrieve`
(filters, recency, MMR) + `assemble` under a 2,500-token budget; baseline = plain Chroma
top-5 `collection.query`. Both over the same N-document collection, same prompts.

Then, when the real gt is installed, the context size per role against real `gt prime` output
for that role, both from one temp town made by real gt and counted in SmolLM2 tokens (goal <= 20%),
at the role's default budget and at a flat 2,500, with how many of the top-5 chunks each keeps.
Embedding runs on $GT_EXT_RAG_THREADS torch threads (default 1), for both paths.

    .venv/bin/python bench/rag.py [--docs 10000] [--baseline-docs 500] [--queries 50] [--no-prime]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gt_ext.rag.chunk import chunk_bead  # noqa: E402
from gt_ext.roles import ROLES  # noqa: E402

SUBJECTS = ["payments service", "image resizer", "webhook receiver", "auth gateway", "search indexer",
            "billing cron", "release pipeline", "settings page", "mobile sync", "email sender",
            "rate limiter", "dolt server", "merge queue", "polecat worktree", "witness patrol"]
PROBLEMS = ["times out under load", "leaks memory", "drops retries", "returns stale data",
            "fails on CI one run in five", "needs a config flag", "logs secrets in debug mode",
            "ignores the rig prefix", "deadlocks on shutdown", "is missing documentation",
            "must be upgraded to the new driver", "panics on empty input"]
STATUSES = ["open", "open", "in_progress", "blocked", "closed", "closed", "hooked"]
RIGS = ["alpha", "beta", "gamma", "delta"]


def make_beads(n: int, seed: int = 0) -> list[dict]:
    """N synthetic beads with bd's JSON fields, deterministic for a seed."""
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        subj, prob = rnd.choice(SUBJECTS), rnd.choice(PROBLEMS)
        out.append({"id": f"bx-{i:05d}", "title": f"The {subj} {prob}", "status": rnd.choice(STATUSES),
                    "description": f"Seen in rig run {rnd.randint(1, 9999)}: the {subj} {prob} "
                                   f"when {rnd.choice(SUBJECTS)} is busy. Owner asked for a fix this week.",
                    "priority": rnd.randint(0, 4), "issue_type": rnd.choice(["bug", "task", "feature"]),
                    "labels": [f"role:{rnd.choice(ROLES)}"] if rnd.random() < 0.3 else [],
                    "updated_at": f"2026-{rnd.randint(1, 11):02d}-{rnd.randint(1, 28):02d}T10:00:00Z",
                    "_rig": rnd.choice(RIGS)})
    return out


def pct(xs: list[float], q: float) -> float:
    return statistics.quantiles(xs, n=100)[int(q) - 1] if len(xs) > 1 else xs[0]


PRIME_PROMPTS = {
    "mayor": "what should the town work on next?", "deacon": "run the patrol: anything unhealthy?",
    "boot": "is the deacon stuck?", "dog": "which maintenance job is queued?",
    "witness": "which polecats are stuck or idle?", "refinery": "what is next in the merge queue?",
    "polecat": "what is on my hook and how do I finish it?", "crew": "what is blocked in this rig?",
}


def prime_section(tok, work: Path) -> None:
    """Context per role against real `gt prime` for that role, both from one town made by real gt.

    The town (`gt install` + `gt rig add demo`, via `gastown.testing.make_town`) is indexed as is
    (gt's own formulas, docs and settings); for each role, full `gt prime` output (not --dry-run:
    nothing else runs in this town) against the context block for a typical prompt of the role, at
    the role's default budget and at a flat 2,500. "top-5": how many of the 5 best chunks
    (`retrieve(k=5)`, what the recall test checks) the block holds, i.e. what the budget costs.
    """
    from gt_ext.errors import GtExtError
    from gt_ext.gastown.binaries import find_gt
    from gt_ext.gastown.prime import gt_prime, prime_targets, stable_text
    from gt_ext.gastown.testing import make_town
    from gt_ext.rag.index import reindex
    from gt_ext.rag.retrieve import (
        GT_PRIME_TOKENS,
        MAX_BUDGET,
        context_for,
        count_tokens,
        retrieve,
        role_budget,
    )

    gt = find_gt(required=False)
    if gt is None:
        print("gt prime comparison skipped: the real gt is not installed")
        return
    # gt install needs bd and dolt on PATH: the venv's bin (where install.sh links them), gt's folder.
    os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), str(Path(gt).parent), os.environ["PATH"]])
    try:
        tt = make_town(work / "primetown")
    except GtExtError as e:
        print(f"gt prime comparison skipped: {str(e).splitlines()[0][:200]}")
        return
    saved = {k: os.environ.get(k) for k in ("GT_TOWN_ROOT", "GT_DOLT_PORT")}
    os.environ.update(GT_TOWN_ROOT=str(tt.root), GT_DOLT_PORT=str(tt.dolt_port))  # bd reads the rig beads
    try:
        rep = reindex(tt.root)
        print(f"gt-made town ({tt.mode}): {rep.total} chunks from {rep.groups_scanned} sources"
              + (f", errors: {rep.errors}" if rep.errors else ""))
        print("role       gt prime (table) | role budget  context  ratio  top-5 | at 2500: context  ratio  top-5"
              "   (SmolLM2 tokens; goal <= 20%)")
        for tg in prime_targets(tt.root):
            text = gt_prime(tg.role, tt.root, tg.rig, tg.workdir, env=tt.env)
            if text is None:
                print(f"{tg.role:10s} gt prime failed (logged)")
                continue
            ptoks = count_tokens(stable_text(text), tok)
            prompt = PRIME_PROMPTS[tg.role]
            top5 = retrieve(prompt, role=tg.role, rig=tg.rig, town=tt.root, k=5)
            cols = []
            for budget in (role_budget(tg.role), MAX_BUDGET):
                block = context_for(prompt, tg.role, rig=tg.rig, town=tt.root, budget_tokens=budget)
                ctoks = count_tokens(block, tok) if block else 0
                cols.append((budget, ctoks, ctoks / ptoks, sum(h.text in block for h in top5)))
            (b, c, r, f), (_, c2, r2, f2) = cols
            print(f"{tg.role:10s} {ptoks:8d} ({GT_PRIME_TOKENS.get(tg.role, 0):5d}) | {b:11d} {c:8d} {r:6.1%}  "
                  f"{f}/{len(top5)}   | {c2:16d} {r2:6.1%}  {f2}/{len(top5)}")
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        tt.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=10_000)
    ap.add_argument("--baseline-docs", type=int, default=500)
    ap.add_argument("--queries", type=int, default=50)
    ap.add_argument("--no-prime", action="store_true", help="Skip the comparison with real `gt prime`.")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="rag-bench-"))
    try:
        run(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run(args: argparse.Namespace, tmp: Path) -> None:
    """Index, query and compare inside the scratch folder `tmp`."""
    import chromadb
    from chromadb.config import Settings

    from gt_ext.rag.embed import MiniLMEmbedding, embed, embed_threads
    from gt_ext.rag.index import open_collection, sync_chunks
    from gt_ext.rag.retrieve import _tokenizer, assemble, retrieve

    town = tmp / "town"
    (town / "mayor").mkdir(parents=True)
    (town / "mayor" / "town.json").write_text('{"name": "bench"}')
    beads = make_beads(args.docs)
    embed(["warm up"])  # load MiniLM before timing anything
    tok = _tokenizer("smollm2-135m-instruct")

    # -- indexing: ours ---------------------------------------------------------------------------
    t0 = time.perf_counter()
    chunks = [c for b in beads for c in chunk_bead(b, rig=b["_rig"], group=f"beads:{b['_rig']}")]
    col = open_collection(town)
    by_group: dict[str, list] = {}
    for c in chunks:
        by_group.setdefault(c.meta["group"], []).append(c)
    with tqdm(total=len(chunks), desc="ours: index", unit="doc") as bar:
        for g, cs in by_group.items():
            sync_chunks(col, g, cs, progress=bar)
    ours_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for g, cs in by_group.items():
        assert sync_chunks(col, g, cs)[0] == 0
    resync_s = time.perf_counter() - t0
    assert col.count() == len(chunks)

    # -- indexing: baseline, one add per document ---------------------------------------------------
    base = chromadb.PersistentClient(path=str(tmp / "baseline"), settings=Settings(anonymized_telemetry=False))
    bcol = base.get_or_create_collection("baseline", embedding_function=MiniLMEmbedding(),
                                         configuration={"hnsw": {"space": "cosine"}})
    sub = chunks[: args.baseline_docs]
    t0 = time.perf_counter()
    for c in tqdm(sub, desc="baseline: index", unit="doc"):
        bcol.add(ids=[c.id], documents=[c.text], metadatas=[c.meta])
    base_s = time.perf_counter() - t0

    # -- queries -----------------------------------------------------------------------------------
    rnd = random.Random(1)
    prompts = [f"what is wrong with the {rnd.choice(SUBJECTS)}? it {rnd.choice(PROBLEMS)}" for _ in range(args.queries)]
    roles = [rnd.choice(ROLES) for _ in prompts]
    rigs = [rnd.choice(RIGS) for _ in prompts]
    retrieve(prompts[0], role=roles[0], rig=rigs[0], town=town)  # warm caches
    ours_ms, base_ms, tokens = [], [], []
    for p, role, rig in tqdm(list(zip(prompts, roles, rigs, strict=True)), desc="queries", unit="q"):
        t0 = time.perf_counter()
        block = assemble(retrieve(p, role=role, rig=rig, town=town, k=24), 2500, tok)
        ours_ms.append((time.perf_counter() - t0) * 1000)
        tokens.append(len(tok(block, add_special_tokens=False)["input_ids"]))
        t0 = time.perf_counter()
        col.query(query_texts=[p], n_results=5)
        base_ms.append((time.perf_counter() - t0) * 1000)

    n = len(chunks)
    ours_rate, base_rate = n / ours_s, len(sub) / base_s
    print(f"rag bench: {n} documents ({len(by_group)} groups), {args.queries} queries, baseline indexed {len(sub)} docs, "
          f"embedding on {embed_threads()} torch thread(s)")
    print(f"indexing   ours {ours_rate:8.1f} docs/s   baseline (one add per doc) {base_rate:8.1f} docs/s   "
          f"ratio {ours_rate / base_rate:5.2f}x")
    print(f"re-sync, nothing changed: ours {resync_s:.2f} s for {n} docs ({n / resync_s:.0f} docs/s); "
          f"baseline would re-embed at {base_rate:.1f} docs/s = {n / base_rate:.0f} s   ratio {n / base_rate / resync_s:.0f}x")
    print(f"query      ours p50 {pct(ours_ms, 50):7.1f} ms  p95 {pct(ours_ms, 95):7.1f} ms   "
          f"baseline top-5 p50 {pct(base_ms, 50):7.1f} ms  p95 {pct(base_ms, 95):7.1f} ms   "
          f"p50 ratio {pct(ours_ms, 50) / pct(base_ms, 50):5.2f}x (ours/baseline)")
    print(f"context    mean {statistics.mean(tokens):.0f} tokens, max {max(tokens)} (budget 2500)")

    if not args.no_prime:
        prime_section(tok, tmp)


if __name__ == "__main__":
    main()
