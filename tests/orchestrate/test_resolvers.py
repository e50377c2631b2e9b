"""train-role-model's `registry-parent` resolver: DPO trains on top of the role's current model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gt_ext.cli import main
from gt_ext.digest import sha256_file
from gt_ext.errors import GtExtError
from gt_ext.orchestrate.formula import find_formula
from gt_ext.orchestrate.resolvers import registry_parent, resolve_extra


@pytest.fixture
def registry_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A per-user SQLite registry outside any town."""
    for k in ("GT_TOWN_ROOT", "GT_ROOT", "GT_EXT_REGISTRY_BACKEND"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GT_EXT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("GT_EXT_MODELS", str(tmp_path / "models"))
    return tmp_path


def _register_export(tmp_path: Path, role: str = "witness") -> str:
    d = tmp_path / f"export-{role}"
    (d / "adapter").mkdir(parents=True)
    (d / "adapter" / "adapter_config.json").write_text("{}")
    (d / "merged").mkdir()
    (d / "merged" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (d / "run.json").write_text(json.dumps({"role": role, "task": None, "base_model": "tiny-llama", "status": "done",
                                            "config": {"mode": "sft"}, "lora": {"r": 4}}))
    files = {p.relative_to(d).as_posix(): sha256_file(p) for p in sorted(d.rglob("*")) if p.is_file()}
    (d / "manifest.json").write_text(json.dumps({"files": files, "base_model": "tiny-llama", "role": role}))
    from gt_ext.registry import Registry

    with Registry.open() as reg:
        return reg.register(d).ref


def test_sft_needs_no_registry() -> None:
    assert registry_parent({"role": "witness", "mode": "sft", "parent": "auto", "base_model": "tiny-llama"}) == {
        "parent_ref": "", "train_base": "tiny-llama"}
    with pytest.raises(GtExtError, match="mode='rl': use sft or dpo"):
        registry_parent({"role": "witness", "mode": "rl"})
    with pytest.raises(GtExtError, match="mode=dpo trains on top of a role model"):
        registry_parent({"role": "witness", "mode": "dpo", "parent": "none"})


def test_dpo_resolves_the_current_role_model(registry_home: Path, capsys: pytest.CaptureFixture) -> None:
    values = {"role": "witness", "mode": "dpo", "parent": "auto", "base_model": "tiny-llama"}
    with pytest.raises(GtExtError, match="no witness model in the registry"):
        registry_parent(values)
    ref = _register_export(registry_home)
    got = registry_parent(values)
    assert got["parent_ref"] == ref == "witness:1" and got["train_base"].endswith("witness/v1/merged")
    _register_export(registry_home, role="deacon")
    with pytest.raises(GtExtError, match="trained for role deacon, not witness"):
        registry_parent({**values, "parent": "deacon:1"})
    f = find_formula("train-role-model")
    assert resolve_extra(f, {**values, "x": "kept"})["x"] == "kept"
    # The formula's commands as they would run: DPO on the parent's weights, registered as its child.
    assert main(["formula", "run", "train-role-model", "--set", "role=witness", "--set", "mode=dpo", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "mode=dpo 'base_model=" + got["train_base"] + "'" in out.replace('"', "'")
    assert "--parent witness:1" in out.replace("'", "")
    assert main(["formula", "run", "train-role-model", "--set", "role=deacon", "--set", "mode=dpo",
                 "--set", "parent=nope:2", "--no-bead"]) == 2  # a missing parent: nothing run, nothing written
    assert "no model 'nope:2'" in capsys.readouterr().err
    assert not (registry_home / "home" / "jobs").exists()
