"""Acceptance: a real town (real `gt install` + `gt rig add`, real `dolt sql-server`), metadata in
its HQ Dolt database, and real gt reading what `gt-ext model deploy` wrote.

`gt status --json` reports, for every agent, the agent alias gt resolves for its role from town
settings (`agent_alias`); `gt config agent list --json` lists the custom agents gt loaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gt_ext.cli import main

pytestmark = pytest.mark.integration


def _witness_alias(tt, rig: str) -> str | None:
    status = json.loads(tt.gt("status", "--json", "--fast", timeout=300).stdout)
    for r in status.get("rigs") or []:
        if r.get("name") == rig:
            for a in r.get("agents") or []:
                if a.get("role") == "witness":
                    return a.get("agent_alias")
    raise AssertionError(f"gt status --json lists no witness for rig {rig}: {json.dumps(status)[:600]}")


def test_deploy_and_rollback_seen_by_real_gt(make_town, make_export, gt_bin, monkeypatch, capsys,
                                            tmp_path: Path) -> None:
    tt = make_town()
    if tt.mode != "gt":
        pytest.skip("the town was not made by the real gt")
    tt.activate(monkeypatch)
    monkeypatch.delenv("GT_EXT_REGISTRY_BACKEND", raising=False)  # inside a town: Dolt by default
    monkeypatch.chdir(tt.root)
    if tt.gt("dolt", "status", check=False).returncode != 0:
        tt.gt("dolt", "start", timeout=300)

    before = _witness_alias(tt, "demo")
    for role in ("deacon", "witness"):
        assert main(["model", "register", str(make_export(role))]) == 0
    # deacon: a full run of its gating suite (builtin:deacon-patrol) passed; witness: none, so only forced, with a reason.
    from gate_results import eval_result

    from gt_ext.registry import Registry

    with Registry.open(tt.root) as reg:
        reg.record_eval("deacon:1", eval_result("builtin:deacon-patrol", "deacon", suite="deacon-patrol"))
    assert main(["model", "deploy", "deacon"]) == 0
    assert main(["model", "deploy", "witness-v1"]) == 2
    assert "has no full eval of builtin:witness-patrol" in capsys.readouterr().err
    assert main(["model", "deploy", "witness-v1", "--force", "--reason", "acceptance test"]) == 0
    capsys.readouterr()

    assert _witness_alias(tt, "demo") == "node0-witness"
    agents = json.loads(tt.gt("config", "agent", "list", "--json").stdout)
    node0 = {a["name"]: a for a in agents}["node0-witness"]
    assert node0["command"] == "node0-inference" and node0["args"].startswith("--model witness:1 --rag --rag-budget ")

    # The metadata went to the town's HQ Dolt database, one Dolt commit per change.
    with tt.dolt("hq") as c:
        msgs = [r["message"] for r in c.query("SELECT message FROM dolt_log")]
    assert any("deploy witness@town" in m for m in msgs) and any("register witness:1" in m for m in msgs)

    assert main(["model", "rollback", "witness"]) == 0
    assert _witness_alias(tt, "demo") == before
    settings = json.loads((tt.root / "settings" / "config.json").read_text())
    assert "node0-witness" not in settings.get("agents", {})
    assert settings["role_agents"]["deacon"] == "node0-deacon"
