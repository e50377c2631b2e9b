"""The node0 agent: guarded tool loop, limits, transcripts the corpus can read, the process itself."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gt_ext.gastown.testing import wait_until
from gt_ext.serve.agent import Agent, Limits
from gt_ext.serve.params import SamplingParams
from gt_ext.serve.rolecard import AgentEnv, role_card
from gt_ext.serve.tools import ToolRunner
from gt_ext.serve.transcript import Transcript

AGENT_BIN = str(Path(sys.executable).parent / "node0-inference")


def make_agent(gen, tmp_path, limits=None):
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    env = AgentEnv(role="witness", rig="demo", actor="demo/witness", root=str(tmp_path), workdir=str(work))
    out = io.StringIO()
    limits = limits or Limits(max_steps=3, turn_s=120, tool_s=30, max_output=500)
    agent = Agent(gen, env, ToolRunner(work, limits.tool_s, limits.max_output), SamplingParams(max_new_tokens=8),
                  limits, transcript_factory=lambda: Transcript(work, "node0:test", folder=tmp_path / "projects",
                                                                meta=env.to_meta()), out=out)
    return agent, work, out


def test_forced_tool_call_runs_and_is_transcribed(gen, tmp_path):
    from gt_ext.corpus.parsers import parse_claude_jsonl

    agent, work, out = make_agent(gen, tmp_path)
    agent.turn("!echo hello-bead > made.txt && cat made.txt")
    agent.close()
    assert (work / "made.txt").read_text() == "hello-bead\n"
    assert "hello-bead" in out.getvalue()
    path = agent.transcript.path
    assert path.parent.name == str(work.resolve()).replace("/", "-")
    entries = [json.loads(x) for x in path.read_text().splitlines()]
    assert entries[0]["type"] == "user" and entries[0]["gt"]["role"] == "witness"
    tool_use = entries[1]["message"]["content"][-1]
    assert tool_use["type"] == "tool_use" and tool_use["name"] == "Bash"
    assert entries[2]["message"]["content"][0]["tool_use_id"] == tool_use["id"]
    assert all(e["parentUuid"] == p["uuid"] for p, e in zip(entries, entries[1:], strict=False))
    session = parse_claude_jsonl(path)
    roles = [m["role"] for m in session.messages]
    assert roles[:3] == ["user", "assistant", "tool"]
    assert "<tool_call>" in session.messages[1]["content"]
    assert "hello-bead" in session.messages[2]["content"]


def test_guard_refusal_reaches_the_model_and_nothing_runs(gen, tmp_path):
    agent, work, out = make_agent(gen, tmp_path)
    agent.turn("!rm -rf ../outside")
    assert "refused" in out.getvalue()
    assert agent.history[3]["role"] == "tool" and "refused" in agent.history[3]["content"]
    agent.close()
    entries = [json.loads(x) for x in agent.transcript.path.read_text().splitlines()]
    assert entries[2]["message"]["content"][0]["is_error"] is True


def test_step_limit_and_tool_timeout(gen, tmp_path):
    agent, _work, out = make_agent(gen, tmp_path, Limits(max_steps=1, turn_s=60, tool_s=1, max_output=200))
    t0 = time.monotonic()
    agent.turn("!sleep 30")
    assert time.monotonic() - t0 < 25  # killed, not waited for
    text = out.getvalue()
    assert "timed out" in text
    assert "step limit of 1" in text


def test_output_is_clipped(gen, tmp_path):
    agent, _work, _out = make_agent(gen, tmp_path, Limits(max_steps=2, turn_s=60, tool_s=30, max_output=300))
    agent.turn("!seq 1 5000")
    tool = next(m for m in agent.history if m["role"] == "tool")
    assert len(tool["content"]) < 400 and "characters cut" in tool["content"]


def test_role_card_is_short_and_names_the_role():
    env = AgentEnv(role="refinery", rig="demo", actor="demo/refinery", root="/town", workdir="/town/demo")
    card = role_card(env)
    assert "refinery" in card and "rig demo" in card and "<tool_call>" in card
    from gt_ext.models import load_tokenizer

    assert len(load_tokenizer("tiny-llama")(card)["input_ids"]) < 400


def test_env_is_read_from_gt_variables():
    env = AgentEnv.from_environ({"GT_ROLE": "demo/witness", "GT_RIG": "demo", "BD_ACTOR": "demo/witness",
                                 "GT_ROOT": "/t"}, workdir="/w")
    assert (env.role, env.rig, env.actor, env.root) == ("witness", "demo", "demo/witness", "/t")


def _spawn(tmp_path, *extra):
    env = dict(os.environ, GT_EXT_CLAUDE_PROJECTS=str(tmp_path / "projects"), GT_ROLE="deacon")
    return subprocess.Popen([AGENT_BIN, "--model", "base:tiny-llama", "--max-new-tokens", "4", *extra],
                            cwd=tmp_path, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.integration
def test_process_reads_stdin_and_exits_on_eof(tmp_path):
    p = _spawn(tmp_path)
    out, err = p.communicate("!echo via-stdin\n", timeout=300)
    assert p.returncode == 0, err
    assert out.count("node0> ") == 2 and "via-stdin" in out
    files = list((tmp_path / "projects").glob("*/*.jsonl"))
    assert len(files) == 1


@pytest.mark.integration
def test_process_exits_cleanly_on_sigterm(tmp_path):
    p = _spawn(tmp_path, "--no-transcript")
    deadline = time.monotonic() + 300
    buf = ""
    while "node0> " not in buf and time.monotonic() < deadline:
        buf += p.stdout.read(1)
    p.send_signal(signal.SIGTERM)
    out, _ = p.communicate(timeout=60)
    assert p.returncode == 0
    assert "[terminated]" in out


def test_bad_arguments_exit_2(tmp_path, capsys):
    from gt_ext.serve.agent import main

    assert main(["--model", str(tmp_path / "nope")]) == 2
    assert "no such file" in capsys.readouterr().err


def _pane(session: str) -> str:
    return subprocess.run(["tmux", "capture-pane", "-p", "-J", "-t", session], capture_output=True,
                          text=True).stdout


@pytest.mark.integration
def test_in_tmux_pane_like_gt_starts_it(tmp_path):
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed")
    session = f"gtext-test-{os.getpid()}"
    sock = ["-L", session]  # a private tmux server: never touches the user's sessions
    work = tmp_path / "rig"
    work.mkdir()
    cmd = (f"exec env GT_ROLE=witness GT_RIG=demo BD_ACTOR=demo/witness GT_ROOT={tmp_path} "
           f"GT_EXT_CLAUDE_PROJECTS={tmp_path / 'projects'} {AGENT_BIN} --model base:tiny-llama --max-new-tokens 4")
    subprocess.run(["tmux", *sock, "new-session", "-d", "-s", session, "-c", str(work), "-x", "200", "-y", "50",
                    cmd], check=True)
    try:
        def pane() -> str:
            return subprocess.run(["tmux", *sock, "capture-pane", "-p", "-J", "-t", session],
                                  capture_output=True, text=True).stdout

        def wait_for(pred, timeout=300):
            return wait_until(pred, timeout)

        assert wait_for(lambda: "node0> " in pane()), pane()
        # gt's liveness check: pane command, else `ps -p <pane pid> -o comm=` against process_names.
        pid = subprocess.run(["tmux", *sock, "display", "-p", "-t", session, "#{pane_pid}"],
                             capture_output=True, text=True).stdout.strip()
        comm = subprocess.run(["ps", "-p", pid, "-o", "comm="], capture_output=True, text=True).stdout.strip()
        assert comm == "node0-inference"
        # Deliver like gt's nudge: literal text, Escape, pause, Enter.
        subprocess.run(["tmux", *sock, "send-keys", "-t", session, "-l", "!echo pane-ok > marker.txt"], check=True)
        subprocess.run(["tmux", *sock, "send-keys", "-t", session, "Escape"], check=True)
        time.sleep(0.6)
        subprocess.run(["tmux", *sock, "send-keys", "-t", session, "Enter"], check=True)
        assert wait_for(lambda: (work / "marker.txt").exists()), pane()
        assert wait_for(lambda: pane().rstrip().endswith("node0>")), pane()
        assert "^[" not in pane()
        subprocess.run(["tmux", *sock, "send-keys", "-t", session, "C-d"], check=True)
        assert wait_for(lambda: subprocess.run(["tmux", *sock, "has-session", "-t", session],
                                               capture_output=True).returncode != 0, 60)
    finally:
        subprocess.run(["tmux", *sock, "kill-server"], capture_output=True)


def test_nudge_command_refused_unless_the_sender_is_allowed(gen, tmp_path):
    """`[from X] !cmd` used to run cmd for anyone who could `gt nudge` the agent."""
    from gt_ext.serve.agentcfg import AgentSettings

    agent, work, out = make_agent(gen, tmp_path)
    agent.turn("[from mayor] !touch from-nudge.txt")
    assert not (work / "from-nudge.txt").exists()
    assert "may not run commands" in out.getvalue() and len(agent.history) == 1  # the model saw nothing

    agent.settings = AgentSettings.model_validate({"bang_commands": {"allow_from": ["mayor"]}})
    agent.turn("[from polecat-x] !touch other.txt")
    assert not (work / "other.txt").exists()
    agent.turn("[from mayor] !touch from-nudge.txt")
    assert (work / "from-nudge.txt").exists()  # allowed: it runs, in the same sandbox

    agent.settings = AgentSettings.model_validate({"bang_commands": {"keyboard": False}})
    agent.turn("!touch typed.txt")
    assert not (work / "typed.txt").exists()


def test_agent_without_a_sandbox_runs_no_command(gen, tmp_path, monkeypatch):
    from gt_ext.serve.agent import _sandbox_line

    monkeypatch.setenv("GT_EXT_BWRAP", str(tmp_path / "missing-bwrap"))
    agent, work, out = make_agent(gen, tmp_path)
    assert "sandbox unavailable" in _sandbox_line(agent.runner) and "refused" in _sandbox_line(agent.runner)
    agent.turn("!touch ran.txt")
    assert not (work / "ran.txt").exists()
    assert "no sandbox" in out.getvalue()


def test_role_card_starts_with_the_training_system_turn():
    """Served as trained: the corpus gives every example of a role this same first system line."""
    from gt_ext.corpus.tags import system_prompt

    env = AgentEnv(role="witness", rig="demo", actor="demo/witness", root="/town", workdir="/town/demo")
    assert role_card(env).splitlines()[0] == system_prompt("witness", "demo")
    assert role_card(AgentEnv(role="unknown-role")).startswith("You are a Gas Town agent (unknown-role)")


def test_session_end_spools_a_stop_event_with_the_session_tags(gen, tmp_path):
    """Closing a session (EOF, SIGTERM, SIGHUP) spools `session_stop` into the town's corpus spool,
    and the transcript carries the bead gt's startup beacon named."""
    from gt_ext.corpus.spool import PROCESS_ON_END, entries

    agent, _work, _out = make_agent(gen, tmp_path)
    hooks = tmp_path / ".corpus" / "hooks"
    hooks.mkdir(parents=True)
    marker = tmp_path / "processor-ran"
    (hooks / PROCESS_ON_END).write_text(json.dumps([sys.executable, "-c", f"open({str(marker)!r}, 'w')"]))
    agent.turn("[GAS TOWN] witness (rig: demo) <- deacon • 2026-12-04T10:00 • patrol:dm-wisp-7x\n\n!echo hi")
    agent.close("terminated")
    [(_sid, _p, ev, err)] = list(entries(tmp_path / ".corpus" / "spool"))
    assert err is None and ev["kind"] == "session_stop"
    assert ev["payload"]["transcript_path"] == str(agent.transcript.path)
    assert ev["payload"]["reason"] == "terminated" and ev["payload"]["session_id"] == agent.transcript.session_id
    entry = json.loads(agent.transcript.path.read_text().splitlines()[0])
    assert entry["gt"]["bead"] == "dm-wisp-7x" and entry["entrypoint"] == "node0-inference"
    deadline = time.monotonic() + 60  # the processor argv install wrote runs detached
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert marker.exists()


def test_no_town_no_stop_event(gen, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    env = AgentEnv(role="witness", workdir=str(work))
    agent = Agent(gen, env, ToolRunner(work, 30, 500), SamplingParams(max_new_tokens=4), Limits(max_steps=1),
                  transcript_factory=lambda: Transcript(work, "m:1", folder=tmp_path / "projects"), out=io.StringIO())
    agent.turn("!true")
    agent.close()
    assert agent.transcript.written and not list(tmp_path.rglob("spool"))


def test_session_id_and_beacon_from_gt():
    from gt_ext.gastown.session import bead_from_beacon, session_id_from_env

    assert session_id_from_env({"GT_SESSION_ID": "abc"}) == "abc"
    assert session_id_from_env({"GT_SESSION_ID_ENV": "NODE0_SESSION_ID", "NODE0_SESSION_ID": "x-1"}) == "x-1"
    assert session_id_from_env({"GT_SESSION_ID_ENV": "NODE0_SESSION_ID"}) is None
    assert session_id_from_env({}) is None
    beacon = "[GAS TOWN] polecat rust (rig: gastown) <- mayor • 2026-12-04T10:00 • assigned:gt-abc12"
    assert bead_from_beacon(beacon + "\n\nRun `gt prime --hook` and begin work on your hook.") == "gt-abc12"
    assert bead_from_beacon("[GAS TOWN] deacon <- daemon • 2025-12-30T08:00 • patrol") is None
    assert bead_from_beacon("[GAS TOWN] witness (rig: demo) <- deacon • 2025-12-30T08:00 • cold-start") is None
    assert bead_from_beacon("please look at assigned:gt-1") is None


@pytest.mark.integration
def test_pane_closed_spools_the_stop_event(tmp_path):
    """SIGHUP (the pane closed) ends the session like EOF and SIGTERM: transcript closed, stop spooled."""
    from gt_ext.corpus.spool import entries

    (tmp_path / "mayor").mkdir()
    (tmp_path / "mayor" / "town.json").write_text("{}")
    p = subprocess.Popen([AGENT_BIN, "--model", "base:tiny-llama", "--max-new-tokens", "4", "--no-register"],
                         cwd=tmp_path, env=dict(os.environ, GT_EXT_CLAUDE_PROJECTS=str(tmp_path / "projects"),
                                                GT_ROLE="demo/witness", GT_ROOT=str(tmp_path), GT_SESSION_ID="gt-sid-1",
                                                GT_EXT_NO_AUTOPROCESS="1"),
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    p.stdin.write("!echo hi\n")
    p.stdin.flush()
    deadline = time.monotonic() + 300
    while not list((tmp_path / "projects").glob("*/gt-sid-1.jsonl")) and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)
    p.send_signal(signal.SIGHUP)
    out, _ = p.communicate(timeout=60)
    assert p.returncode == 0 and "[terminated]" in out
    [(_sid, _path, ev, err)] = list(entries(tmp_path / ".corpus" / "spool"))
    assert err is None and ev["payload"]["reason"] == "hangup" and ev["payload"]["session_id"] == "gt-sid-1"
    assert ev["env"]["GT_SESSION_ID"] == "gt-sid-1" and ev["env"]["GT_ROLE"] == "demo/witness"
