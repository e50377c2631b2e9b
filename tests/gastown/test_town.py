"""Town discovery (unit) and the real test town (integration)."""

from __future__ import annotations

import json
from pathlib import Path

import psutil
import pytest

from gt_ext.errors import GtExtError
from gt_ext.gastown.bd import Bd
from gt_ext.gastown.town import Town, find_town, require_town


def _town(root: Path, rigs: dict | None = None) -> Path:
    (root / "mayor").mkdir(parents=True)
    (root / "mayor" / "town.json").write_text(json.dumps({"type": "town", "version": 2, "name": root.name}))
    (root / "mayor" / "rigs.json").write_text(json.dumps({"version": 1, "rigs": rigs or {}}))
    return root


@pytest.fixture(autouse=True)
def _no_town_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GT_ROOT", raising=False)
    monkeypatch.delenv("GT_TOWN_ROOT", raising=False)


def test_find_town_walks_up(tmp_path: Path) -> None:
    root = _town(tmp_path / "gt")
    deep = root / "demo" / "polecats" / "nux" / "src"
    deep.mkdir(parents=True)
    assert find_town(deep) == Town(root.resolve())
    assert find_town(tmp_path) is None


def test_outermost_town_wins(tmp_path: Path) -> None:
    outer = _town(tmp_path / "gt")
    inner = _town(outer / "demo" / "mayor" / "rig")
    assert find_town(inner) == Town(outer.resolve())


def test_env_vars(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _town(tmp_path / "gt")
    monkeypatch.chdir(tmp_path)
    assert find_town() is None
    monkeypatch.setenv("GT_ROOT", str(root))
    assert find_town() == Town(root.resolve())
    monkeypatch.setenv("GT_TOWN_ROOT", str(tmp_path))
    with pytest.raises(GtExtError, match="GT_TOWN_ROOT"):
        find_town()


def test_require_town_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(GtExtError, match="not inside a Gas Town"):
        require_town()


def test_rigs_and_beads_dirs(tmp_path: Path) -> None:
    root = _town(tmp_path / "gt", {"demo": {"git_url": "x", "beads": {"prefix": "dm"}}, "bare": {"git_url": "y"}})
    (root / ".beads").mkdir()
    (root / "demo" / "mayor" / "rig" / ".beads").mkdir(parents=True)
    t = Town(root)
    assert [r.name for r in t.rigs()] == ["bare", "demo"]
    assert t.rig("demo").prefix == "dm" and t.rig("bare").prefix is None
    assert t.beads_dirs() == {"hq": root / ".beads", "demo": root / "demo" / "mayor" / "rig" / ".beads"}
    with pytest.raises(GtExtError, match="rigs: bare, demo"):
        t.rig("nope")


def test_malformed_rigs_json(tmp_path: Path) -> None:
    root = _town(tmp_path / "gt")
    (root / "mayor" / "rigs.json").write_text('{\n  "rigs": {\n    "a": oops\n}')
    with pytest.raises(GtExtError, match=r"rigs\.json:3:"):
        Town(root).rigs()


# -- the real town ----------------------------------------------------------------------------------
@pytest.mark.integration
def test_real_town(town) -> None:  # noqa: ANN001 - TestTown
    t = town.town
    assert find_town(town.root / "demo") == Town(town.root.resolve())
    assert [r.name for r in t.rigs()] == ["demo"]
    dirs = t.beads_dirs()
    assert set(dirs) == {"hq", "demo"}
    # The town's Dolt server answers on its own port, found the way gt finds it, on 127.0.0.1 only.
    from gt_ext.gastown.dolt import DoltClient, town_dolt_port

    assert town_dolt_port(town.root) == town.dolt_port
    with DoltClient.for_town(town.root) as c:
        dbs = c.databases()
    assert "hq" in dbs
    listeners = [x for x in psutil.net_connections("tcp")
                 if x.status == psutil.CONN_LISTEN and x.laddr.port == town.dolt_port]
    assert listeners and all(x.laddr.ip == "127.0.0.1" for x in listeners)
    # bd works against the rig's beads.
    bd = Bd(dirs["demo"], env=town.env)
    issue = bd.create("work item from the test town")
    assert issue.id.startswith("dm-")
    assert issue.id in {i.id for i in bd.list()}
    if town.mode == "gt":
        res = town.gt("rig", "list", "--json")
        assert "demo" in res.stdout


@pytest.mark.integration
def test_files_mode_town_is_torn_down(make_town, tmp_path: Path) -> None:  # noqa: ANN001
    """The fallback town (gt's files + real bd + real dolt), and that close() leaves nothing behind."""
    tt = make_town(rig="solo", prefix="so", use_gt=False)
    assert tt.mode == "files"
    assert set(tt.beads_dirs()) == {"hq", "solo"}
    assert Bd(tt.beads_dirs()["solo"], env=tt.env).create("x").id.startswith("so-")
    port = tt.dolt_port
    with tt.dolt() as c:
        assert "hq" in c.databases()
    tt.close()
    root = str(tt.root)
    left = [p for p in psutil.process_iter(["cmdline", "cwd"])
            if root in " ".join(p.info["cmdline"] or []) or (p.info["cwd"] or "").startswith(root)]
    assert left == []
    listening = [c for c in psutil.net_connections("tcp") if c.laddr and c.laddr.port == port
                 and c.status == psutil.CONN_LISTEN]
    assert listening == []


def test_beads_redirect_is_followed(tmp_path: Path) -> None:
    root = _town(tmp_path / "gt", {"demo": {"git_url": "x"}})
    (root / "demo" / "mayor" / "rig" / ".beads").mkdir(parents=True)
    (root / "demo" / "mayor" / "rig" / ".beads" / "redirect").write_text("../../.beads\n")
    (root / "demo" / ".beads").mkdir()
    (root / "demo" / "refinery" / "rig" / ".beads").mkdir(parents=True)
    (root / "demo" / "refinery" / "rig" / ".beads" / "redirect").write_text("../../.beads\n")
    assert Town(root).rig("demo").beads_dir == root / "demo" / ".beads"
    from gt_ext.gastown.town import resolve_beads_dir

    assert resolve_beads_dir(root / "demo" / "refinery" / "rig" / ".beads") == (root / "demo" / ".beads").resolve()
    assert resolve_beads_dir(root / "nope") is None
