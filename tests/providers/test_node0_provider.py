"""The node0 provider files agree with what deploy writes and what the agent does."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROVIDER = ROOT / "providers" / "node0"


def test_agents_json_is_a_gt_agent_registry_entry():
    from gt_ext.serve.agent import PROCESS_NAME, READY_PROMPT

    reg = json.loads((PROVIDER / "agents.json").read_text())
    assert reg["version"] == 1
    cfg = reg["agents"]["node0"]
    assert cfg["provider"] == "node0"
    assert cfg["command"] == PROCESS_NAME
    assert cfg["tmux"]["process_names"] == [PROCESS_NAME]
    assert cfg["tmux"]["ready_prompt_prefix"] == READY_PROMPT
    assert cfg["args"][0] == "--model"


def test_same_contract_as_registry_deploy():
    from gt_ext.registry.deploy import AGENT_COMMAND, READY_PROMPT, runtime_config
    from gt_ext.serve.agent import PROCESS_NAME, build_parser
    from gt_ext.serve.agent import READY_PROMPT as AGENT_READY

    assert READY_PROMPT == AGENT_READY
    assert AGENT_COMMAND == PROCESS_NAME
    cfg = runtime_config("witness:3", ["witness-patrol:1", "witness-review:2"], rag_budget=800)
    # The agent's own parser accepts exactly the args deploy writes.
    ns = build_parser().parse_args(cfg["args"])
    assert ns.model == "witness:3" and ns.adapters == "witness-patrol:1,witness-review:2"
    assert ns.rag and ns.rag_budget == 800
    assert not build_parser().parse_args(runtime_config("witness:3", [])["args"]).rag


def test_wrapper_execs_the_venv_agent():
    out = subprocess.run([str(PROVIDER / "node0-inference"), "--help"], capture_output=True, text=True,
                         env=dict(os.environ, GT_EXT_VENV=str(ROOT / ".venv")), timeout=120)
    assert out.returncode == 0, out.stderr
    assert "node0-inference" in out.stdout and "--model" in out.stdout


def test_wrapper_without_venv_fails_with_one_line(tmp_path):
    out = subprocess.run([str(PROVIDER / "node0-inference"), "--help"], capture_output=True, text=True,
                         env=dict(os.environ, GT_EXT_VENV=str(tmp_path)), timeout=60)
    assert out.returncode == 2
    assert len(out.stderr.strip().splitlines()) == 1 and "not found" in out.stderr
