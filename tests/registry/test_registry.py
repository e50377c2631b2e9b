"""Register, read, evaluate, deploy, roll back and prune — the same tests on SQLite and Dolt."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gt_ext.errors import GtExtError
from gt_ext.rag.retrieve import role_budget
from gt_ext.registry import READY_PROMPT, Registry

PASS = {"suite": "roles", "composite": 81.5, "categories": {"patrol": {"passed": 4, "total": 5, "score": 80.0}},
        "gate": {"deployable": True, "threshold": 60, "reasons": []}}
FAIL = {"suite": "roles", "composite": 20.0, "categories": {"patrol": {"passed": 1, "total": 5, "score": 20.0}},
        "gate": {"deployable": False, "threshold": 60, "reasons": ["composite below 60"]}}


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
                                                      original_town_settings: dict) -> None:
    TOWN_SETTINGS = original_town_settings
    registry.register(make_export("deacon"))
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


def test_rollback_is_a_stack(registry: Registry, make_export, town_dir: Path) -> None:
    registry.register(make_export("refinery"))
    registry.register(make_export("refinery"))
    registry.register(make_export("deacon"))
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


def test_gate_failure_refused_unless_forced(registry: Registry, make_export, town_dir: Path) -> None:
    registry.register(make_export("deacon"))
    rec = registry.record_eval("deacon:1", FAIL)
    assert (rec.gate, rec.eval_composite) == ("fail", 20.0)
    assert (rec.path / "eval-roles-partial.json").is_file()  # no run block: not a full run
    with pytest.raises(GtExtError, match="failed its eval gate"):
        registry.deploy("deacon:1")
    assert "deacon" not in _settings(town_dir)["role_agents"]
    with pytest.raises(GtExtError, match="needs a reason"):
        registry.deploy("deacon:1", force_reason=" ")
    res = registry.deploy("deacon:1", force_reason="hotfix while evals are down")
    assert res.entry.forced and res.entry.reason == "hotfix while evals are down"
    assert registry.history()[-1].forced


def test_rollout_order_and_mayor(registry: Registry, make_export) -> None:
    registry.register(make_export("witness"))
    registry.register(make_export("deacon"))
    registry.register(make_export("mayor"))
    with pytest.raises(GtExtError, match="rollout order: deploy deacon/boot/dog before witness"):
        registry.deploy("witness")
    with pytest.raises(GtExtError, match="mayor.*refused in this version"):
        registry.deploy("mayor", force_reason="please")
    registry.record_eval("deacon", PASS)
    registry.deploy("deacon")
    assert registry.deploy("witness").entry.model == "witness:1"


def test_role_mismatch_and_rig_settings(registry: Registry, make_export, town_dir: Path) -> None:
    registry.register(make_export("deacon"))
    registry.register(make_export("witness"))
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


def test_missing_town_settings_get_gt_defaults(registry: Registry, make_export, town_dir: Path) -> None:
    # gt reads a missing town settings file as default_agent "claude": keep that meaning.
    (town_dir / "settings" / "config.json").unlink()
    registry.register(make_export("deacon"))
    registry.deploy("deacon")
    s = _settings(town_dir)
    assert (s["default_agent"], s["role_agents"]) == ("claude", {"deacon": "node0-deacon"})
    registry.rollback("deacon")
    s = _settings(town_dir)
    assert (s["default_agent"], s["role_agents"], s["agents"]) == ("claude", {}, {})


def test_tampered_version_refuses_deploy(registry: Registry, make_export, town_dir: Path) -> None:
    rec = registry.register(make_export("deacon"))
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


def test_task_adapters(registry: Registry, make_run, make_export, town_dir: Path) -> None:
    a = registry.register(make_run("deacon", task="patrol"))
    assert (a.ref, a.task, a.compatible) == ("deacon-patrol:1", "patrol", ["tiny-llama"])
    registry.register(make_export("deacon"))
    assert [r.ref for r in registry.adapters()] == ["deacon-patrol:1"]
    with pytest.raises(GtExtError, match="is a task adapter"):
        registry.deploy("deacon-patrol")
    with pytest.raises(GtExtError, match="is a role model, not a task adapter"):
        registry.deploy("deacon", adapters=["deacon:1"])
    registry.deploy("deacon", adapters=["deacon-patrol"])
    args = _settings(town_dir)["agents"]["node0-deacon"]["args"]
    assert args[:4] == ["--model", "deacon:1", "--adapters", "deacon-patrol:1"]
    assert registry.deployed_to(a) == ["deacon@town"]


def test_prune_keeps_deployed_and_last_good(registry: Registry, make_export) -> None:
    recs = [registry.register(make_export("deacon")) for _ in range(5)]
    registry.record_eval("deacon:2", PASS)
    registry.record_eval("deacon:4", FAIL)
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


def test_records_survive_reopen(registry: Registry, make_export, town_dir: Path, backend: str) -> None:
    registry.register(make_export("deacon"))
    registry.record_eval("deacon", PASS)
    registry.deploy("deacon")
    with Registry.open(town_dir) as again:
        assert again.store.backend == backend
        rec = again.get("deacon")
        assert (rec.gate, rec.eval_composite, rec.eval_categories["patrol"]["passed"]) == ("pass", 81.5, 4)
        assert again.deployed_to(rec) == ["deacon@town"]


def test_dolt_backend_commits_each_change(registry: Registry, make_export, backend: str) -> None:
    if backend != "dolt":
        pytest.skip("Dolt history only exists on the Dolt backend")
    registry.register(make_export("deacon"))
    registry.deploy("deacon")
    msgs = [r["message"] for r in registry.store.history()]
    assert any("register deacon:1" in m for m in msgs)
    assert any("deploy deacon@town: - -> deacon:1" in m for m in msgs)
