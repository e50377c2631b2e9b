"""kill -9 of register, deploy, rollback and prune at several points: the next registry command
finds settings, history, records and files in agreement (issue #20, crash-safe registry).

Each command runs in a child process that SIGKILLs itself at one point (the function it would
call next is replaced by a kill), so the kill lands exactly there; the parent then opens the
registry (which recovers) and checks that everything agrees.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gt_ext.registry import Registry

# (command, point): `point` is "module:attribute" of the function that is replaced by a kill.
_CHILD = textwrap.dedent("""
    import os, signal, sys, importlib
    from gt_ext.registry import Registry
    from gt_ext.registry import db, model_files, journal
    from gt_ext.gastown import settings
    command, point, arg = sys.argv[1], sys.argv[2], sys.argv[3]
    owner, attr = point.rsplit(".", 1)
    obj = {"SqliteStore": db.SqliteStore, "ArtifactStore": model_files.ArtifactStore,
           "Journal": journal.Journal, "SettingsFile": settings.SettingsFile,
           "model_files": model_files}[owner]
    setattr(obj, attr, lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL))
    reg = Registry.open(os.environ["GT_TOWN_ROOT"])
    if command == "deploy":
        reg.deploy(arg)
    elif command == "rollback":
        reg.rollback(arg)
    elif command == "register":
        reg.register(arg)
    elif command == "prune":
        reg.prune(keep=int(arg))
    sys.exit(3)  # the kill point was never reached
""")


def _killed(command: str, point: str, arg: str) -> None:
    res = subprocess.run([sys.executable, "-c", _CHILD, command, point, arg], env=dict(os.environ),
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == -9, f"{command} at {point}: rc {res.returncode}\n{res.stderr[-2000:]}"


def _settings_model(town_dir: Path, role: str) -> str | None:
    data = json.loads((town_dir / "settings" / "config.json").read_text())
    if (data.get("role_agents") or {}).get(role) != f"node0-{role}":
        return None
    args = data["agents"][f"node0-{role}"]["args"]
    return args[args.index("--model") + 1]


def _agree(town_dir: Path) -> Registry:
    """Open (= recover) and check: settings serve what the history says, every record has its
    files and every version folder its record, no temp, trash or journal left."""
    reg = Registry.open(town_dir)
    live = {role: d.after.get("model") for (role, rig), d in reg.live().items() if rig == ""}
    assert _settings_model(town_dir, "deacon") == live.get("deacon")
    recs = {r.ref: r for r in reg.list()}
    for r in recs.values():
        assert r.path.is_dir(), r.ref
    on_disk = {f"{d.parent.name}:{d.name[1:]}" for d in reg.root.glob("*/v*") if d.is_dir()}
    assert on_disk == set(recs), (on_disk, set(recs))
    assert not [p for p in reg.root.glob("*/.*")], list(reg.root.glob("*/.*"))
    assert not list((reg.root / ".journal").glob("*")) if (reg.root / ".journal").exists() else True
    return reg


@pytest.fixture
def sqlite_registry(town_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Registry:
    monkeypatch.setenv("GT_EXT_REGISTRY_BACKEND", "sqlite")
    monkeypatch.setenv("GT_TOWN_ROOT", str(town_dir))
    return Registry.open(town_dir)


def test_kill_register_at_each_point(sqlite_registry: Registry, make_export, town_dir: Path) -> None:
    src = make_export("deacon")
    for point in ("model_files._make_read_only",  # copy done, temp folder not yet renamed
                  "SqliteStore.add_model",  # folder in place, no record
                  ):
        _killed("register", point, str(src))
        _agree(town_dir).close()
    # A kill after the record is written keeps the version (the journal record is just dropped).
    _killed("register", "Journal.end", str(src))
    reg = _agree(town_dir)
    assert [r.ref for r in reg.list()] == ["deacon:1"]


def test_kill_deploy_and_rollback_at_each_point(sqlite_registry: Registry, make_export, town_dir: Path,
                                                passed) -> None:
    for _ in range(2):
        passed(sqlite_registry, sqlite_registry.register(make_export("deacon")).ref)
    sqlite_registry.deploy("deacon:1")
    # Killed before the settings write, and between the settings write and the history entry
    # (the case that launched deacon:2 while `list` said deacon:1 and prune could delete it).
    for point in ("SettingsFile.save", "SqliteStore.append_deployment"):
        _killed("deploy", point, "deacon:2")
        reg = _agree(town_dir)
        assert _settings_model(town_dir, "deacon") == "deacon:1"
        assert [d.action for d in reg.history()] == ["deploy"]
        reg.close()
    _killed("deploy", "Journal.end", "deacon:2")  # history written: the deploy stands
    assert _settings_model(town_dir, "deacon") == "deacon:2"
    _agree(town_dir).close()
    _killed("rollback", "SqliteStore.append_deployment", "deacon")
    reg = _agree(town_dir)
    assert _settings_model(town_dir, "deacon") == "deacon:2"  # undone: still the newer deploy
    assert reg.rollback("deacon").entry.model == "deacon:1"
    assert _settings_model(town_dir, "deacon") == "deacon:1"


def test_kill_prune_and_prune_spares_what_settings_launch(sqlite_registry: Registry, make_export,
                                                          town_dir: Path, passed) -> None:
    for _ in range(4):
        sqlite_registry.register(make_export("deacon"))
    passed(sqlite_registry, "deacon:3")
    sqlite_registry.deploy("deacon:3")
    # A version a settings file launches without any history entry (a hand edit, an old crash).
    rig_cfg = town_dir / "demo" / "settings" / "config.json"
    cfg = json.loads(rig_cfg.read_text())
    cfg["agents"] = {"node0-custom": {"command": "node0-inference", "args": ["--model", "deacon:1"]}}
    rig_cfg.write_text(json.dumps(cfg))
    _killed("prune", "ArtifactStore.remove", "0")  # record of deacon:4 deleted, files not yet
    reg = _agree(town_dir)
    assert [r.ref for r in reg.list()] == ["deacon:1", "deacon:2", "deacon:3"]
    reg.close()
    _killed("prune", "SqliteStore.delete_model", "0")  # journal written, nothing deleted yet
    reg = _agree(town_dir)
    assert [r.ref for r in reg.list()] == ["deacon:1", "deacon:2", "deacon:3"]
    plan = reg.prune(keep=0)
    assert [r.ref for r in reg.list()] == ["deacon:1", "deacon:3"], plan
    assert dict((r.ref, why) for r, why in plan.keep)["deacon:1"] == "launched by a settings file"
    _agree(town_dir).close()


def test_register_copies_no_symlink(sqlite_registry: Registry, make_run, tmp_path: Path) -> None:
    from gt_ext.errors import GtExtError

    secret = tmp_path / "secret.txt"
    secret.write_text("private key material")
    for where in ("adapter/notes.txt", "adapter"):
        run = make_run("deacon")
        link = run / where
        if link.is_dir():
            os.rename(link, tmp_path / f"real-adapter-{run.name}")
            link.symlink_to(tmp_path / f"real-adapter-{run.name}")
        else:
            link.symlink_to(secret)
        with pytest.raises(GtExtError, match="a symbolic link"):
            sqlite_registry.register(run)
    assert sqlite_registry.list() == []
    assert not list(sqlite_registry.root.glob("*/v*"))
