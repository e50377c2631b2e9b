"""End to end with the real gt: a model registered and deployed for the witness role, started by
`gt witness start`, ready prompt in its tmux pane, a nudge answered there, and a bd command run by
the agent loop changing the rig's real beads. Then the loop closes: the agent closes a bead
assigned to it (bd's on_close hook spools it), `gt witness stop` ends the session (its stop event
is spooled), and the session is in the corpus as a node0 source, tagged witness, with its model,
and linked to the bead it closed.

The tiny model will not write a correct bd command by itself, so the nudge uses the agent's
`!command` path (allowed for the test's sender in the town's settings/gt-ext.json): the command is
placed as the assistant's tool call, runs through the same policy check, bubblewrap sandbox, tool
runner and transcript as a generated one (bd inside reaches the town's Dolt server through the
sandbox's loopback relay and writes the rig's beads), and the model then answers from its output.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from gt_ext.gastown.testing import wait_until

pytestmark = pytest.mark.integration


def _run_folder(tmp_path: Path, make_adapter) -> Path:
    run = tmp_path / "run-witness"
    make_adapter(run / "adapter", seed=5)
    (run / "run.json").write_text(json.dumps({
        "role": "witness", "task": None, "base_model": "tiny-llama", "config": {}, "corpus_hash": None,
        "examples": 1, "dpo_pairs": 0, "lora": {"r": 4, "alpha": 8, "targets": ["q_proj", "v_proj"]},
        "metrics": {}, "status": "done", "parent": None}))
    return run


def test_gt_starts_node0_witness_and_it_acts_on_beads(make_town, gt_bin, bd_bin, adapter_factory, monkeypatch,
                                                       tmp_path):
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed")
    tt = make_town(prefix=f"e{uuid.uuid4().hex[:3]}")
    if tt.mode != "gt":
        pytest.skip("the town was not made by the real gt")
    tt.activate(monkeypatch)
    monkeypatch.chdir(tt.root)
    if tt.gt("dolt", "status", check=False).returncode != 0:
        tt.gt("dolt", "start", timeout=300)

    from gt_ext.gastown.bd import Bd
    from gt_ext.registry import Registry

    reg = Registry.open(tt.root)
    try:
        rec = reg.register(_run_folder(tmp_path, adapter_factory), name="witness")
        reg.deploy(rec.ref, role="witness", force_reason="e2e test of the serving agent")
    finally:
        reg.close()

    # `!command` nudges run only for senders the town allows; gt names a sender it cannot place
    # (this test's shell) "unknown".
    (tt.root / "settings" / "gt-ext.json").write_text(json.dumps({"agent": {"bang_commands": {
        "allow_from": ["unknown"]}}}))

    sock = f"gtext-e2e-{os.getpid()}"
    env_extra = {"GT_TMUX_SOCKET": sock, "GT_EXT_CLAUDE_PROJECTS": str(tmp_path / "projects")}
    from gt_ext.hooks_cli import install

    install(tt.root, gt_home=Path(tt.env["HOME"]) / ".gt", pi=False)  # bd hooks spool, processing auto
    tt.env.update(env_extra)
    for k, v in env_extra.items():
        monkeypatch.setenv(k, v)

    def tmux(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["tmux", "-L", sock, *args], capture_output=True, text=True)

    try:
        tt.gt("witness", "start", "demo", timeout=600)
        sessions = tmux("list-sessions", "-F", "#{session_name}").stdout.split()
        session = next((s for s in sessions if s.endswith("witness")), None)
        assert session, f"no witness session on tmux socket {sock}: {sessions}"

        def pane() -> str:
            return tmux("capture-pane", "-p", "-J", "-S", "-", "-t", session).stdout

        assert wait_until(lambda: "node0> " in pane(), 300), pane()
        assert "node0 witness:1" in pane()

        # gt typed its startup prompt as the first argument: wait until that turn is answered.
        assert wait_until(lambda: pane().rstrip().endswith("node0>"), 600), pane()
        title = f"e2e bead {uuid.uuid4().hex[:6]}"
        nudge = tt.gt("nudge", "demo/witness", "--mode=immediate", f"!bd create '{title}' -p 2 --json",
                      check=False, timeout=120)
        assert nudge.returncode == 0, f"gt nudge failed: {nudge.stderr[:300]}\npane:\n{pane()}"
        rig_beads = tt.beads_dirs()["demo"]
        bd = Bd(rig_beads)

        def bead_made() -> bool:
            return any(i.title == title for i in bd.list())

        assert wait_until(bead_made, 300, 2.0), pane()
        assert wait_until(lambda: pane().rstrip().endswith("node0>"), 300), pane()
        text = pane()
        assert title in text  # the tool output (bd's JSON) is shown in the pane
        # The role card replaces `gt prime`: both counted with the served model's tokenizer.
        from gt_ext.models import load_tokenizer
        from gt_ext.serve.rolecard import AgentEnv, measure

        cwd = tmux("display", "-p", "-t", session, "#{pane_current_path}").stdout.strip()
        sizes = measure(AgentEnv(role="witness", rig="demo", actor="demo/witness", root=str(tt.root), workdir=cwd),
                        load_tokenizer("tiny-llama"))
        print(f"\nrole card vs gt prime (witness): {sizes}")
        if sizes["gt_prime_tokens"] is not None:
            assert sizes["gt_prime_tokens"] > 5 * sizes["role_card_tokens"]
        transcripts = list((tmp_path / "projects").glob("*/*.jsonl"))
        assert transcripts, "the session wrote no transcript"
        assert any(title in p.read_text() for p in transcripts)

        # The witness closes a bead assigned to it, then gt stops it.
        mine = bd.create("patrol: check polecat liveness", assignee="demo/witness")
        tt.gt("nudge", "demo/witness", "--mode=immediate", f"!bd close {mine.id} --reason done", timeout=120)
        assert wait_until(lambda: bd.show(mine.id).status == "closed", 300, 2.0), pane()
        assert wait_until(lambda: pane().rstrip().endswith("node0>"), 300), pane()
        tt.gt("witness", "stop", "demo", timeout=120)

        def node0_rows() -> list[dict]:
            # --status all: the random tiny model's replies are gibberish, which the corpus gates
            # rightly reject; the session is there, tagged, whatever its status.
            res = subprocess.run(["gt", "corpus", "--store", str(tt.root / ".corpus"), "list", "--source", "node0",
                                  "--status", "all", "--json"], capture_output=True, text=True, env=tt.env, cwd=tt.root)
            assert res.returncode == 0, res.stderr
            return json.loads(res.stdout)

        def stored() -> bool:  # both the bead close and the stop event processed (spool empty)
            rows = node0_rows()
            return bool(rows) and not list((tt.root / ".corpus" / "spool").glob("*.json")) \
                and all(r["bead"] for r in rows)

        assert wait_until(stored, 300, 2.0), (node0_rows(), (tt.root / ".corpus" / "process.log").read_text()[-3000:])
        rows = node0_rows()
        print(f"node0 session in the corpus: {[(r['id'][:12], r['status'], r['reason']) for r in rows]}")
        assert {(r["role"], r["rig"], r["model"], r["bead"]) for r in rows} == {("witness", "demo", rec.ref, mine.id)}
        session_id = rows[0]["session"]
        # gt knows the session: `gt prime --hook` logged its start for the witness.
        events = [json.loads(x) for x in (tt.root / ".events.jsonl").read_text().splitlines() if x.strip()]
        assert any(e.get("type") == "session_start" and e.get("actor") == "demo/witness"
                   and e["payload"].get("session_id") == session_id for e in events)
    finally:
        tt.gt("witness", "stop", "demo", check=False, timeout=120)
        tmux("kill-server")
