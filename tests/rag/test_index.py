"""The indexer on a town of files (settings, CLAUDE.md, directives): real Chroma + real MiniLM.

Beads need the real bd and are covered by test_bd_integration.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gt_ext.cli import main as cli
from gt_ext.errors import GtExtError
from gt_ext.rag import queue
from gt_ext.rag.index import indexer_lock, lock_holder, open_collection, reindex, status
from gt_ext.rag.retrieve import context_for, count_tokens, retrieve
from gt_ext.rag.sources import scan
from tests.rag.townkit import write_town_files

REPO = Path(__file__).resolve().parents[2]


def expected_ids(root: Path) -> set[str]:
    return {c.id for g in scan(root) for c in g.load()}


def index_ids(root: Path) -> list[str]:
    col = open_collection(root, create=False)
    return list(col.get(include=[])["ids"]) if col is not None else []


@pytest.fixture(scope="module")
def town(tmp_path_factory) -> Path:
    root = write_town_files(tmp_path_factory.mktemp("rag") / "town")
    rep = reindex(root)
    assert rep.added > 0 and not rep.errors
    return root


def test_index_matches_sources_and_rerun_is_a_noop(town):
    ids = index_ids(town)
    assert sorted(ids) == sorted(expected_ids(town)) and len(ids) == len(set(ids))
    again = reindex(town)
    assert (again.added, again.deleted, again.groups_synced) == (0, 0, 0)
    full = reindex(town, full=True)
    assert (full.added, full.deleted) == (0, 0) and full.groups_synced == full.groups_scanned
    assert sorted(index_ids(town)) == sorted(ids)


def test_reader_reuses_its_collection_until_the_index_is_written(town):
    # Opening Chroma writes to its own sqlite file; a reader must not take that for an indexer
    # write, or every agent turn reopens the index (and reloads HNSW) from disk.
    first = open_collection(town, create=False)
    assert open_collection(town, create=False) is first
    retrieve("zombie polecat", role="witness", town=town)
    assert open_collection(town, create=False) is first
    reindex(town, full=True)  # writes state.json: the next reader open is a fresh one
    assert open_collection(town, create=False) is not first


def test_retrieve_filters_by_role_and_rig(town):
    hits = retrieve("zombie polecat whose tmux session died", role="witness", rig="demo", town=town, k=3)
    assert hits[0].source == "file:demo/witness/CLAUDE.md"
    # The witness's room is not shown to other roles, nor to another rig.
    assert all(h.source != "file:demo/witness/CLAUDE.md" for h in retrieve("zombie polecat", role="refinery", town=town))
    assert all(h.source != "file:demo/witness/CLAUDE.md" for h in retrieve("zombie polecat", role="witness", rig="other", town=town))
    # Role directives reach their role only.
    assert any(h.source == "file:directives/refinery.md" for h in retrieve("merge order", role="refinery", town=town, k=3))
    assert all(h.source != "file:directives/refinery.md" for h in retrieve("merge order", role="polecat", town=town))


def test_context_block_under_budget(town):
    for budget in (60, 200, 2500):
        block = context_for("how do I escalate when blocked?", "polecat", rig="demo", town=town, budget_tokens=budget)
        from gt_ext.rag.retrieve import _tokenizer

        assert block.startswith("## Town context") and count_tokens(block, _tokenizer("smollm2-135m-instruct")) <= budget
    assert "mail the mayor" in context_for("how do I escalate when blocked?", "polecat", town=town)
    from gt_ext.rag.retrieve import _tokenizer, role_budget

    tok = _tokenizer("smollm2-135m-instruct")
    for role in ("boot", "witness", "refinery"):  # no budget given: the role's own
        block = context_for("how do I escalate when blocked?", role, town=town)
        assert block and count_tokens(block, tok) <= role_budget(role)


def test_edit_and_delete_are_reflected_without_duplicates(town):
    doc = town / "demo" / "witness" / "CLAUDE.md"
    doc.write_text(doc.read_text().replace("gt polecat nuke", "gt polecat remove --purge"))
    rep = reindex(town)
    assert (rep.added, rep.deleted, rep.groups_synced) == (1, 1, 1)
    top = retrieve("zombie polecat", role="witness", town=town, k=1)[0]
    assert "remove --purge" in top.text and "nuke" not in top.text
    (town / "directives" / "refinery.md").unlink()
    rep = reindex(town)
    assert rep.groups_removed == 1 and rep.deleted == 1
    ids = index_ids(town)
    assert sorted(ids) == sorted(expected_ids(town)) and len(ids) == len(set(ids))


def test_unchanged_content_is_not_reread_and_a_touch_is_no_change(town):
    """O(changed): same mtime and size -> not read; same content hash after a touch -> not re-chunked."""
    import time as _time

    assert reindex(town).groups_synced == 0
    doc = town / "CLAUDE.md"
    text = doc.read_text()
    doc.write_text(text)  # a save of the same text: new mtime, same content
    os.utime(doc, (_time.time() + 5, _time.time() + 5))
    rep = reindex(town)
    assert (rep.groups_synced, rep.added, rep.deleted) == (0, 0, 0)
    doc.write_text(text.replace("imperative mood", "present tense"))
    rep = reindex(town)
    assert rep.groups_synced == 1 and (rep.added, rep.deleted) == (1, 1)
    doc.write_text(text)
    assert reindex(town).groups_synced == 1


def test_boosted_sources_rank_higher_for_their_role_only(town):
    from gt_ext.rag.boost import BOOST, set_boost

    def score(role: str) -> float:
        hits = retrieve("how should commit messages be written?", role=role, town=town, k=24)
        return next(h.score for h in hits if h.source == "file:CLAUDE.md")

    before, other = score("witness"), score("polecat")
    set_boost(town, "witness", ["file:CLAUDE.md"], reason="test")
    try:
        assert score("witness") == pytest.approx(before + BOOST, abs=1e-6)
        assert score("polecat") == pytest.approx(other, abs=1e-6)
    finally:
        set_boost(town, "witness", [])
    assert score("witness") == pytest.approx(before, abs=1e-6)


def test_spooled_event_is_drained(town):
    queue.enqueue(town, {"kind": "file", "path": str(town / "CLAUDE.md")})
    assert status(town)["pending_events"] == 1
    rep = reindex(town)
    assert rep.events == 1 and rep.groups_synced == 1 and (rep.added, rep.deleted) == (0, 0)
    assert queue.pending(town) == []


def test_one_writer(town):
    with indexer_lock(town):
        assert lock_holder(town) == os.getpid()
        with pytest.raises(GtExtError, match="already running"):
            reindex(town)
    assert lock_holder(town) is None
    assert (town / ".rag" / ".gitignore").read_text() == "*\n"


def test_cli_status_query_and_errors(town, capsys):
    assert cli(["rag", "status", "--town", str(town), "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["chunks"] == len(index_ids(town)) and st["kinds"]["doc"] >= 1
    assert cli(["rag", "query", "which agent runs the witness?", "--role", "witness", "--town", str(town), "--json", "-k", "3"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["hits"]) == 3 and out["context_tokens"] <= 2500
    assert cli(["rag", "query", "x", "--role", "wizard", "--town", str(town)]) == 2
    assert "unknown role 'wizard'" in capsys.readouterr().err
    assert cli(["rag", "status", "--town", str(town / "nope")]) == 2
    assert "not a Gas Town" in capsys.readouterr().err


def test_query_without_index_is_a_clear_error(tmp_path, capsys):
    root = write_town_files(tmp_path / "town")
    assert cli(["rag", "query", "x", "--role", "witness", "--town", str(root)]) == 2
    assert "rag reindex" in capsys.readouterr().err
    assert context_for("x", "witness", town=root) == ""


@pytest.mark.integration
def test_killed_indexer_converges(tmp_path):
    """kill -9 in the middle of a group (half its new chunks written, old ones not yet deleted)."""
    root = write_town_files(tmp_path / "town")
    big = root / "AGENTS.md"
    big.write_text("\n".join(f"## Rule {i}\nAlways do thing number {i} before step {i + 1}." for i in range(150)))
    reindex(root)
    old = set(index_ids(root))
    big.write_text("\n".join(f"## Rule {i}\nNever skip check number {i} during patrol." for i in range(150)))
    env = dict(os.environ, GT_EXT_RAG_CRASH_AFTER_BATCHES="1")
    code = "import sys; from gt_ext.cli import main; sys.exit(main(sys.argv[1:]))"
    r = subprocess.run([sys.executable, "-c", code, "rag", "reindex", "--town", str(root), "--json"],
                       env=env, cwd=REPO, capture_output=True, text=True)
    assert r.returncode == -9, r.stderr[-500:]
    midway = set(index_ids(root))
    assert old < midway and len(midway) > len(old)  # new chunks in, old ones still there
    rep = reindex(root)
    final = index_ids(root)
    assert sorted(final) == sorted(expected_ids(root)) and len(final) == len(set(final))
    assert not (set(final) & (old - expected_ids(root)))
    assert rep.added == 150 - 64 and rep.deleted == 150


def test_sessions_from_corpus_store_and_export(tmp_path):
    from gt_ext.corpus.store import Store, StoredExample

    root = write_town_files(tmp_path / "town")
    msgs = [{"role": "user", "content": "polecat nux is stuck on a rebase"},
            {"role": "assistant", "content": "nudged nux and escalated the rebase conflict to the refinery"}]
    with Store.open(root / ".corpus") as store, store.tx():
        store.insert(StoredExample(id="ex1", source="claude-jsonl", source_key="k1", source_hash="h1", messages=msgs,
                             role="witness", task="patrol", rig="demo", session="s-1", time="2026-01-01T00:00:00Z"))
    export = tmp_path / "export"
    (export / "sft" / "crew" / "general").mkdir(parents=True)
    rec = {"id": "ex2", "role": "crew", "task": "general", "provenance": {"session": "s-2", "time": "2026-01-02T00:00:00Z"},
           "messages": [{"role": "user", "content": "what is the capital of the flamingo kingdom"},
                        {"role": "assistant", "content": "pinkville"}]}
    (export / "sft" / "crew" / "general" / "train.jsonl").write_text(json.dumps(rec) + "\n")
    rep = reindex(root, corpus_dir=export)
    assert not rep.errors
    hit = retrieve("stuck rebase", role="witness", town=root, k=1)[0]
    assert hit.source == "session:ex1" and hit.meta["kind"] == "session"
    assert retrieve("flamingo kingdom capital", role="crew", town=root, k=1)[0].source == "session:ex2"
    assert all(h.source != "session:ex1" for h in retrieve("stuck rebase", role="crew", town=root))
