"""`gt-ext model ...` through the real CLI entry point (tables, --json, exit codes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gt_ext.cli import main
from gt_ext.registry import Registry


def _run(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    code = main(["model", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_end_to_end(registry: Registry, make_export, make_run, town_dir: Path, capsys, passed) -> None:
    code, out, _ = _run(capsys, "register", str(make_export("deacon")), "--json")
    assert code == 0 and json.loads(out)["ref"] == "deacon:1"
    assert _run(capsys, "register", str(make_run("deacon", task="patrol")))[0] == 0

    code, out, _ = _run(capsys, "list")
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "ROLE", "BASE", "VER", "EVAL", "STATUS"]
    assert lines[1].split() == ["deacon", "deacon", "tiny-llama", "v1", "-", "not", "evaluated"]

    code, out, _ = _run(capsys, "adapters")
    assert out.splitlines()[0].split() == ["NAME", "TASK", "VER", "COMPATIBLE", "WITH"]
    assert out.splitlines()[1].split() == ["deacon-patrol", "patrol", "v1", "tiny-llama"]
    assert json.loads(_run(capsys, "adapters", "--json")[1])[0]["task"] == "patrol"

    # No eval yet: refused, one line, naming the way out.
    code, out, err = _run(capsys, "deploy", "deacon", "--adapters", "deacon-patrol", "--reason", "first")
    assert code == 2 and "has no full eval of" in err and "--force --reason TEXT" in err
    code, out, err = _run(capsys, "deploy", "deacon", "--force")
    assert code == 2 and "--force needs --reason TEXT" in err
    passed(registry, "deacon:1", limit=3)  # a smoke run is shown but changes nothing
    code, out, err = _run(capsys, "deploy", "deacon", "--adapters", "deacon-patrol", "--force", "--reason",
                          "first, before the suite run")
    assert code == 0, err
    assert "deployed deacon:1 to deacon in town" in out and "warning: forced: deacon:1 has no full eval" in err

    code, out, _ = _run(capsys, "show", "deacon")
    fields = dict(line.split(":", 1) for line in out.splitlines())
    for key in ("Name", "Role", "Base", "LoRA", "Trained", "Corpus", "Eval score", "DPO pairs", "Adapters",
                "Deployed to", "Status"):
        assert key in fields, key
    assert fields["Deployed to"].strip() == "deacon@town" and fields["DPO pairs"].strip() == "7"
    assert fields["Adapters"].strip() == "deacon-patrol:1" and fields["LoRA"].strip() == "r=4 alpha=8"
    assert "first, before the suite run" in fields["Forced"] and "deploy to deacon@town" in fields["Forced"]
    assert "not gating: partial run (--limit 3" in out
    shown = json.loads(_run(capsys, "show", "deacon:1", "--json")[1])
    assert shown["deployed_to"] == ["deacon@town"] and shown["status"] == "deployed: deacon@town"
    assert [h["reason"] for h in shown["forced_deploys"]] == ["first, before the suite run"]
    assert shown["eval_runs"][0]["full"] is False

    listed = json.loads(_run(capsys, "list", "--json")[1])
    assert [m["ref"] for m in listed] == ["deacon:1"] and listed[0]["deployed_to"] == ["deacon@town"]

    hist = json.loads(_run(capsys, "history", "--json")[1])
    assert [(h["action"], h["model"], h["reason"], h["forced"]) for h in hist] == [
        ("deploy", "deacon:1", "first, before the suite run", True)]

    code, out, _ = _run(capsys, "rollback", "deacon", "--json")
    assert code == 0 and json.loads(out)["after"]["role_agent"] is None
    settings = json.loads((town_dir / "settings" / "config.json").read_text())
    assert "deacon" not in settings["role_agents"] and "node0-deacon" not in settings["agents"]

    plan = json.loads(_run(capsys, "prune", "--keep", "0", "--dry-run", "--json")[1])
    assert plan["dry_run"] is True and sorted(plan["deleted"]) == ["deacon-patrol:1", "deacon:1"]
    assert len(registry.list()) == 2


@pytest.mark.parametrize("argv, match", [
    (["show", "nope"], "no model 'nope'"),
    (["deploy", "x:y:z"], "bad model reference"),
    (["rollback", "wizard"], "unknown role 'wizard'"),
    (["deploy", "deacon", "--role", "mayor"], "refused in this version"),
    (["register", "/nonexistent/run"], "/nonexistent/run: not a folder"),
    (["prune", "--keep", "-1"], "--keep -1: must be 0 or more"),
])
def test_cli_errors_are_one_line_exit_2(registry: Registry, make_export, capsys, argv, match) -> None:
    registry.register(make_export("deacon"))
    code, out, err = _run(capsys, *argv)
    assert code == 2
    assert err.startswith("error: ") and match in err and err.count("\n") == 1


def test_outside_a_town_uses_sqlite_under_home(tmp_path: Path, monkeypatch, make_export, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    for var in ("GT_TOWN_ROOT", "GT_ROOT", "GT_EXT_REGISTRY_BACKEND", "GT_EXT_MODELS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("GT_EXT_HOME", str(tmp_path / "home"))
    code, out, _ = _run(capsys, "register", str(make_export("witness")), "--json")
    assert code == 0 and json.loads(out)["path"] == str(tmp_path / "home" / ".models" / "witness" / "v1")
    assert (tmp_path / "home" / ".models" / "registry.sqlite").is_file()
    code, _, err = _run(capsys, "deploy", "witness")
    assert code == 2 and "need a Gas Town" in err
