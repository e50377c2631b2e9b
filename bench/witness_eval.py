"""Does the sample town make a better witness? Base SmolLM2 against a witness LoRA trained on the
sample town, both scored on the project's witness suite, in one process.

    .venv/bin/python bench/witness_eval.py [--steps 60] [--dpo-steps N] [--out DIR] [--reuse]

The whole path is the product's: sample town -> corpus store (scrub, gates) -> export -> the
training core with the witness preset (gt_ext/train/presets/witness_smollm2.yaml) [-> DPO on the
witness preference pairs as a task adapter on top] -> the eval
runner on `builtin:witness` with the contamination guard on the training corpus. It prints each
model's categories and composite, and the difference (the issue asks for >= 15 points).

On 2 CPU cores training takes ~13 s a step when the machine is idle; `--reuse` keeps an earlier run
in --out and only re-scores.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gt_ext.corpus.sample_town import generate, ingest_sessions  # noqa: E402
from gt_ext.corpus.shards import write_shards  # noqa: E402
from gt_ext.corpus.store import Store  # noqa: E402
from gt_ext.evals import runner  # noqa: E402
from gt_ext.train.run import prepare, run_training  # noqa: E402

PRESET = Path(__file__).resolve().parents[1] / "gt_ext" / "train" / "presets" / "witness_smollm2.yaml"
BASE = "smollm2-135m-instruct"
# Six extra single-decision reports per patrol: the witness's decisions are one token each in an
# answer, so a 135M model needs many of them to learn which report calls for which action.
REPORTS = 6


def build_corpus(out: Path, seed: int) -> Path:
    """Sample town -> store -> export; returns the export folder."""
    corpus = out / "corpus"
    if (corpus / "manifest.json").is_file():
        return corpus
    with Store.open(out / "store") as st:
        ingest_sessions(st, generate(seed=seed, reports=REPORTS))
        write_shards(st, corpus, all_rigs=True)  # the sample town pools its rigs: one witness corpus
    return corpus


def score(model: str, corpus: Path) -> dict:
    res = runner.evaluate(model, "builtin:witness", corpus=corpus, write=False, progress=True)
    return res.to_dict()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=60, help="training steps (batch 2 x 1024 packed tokens)")
    ap.add_argument("--seed", type=int, default=0, help="sample town seed")
    ap.add_argument("--out", type=Path, default=Path.home() / ".cache" / "gt-ext" / "bench-witness-eval")
    ap.add_argument("--reuse", action="store_true", help="keep a finished run in --out; only score")
    ap.add_argument("--dpo-steps", type=int, default=0, help="DPO steps on top of the SFT adapter (default none)")
    ap.add_argument("--set", action="append", default=[], help="extra training config overrides KEY=VALUE")
    a = ap.parse_args()

    a.out.mkdir(parents=True, exist_ok=True)
    corpus = build_corpus(a.out, a.seed)
    run = a.out / f"run-{a.steps}"
    if not (a.reuse and (run / "adapter" / "adapter_config.json").is_file()):
        if run.exists():
            shutil.rmtree(run)
        # CPU budget off: this bench measures quality after a fixed number of steps.
        # max_length 320: long patrol sessions are cut to their opening (prompt, polecat list, first
        # actions), which keeps a pass over the ~570 witness examples at ~66 steps.
        p = prepare("witness", corpus, config_path=PRESET, overrides=[
            f"max_steps={a.steps}", "max_cpu_s=null", "optim.warmup_steps=3", "data.max_length=320", *a.set])
        t0 = time.perf_counter()
        info = run_training(p, run, progress=True)
        m = info["metrics"]
        print(f"trained {m['steps']} steps in {time.perf_counter() - t0:.0f} s: "
              f"val loss {m['val_loss_start']:.3f} -> {m['val_loss_end']:.3f}")

    scored = run
    if a.dpo_steps:
        # DPO on the witness pairs (right vs wrong action of the same report), as a task adapter
        # on top of the SFT role adapter; the reference model is that SFT model. max_length 320:
        # decision pairs are ~200 tokens; the few long patrol pairs would pad every batch to 1024
        # (a 5x slower step), so they are cut, and those cut before they part carry no loss.
        dpo = a.out / f"run-{a.steps}-dpo-{a.dpo_steps}"
        if not (a.reuse and (dpo / "adapter" / "adapter_config.json").is_file()):
            if dpo.exists():
                shutil.rmtree(dpo)
            p = prepare("witness", corpus, config_path=PRESET, overrides=[
                "mode=dpo", f"role_adapter={run / 'adapter'}", f"max_steps={a.dpo_steps}", "max_cpu_s=null",
                "data.pack=false", "data.batch_size=8", "data.max_length=320", "optim.lr=5e-4",
                "optim.warmup_steps=2", "dpo.beta=0.1", "dpo.precompute_ref=true", *a.set])
            t0 = time.perf_counter()
            info = run_training(p, dpo, progress=True)
            print(f"DPO {info['metrics']['steps']} steps in {time.perf_counter() - t0:.0f} s")
        scored = dpo
    base, trained = score(f"base:{BASE}", corpus), score(str(scored), corpus)
    cats = sorted(set(base["categories"]) | set(trained["categories"]))
    print(f"\n{'category':22} {'base':>7} {'trained':>8}")
    for c in cats:
        b, t = base["categories"].get(c, {}), trained["categories"].get(c, {})
        print(f"{c:22} {b.get('score', 0):7.1f} {t.get('score', 0):8.1f}")
    delta = trained["composite"] - base["composite"]
    print(f"{'composite':22} {base['composite']:7.1f} {trained['composite']:8.1f}   difference {delta:+.1f} "
          f"(goal >= +15)")
    print(f"tasks refused by the contamination guard: {len((trained.get('contamination') or {}).get('refused', []))}")
    (a.out / f"result-{a.steps}.json").write_text(json.dumps({"base": base, "trained": trained, "delta": delta},
                                                             indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
