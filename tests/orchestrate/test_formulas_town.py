"""Every step of every formula in formulas/, run by `gt formula run` (the shim, as a user types it)
in a real town (real gt, bd and dolt) holding a small sample history:

- corpus-collect: hooks installed, spool processed, the batch sweep takes the Claude transcripts
  and a pi session no hook spooled, the export is the rig's own;
- eval-suite: a suite scored and written next to the model;
- train-role-model for all 8 roles: the role's rig-local corpus, dry run, training (tiny LLaMA, one
  step), export (adapter, merged, GGUF), a full run of a small suite, registration in the town's
  Dolt registry; the job bead ends `done` where the gate passed and `gate-failed` where it did not,
  and deploy follows the gate;
- improve-role: after a CLAUDE.md edit the deployed witness is stale: collect, stale check, then
  the training steps run and a fresh candidate is registered (not deployed).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from gt_ext.orchestrate.formula import list_formulas, load_formula
from gt_ext.roles import ROLES

# ~3 minutes on an idle 2-core machine (8 formula runs, two at a time, each step its own process);
# the timeout leaves room for a loaded one.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(3600)]

VENV_BIN = Path(sys.executable).parent
RIG_ROLES = ("witness", "refinery", "polecat", "crew")
PASSING = ("deacon", "boot", "dog", "mayor")  # their small suite passes; the others' fails
TRAIN_ARGS = ("data.max_length=96 data.pack_length=96 data.batch_size=1 data.max_train_examples=4 "
              "data.max_val_examples=2 eval_every=0 checkpoint_every=0 threads=1 optim.warmup_steps=0")
# A one-task suite per role: gt-ext's gate gives composite 100 (passes) or 0 (fails).
SUITE = """prompts: ["You are the {{ role }}. {{ q }}"]
tests:
  - description: {role}-only
    vars: {{role: {role}, q: "Report."}}
    assert: [{{type: {kind}, value: "zz-never-written-zz"}}]
"""


@pytest.fixture(scope="module")
def town(tmp_path_factory: pytest.TempPathFactory):
    """A real town (rig `demo`) with a sample history written as a town leaves it: Claude
    transcripts, gt's events, and one pi session file no hook spooled."""
    from gt_ext.corpus.sample_town import generate, write_history
    from gt_ext.gastown.binaries import find_gt
    from gt_ext.gastown.testing import make_town
    from gt_ext.paths import cache_dir

    if find_gt(required=False) is None:
        pytest.skip("the real gt is not installed (./install.sh)")
    base = tmp_path_factory.mktemp("formulas")
    tt = make_town(base / "t")
    try:
        sessions = generate(seed=5, witness=2, per_role=3, reports=0)
        for s in sessions:  # the sample history's rigs all become this town's one rig
            if s.rig:
                s.user = s.user.replace(s.rig, "demo", 1)
                s.messages = [{**m, "content": m["content"].replace(s.rig, "demo")} for m in s.messages]
                s.rig = "demo"
        write_history(sessions, tt.root, base / "claude")
        pi = base / "pi-agent"
        header = {"type": "session", "version": 3, "id": "0195a3c2-pi-sweep", "timestamp": "2026-03-02T09:00:00.000Z",
                  "cwd": str(tt.root / "demo" / "crew")}
        msgs = [{"type": "message", "id": "m1", "parentId": None, "timestamp": "2026-03-02T09:00:01.000Z",
                 "message": {"role": "user", "content": "Which beads of demo are ready to start?", "timestamp": 0}},
                {"type": "message", "id": "m2", "parentId": "m1", "timestamp": "2026-03-02T09:00:05.000Z",
                 "message": {"role": "assistant", "content": [{"type": "text", "text": "Two beads are ready; listing them with bd ready."}],
                             "provider": "x", "model": "y", "stopReason": "stop", "timestamp": 0}}]
        f = pi / "sessions" / f"--{str(tt.root / 'demo' / 'crew').strip('/').replace('/', '-')}--" / "2026-03-02_0195a3c2-pi-sweep.jsonl"
        f.parent.mkdir(parents=True)
        f.write_text("".join(json.dumps(e) + "\n" for e in [header, *msgs]))
        suites = base / "suites"
        for role in ROLES:
            (suites / role).mkdir(parents=True)
            kind = "not-contains" if role in PASSING else "contains"
            (suites / role / "promptfooconfig.yaml").write_text(SUITE.format(role=role, kind=kind))
            (suites / role / "suite.yaml").write_text(f"name: mini-{role}\nrole: {role}\nmax_new_tokens: 4\n")
        # The town gates each role on its small suite (gt-ext's own settings file, not gt's).
        (tt.root / "settings" / "gt-ext.json").write_text(json.dumps(
            {"evals": {"gate_suites": {r: str(suites / r) for r in ROLES}}}))
        tmux = base / "tmux"
        tmux.mkdir()
        env = {**tt.env, "PATH": f"{VENV_BIN}{os.pathsep}{tt.env.get('PATH', '')}",
               "GT_EXT_CLAUDE_PROJECTS": str(base / "claude"), "PI_CODING_AGENT_DIR": str(pi),
               "GT_EXT_JOBS_DIR": str(base / "jobs"), "GT_EXT_HOME": str(base / "gthome"),
               "GT_EXT_CACHE": str(cache_dir()), "TMUX_TMPDIR": str(tmux), "GT_EXT_LOG": "WARNING",
               "GT_EXT_FORMULAS_DIR": str(list_formulas()[0].parent)}
        yield tt, env, base
    finally:
        tt.close()


def gt(env: dict, root: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    """The user's `gt` (our shim first on PATH), in the town root."""
    res = subprocess.run(["gt", *args], cwd=root, env=env, capture_output=True, text=True, timeout=timeout,
                         stdin=subprocess.DEVNULL)
    return res


def test_every_formula_step_runs_in_a_real_town(town) -> None:
    tt, env, base = town
    ran: dict[str, set[str]] = {}

    # -- corpus-collect ----------------------------------------------------------------------------
    out = base / "collected"
    res = gt(env, tt.root, "formula", "run", "corpus-collect", "--set", f"out={out}", "--set", "rig=demo")
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    ran["corpus-collect"] = {s for s in ("install-hooks", "process", "batch", "export") if f"] {s}:" in res.stdout}
    for beads in tt.beads_dirs().values():
        assert os.access(beads / "hooks" / "on_close", os.X_OK), beads
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["scope"] == "rig demo" and manifest["rigs"] == ["demo"]
    stats = json.loads(gt(env, tt.root, "corpus", "stats", "--json").stdout)
    assert set(ROLES) <= set(stats["role"]) and stats["source"].get("pi-jsonl") == 1, stats

    # -- eval-suite --------------------------------------------------------------------------------
    res = gt(env, tt.root, "formula", "run", "eval-suite", "--set", "model=base:tiny-llama",
             "--set", f"suite={base / 'suites' / 'boot'}")
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    ran["eval-suite"] = {"eval"} if "] eval:" in res.stdout else set()
    written = json.loads((base / "gthome" / "evals" / "base-tiny-llama" / "eval-mini-boot.json").read_text())
    assert written["run"]["full"] and written["gate"]["deployable"]

    # -- train-role-model, all 8 roles, two jobs at a time ------------------------------------------
    def job(role: str) -> tuple[str, subprocess.CompletedProcess]:
        sets = {"role": role, "base_model": "tiny-llama", "max_steps": "1", "lora_rank": "2", "max_seconds": "900",
                "train_args": TRAIN_ARGS, "suite": str(base / "suites" / role), "rig": "demo" if role in RIG_ROLES else ""}
        args = [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
        return role, gt(env, tt.root, "formula", "run", "train-role-model", *args, timeout=1200)

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = dict(pool.map(job, ROLES))
    steps = [s.id for s in load_formula(next(p for p in list_formulas() if p.name.startswith("train-role-model"))).steps]
    ran["train-role-model"] = set(steps)
    for role, res in results.items():
        assert res.returncode == 0, (role, res.stdout[-3000:], res.stderr[-3000:])
        for s in steps:
            assert f"] {s}:" in res.stdout and "done in an earlier run" not in res.stdout, (role, s)
        expect = "done" if role in PASSING else "gate-failed"
        assert f"({expect})" in res.stdout.splitlines()[-1], (role, res.stdout[-600:])

    # Each role's model is registered in the town's Dolt registry with its gating eval.
    listed = {m["name"]: m for m in json.loads(gt(env, tt.root, "model", "list", "--json").stdout)}
    assert set(listed) == set(ROLES)
    for role, m in listed.items():
        assert m["role"] == role and m["gate"] == ("pass" if role in PASSING else "fail"), m
        assert m["eval_runs"][-1]["gating"] and m["eval_runs"][-1]["source"].startswith("file eval-"), m["eval_runs"]
    # The job's corpus was the role's own, from its rig (rig roles) or the town level (the others).
    for role in ("witness", "mayor"):
        corpus = next((base / "jobs").glob(f"train-role-model-{role}-*/corpus/manifest.json"))
        m = json.loads(corpus.read_text())
        assert m["role"] == role and set(m["counts"]["sft"]) == {role}
        assert m["rigs"] == (["demo"] if role in RIG_ROLES else []), m
    # Deploy follows the gate: deacon passed; witness did not and needs --force --reason.
    assert gt(env, tt.root, "model", "deploy", "deacon").returncode == 0
    res = gt(env, tt.root, "model", "deploy", "witness")
    assert res.returncode == 2 and "failed its eval gate" in res.stderr
    assert gt(env, tt.root, "model", "deploy", "witness", "--force", "--reason", "formula test").returncode == 0
    assert "formula test" in gt(env, tt.root, "model", "show", "witness").stdout

    # -- improve-role: the town's CLAUDE.md changes after training, so the deployed witness is stale
    # and the loop retrains, scores and registers it (deploy stays deliberate) --------------------
    with open(tt.root / "CLAUDE.md", "a", encoding="utf-8") as f:
        f.write("\nNudge an idle polecat once before escalating it to the mayor.\n")
    sets = {"role": "witness", "rig": "demo", "base_model": "tiny-llama", "max_steps": "1", "lora_rank": "2",
            "max_seconds": "900", "train_args": TRAIN_ARGS, "suite": str(base / "suites" / "witness")}
    res = gt(env, tt.root, "formula", "run", "improve-role", *[a for k, v in sets.items() for a in ("--set", f"{k}={v}")],
             timeout=1200)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    steps = [s.id for s in load_formula(next(p for p in list_formulas() if p.name.startswith("improve-role"))).steps]
    ran["improve-role"] = {s for s in steps if f"] {s}:" in res.stdout}
    assert "not stale" not in res.stdout and "(gate-failed)" in res.stdout.splitlines()[-1], res.stdout[-3000:]
    decision = json.loads(next((base / "jobs").glob("improve-role-witness-*/stale.json")).read_text())
    assert decision["retrain"] and any(c["key"] == "town:CLAUDE.md" for c in decision["reports"][0]["changed"])
    assert "candidate: witness:2" in res.stdout  # the report: trained on today's CLAUDE.md, not deployed
    assert json.loads(gt(env, tt.root, "model", "show", "witness:2", "--json").stdout)["convention_fingerprint"]

    # Every step of every formula in formulas/ ran.
    for path in list_formulas():
        f = load_formula(path)
        assert ran.get(f.name) == {s.id for s in f.steps}, (f.name, ran.get(f.name))
