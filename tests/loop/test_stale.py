"""`gt model stale` in a real town (real gt, bd, dolt): fresh after training, then stale on new
examples (with the deployed model's real loss on them), one retrain bead per role with a cooldown,
a reverted CLAUDE.md in the review queue instead of counting, a changed one boosted in RAG, an
unreadable file reported per item; then the improve-role formula on the fresh model."""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

CLAUDE_A = "# Town conventions\n\nReference the bead id in every commit message.\n"
CLAUDE_B = CLAUDE_A + "\nEscalate a stuck polecat to the mayor after two nudges.\n"


def _adapter(out: Path) -> Path:
    from peft import LoraConfig, get_peft_model

    from gt_ext.models import load_model

    model, _ = load_model("tiny-llama")
    get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])).save_pretrained(str(out))
    return out


def _stale(capsys, *args: str) -> list[dict]:
    from gt_ext.cli import main

    assert main(["model", "stale", "witness", "--json", *args]) == 0
    return json.loads(capsys.readouterr().out)


def test_stale_check_in_a_real_town(make_town, monkeypatch, tmp_path, capsys):
    from gt_ext.corpus.artifacts import ingest_artifact
    from gt_ext.corpus.ingest import Ingestor
    from gt_ext.corpus.sample_town import generate, ingest_sessions
    from gt_ext.corpus.store import Store
    from gt_ext.gastown.bd import Bd
    from gt_ext.loop.fingerprint import summary, take_fingerprint, write_fingerprint
    from gt_ext.rag.boost import boosted
    from gt_ext.registry import Registry

    tt = make_town(prefix=f"s{uuid.uuid4().hex[:3]}")
    tt.activate(monkeypatch)
    monkeypatch.setenv("HOME", tt.env["HOME"])
    monkeypatch.chdir(tt.root)
    if tt.mode == "gt" and tt.gt("dolt", "status", check=False).returncode != 0:
        tt.gt("dolt", "start", timeout=300)
    root = tt.root
    claude = root / "CLAUDE.md"

    with Store.open(town=root) as store:
        ingest_sessions(store, [s for s in generate(seed=1, witness=10, per_role=0) if s.role == "witness"])
        ing = Ingestor(store)
        for text in (CLAUDE_A, CLAUDE_B):  # two versions seen by the corpus: A, then B
            claude.write_text(text)
            with store.tx():
                assert ingest_artifact(ing, root, claude) == "new"
        # "Training": a run folder with the town's fingerprint taken now (the model knows B).
        run = tmp_path / "run"
        _adapter(run / "adapter")
        fp = take_fingerprint(root, "witness", store=store)
        write_fingerprint(run, fp)
        trained = [e.messages for e in store.query(role="witness")]
    assert fp["items"]["town:CLAUDE.md"]["sha256"] and any(k.endswith(":gt-prime:witness") for k in fp["items"])
    (run / "run.json").write_text(json.dumps({
        "role": "witness", "task": None, "base_model": "tiny-llama", "config": {"data": {"max_length": 512}},
        "corpus_hash": None, "examples": len(trained), "dpo_pairs": 0, "status": "done", "parent": None,
        "lora": {"r": 4, "alpha": 8, "targets": ["q_proj", "v_proj"]},
        "metrics": {"val_loss_start": 11.0, "val_loss_end": 10.0}, "convention_fingerprint": summary(fp)}))
    with Registry.open(root) as reg:
        rec = reg.register(run, name="witness")
        assert rec.convention_fingerprint == fp["digest"]
        reg.deploy(rec.ref, role="witness", force_reason="stale test", rag=False)

    # Right after training: fresh (gt prime's output is stable between runs, deploy keys ignored).
    [r] = _stale(capsys)
    assert (r["verdict"], r["score"], r["changed"], r["unreadable"]) == ("fresh", 0.0, [], []), json.dumps(r["changed"])
    assert r["model"] == rec.ref and r["trained_examples"] == len(trained)

    # New corpus examples: with these thresholds they count, and so does the loss on them.
    (root / "settings" / "gt-ext.json").write_text(json.dumps({"stale": {
        "min_new_examples": 4, "new_examples_ratio": 0.0, "min_loss_examples": 4, "loss_examples": 6,
        "loss_ratio": 0.1}}))
    with Store.open(town=root) as store:
        ingest_sessions(store, [s for s in generate(seed=2, witness=8, per_role=0) if s.role == "witness"])
    [r] = _stale(capsys)
    assert r["new_examples"] >= 4 and r["verdict"] == "stale" and r["score"] == 2.0, r
    assert r["loss"]["examples"] == 6 and r["loss"]["val"] == 10.0 and r["loss"]["new"] > 0
    bead = r["retrain"]["bead"]
    bd = Bd(root / ".beads", env=tt.env)
    issue = bd.show(bead)
    assert issue.status == "open" and "retrain-job" in issue.labels and "role:witness" in issue.labels
    # One bead per role: a second check finds it open; once it is closed, the cooldown holds.
    [r] = _stale(capsys)
    assert r["retrain"]["bead"] is None and r["retrain"]["skipped"] == f"retrain job {bead} is still open"
    bd.close(bead, reason="done")
    [r] = _stale(capsys)
    assert r["retrain"]["skipped"].startswith("cooldown:")

    # CLAUDE.md put back to A, a version the corpus replaced: a reversion, to review, not counted.
    claude.write_text(CLAUDE_A)
    agents = root / "demo" / "witness" / "AGENTS.md"
    agents.parent.mkdir(parents=True, exist_ok=True)
    before = agents.read_bytes() if agents.is_file() else None
    agents.write_bytes(b"# Witness\n\xff broken\n")
    [r] = _stale(capsys, "--no-loss", "--no-retrain")
    assert [c["key"] for c in r["reverted"]] == ["town:CLAUDE.md"] and r["changed"] == [], json.dumps(r["changed"])
    assert [(c["key"], c["summary"]) for c in r["unreadable"]] == [("demo:demo/witness/AGENTS.md", "not UTF-8 (byte 10)")]
    with Store.open(town=root) as store:
        [a] = [e for e in store.query(status="review") if e.artifact_key == "town:CLAUDE.md"]
        assert "reverts town:CLAUDE.md" in a.reason
    # A new CLAUDE.md: changed, with a diff summary, and boosted in RAG for the witness meanwhile.
    claude.write_text(CLAUDE_B + "\nNever nuke a polecat with unpushed commits.\n")
    [r] = _stale(capsys, "--no-loss", "--no-retrain")
    [c] = r["changed"]
    assert c["key"] == "town:CLAUDE.md" and c["summary"] == "+2 -0 lines: «Never nuke a polecat with unpushed commits.»"
    assert boosted(root, "witness") == {"file:CLAUDE.md"}
    claude.write_text(CLAUDE_B)
    agents.write_bytes(before) if before is not None else agents.unlink()
    (root / "settings" / "gt-ext.json").unlink()
    with Store.open(town=root) as store:  # the new examples are now part of what it "knows"
        store.db.execute("UPDATE examples SET created = 0")
    [r] = _stale(capsys, "--no-loss", "--no-retrain")
    assert r["verdict"] == "fresh" and boosted(root, "witness") == set()

    # The loop's formula on a fresh model (real runner, real subprocesses): collect, stale check,
    # every training step skipped, the report; no run folder, nothing registered.
    job = tmp_path / "improve-role-job"
    res = subprocess.run(["gt-ext", "formula", "run", "improve-role", "--set", "role=witness", "--no-bead",
                          "--job-dir", str(job)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert res.stdout.count("skipped (the deployed model is not stale)") == 6, res.stdout
    assert "verdict FRESH" in res.stdout
    assert json.loads((job / "stale.json").read_text())["retrain"] is False
    assert json.loads((job / "formula-state.json").read_text())["completed"] == [
        "collect", "stale-check", "export-corpus", "validate", "train", "export", "eval", "register", "report"]
    assert not (job / "run").exists() and not (job / "corpus").exists()
    with Registry.open(root) as reg:
        assert [v.ref for v in reg.list()] == [rec.ref]
