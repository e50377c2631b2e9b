"""Register, read, evaluate, deploy, roll back and prune — the same tests on SQLite and Dolt."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from gate_results import eval_result

from gt_ext.errors import GtExtError
from gt_ext.rag.retrieve import role_budget
from gt_ext.registry import READY_PROMPT, Registry


def _settings(town: Path, rig: str | None = None) -> dict:
    p = (town / rig if rig else town) / "settings" / "config.json"
    return json.loads(p.read_text())


def test_register_export_versions_and_refs(registry: Registry, make_export) -> None:
    src = make_export("witness")
    r1 = registry.register(src)
    r2 = registry.register(make_export("witness"))
    assert (r1.ref, r2.ref) == ("witness:1", "witness:2")
    assert r1.path == registry.root / "witness" / "v1"
    assert r1.adapter_dir and (r1.adapter_dir / "adapter_model.safetensors").is_file()
    assert r1.merged_dir and r1.gguf_path and r1.gguf_path.name == "model-q8_0.gguf"
    assert (r1.base_model, r1.role, r1.lora_rank, r1.examples, r1.dpo_pairs) == ("tiny-llama", "witness", 4, 42, 7)
    assert r1.hyperparams["lora"]["alpha"] == 8 and r1.corpus_hash.startswith("c0ffee")
    man = json.loads((r1.path / "manifest.json").read_text())
    assert set(man["files"]) >= {"adapter/adapter_model.safetensors", "run.json", "model-q8_0.gguf"}
    # files are immutable on disk
    assert (r1.path / "run.json").stat().st_mode & 0o222 == 0
    assert registry.get("witness").version == 2
    assert registry.get("witness:1").version == 1
    assert registry.get("witness-v1").version == 1  # `gt model deploy witness-v1`
    with pytest.raises(GtExtError, match="no model 'witness:9'"):
        registry.get("witness:9")


def test_register_run_folder_leaves_checkpoints(registry: Registry, make_run) -> None:
    rec = registry.register(make_run("deacon"), name="deacon-gen1")
    assert rec.ref == "deacon-gen1:1"
    assert (rec.path / "adapter" / "adapter_config.json").is_file()
    assert not (rec.path / "checkpoints").exists()


@pytest.mark.parametrize("breakage, match", [
    ("no_run_json", "run.json: missing"),
    ("corrupt_manifest", "manifest.json: corrupt manifest"),
    ("checksum", "adapter_model.safetensors: checksum mismatch"),
])
def test_register_bad_input_names_the_file_and_writes_nothing(registry: Registry, make_export, breakage, match) -> None:
    src = make_export("witness")
    if breakage == "no_run_json":
        (src / "run.json").unlink()
    elif breakage == "corrupt_manifest":
        (src / "manifest.json").write_text('{"files": ')
    else:
        with open(src / "adapter" / "adapter_model.safetensors", "ab") as f:
            f.write(b"x")
    with pytest.raises(GtExtError, match=match):
        registry.register(src)
    assert registry.list() == []
    assert not (registry.root / "witness").exists() or not any((registry.root / "witness").iterdir())


def test_register_refuses_failed_run(registry: Registry, make_run) -> None:
    with pytest.raises(GtExtError, match="run status is 'failed'"):
        registry.register(make_run("witness", status="failed"))


def test_deploy_writes_gt_settings_keeping_other_keys(registry: Registry, make_export, town_dir: Path,
                                                      original_town_settings: dict, passed) -> None:
    TOWN_SETTINGS = original_town_settings
    registry.register(make_export("deacon"))
    passed(registry, "deacon:1")
    res = registry.deploy("deacon", reason="first try")
    s = _settings(town_dir)
    assert s["role_agents"] == {"refinery": "opus-46", "deacon": "node0-deacon"}
    assert s["agents"]["node0-deacon"] == {
        "provider": "node0", "command": "node0-inference",
        "args": ["--model", "deacon:1", "--rag", "--rag-budget", str(role_budget("deacon"))],
        "tmux": {"process_names": ["node0-inference"], "ready_prompt_prefix": READY_PROMPT}}
    for k in ("cli_theme", "x_unknown", "default_agent", "type", "version"):
        assert s[k] == TOWN_SETTINGS[k]
    assert s["agents"]["opus-46"] == TOWN_SETTINGS["agents"]["opus-46"]
    assert json.loads((town_dir / "settings" / "config.json.bak").read_text()) == TOWN_SETTINGS
    assert res.entry.before["role_agent"] is None and res.entry.after["model"] == "deacon:1"
    hist = registry.history()
    assert [(h.action, h.role, h.rig, h.model, h.reason) for h in hist] == [("deploy", "deacon", "", "deacon:1", "first try")]
    assert registry.deployed_to(registry.get("deacon:1")) == ["deacon@town"]


def test_rollback_is_a_stack(registry: Registry, make_export, town_dir: Path, passed) -> None:
    for role in ("refinery", "refinery", "deacon"):
        passed(registry, registry.register(make_export(role)).ref)
    registry.deploy("deacon")
    registry.deploy("refinery:1", rag=False)
    registry.deploy("refinery:2")
    assert _settings(town_dir)["agents"]["node0-refinery"]["args"][:3] == ["--model", "refinery:2", "--rag"]
    assert registry.rollback("refinery").entry.after["model"] == "refinery:1"
    assert _settings(town_dir)["agents"]["node0-refinery"]["args"] == ["--model", "refinery:1"]  # --no-rag
    registry.rollback("refinery")
    s = _settings(town_dir)
    assert s["role_agents"]["refinery"] == "opus-46"  # the agent gt had before any deployment
    assert "node0-refinery" not in s["agents"]
    with pytest.raises(GtExtError, match="nothing to roll back for refinery in town"):
        registry.rollback("refinery")
    assert [h.action for h in registry.history(role="refinery")] == ["deploy", "deploy", "rollback", "rollback"]


def test_gate_failure_refused_unless_forced(registry: Registry, make_export, town_dir: Path, passed) -> None:
    registry.register(make_export("deacon"))
    rec = passed(registry, "deacon:1", deployable=False, composite=20.0)
    assert (rec.gate, rec.eval_composite) == ("fail", 20.0)
    assert (rec.path / "eval-gate.json").is_file()
    with pytest.raises(GtExtError, match=r"deacon:1 failed its eval gate on .*suites/gate \(composite 20.0\)"):
        registry.deploy("deacon:1")
    assert "deacon" not in _settings(town_dir)["role_agents"]
    with pytest.raises(GtExtError, match="needs --reason"):
        registry.deploy("deacon:1", force_reason=" ")
    res = registry.deploy("deacon:1", force_reason="hotfix while evals are down")
    assert res.entry.forced and res.entry.reason == "hotfix while evals are down"
    assert registry.history()[-1].forced


def test_no_eval_or_only_a_smoke_run_is_refused(registry: Registry, make_export, town_dir: Path, passed) -> None:
    registry.register(make_export("deacon"))
    with pytest.raises(GtExtError, match=r"deacon:1 has no full eval of .*suites/gate; run `gt-ext eval run"):
        registry.deploy("deacon:1")
    rec = passed(registry, "deacon:1", limit=2)  # a passing --limit run: recorded, never gates
    assert rec.gate is None and rec.eval_composite is None
    (entry,) = rec.eval_runs
    assert not entry["gating"] and entry["why_not_gating"].startswith("partial run (--limit 2: 2 of 5 tasks)")
    assert (rec.path / "eval-gate-partial.json").is_file() and not (rec.path / "eval-gate.json").exists()
    with pytest.raises(GtExtError, match=r"no full eval of .*\(1 other eval\(s\) recorded: partial or untrusted\)"):
        registry.deploy("deacon:1")
    # A full run of another suite does not count either: the role's gating suite is the town's.
    other = town_dir / "suites" / "other"
    other.mkdir()
    (other / "promptfooconfig.yaml").write_text("prompts: ['x']\ntests: [{vars: {}, assert: []}]\n")
    rec = registry.record_eval("deacon:1", eval_result(other, "deacon", suite="other"))
    assert rec.eval_runs[-1]["why_not_gating"].startswith("not a run of the role's gating suite")
    with pytest.raises(GtExtError, match="no full eval"):
        registry.deploy("deacon:1")
    passed(registry, "deacon:1")
    assert registry.deploy("deacon:1").entry.model == "deacon:1"
    # Editing the gating suite afterwards makes that result stale.
    (town_dir / "suites" / "gate" / "promptfooconfig.yaml").write_text("prompts: ['y']\ntests: [{vars: {}, assert: []}]\n")
    with pytest.raises(GtExtError, match="scored on an earlier version of"):
        registry.deploy("deacon:1")


def test_eval_file_in_registered_folder_is_checked_against_its_hashes(registry: Registry, make_export,
                                                                      town_dir: Path, monkeypatch) -> None:
    """An eval-*.json found in an export folder at register time counts only when this user's
    `gt-ext eval run` signed it and the model files it names are this version's files, byte for byte."""
    from gt_ext.digest import sha256_file
    from gt_ext.evals import provenance

    monkeypatch.setenv("GT_EXT_HOME", str(town_dir.parent / "home"))
    src = make_export("deacon")
    files = {rel: sha256_file(src / rel) for rel in ("adapter/adapter_model.safetensors", "adapter/adapter_config.json")}
    good = eval_result(town_dir / "suites" / "gate", "deacon", model_files=files)
    # Hand-written (unsigned) and signed-then-edited results with the right hashes: never trusted.
    edited = provenance.sign(good)
    edited["composite"] = 99.0
    for forged, why in ((good, "not signed by gt-ext eval run"), (edited, "signature does not match")):
        fsrc = make_export("deacon")
        (fsrc / "eval-gate.json").write_text(json.dumps(forged))
        rec = registry.register(fsrc)
        assert rec.gate is None and not rec.eval_runs[0]["trusted"] and why in rec.eval_runs[0]["why_not_gating"]
    (src / "eval-gate.json").write_text(json.dumps(provenance.sign(good)))
    rec = registry.register(src)
    assert rec.gate == "pass" and rec.eval_runs[0]["gating"] and rec.eval_runs[0]["source"] == "file eval-gate.json"
    man = json.loads((rec.path / "manifest.json").read_text())
    assert not any(k.startswith("eval-") for k in man["files"])  # results are not model files
    assert registry.deploy(rec.ref).entry.model == "deacon:3"

    for bad, why in ((dict(files, **{"adapter/adapter_model.safetensors": "0" * 64}), "differs from the file it scored"),
                     ({}, "names no model file hashes"),
                     ({"merged/model.safetensors": "1" * 64}, "which this version does not have")):
        src = make_export("deacon")
        (src / "eval-gate.json").write_text(json.dumps(provenance.sign(
            eval_result(town_dir / "suites" / "gate", "deacon", model_files=bad))))
        rec = registry.register(src)
        assert rec.gate is None and not rec.eval_runs[0]["trusted"], rec.eval_runs
        assert why in rec.eval_runs[0]["why_not_gating"]
        with pytest.raises(GtExtError, match="no full eval"):
            registry.deploy(rec.ref)


def test_default_gating_suite_is_the_roles_builtin_patrol_suite(registry: Registry, make_export, town_dir: Path) -> None:
    (town_dir / "settings" / "gt-ext.json").unlink()
    registry.register(make_export("deacon"))
    registry.record_eval("deacon:1", eval_result("builtin:deacon", "deacon", suite="deacon"))
    assert registry.get("deacon:1").gate is None  # the old description-based suite does not gate deacon
    registry.record_eval("deacon:1", eval_result("builtin:deacon-patrol", "deacon", suite="deacon-patrol"))
    assert registry.get("deacon:1").gate == "pass"
    assert registry.deploy("deacon:1").entry.model == "deacon:1"


def test_rollout_order_and_mayor(registry: Registry, make_export, passed) -> None:
    for role in ("witness", "deacon", "mayor"):
        passed(registry, registry.register(make_export(role)).ref)
    with pytest.raises(GtExtError, match="rollout order: deploy deacon/boot/dog before witness"):
        registry.deploy("witness")
    with pytest.raises(GtExtError, match="mayor.*refused in this version"):
        registry.deploy("mayor", force_reason="please")
    registry.deploy("deacon")
    assert registry.deploy("witness").entry.model == "witness:1"


def test_role_mismatch_and_rig_settings(registry: Registry, make_export, town_dir: Path, passed) -> None:
    passed(registry, registry.register(make_export("deacon")).ref)
    passed(registry, registry.register(make_export("witness")).ref)
    registry.deploy("deacon")
    with pytest.raises(GtExtError, match="trained for role witness, not polecat"):
        registry.deploy("witness", role="polecat", rig="demo")
    with pytest.raises(GtExtError, match="deacon is a town-level role"):
        registry.deploy("deacon", rig="demo")
    with pytest.raises(GtExtError, match="no rig 'nope'"):
        registry.deploy("witness", rig="nope")
    registry.deploy("witness", rig="demo")
    rs = _settings(town_dir, "demo")
    assert rs["role_agents"] == {"witness": "node0-witness"} and rs["type"] == "rig-settings"
    assert "witness" not in _settings(town_dir)["role_agents"]
    assert rs["namepool"] == {"style": "wasteland"}
    registry.rollback("witness", rig="demo")
    assert "witness" not in _settings(town_dir, "demo")["role_agents"]
    (town_dir / "demo" / "settings" / "config.json").unlink()
    with pytest.raises(GtExtError, match=r"demo/settings/config.json: missing; let gt create it first"):
        registry.deploy("witness", rig="demo")


def test_missing_town_settings_get_gt_defaults(registry: Registry, make_export, town_dir: Path, passed) -> None:
    # gt reads a missing town settings file as default_agent "claude": keep that meaning.
    (town_dir / "settings" / "config.json").unlink()
    passed(registry, registry.register(make_export("deacon")).ref)
    registry.deploy("deacon")
    s = _settings(town_dir)
    assert (s["default_agent"], s["role_agents"]) == ("claude", {"deacon": "node0-deacon"})
    registry.rollback("deacon")
    s = _settings(town_dir)
    assert (s["default_agent"], s["role_agents"], s["agents"]) == ("claude", {}, {})


def test_tampered_version_refuses_deploy(registry: Registry, make_export, town_dir: Path, passed) -> None:
    rec = registry.register(make_export("deacon"))
    passed(registry, rec.ref)
    target = rec.path / "adapter" / "adapter_config.json"
    target.chmod(0o644)
    target.write_text("{}")
    with pytest.raises(GtExtError, match=r"adapter_config\.json: checksum mismatch"):
        registry.deploy("deacon")
    man = rec.path / "manifest.json"
    man.chmod(0o644)
    man.write_text("not json")
    with pytest.raises(GtExtError, match=r"v1/manifest\.json: corrupt manifest"):
        registry.deploy("deacon")
    assert "deacon" not in _settings(town_dir)["role_agents"]
    assert registry.history() == []


def test_task_adapters(registry: Registry, make_run, make_export, town_dir: Path, passed) -> None:
    a = registry.register(make_run("deacon", task="patrol"))
    assert (a.ref, a.task, a.compatible) == ("deacon-patrol:1", "patrol", ["tiny-llama"])
    passed(registry, registry.register(make_export("deacon")).ref)
    assert [r.ref for r in registry.adapters()] == ["deacon-patrol:1"]
    with pytest.raises(GtExtError, match="is a task adapter"):
        registry.deploy("deacon-patrol")
    with pytest.raises(GtExtError, match="is a role model, not a task adapter"):
        registry.deploy("deacon", adapters=["deacon:1"])
    registry.deploy("deacon", adapters=["deacon-patrol"])
    args = _settings(town_dir)["agents"]["node0-deacon"]["args"]
    assert args[:4] == ["--model", "deacon:1", "--adapters", "deacon-patrol:1"]
    assert registry.deployed_to(a) == ["deacon@town"]


def test_prune_keeps_deployed_and_last_good(registry: Registry, make_export, passed) -> None:
    recs = [registry.register(make_export("deacon")) for _ in range(5)]
    passed(registry, "deacon:2")
    passed(registry, "deacon:4", deployable=False)
    registry.deploy("deacon:1", force_reason="pin the old one")
    dry = registry.prune(keep=1, dry_run=True)
    assert sorted(r.ref for r in dry.delete) == ["deacon:3", "deacon:4"]
    assert all(r.path.exists() for r in recs)
    done = registry.prune(keep=1)
    assert sorted(r.ref for r in done.delete) == ["deacon:3", "deacon:4"]
    assert [r.ref for r in registry.list()] == ["deacon:1", "deacon:2", "deacon:5"]
    assert not recs[2].path.exists() and not recs[3].path.exists() and recs[0].path.exists()
    # numbers are never reused after a prune
    assert registry.register(make_export("deacon")).version == 6


def test_records_survive_reopen(registry: Registry, make_export, town_dir: Path, backend: str, passed) -> None:
    registry.register(make_export("deacon"))
    passed(registry, "deacon")
    registry.deploy("deacon")
    with Registry.open(town_dir) as again:
        assert again.store.backend == backend
        rec = again.get("deacon")
        assert (rec.gate, rec.eval_composite, rec.eval_categories["patrol"]["passed"]) == ("pass", 81.5, 4)
        assert [e["gating"] for e in rec.eval_runs] == [True]
        assert again.deployed_to(rec) == ["deacon@town"]


def test_dolt_backend_commits_each_change(registry: Registry, make_export, backend: str, passed) -> None:
    if backend != "dolt":
        pytest.skip("Dolt history only exists on the Dolt backend")
    registry.register(make_export("deacon"))
    passed(registry, "deacon")
    registry.deploy("deacon")
    msgs = [r["message"] for r in registry.store.history()]
    assert any("register deacon:1" in m for m in msgs)
    assert any("deploy deacon@town: - -> deacon:1" in m for m in msgs)


def test_table_from_an_earlier_release_gets_the_new_column(tmp_path: Path) -> None:
    """A registry.sqlite made before `eval_runs` existed opens, gains the column, and keeps its rows."""
    import sqlite3

    from gt_ext.registry.db import SqliteStore

    db = tmp_path / "registry.sqlite"
    con = sqlite3.connect(db)
    con.execute("""CREATE TABLE gtx_models (`name` TEXT NOT NULL, `version` INTEGER NOT NULL, `role` TEXT NOT NULL,
        `task` TEXT, `base_model` TEXT NOT NULL, `path` TEXT NOT NULL, `parent` TEXT, `corpus_hash` TEXT,
        `examples` INTEGER, `dpo_pairs` INTEGER, `hyperparams` TEXT, `lora_rank` INTEGER, `eval_categories` TEXT,
        `eval_composite` REAL, `gate` TEXT, `compatible` TEXT, `created` TEXT NOT NULL,
        `convention_fingerprint` TEXT, PRIMARY KEY (`name`, `version`))""")
    con.execute("INSERT INTO gtx_models (name, version, role, base_model, path, created, gate) "
                "VALUES ('deacon', 1, 'deacon', 'tiny-llama', '/x', 't', 'pass')")
    con.commit()
    con.close()
    store = SqliteStore(db)
    rec = store.get_model("deacon", 1)
    assert rec.eval_runs == [] and rec.gate == "pass"
    store.update_eval("deacon", 1, {}, None, None, "m", eval_runs=[{"gating": False}])
    assert store.get_model("deacon", 1).eval_runs == [{"gating": False}]
    store.close()


def test_lineage_of_a_child_trained_on_registered_weights(registry: Registry, make_export, make_run) -> None:
    """A DPO run's base is a registered version's merged weights: the child's base is that version's
    base, its parent that version; `current`, `lineage` and an explicit `--parent` agree."""
    sft = registry.register(make_export(role="witness"))
    assert registry.current("witness").ref == sft.ref and registry.current("deacon") is None
    child_run = make_run(role="witness")
    run = json.loads((child_run / "run.json").read_text())
    run["base_model"] = str(sft.path / "merged")
    run["config"] = {"mode": "dpo", "base_model": run["base_model"]}
    (child_run / "run.json").write_text(json.dumps(run))
    child = registry.register(child_run)
    assert (child.parent, child.base_model) == (sft.ref, sft.base_model)
    assert registry.lineage(child) == [sft.ref, child.ref] and registry.lineage(sft) == [sft.ref]
    assert registry.current("witness").ref == child.ref
    assert registry.ref_for_path(child.path / "adapter") == child.ref and registry.ref_for_path("tiny-llama") is None
    with pytest.raises(GtExtError, match="trained on the weights of"):
        registry.register(child_run, parent=child.ref)
    with pytest.raises(GtExtError, match="no model 'nope:3'"):
        registry.register(child_run, parent="nope:3")
    assert [r.ref for r in registry.list() if r.name == "witness"] == [sft.ref, child.ref]  # nothing half-made
