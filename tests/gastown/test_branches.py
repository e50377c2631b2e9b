"""Dolt branches of a rig's beads database, written by the real bd through branch proxies.

The `prefs_town` session town (real gt install + rig add, bd in server mode on the town's dolt
sql-server). The acceptance of issue 17: two branches of one beads database written
concurrently, a conflicting merge reported with both sides intact, a clean merge, the loser's
branch gone; plus the git side (worktrees, merge-tree check, merge into the refinery's main).
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from gt_ext.errors import GtExtError
from gt_ext.gastown.bd import Bd
from gt_ext.gastown.branches import BeadsDatabase, branch_beads_dir, branch_env
from gt_ext.gastown.branchproxy import BranchProxy
from gt_ext.gastown.testing import TestTown
from gt_ext.gastown.worktree import RigRepo

pytestmark = pytest.mark.integration


@pytest.fixture
def rig_town(prefs_town: TestTown) -> TestTown:
    return prefs_town


def _rig_bd(tt: TestTown) -> Bd:
    beads = tt.town.rig("demo").beads_dir
    assert beads is not None
    return Bd(beads, env=tt.env)


def test_two_branches_written_concurrently_then_merged(rig_town: TestTown, tmp_path: Path) -> None:
    tt = rig_town
    db = BeadsDatabase.for_rig(tt.town, "demo")
    main_bd = _rig_bd(tt)
    bead = main_bd.create("shared bead", description="a and main both retitle it")
    other = main_bd.create("b's bead", description="only b touches it")
    for b in ("t1-a", "t1-b"):
        db.create_branch(b)
    with pytest.raises(GtExtError, match="already exists"):
        db.create_branch("t1-a")
    rig_beads = db.beads_dir
    assert rig_beads is not None
    errors: list[BaseException] = []
    made: dict[str, str] = {}
    with BranchProxy(db.port, db.database, "t1-a") as pa, BranchProxy(db.port, db.database, "t1-b") as pb:
        bd_a = Bd(branch_beads_dir(rig_beads, tmp_path / "a", pa.port), env=branch_env(tt.env, tmp_path / "a" / ".beads", pa.port))
        bd_b = Bd(branch_beads_dir(rig_beads, tmp_path / "b", pb.port), env=branch_env(tt.env, tmp_path / "b" / ".beads", pb.port))

        def side_a() -> None:
            try:
                bd_a.update(bead.id, title="title from a")
                made["a"] = bd_a.create("follow-up from a").id
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        def side_b() -> None:
            try:
                made["b"] = bd_b.create("follow-up from b").id
                bd_b.close(other.id, reason="done on b")
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

        threads = [threading.Thread(target=side_a), threading.Thread(target=side_b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        assert not errors, errors
        # Each side sees its own writes only; bd through the proxy reads its branch too.
        assert bd_a.show(bead.id).title == "title from a" and bd_a.show(other.id).status == "open"
        assert bd_b.show(bead.id).title == "shared bead" and bd_b.show(other.id).status == "closed"
        ids_a = {i.id for i in bd_a.list(all=True)}
        assert made["a"] in ids_a and made["b"] not in ids_a
    assert db.issue(made["a"]) is None and db.issue(made["b"]) is None  # main saw neither
    assert db.issue(bead.id, "t1-a")["title"] == "title from a"
    assert len(db.commits_since("t1-a", "main")) >= 2

    # main moves on: the same bead's title changes there -> merging a conflicts on that row.
    main_bd.update(bead.id, title="title from main")
    before_main, before_a = db.branches()["main"], db.branches()["t1-a"]
    res = db.merge("t1-a")
    assert not res.merged and res.conflicts == {"issues": 1}
    detail = next(d for d in res.details if d["id"] == bead.id)
    assert detail["ours"]["title"] == "title from main" and detail["theirs"]["title"] == "title from a"
    # Both sides intact: nothing merged, nothing lost.
    assert db.branches()["main"] == before_main and db.branches()["t1-a"] == before_a
    assert db.issue(bead.id)["title"] == "title from main" and db.issue(bead.id, "t1-a")["title"] == "title from a"
    assert db.issue(made["a"]) is None

    # b touched rows main did not (its own bead, another bead's status): a clean merge.
    res = db.merge("t1-b", message="merge b")
    assert res.merged and res.commit == db.branches()["main"]
    assert db.issue(made["b"])["title"] == "follow-up from b"
    assert db.issue(other.id)["status"] == "closed" and db.issue(bead.id)["title"] == "title from main"
    assert _rig_bd(tt).show(made["b"]).title == "follow-up from b"  # plain bd on main sees it
    # The loser's branch is dropped.
    assert db.delete_branch("t1-a") and "t1-a" not in db.branches() and not db.delete_branch("t1-a")
    with pytest.raises(GtExtError, match="no branch t1-a"):
        db.merge("t1-a")


def test_git_worktrees_and_merges(rig_town: TestTown, tmp_path: Path) -> None:
    tt = rig_town
    repo = RigRepo.for_rig(tt.town, "demo", env=tt.env)
    main = repo.default_branch()
    base = repo.head(main)
    assert base
    wa, wb = tmp_path / "wa", tmp_path / "wb"
    repo.add_worktree(wa, "prefs/t2/a", base)
    repo.add_worktree(wb, "prefs/t2/b", base)
    for wt, text in ((wa, "from a\n"), (wb, "from b\n")):
        (wt / "README.md").write_text(text)
        repo.git("commit", "-qam", f"edit {wt.name}", cwd=wt)
    assert repo.current_branch(wa) == "prefs/t2/a" and len(repo.commits(base, "prefs/t2/a")) == 1
    assert repo.merge_conflicts("prefs/t2/a", main) == []
    res = repo.merge("prefs/t2/a", main, "merge a")
    assert res.merged and repo.head(main) == res.commit
    assert repo.contains(main, repo.head("prefs/t2/a"))
    # b edited the same line: refused, main and b untouched.
    head_b = repo.head("prefs/t2/b")
    res = repo.merge("prefs/t2/b", main, "merge b")
    assert not res.merged and res.conflicts == ["README.md"]
    assert repo.head(main) != head_b and repo.head("prefs/t2/b") == head_b
    wt_main = repo.worktree_for(main)
    if wt_main is not None:  # gt's refinery worktree: clean, on the merged commit
        assert repo.dirty(wt_main, untracked=False) == [] and (wt_main / "README.md").read_text() == "from a\n"
    repo.remove_worktree(wb)
    assert repo.delete_branch("prefs/t2/b") and not repo.has_branch("prefs/t2/b") and not wb.exists()
    # A clone keeps its commits to itself until its branch is fetched back.
    wc = tmp_path / "wc"
    start = repo.head(main)
    assert repo.add_clone(wc, "prefs/t2/c", start) == start and repo.current_branch(wc) == "prefs/t2/c"
    (wc / "NEW.md").write_text("c\n")
    repo.git("add", "NEW.md", cwd=wc)
    repo.git("commit", "-qm", "c", cwd=wc)
    assert repo.commits(start, "prefs/t2/c") == []
    assert repo.fetch_from_clone(wc, "prefs/t2/c") and [c["subject"] for c in repo.commits(start, "prefs/t2/c")] == ["c"]
    assert not repo.fetch_from_clone(wc, "no-such-branch")
    repo.remove_worktree(wc)
    assert not wc.exists() and repo.delete_branch("prefs/t2/c")
