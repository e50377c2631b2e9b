"""With the real bd: beads reach the index, changes are reflected after the indexer runs, bd hooks
spool events, and retrieval finds the known source for each query (recall@5 >= 0.9)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from gt_ext.gastown.bd import Bd
from gt_ext.rag import queue
from gt_ext.rag.index import open_collection, reindex
from gt_ext.rag.retrieve import retrieve
from tests.rag.townkit import QUERIES, build_beads_town

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bd_town(bd_bin, tmp_path_factory):
    from gt_ext.gastown.testing import isolated_env

    base = tmp_path_factory.mktemp("ragbd")
    env = isolated_env(base / "home")
    root = base / "town"
    names = build_beads_town(root, env)
    rep = reindex(root)
    assert not rep.errors, rep.errors
    return root, env, names


def chunks_of(root: Path, source: str) -> list[str]:
    col = open_collection(root, create=False)
    return col.get(where={"source": source}, include=["documents"])["documents"]


def test_recall_at_5(bd_town):
    root, _env, names = bd_town
    found = []
    for prompt, role, want in QUERIES:
        want = names.get(want, want)
        hits = retrieve(prompt, role=role, town=root, k=5)
        found.append(want in [h.source for h in hits])
    recall = sum(found) / len(found)
    print(f"recall@5 = {recall:.2f} over {len(found)} queries")
    assert recall >= 0.9, [q for q, ok in zip(QUERIES, found, strict=True) if not ok]


def test_recall_within_the_role_budget(bd_town):
    """The block an agent gets (context_for at its role's default budget) holds the wanted source."""
    from gt_ext.rag.retrieve import context_for

    root, _env, names = bd_town
    found = [f"[{names.get(want, want)}]" in context_for(prompt, role, town=root) for prompt, role, want in QUERIES]
    recall = sum(found) / len(found)
    print(f"recall in the role-budget block = {recall:.2f} over {len(found)} queries")
    assert recall >= 0.9, [q for q, ok in zip(QUERIES, found, strict=True) if not ok]


def test_create_update_close_are_reflected(bd_town):
    root, env, _ = bd_town
    bd = Bd(root / "demo" / "mayor" / "rig" / ".beads", env=env)
    issue = bd.create("Sandbox quota alarm fires every night", description="The nightly sandbox quota alarm pages on-call although usage is at 20 percent.")
    source = f"bead:demo:{issue.id}"
    rep = reindex(root)
    assert rep.added == 1 and rep.deleted == 0
    assert [h.source for h in retrieve("night pager alarm about quota", role="polecat", town=root, k=3)][0] == source
    assert len(chunks_of(root, source)) == 1

    bd.update(issue.id, status="in_progress", title="Sandbox quota alarm misfires nightly")
    rep = reindex(root)
    assert (rep.added, rep.deleted) == (1, 1)
    [doc] = chunks_of(root, source)
    assert doc.startswith(f"bead {issue.id} [in_progress]") and "misfires nightly" in doc

    bd.close(issue.id, reason="threshold fixed")
    reindex(root)
    [doc] = chunks_of(root, source)
    assert "[closed]" in doc and "closed: threshold fixed" in doc
    assert source not in [h.source for h in retrieve("night pager alarm about quota", role="polecat", town=root)]
    assert source in [h.source for h in retrieve("night pager alarm about quota", role="polecat", town=root, statuses=None)]
    again = reindex(root, full=True)
    assert (again.added, again.deleted) == (0, 0) and len(chunks_of(root, source)) == 1


def test_bd_hook_spools_and_indexer_drains(bd_town):
    root, env, _ = bd_town
    beads = root / "demo" / "mayor" / "rig" / ".beads"
    hook = beads / "hooks" / "on_create"
    hook.parent.mkdir(exist_ok=True)
    # What the corpus hooks do for RAG: one call, no index access.
    hook.write_text(f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {str(REPO)!r})\n"
                    "from gt_ext.rag.queue import enqueue\n"
                    f"enqueue({str(root)!r}, {{'kind': 'bead', 'op': sys.argv[2], 'beads_dir': {str(beads)!r}, 'id': sys.argv[1]}})\n")
    hook.chmod(0o755)
    try:
        hook_env = {k: v for k, v in env.items() if k != "BD_NO_HOOKS"}
        issue = Bd(beads, env=hook_env).create("Hooked bead about flamingo deployments")
        deadline = time.monotonic() + 60  # bd runs hooks in the background: wait for the file
        while not queue.pending(root) and time.monotonic() < deadline:
            time.sleep(0.1)
        [ev] = queue.read_queued(queue.pending(root))
        assert ev["id"] == issue.id and ev["op"] == "create"
        rep = reindex(root)
        assert rep.events == 1 and rep.added == 1 and queue.pending(root) == []
        assert retrieve("flamingo deployments", role="crew", town=root, k=1)[0].source == f"bead:demo:{issue.id}"
    finally:
        hook.unlink()


def test_real_town_made_by_gt(make_town, monkeypatch):
    """A town made by the real `gt install` + `gt rig add` (or gt's files + dolt server without gt):
    rig beads in Dolt server mode reach the index through the same path."""
    tt = make_town()
    tt.activate(monkeypatch)
    beads = tt.beads_dirs()["demo"]
    issue = Bd(beads, env=tt.env).create("Refinery rejects MRs with CRLF line endings",
                                         description="Merge requests from Windows polecats fail the whitespace check.")
    rep = reindex(tt.root)
    assert not rep.errors, rep.errors
    source = f"bead:demo:{issue.id}"
    assert len(chunks_of(tt.root, source)) == 1
    # A gt-made town also holds gt's own formulas and docs: the bead must still rank in the top 5.
    hits = retrieve("why does the refinery reject merge requests with CRLF line endings?", role="refinery",
                    rig="demo", town=tt.root, k=5)
    assert source in [h.source for h in hits], [h.source for h in hits]
    assert reindex(tt.root).added == 0
    # A gt town's beads live in its Dolt server: their change signal is Dolt's hash of the database.
    from gt_ext.gastown.bd import beads_fingerprint

    assert (beads_fingerprint(beads, tt.root) or "").startswith("dolt:")


def test_bd_hooks_keep_the_index_fresh_for_the_agents_next_prompt(bd_town, tmp_path):
    """`gt-ext hooks install`, then real bd create/update/close: the hooks queue reindex events and
    start the indexer, and after that one processing cycle a deployed agent's next prompt (its RAG
    context) holds the new bead with its update, and no longer the closed one."""
    import io

    from gt_ext.hooks_cli import install
    from gt_ext.rag.index import load_state, lock_holder
    from gt_ext.serve.agent import Agent, Limits
    from gt_ext.serve.generate import Generator
    from gt_ext.serve.params import SamplingParams
    from gt_ext.serve.rolecard import AgentEnv
    from gt_ext.serve.tools import ToolRunner

    root, env, _ = bd_town
    install(root, gt_home=tmp_path / "gt", claude_stop=False, pi=False)
    hook_env = {k: v for k, v in env.items() if k != "BD_NO_HOOKS"}
    bd = Bd(root / "demo" / "mayor" / "rig" / ".beads", env=hook_env)
    t0 = time.time()
    gone = bd.create("Billing callback answers 502 from the gateway",
                     description="The payment gateway callback gets a 502 from our edge proxy.")
    new = bd.create("Witness: polecat slit stalls on lint", description="Polecat slit has been waiting on the linter.",
                    labels=["role:witness"])
    bd.update(new.id, title="Witness: polecat slit stalls on the lint step for an hour")
    bd.close(gone.id, reason="proxy timeout raised")

    def drained() -> bool:
        last = load_state(root)["last_run"] or {}
        return not queue.pending(root) and lock_holder(root) is None and last.get("time", 0) > t0
    deadline = time.monotonic() + 300  # bd runs hooks in the background; the indexer they start embeds
    while not drained() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert drained(), (queue.pending(root), load_state(root)["last_run"])
    log_text = (root / ".rag" / "reindex.log").read_text()
    assert "trigger:" in log_text
    # The hooks named the beads: they were fetched alone (`bd show`), not the whole list again.
    group = load_state(root)["groups"]["beads:demo/mayor/rig/.beads"]
    assert group["synced"] > group["full_synced"]

    work = root / "demo" / "witness"
    agent = Agent(Generator("tiny-llama"), AgentEnv(role="witness", rig="demo", actor="demo/witness", root=str(root),
                                                   workdir=str(work)),
                  ToolRunner(work, 30, 500), SamplingParams(max_new_tokens=2), Limits(max_steps=1), rag=True,
                  out=io.StringIO())
    agent.turn("Which polecat is stalled on lint?")
    prompt = agent.history[1]["content"]
    assert f"bead {new.id} [open]" in prompt and "lint step for an hour" in prompt
    assert gone.id not in prompt
