"""Benchmark: the RAG index at N documents, our path against plain Chroma, in one process.

Indexing (docs/s): ours = structural chunks + scrub + batched embed/upsert with the id diff
(`gt_ext.rag.index.sync_chunks`), then a no-change re-sync (what every incremental run does);
baseline = plain Chroma `collection.add` one document at a time (a hook-driven indexer without
batching), on a subset, same embedding model. Query latency (p50/p95 ms): ours = `retrieve`
(filters, recency, MMR) + `assemble` under a 2,500-token budget; baseline = plain Chroma
top-5 `collection.query`. Both over the same N-document collection, same prompts.

Then, when the real gt is installed, the context size per role against real `gt prime` output
for that role (in a temp town made by `gt install`), both in SmolLM2 tokens; goal <= 20%.

    .venv/bin/python bench/rag.py [--docs 10000] [--baseline-docs 500] [--queries 50] [--no-prime]
"""

from __future__ import annotations

import argparse
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


def _dolt_pids_under(folder: Path) -> list[int]:
    """Pids of dolt servers whose working folder is inside `folder` (started by our temp town)."""
    import os

    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if Path(os.readlink(d / "cwd")).is_relative_to(folder) and b"dolt" in (d / "cmdline").read_bytes():
                    out.append(int(d.name))
            except OSError:
                continue
    return out


def prime_tokens(tok, work: Path) -> dict[str, int] | None:
    """Tokens of real `gt prime` stdout per role, in a temp town made by `gt install`; None without gt."""
    import os
    import signal
    import subprocess

    from gt_ext.gastown.binaries import find_gt

    gt = find_gt(required=False)
    if gt is None:
        return None
    home = work / "home"
    home.mkdir()
    (home / ".gitconfig").write_text("[user]\n\tname = bench\n\temail = bench@localhost\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GT_", "BEADS_", "BD_"))}
    env["HOME"] = str(home)
    # gt needs bd and dolt on PATH: the venv's bin (where install.sh links them) and gt's own folder.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), str(Path(gt).parent), env.get("PATH", "")])
    town = work / "primetown"
    try:
        subprocess.run([gt, "install", str(town)], env=env, capture_output=True, check=True, timeout=300)
        out = {}
        for role in PRIME_PROMPTS:
            r = subprocess.run([gt, "prime"], cwd=town, env=dict(env, GT_ROLE=role, GT_RIG="demo"),
                               capture_output=True, text=True, timeout=120)
            out[role] = len(tok(r.stdout, add_special_tokens=False)["input_ids"])
        return out
    except (subprocess.SubprocessError, OSError) as e:
        err = getattr(e, "stderr", b"") or b""
        err = err.decode(errors="replace") if isinstance(err, bytes) else err
        print(f"gt prime comparison skipped: {type(e).__name__} {(err.strip().splitlines() or [''])[-1][:200]}")
        return None
    finally:
        if town.is_dir():
            subprocess.run([gt, "dolt", "stop"], cwd=town, env=env, capture_output=True, timeout=60)
        for pid in _dolt_pids_under(work):  # whatever the town started and did not stop
            os.kill(pid, signal.SIGTERM)


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

    from gt_ext.rag.embed import MiniLMEmbedding, embed
    from gt_ext.rag.index import open_collection, sync_chunks
    from gt_ext.rag.retrieve import _tokenizer, assemble, context_for, retrieve

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
    print(f"rag bench: {n} documents ({len(by_group)} groups), {args.queries} queries, baseline indexed {len(sub)} docs")
    print(f"indexing   ours {ours_rate:8.1f} docs/s   baseline (one add per doc) {base_rate:8.1f} docs/s   "
          f"ratio {ours_rate / base_rate:5.2f}x")
    print(f"re-sync, nothing changed: ours {resync_s:.2f} s for {n} docs ({n / resync_s:.0f} docs/s); "
          f"baseline would re-embed at {base_rate:.1f} docs/s = {n / base_rate:.0f} s   ratio {n / base_rate / resync_s:.0f}x")
    print(f"query      ours p50 {pct(ours_ms, 50):7.1f} ms  p95 {pct(ours_ms, 95):7.1f} ms   "
          f"baseline top-5 p50 {pct(base_ms, 50):7.1f} ms  p95 {pct(base_ms, 95):7.1f} ms   "
          f"p50 ratio {pct(ours_ms, 50) / pct(base_ms, 50):5.2f}x (ours/baseline)")
    print(f"context    mean {statistics.mean(tokens):.0f} tokens, max {max(tokens)} (budget 2500)")

    primes = None if args.no_prime else prime_tokens(tok, tmp)
    if primes:
        print("role       gt prime  rag context  ratio   (SmolLM2 tokens; goal <= 20%)")
        for role, ptoks in primes.items():
            block = context_for(PRIME_PROMPTS[role], role, rig=RIGS[0], town=town)
            ctoks = len(tok(block, add_special_tokens=False)["input_ids"])
            print(f"{role:10s} {ptoks:8d}  {ctoks:11d}  {ctoks / ptoks:6.1%}   budget for 20%: {int(ptoks * 0.2)}")


if __name__ == "__main__":
    main()
