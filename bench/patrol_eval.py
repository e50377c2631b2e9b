"""Patrol models that know Gas Town's real patrols: base SmolLM2 against a LoRA per patrol role
(witness, refinery, deacon, dog), each scored on its held-out patrol suite next to the baselines.

    .venv/bin/python bench/patrol_eval.py [--roles witness,refinery,deacon,dog] [--steps 60] [--reuse]

The path is the product's: formula patrol decisions staged with the real bd/git/tmux/dolt (the
evidence is cached per scenario family) -> corpus store (scrub, gates) -> export -> the training
core with gt_ext/train/presets/patrol_smollm2.yaml -> export (adapter + merged) -> the eval runner
on `builtin:<role>-patrol` with the contamination guard on that corpus. Roles train one at a time.
Per role it prints valid JSON, allowed action (also on the held-out reworded family), pass, the
best constant action per step, a random allowed action and always-no-op, for both models; the
acceptance asks the trained model for >= 98 / >= 99 / best constant + 30.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gt_ext.corpus.export import export_corpus  # noqa: E402
from gt_ext.corpus.patrol.build import sessions  # noqa: E402
from gt_ext.corpus.sample_town import ingest_sessions  # noqa: E402
from gt_ext.corpus.store import Store  # noqa: E402
from gt_ext.evals import runner  # noqa: E402
from gt_ext.export.export import export_run  # noqa: E402
from gt_ext.train.run import prepare, run_training  # noqa: E402

PRESET = Path(__file__).resolve().parents[1] / "gt_ext" / "train" / "presets" / "patrol_smollm2.yaml"
BASE = "smollm2-135m-instruct"


def build_corpus(out: Path, role: str, seed: int, reps: int) -> Path:
    corpus = out / "corpus"
    if (corpus / "manifest.json").is_file():
        return corpus
    with Store.open(out / "store") as st:
        ingest_sessions(st, sessions(role, seed=seed, reps=reps, progress=True))
        export_corpus(st, corpus)
    return corpus


def line(name: str, d: dict) -> str:
    p = d["patrol"]["overall"]
    rw = d["patrol"].get("reworded") or {}
    return (f"{name:10} json {p['valid_json']:5.1f}  allowed {p['allowed_action']:5.1f}  pass {p['model']:5.1f}  "
            f"best-const {p['best_constant']:5.1f}  random {p['random_allowed']:5.1f}  no-op {p['always_noop']:5.1f}  "
            f"over-const {p['over_best_constant']:+5.1f}  steps learned {p['steps_learned']}/{p['steps']}  "
            f"reworded: allowed {rw.get('allowed_action', 0):5.1f} pass {rw.get('model', 0):5.1f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--roles", default="witness,refinery,deacon,dog")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--reps", type=int, default=3, help="stagings per situation and training family")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path.home() / ".cache" / "gt-ext" / "bench-patrol")
    ap.add_argument("--reuse", action="store_true", help="keep finished runs in --out; only score")
    ap.add_argument("--no-base", action="store_true", help="skip scoring the base model")
    ap.add_argument("--set", action="append", default=[], help="extra training overrides KEY=VALUE")
    a = ap.parse_args()
    summary = {}
    for role in a.roles.split(","):
        out = a.out / role
        out.mkdir(parents=True, exist_ok=True)
        corpus = build_corpus(out, role, a.seed, a.reps)
        run, exp = out / f"run-{a.steps}", out / f"export-{a.steps}"
        if not (a.reuse and (exp / "manifest.json").is_file()):
            for d in (run, exp):
                if d.exists():
                    shutil.rmtree(d)
            p = prepare(role, corpus, config_path=PRESET, overrides=[f"max_steps={a.steps}", *a.set])
            t0 = time.perf_counter()
            info = run_training(p, run, progress=True)
            m = info["metrics"]
            print(f"{role}: {len(p.train)} train examples, {m['steps']} steps in {time.perf_counter() - t0:.0f} s, "
                  f"val loss {m['val_loss_start']:.3f} -> {m['val_loss_end']:.3f}", flush=True)
            export_run(run, exp, quantized=())
        suite = f"builtin:{role}-patrol"
        res = {"trained": runner.evaluate(str(exp), suite, corpus=corpus, write=False, progress=True).to_dict()}
        if not a.no_base:
            res["base"] = runner.evaluate(f"base:{BASE}", suite, corpus=corpus, write=False, progress=True).to_dict()
        (out / f"result-{a.steps}.json").write_text(json.dumps(res, indent=1))
        summary[role] = res
        for name in ("base", "trained"):
            if name in res:
                print(f"{role:8} " + line(name, res[name]), flush=True)
        refused = len((res["trained"].get("contamination") or {}).get("refused", []))
        print(f"{role:8} tasks refused by the contamination guard: {refused}", flush=True)
    print("\n== summary (held-out families; pass %) ==")
    for role, res in summary.items():
        for name in ("base", "trained"):
            if name in res:
                print(f"{role:8} " + line(name, res[name]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
