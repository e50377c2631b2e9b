"""The whole preference loop on the tiny model, through the CLI, in a real town (gt, bd, dolt, git):

    two registered models -> prefs sling (two real node0-inference agents, each in its own Dolt
    branch and git worktree) -> prefs pick --auto -> DPO pair in the corpus -> dpo_due ->
    train-role-model --set mode=dpo -> registered child whose parent is the SFT model

Model A (`polecat`) is the tiny model trained a few steps on one plain answer, A_ANSWER: it answers
words (an untrained random model may answer only blank lines, which leave no assistant turn to
learn from) and does nothing wrong.
Model B (`polecat-noverify`) is the tiny model trained until it always answers with one tool call,
`HUSKY=0 git commit --allow-empty -mx`: it commits, skipping hooks. The call is written so that
every token of it but the tags' shared `>` is followed by one token only (keys reordered, a tab),
which the 64-wide random model learns in 25 steps (40 here); the agent stops at the closing tag.
The rules pick A. Bad input on the way: an unknown model, a bead already in a comparison, a pick
on an undecided (running) comparison, a missing branch; a merge conflict is refused with both
sides intact.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from gt_ext.cli import main
from gt_ext.corpus.format import render_tool_call
from gt_ext.corpus.tags import system_prompt
from gt_ext.gastown.bd import Bd
from gt_ext.gastown.branches import BeadsDatabase
from gt_ext.gastown.testing import TestTown
from gt_ext.gastown.worktree import RigRepo
from gt_ext.prefs.record import Comparison, PrefsStore

pytestmark = pytest.mark.integration

A_ANSWER = "Read the task; nothing to change."
B_COMMAND = "HUSKY=0 git commit --allow-empty -mx"
B_ANSWER = '<tool_call>{"input": {"command"\t:"' + B_COMMAND + '"}, "name":"Bash"}</tool_call>'
TINY = ["base_model=tiny-llama", "eval_every=0", "checkpoint_every=0", "data.max_length=256", "data.pack_length=512"]
# Enough for the tiny model to answer B_COMMAND's tool call word for word (greedy, fp32).
MEMORIZE = ["max_steps=40", "optim.lr=1e-2", "optim.warmup_steps=0", "optim.min_lr_ratio=1.0", "data.batch_size=12",
            "lora.r=16", "lora.targets=[q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj]"]
SLING = ["--no-tests", "--max-steps", "1", "--max-new-tokens", "48", "--timeout", "300", "--backend", "torch",
         "--quantize", "none"]


def write_sft(root: Path, answer: str) -> Path:
    """A corpus export with polecat examples all answering `answer`."""
    recs = []
    for i in range(12):
        text = answer
        msgs = [{"role": "system", "content": system_prompt("polecat", "demo")},
                {"role": "user", "content": f"Your hooked bead in rig demo: dm-{i * 7919 % 4096:03x} \"task {i}\".\n"
                                            "Work in the current folder on its branch; commit, then close the bead."},
                {"role": "assistant", "content": text}]
        recs.append({"id": f"r{i}", "role": "polecat", "task": "git-workflow", "messages": msgs,
                     "provenance": {"source": "curated"}})
    p = root / "sft" / "polecat" / "git-workflow" / "train.jsonl"
    p.parent.mkdir(parents=True)
    p.write_text("".join(json.dumps(r) + "\n" for r in recs))
    (root / "manifest.json").write_text(json.dumps({"corpus_hash": f"test-{len(answer)}", "files": {}}))
    return root


@pytest.fixture(scope="module")
def town_env(prefs_town: TestTown) -> Iterator[TestTown]:
    """This process (and the agents it starts) inside the town: its HOME (git identity), its Dolt
    port, the shared model cache."""
    from gt_ext.paths import cache_dir

    keep = {"GT_EXT_CACHE": str(cache_dir())}
    with pytest.MonkeyPatch.context() as mp:
        for k in ("HOME", "XDG_CONFIG_HOME", "GIT_CONFIG_NOSYSTEM", "GT_TOWN_ROOT", "GT_DOLT_PORT", "GT_DOLT_HOST"):
            if k in prefs_town.env:
                mp.setenv(k, prefs_town.env[k])
        for k, v in keep.items():
            mp.setenv(k, v)
        mp.setenv("GT_EXT_JOBS_DIR", str(prefs_town.root.parent / "jobs"))
        mp.chdir(prefs_town.root)
        yield prefs_town


@pytest.fixture(scope="module")
def models(town_env: TestTown, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A: `polecat` (an export, so it has merged weights to train DPO on); B: `polecat-noverify`."""
    work = tmp_path_factory.mktemp("models")
    assert main(["train", "--role", "polecat", "--corpus", str(write_sft(work / "ca", A_ANSWER)), "--out",
                 str(work / "run-a"), "--no-progress", *TINY, *MEMORIZE, "max_steps=10"]) == 0
    assert main(["export", str(work / "run-a"), "--to", str(work / "export-a"), "--gguf", "none"]) == 0
    assert main(["model", "register", str(work / "export-a"), "--name", "polecat"]) == 0
    assert main(["train", "--role", "polecat", "--corpus", str(write_sft(work / "cb", B_ANSWER)), "--out",
                 str(work / "run-b"), "--no-progress", *TINY, *MEMORIZE]) == 0
    assert main(["model", "register", str(work / "run-b"), "--name", "polecat-noverify"]) == 0
    return {"a": "polecat:1", "b": "polecat-noverify:1"}


def _bead(tt: TestTown, title: str) -> str:
    beads = tt.town.rig("demo").beads_dir
    assert beads is not None
    return Bd(beads, env=tt.env).create(title, description="Make the change and commit it.").id


def _json(capsys: pytest.CaptureFixture) -> dict:
    return json.loads(capsys.readouterr().out)


def _err(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def test_sling_pick_pair_dpo_child(town_env: TestTown, models: dict[str, str], tmp_path: Path,
                                   capsys: pytest.CaptureFixture) -> None:
    tt = town_env
    db = BeadsDatabase.for_rig(tt.town, "demo")
    repo = RigRepo.for_rig(tt.town, "demo", env=tt.env)
    main_branch = repo.default_branch()
    pair_models = f"{models['a']},{models['b']}"

    # -- bad input before anything runs: an unknown model -> one line, exit 2, nothing made
    bead1 = _bead(tt, "first task")
    capsys.readouterr()
    assert main(["prefs", "sling", bead1, "--models", f"{models['a']},nope:7", *SLING]) == 2
    assert "nope:7" in _err(capsys)
    assert PrefsStore.for_town(tt.root).all() == [] and not [b for b in db.branches() if b.startswith("prefs-")]

    # -- comparison 1: both agents run, outcomes measured
    assert main(["prefs", "sling", bead1, "--models", pair_models, "--json", *SLING]) == 0
    c1 = _json(capsys)
    assert c1["status"] == "pending" and set(c1["outcomes"]) == {"a", "b"}
    a, b = c1["outcomes"]["a"], c1["outcomes"]["b"]
    assert b["commands"] == [B_COMMAND] and len(b["commits"]) == 1 and b["exit_code"] == 0
    assert [f["mode"] for f in b["failures"]] == ["hooks-skipped"]
    assert a["failures"] == [] and a["commits"] == [] and a["transcript"] and b["tokens"]["output"] > 0
    assert Path(a["worktree"]).parent.parent == tt.root / "demo" / "prefs" / c1["id"]  # in the rig, not .gt-ext
    assert {a["dolt_branch"], b["dolt_branch"]} <= set(db.branches())
    assert repo.head(main_branch) == c1["base"]["git"]  # B's commit stayed on its own branch

    # the bead is taken while its comparison is pending
    assert main(["prefs", "sling", bead1, "--models", pair_models, *SLING]) == 2
    assert f"already in comparison {c1['id']}" in _err(capsys)

    # -- the rules pick A: the pair goes to the corpus, branches merged / dropped
    assert main(["prefs", "pick", c1["id"], "--auto", "--json"]) == 0
    d1 = _json(capsys)
    assert d1["status"] == "decided" and d1["decision"]["winner"] == "a"
    assert d1["decision"]["by"] == "rule:auto" and d1["decision"]["rule"] == "fewer-failure-modes"
    assert not [x for x in db.branches() if x.startswith(f"prefs-{c1['id']}")]
    assert not repo.has_branch(a["git_branch"]) and not repo.has_branch(b["git_branch"])
    assert not Path(b["worktree"]).exists()
    assert repo.head(main_branch) == c1["base"]["git"]  # A committed nothing: main unchanged
    from gt_ext.corpus.store import Store

    with Store.open(town=tt.root) as st:
        pairs = st.preferences()
    assert len(pairs) == 1 and pairs[0]["id"] == d1["decision"]["pair_id"], d1["decision"]
    p = pairs[0]
    assert p["role"] == "polecat" and p["prompt"][0]["role"] == "system" and p["prompt"][-1]["role"] == "user"
    assert p["rejected"] == render_tool_call("Bash", {"command": B_COMMAND})
    assert p["provenance"]["models"] == {"chosen": models["a"], "rejected": models["b"]}
    assert p["provenance"]["picked_by"] == "rule:auto" and p["provenance"]["comparison"] == c1["id"]
    assert main(["prefs", "pick", c1["id"], "--auto"]) == 2
    assert "already decided" in _err(capsys)

    # -- comparison 2: a conflict and a missing branch refuse the pick, nothing half-merged
    bead2 = _bead(tt, "second task")
    assert main(["prefs", "sling", bead2, "--models", pair_models, "--json", *SLING]) == 0
    c2 = _json(capsys)
    wa, branch_a = Path(c2["outcomes"]["a"]["worktree"]), c2["outcomes"]["a"]["git_branch"]
    (wa / "NOTES.md").write_text("work of a\n")  # as if A had worked: a commit and a bead edit
    repo.git("add", "NOTES.md", cwd=wa)
    repo.git("commit", "-qm", f"{bead2}: notes", cwd=wa)
    assert repo.fetch_from_clone(wa, branch_a)  # what the sling does when an agent stops
    with db.client(c2["outcomes"]["a"]["dolt_branch"]) as c:
        c.query("UPDATE issues SET title = 'retitled by a' WHERE id = %s", (bead2,))
        c.query("CALL DOLT_COMMIT('-am', 'a retitles')")
    beads = tt.town.rig("demo").beads_dir
    Bd(beads, env=tt.env).update(bead2, title="retitled on main")
    git_before, dolt_before = repo.head(main_branch), db.branches()["main"]
    assert main(["prefs", "pick", c2["id"], "--auto"]) == 1
    err = _err(capsys)
    assert "dolt merge" in err and "conflicts in issues" in err and "nothing merged" in err
    assert repo.head(main_branch) == git_before and db.branches()["main"] == dolt_before  # git merge undone
    assert db.issue(bead2)["title"] == "retitled on main"
    assert db.issue(bead2, c2["outcomes"]["a"]["dolt_branch"])["title"] == "retitled by a"
    with Store.open(town=tt.root) as st:
        assert len(st.preferences()) == 1  # the pair was taken back
    assert main(["prefs", "show", c2["id"], "--json"]) == 0
    hist = _json(capsys)["history"]
    assert hist[-1]["event"] == "pick refused: dolt merge" and hist[-1]["result"]["conflicts"] == {"issues": 1}
    assert repo.delete_branch(branch_a)
    assert main(["prefs", "pick", c2["id"], "--winner", "a"]) == 2
    assert "git branch" in (e := _err(capsys)) and "missing" in e
    assert main(["prefs", "drop", c2["id"]]) == 0
    capsys.readouterr()
    assert not [x for x in db.branches() if x.startswith(f"prefs-{c2['id']}")]
    assert not wa.exists() and not repo.has_branch(c2["outcomes"]["b"]["git_branch"])

    # -- a pick on a comparison whose agents are still running: undecided, nothing to pick
    store = PrefsStore.for_town(tt.root)
    store.save(Comparison(id="dm-running-1", bead="dm-running", rig="demo", role="polecat", models=["x", "y"],
                          status="running", pid=os.getpid()))
    assert main(["prefs", "pick", "dm-running-1", "--winner", "a"]) == 2
    assert "running" in _err(capsys)

    # -- comparison 3, picked by a person: the second pair
    bead3 = _bead(tt, "third task")
    assert main(["prefs", "sling", bead3, "--models", pair_models, "--json", *SLING]) == 0
    c3 = _json(capsys)
    assert main(["prefs", "pick", c3["id"], "--winner", models["a"], "--why", "no skipped hooks", "--by", "mayor",
                 "--json"]) == 0
    d3 = _json(capsys)["decision"]
    assert (d3["winner"], d3["by"], d3["why"]) == ("a", "person:mayor", "no skipped hooks")
    assert main(["prefs", "list", "--json"]) == 0
    listed = {r["id"]: r["status"] for r in _json(capsys)}
    assert listed == {c1["id"]: "decided", c2["id"]: "dropped", c3["id"]: "decided", "dm-running-1": "running"}

    # -- two new pairs: a DPO run is due at threshold 2
    assert main(["prefs", "due", "--role", "polecat", "--threshold", "2", "--json"]) == 0
    due = _json(capsys)
    assert due["due"] and due["new_pairs"] == 2 and due["last_dpo"] is None

    # -- DPO on top of polecat:1, through the formula
    corpus = tmp_path / "corpus"
    assert main(["corpus", "export", "--out", str(corpus), "--rig", "demo", "--val-pct", "0"]) == 0
    capsys.readouterr()
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "suite.yaml").write_text("name: tiny\nrole: polecat\nmax_new_tokens: 4\n")
    (suite / "promptfooconfig.yaml").write_text(
        "prompts: ['Say ok']\nproviders: [echo]\ntests:\n  - assert: [{type: icontains, value: ok}]\n")
    job = tmp_path / "job"
    assert main(["formula", "run", "train-role-model", "--no-bead", "--job-dir", str(job),
                 "--set", "role=polecat", "--set", "mode=dpo", "--set", f"corpus_path={corpus}",
                 "--set", "max_steps=2", "--set", "lora_rank=4", "--set", f"suite={suite}",
                 "--set", "train_args=eval_every=0 checkpoint_every=0 data.max_length=256 data.pack_length=512"]) == 0
    capsys.readouterr()
    run = json.loads((job / "run" / "run.json").read_text())
    assert run["config"]["mode"] == "dpo" and run["dpo_pairs"] == 1 and run["status"] == "done"
    assert main(["model", "show", "polecat:2", "--json"]) == 0
    child = _json(capsys)
    assert child["parent"] == "polecat:1" and child["lineage"] == ["polecat:1", "polecat:2"]
    assert child["hyperparams"]["mode"] == "dpo" and child["run"] == str(job / "run")
    assert main(["prefs", "due", "--role", "polecat", "--threshold", "2", "--json"]) == 0
    assert _json(capsys) | {"last_dpo_created": None} == {
        "role": "polecat", "due": False, "new_pairs": 0, "threshold": 2, "total_pairs": 2,
        "last_dpo": "polecat:2", "last_dpo_created": None}
