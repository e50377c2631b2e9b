"""Patrol models that know Gas Town's real patrols: base SmolLM2 against a LoRA per patrol role
(witness, refinery, deacon, dog), each scored on its held-out patrol suite next to the baselines.

    .venv/bin/python bench/patrol_eval.py [--roles witness,refinery,deacon,dog] [--steps 150] [--reps 4] [--reuse]
                                          [--constrain]

The path is the product's, per role and one role at a time: `gt-ext corpus patrol --role R` (formula
patrol decisions staged with the real bd/git/tmux/dolt, evidence cached per scenario family, into
the corpus store: scrub, gates) -> `gt formula run train-role-model` (this project's runner: corpus
export -> dry run -> train with gt_ext/train/presets/patrol_smollm2.yaml -> export adapter, merged
and GGUF -> eval on `builtin:R-patrol` with the contamination guard on that corpus -> register),
each role in its own GT_EXT_HOME under --out. The base model is scored on the same suite with the
same guard. Per role it prints valid JSON, allowed action (also on the held-out reworded family),
pass, the best constant action per step, a random allowed action and always-no-op, for both models;
the acceptance asks the trained model for >= 98 / >= 99 / best constant + 30. `--constrain` also
scores the trained model with constrained decoding (its `action` held to the listed names,
gt_ext.serve.choices), printed as a third row: the free row says whether the model reads the list.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gt_ext.evals import runner  # noqa: E402
from gt_ext.orchestrate.formula import find_formula  # noqa: E402
from gt_ext.orchestrate.runner import run_formula  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PRESET = ROOT / "gt_ext" / "train" / "presets" / "patrol_smollm2.yaml"
BASE = "smollm2-135m-instruct"


def line(name: str, d: dict) -> str:
    p = d["patrol"]["overall"]
    rw = d["patrol"].get("reworded") or {}
    return (f"{name:8} json {p['valid_json']:5.1f}  allowed {p['allowed_action']:5.1f}  pass {p['model']:5.1f}  "
            f"best-const {p['best_constant']:5.1f}  random {p['random_allowed']:5.1f}  no-op {p['always_noop']:5.1f}  "
            f"over-const {p['over_best_constant']:+5.1f}  steps learned {p['steps_learned']}/{p['steps']}  "
            f"| reworded: json {rw.get('valid_json', 0):5.1f} allowed {rw.get('allowed_action', 0):5.1f} "
            f"pass {rw.get('model', 0):5.1f}")


def _export_all_rigs(role: str, home: Path, corpus: Path) -> None:
    """Export the role's patrol corpus from every rig of the sample town. The staged witness and
    refinery decisions are spread over its training towns' rigs; the formula's own export is
    rig-local, so the bench writes the export first (`--all-rigs`, an explicit choice) and the
    formula's `--if-missing` export step keeps it."""
    from gt_ext.corpus.shards import write_shards
    from gt_ext.corpus.store import Store

    if not (corpus / "manifest.json").is_file():
        with Store.open(home / "corpus") as st:
            write_shards(st, corpus, all_rigs=True, role=role)


def _direct(role: str, home: Path, out: Path, suite: str, a: argparse.Namespace) -> dict:
    """Store -> export -> train -> score, in this process (the formula's steps minus its dry run,
    GGUF export and registry)."""
    from gt_ext.train.run import prepare, run_training

    corpus, run = out / "job" / "corpus", out / "job" / "run"
    _export_all_rigs(role, home, corpus)
    if not (run / "adapter" / "adapter_config.json").is_file():
        p = prepare(role, corpus, config_path=PRESET, overrides=[f"max_steps={a.steps}", *a.train_args.split()])
        t0 = time.perf_counter()
        info = run_training(p, run, progress=True)
        print(f"{role}: {len(p.train)} train examples, {info['metrics']['steps']} steps in "
              f"{time.perf_counter() - t0:.0f} s", flush=True)
    result = {"trained": runner.evaluate(str(run), suite, corpus=corpus, write=False, progress=True).to_dict(),
              "training": json.loads((run / "run.json").read_text()).get("metrics", {})}
    if a.constrain:
        result["constrained"] = runner.evaluate(str(run), suite, corpus=corpus, write=False, progress=True,
                                                constrain=True).to_dict()
    if (out / "result-base.json").is_file():
        result["base"] = json.loads((out / "result-base.json").read_text())
    (out / "result.json").write_text(json.dumps(result, indent=1))
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--roles", default="witness,refinery,deacon,dog")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--reps", type=int, default=4, help="stagings per situation and training family")
    ap.add_argument("--out", type=Path, default=Path.home() / ".cache" / "gt-ext" / "bench-patrol")
    ap.add_argument("--reuse", action="store_true", help="keep finished formula steps in --out (they resume)")
    ap.add_argument("--no-base", action="store_true", help="skip scoring the base model")
    ap.add_argument("--constrain", action="store_true",
                    help="also score the trained model with its action held to the listed names")
    ap.add_argument("--base-only", action="store_true",
                    help="only score the base model, on each role's suite once that role's corpus is exported "
                         "(run beside a --no-base run to overlap scoring with the next role's training)")
    ap.add_argument("--train-args", default="", help="extra trainer settings KEY=VALUE ...")
    ap.add_argument("--direct", action="store_true",
                    help="same corpus, trainer and suite, but in this process without the formula's dry run, "
                         "GGUF export and registry (the run folder is scored with its adapter on the base)")
    a = ap.parse_args()
    formula = find_formula("train-role-model")
    summary = {}
    if a.base_only:
        for role in a.roles.split(","):
            corpus = (a.out / role / "job" / "corpus").resolve()
            while not (corpus / "manifest.json").is_file():
                time.sleep(20)
            res = runner.evaluate(f"base:{BASE}", f"builtin:{role}-patrol", corpus=corpus, write=False, progress=True)
            (a.out / role / "result-base.json").write_text(json.dumps(res.to_dict(), indent=1))
            print(f"{role:8} " + line("base", res.to_dict()), flush=True)
        return 0
    for role in a.roles.split(","):
        out = (a.out / role).resolve()
        if out.exists() and not a.reuse:
            subprocess.run(["rm", "-rf", str(out)], check=True)
        home = out / "home"
        home.mkdir(parents=True, exist_ok=True)
        os.environ["GT_EXT_HOME"] = str(home)
        t0 = time.perf_counter()
        if not (home / ".patrol-stored").is_file():
            subprocess.run([str(Path(sys.executable).parent / "gt-ext"), "corpus", "patrol", "--role", role, "--reps", str(a.reps)], check=True)
            (home / ".patrol-stored").write_text("ok\n")
        suite = f"builtin:{role}-patrol"
        if a.direct:
            result = _direct(role, home, out, suite, a)
            summary[role] = result
            for name in ("base", "trained", "constrained"):
                if name in result:
                    print(f"{role:8} " + line(name, result[name]), flush=True)
            continue
        given = {"role": role, "suite": suite, "max_steps": str(a.steps), "max_seconds": "3600", "lora_rank": "16",
                 "train_args": f"--config {PRESET} {a.train_args}".strip()}
        job = out / "job"
        _export_all_rigs(role, home, job / "corpus")
        res = run_formula(formula, given, job, echo=lambda s: print(s, flush=True))
        print(f"{role}: train-role-model ran {', '.join(res.ran) or 'nothing'} "
              f"({time.perf_counter() - t0:.0f} s incl. staging)", flush=True)
        result = {"trained": json.loads((job / "export" / f"eval-{role}-patrol.json").read_text())}
        run_json = json.loads((job / "run" / "run.json").read_text())
        result["training"] = run_json.get("metrics", {})
        if (out / "result-base.json").is_file():
            result["base"] = json.loads((out / "result-base.json").read_text())
        elif not a.no_base:
            result["base"] = runner.evaluate(f"base:{BASE}", suite, corpus=job / "corpus", write=False,
                                             progress=True).to_dict()
        if a.constrain:
            result["constrained"] = runner.evaluate(str(job / "export"), suite, corpus=job / "corpus", write=False,
                                                    progress=True, constrain=True).to_dict()
        (out / "result.json").write_text(json.dumps(result, indent=1))
        summary[role] = result
        m = result["training"]
        print(f"{role:8} training: {m.get('steps')} steps, val loss {m.get('val_loss_start')} -> {m.get('val_loss_end')}")
        for name in ("base", "trained", "constrained"):
            if name in result:
                print(f"{role:8} " + line(name, result[name]), flush=True)
    print("\n== summary: held-out scenario families, pass % ==")
    for role, result in summary.items():
        refused = len((result["trained"].get("contamination") or {}).get("refused", []))
        print(f"{role}: contamination guard refused {refused} task(s)")
        for name in ("base", "trained", "constrained"):
            if name in result:
                print(f"{role:8} " + line(name, result[name]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
