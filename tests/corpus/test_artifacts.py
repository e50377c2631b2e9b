import os
import time

from gt_ext.corpus import artifacts
from gt_ext.corpus.artifacts import collect_artifacts, find_artifacts
from gt_ext.corpus.store import Store
from tests.corpus.helpers import make_town_dirs

V1 = "# Witness rules\nNudge idle polecats before escalating. Never kill sessions by hand; use gt.\n"
V2 = "# Witness rules\nNudge idle polecats twice before escalating. Never kill sessions by hand; use gt.\n"


def _town(tmp_path):
    town = make_town_dirs(tmp_path / "town")
    (town / "demo" / "witness").mkdir(parents=True)
    (town / "demo" / "witness" / "CLAUDE.md").write_text(V1)
    (town / ".beads" / "formulas").mkdir(parents=True)
    (town / ".beads" / "formulas" / "patrol.formula.toml").write_text('formula = "patrol"\ndescription = "Walk the rig and check polecats"\n')
    (town / "demo" / ".git").mkdir()
    (town / "demo" / ".git" / "CLAUDE.md").write_text("not an artifact")
    return town


def test_find_and_tag(tmp_path):
    town = _town(tmp_path)
    found = [str(p.relative_to(town)) for p in find_artifacts(town)]
    assert found == [".beads/formulas/patrol.formula.toml", "demo/witness/CLAUDE.md"]
    with Store.open(tmp_path / "c") as st:
        assert collect_artifacts(st, town) == {"new": 2}
        assert collect_artifacts(st, town) == {"unchanged": 2}
        w = [e for e in st.query() if e.role == "witness"][0]
        assert (w.rig, w.source, w.artifact_key) == ("demo", "artifact", "demo:demo/witness/CLAUDE.md")


def test_newer_supersedes_and_recent_revert_is_flagged(tmp_path):
    town = _town(tmp_path)
    f = town / "demo" / "witness" / "CLAUDE.md"
    with Store.open(tmp_path / "c") as st:
        collect_artifacts(st, town)
        f.write_text(V2)
        assert collect_artifacts(st, town)["new"] == 1
        versions = {e.messages[-1]["content"]: e.status for e in st.query(status=None, role="witness")}
        assert versions == {V1: "superseded", V2: "active"}
        f.write_text(V1)  # undo the last edit right away
        assert collect_artifacts(st, town)["revert-flagged"] == 1
        versions = {e.messages[-1]["content"]: e.status for e in st.query(status=None, role="witness")}
        assert versions == {V1: "review", V2: "active"}


def test_old_revert_outside_the_window_applies(tmp_path, monkeypatch):
    town = _town(tmp_path)
    f = town / "demo" / "witness" / "CLAUDE.md"
    with Store.open(tmp_path / "c") as st:
        collect_artifacts(st, town)
        f.write_text(V2)
        collect_artifacts(st, town)
        monkeypatch.setattr(artifacts, "REVERT_WINDOW_S", 0)
        f.write_text(V1)
        os.utime(f, (time.time(), time.time()))
        assert collect_artifacts(st, town)["superseded-old"] == 1
        versions = {e.messages[-1]["content"]: e.status for e in st.query(status=None, role="witness")}
        assert versions == {V1: "active", V2: "superseded"}
