"""The agent's tool sandbox: every bypass found against the old guard, replayed and contained.

Each bypass runs twice: in the sandbox alone (the policy check off: the sandbox must contain it by
itself) and through `ToolRunner` (policy check, then sandbox). A folder and a git remote OUTSIDE
the work dir, visible read-only inside (as a town's files are), must come out untouched.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from gt_ext.serve.agentcfg import AgentSettings, build_policy, sandbox_env
from gt_ext.serve.rolecard import AgentEnv
from gt_ext.serve.sandbox import Sandbox, SandboxPolicy
from gt_ext.serve.tools import ToolRunner

if Sandbox(SandboxPolicy(workdir=Path("/"))).unavailable():
    pytest.skip(f"no sandbox here: {Sandbox(SandboxPolicy(workdir=Path('/'))).unavailable()}",
                allow_module_level=True)

GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@localhost", "-c", "init.defaultBranch=main"]


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run([*GIT, *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


class Box:
    """A work dir, an outside folder and an outside git remote; the sandbox and the runner for them."""

    def __init__(self, root: Path):
        self.root = root
        self.work = root / "work"
        self.outside = root / "outside"
        self.outside.mkdir(parents=True)
        (self.outside / "keep.txt").write_text("precious\n")
        # The work dir is a clone of a bare remote outside it, with a local commit on top of main.
        self.remote = root / "remote.git"
        _git(root, "init", "-q", "--bare", str(self.remote))
        seed = root / "seed"
        seed.mkdir()
        _git(seed, "init", "-q")
        (seed / "a.txt").write_text("a\n")
        _git(seed, "add", "a.txt")
        _git(seed, "commit", "-q", "-m", "first")
        _git(seed, "push", "-q", str(self.remote), "main")
        _git(root, "clone", "-q", str(self.remote), str(self.work))
        _git(self.work, "reset", "-q", "--hard", "HEAD")
        (self.work / "b.txt").write_text("b\n")
        _git(self.work, "add", "b.txt")
        _git(self.work, "commit", "-q", "--amend", "-m", "rewritten")  # diverged: only a force push lands it
        self.remote_head = _git(self.remote, "rev-parse", "main")
        env = sandbox_env(dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@localhost",
                               GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@localhost"))
        self.policy = SandboxPolicy(workdir=self.work, read=[root], env=env)
        self.sandbox = Sandbox(self.policy)
        self.runner = ToolRunner(self.work, 30, 4000, sandbox=self.sandbox)

    def intact(self) -> bool:
        return ((self.outside / "keep.txt").is_file() and (self.outside / "keep.txt").read_text() == "precious\n"
                and _git(self.remote, "rev-parse", "main") == self.remote_head)


@pytest.fixture()
def box(tmp_path) -> Box:
    return Box(tmp_path)


def _raw(box: Box, cmd: str, timeout: float = 30):
    return box.sandbox.run(["bash", "-c", cmd], timeout)


# The bypasses from issue #20 ("Agent execution"); OUT is the outside folder, R the remote.
BYPASSES = {
    "variable in the path": 'T="{root}"; rm -rf "$T/outside"',
    "cd .. first": "cd .. && rm -rf outside",
    "command in a variable": "x=rm; $x -rf ../outside",
    "piped into bash": "echo 'rm -rf ../outside' | bash",
    "symlink made then followed": "ln -s ../outside link && rm -rf link/*",
    "sudo from a substitution": "$(echo sudo) rm -rf {out}; rm -rf {out}",
    "bash -lc": "bash -lc 'rm -rf {out}'",
    "git -C DIR clean -fdx": "git -C {out} init -q . ; git -C {out} clean -fdx",
    "find -exec rm": "find . -maxdepth 0 -exec rm -rf {out} \\;",
    "git alias from -c": "git -c alias.p='push --force' p origin main",
    "git alias in repo config": "git config alias.fp 'push --force' && git fp origin main",
    "git shell alias": "git config alias.zap '!rm -rf {out}' && git zap",
    "abbreviated --force": "git push --forc origin main",
    "abbreviated --force-with-lease": "git push --force-w origin main",
    "nice wrapper": "nice -n 5 rm -rf {out}",
    "timeout wrapper": "timeout 5 rm -rf {out}",
    "setsid wrapper": "setsid rm -rf {out}",
    "flock wrapper": "flock /tmp/lock rm -rf {out}",
    "if wrapper": "if true; then rm -rf {out}; fi",
    "for wrapper": "for d in {out}; do rm -rf $d; done",
    "dd onto a file outside": "dd if=/dev/zero of={out}/keep.txt bs=1 count=3",
    "write through /proc/self/root": "rm -rf /proc/self/root{out}",
}


@pytest.mark.parametrize("name", list(BYPASSES))
def test_bypass_contained_by_the_sandbox_alone(box, name):
    cmd = BYPASSES[name].format(root=box.root, out=box.outside)
    res = _raw(box, cmd)
    assert box.intact(), (name, res.output)


@pytest.mark.parametrize("name", list(BYPASSES))
def test_bypass_contained_through_the_tool_runner(box, name):
    cmd = BYPASSES[name].format(root=box.root, out=box.outside)
    result = box.runner.run({"name": "Bash", "input": {"command": cmd}})
    assert box.intact(), (name, result.output)


def test_work_dir_stays_writable_and_git_works(box):
    res = _raw(box, "echo new > c.txt && git add c.txt && git commit -q -m c && git log --oneline | wc -l")
    assert res.returncode == 0, res.output
    assert res.output.strip() == "2"
    assert (box.work / "c.txt").read_text() == "new\n"


def test_no_privileges_inside(box):
    res = _raw(box, "$(echo sudo) id; grep -E '^(CapEff|CapBnd|NoNewPrivs)' /proc/self/status; "
                    "unshare -U true && echo NESTED-USERNS")
    assert "CapEff:\t0000000000000000" in res.output and "CapBnd:\t0000000000000000" in res.output
    assert "NoNewPrivs:\t1" in res.output
    assert "NESTED-USERNS" not in res.output


def test_outside_processes_cannot_be_signalled(box):
    victim = subprocess.Popen(["sleep", "300"])
    try:
        res = _raw(box, f"echo {victim.pid} | xargs kill -9; kill -9 -1; echo $?")
        time.sleep(0.2)
        assert victim.poll() is None, res.output
    finally:
        victim.kill()
        victim.wait()


def test_tmux_server_outside_survives_kill_server(box):
    sock = f"gtext-sbx-{uuid.uuid4().hex[:8]}"
    subprocess.run(["tmux", "-L", sock, "new-session", "-d", "sleep 300"], check=True)
    try:
        _raw(box, f"tmux -L {sock} kill-server; tmux kill-server")
        alive = subprocess.run(["tmux", "-L", sock, "has-session"], capture_output=True)
        assert alive.returncode == 0
        refused = box.runner.run({"name": "Bash", "input": {"command": f"tmux -L {sock} kill-server"}})
        assert refused.refused
    finally:
        subprocess.run(["tmux", "-L", sock, "kill-server"], capture_output=True)


def test_clean_environment_has_no_tokens(tmp_path):
    work = tmp_path / "w"
    work.mkdir()
    environ = dict(os.environ, GT_EXT_API_TOKEN="tok-abc123", ANTHROPIC_API_KEY="sk-ant-xyz", GH_TOKEN="ghp_q",
                   AWS_SECRET_ACCESS_KEY="aws-s", BEADS_DOLT_PASSWORD="dolt-pw", MY_UNLISTED="unlisted",
                   GT_ROLE="witness", BD_ACTOR="demo/witness")
    policy = build_policy(work, AgentEnv(role="witness", workdir=str(work)), AgentSettings(), environ)
    res = Sandbox(policy).run(["bash", "-c", "env; cat /proc/1/environ /proc/2/environ 2>/dev/null"], 30)
    for secret in ("tok-abc123", "sk-ant-xyz", "ghp_q", "aws-s", "dolt-pw", "unlisted"):
        assert secret not in res.output
    assert "BD_ACTOR=demo/witness" in res.output and "PATH=" in res.output


def test_secret_paths_are_unreadable(tmp_path):
    home, work = tmp_path / "home", tmp_path / "home" / "work"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_ed25519").write_text("PRIVATE-KEY-MATERIAL\n")
    (home / ".netrc").write_text("machine x login y password NETRC-PW\n")
    (home / "notes.txt").write_text("readable\n")
    work.mkdir()
    policy = build_policy(work, AgentEnv(workdir=str(work)), AgentSettings(), dict(os.environ, HOME=str(home)))
    res = Sandbox(policy).run(["bash", "-c", "cat ~/.ssh/id_ed25519 ~/.netrc ~/notes.txt; ls -a ~/.ssh"], 30)
    assert "PRIVATE-KEY-MATERIAL" not in res.output and "NETRC-PW" not in res.output
    assert "readable" in res.output
    runner = ToolRunner(work, 30, 4000, sandbox=Sandbox(policy))
    (work / ".ssh").symlink_to(home / ".ssh")
    assert runner.run({"name": "Read", "input": {"file_path": ".ssh/id_ed25519"}}).refused


def test_time_limit_kills_everything_it_started(box):
    marker = f"{300 + uuid.uuid4().int % 1000}.{os.getpid()}"
    t0 = time.monotonic()
    res = _raw(box, f"(sleep {marker} &) ; setsid sleep {marker} & sleep {marker}", timeout=1)
    assert res.timed_out and time.monotonic() - t0 < 20
    time.sleep(0.3)
    left = subprocess.run(["pgrep", "-f", f"sleep {marker}"], capture_output=True, text=True).stdout
    assert left.strip() == ""


def test_background_processes_end_with_the_command(box):
    marker = f"{400 + uuid.uuid4().int % 1000}.{os.getpid()}"
    res = _raw(box, f"nohup sleep {marker} >/dev/null 2>&1 & echo started")
    assert res.returncode == 0 and "started" in res.output
    time.sleep(0.3)
    assert subprocess.run(["pgrep", "-f", f"sleep {marker}"], capture_output=True).returncode == 1


FORKS = ("import os, sys, time\nn = 0\nfor _ in range(40):\n    try:\n        pid = os.fork()\n"
         "    except OSError:\n        break\n    if pid == 0:\n        time.sleep(3)\n        os._exit(0)\n"
         "    n += 1\nprint('forked', n)\n")


def test_process_limit(box):
    assert "forked 40" in box.sandbox.run([sys.executable, "-I", "-c", FORKS], 60).output  # the default allows it
    box.policy.max_procs = 16
    res = box.sandbox.run([sys.executable, "-I", "-c", FORKS], 60)
    forked = int(res.output.split("forked")[-1])
    assert forked < 16, res.output


def test_output_is_bounded(box):
    res = box.sandbox.run(["bash", "-c", "head -c 50000000 /dev/zero | tr '\\0' x; echo; echo END"], 60,
                          keep_bytes=4096)
    assert len(res.output) < 10000 and res.dropped > 40_000_000
    assert res.output.rstrip().endswith("END")


def test_network_only_the_relayed_loopback_ports(box):
    import socket

    allowed, other = socket.socket(), socket.socket()
    for s in (allowed, other):
        s.bind(("127.0.0.1", 0))
        s.listen(4)
    box.policy.ports = [allowed.getsockname()[1]]
    probe = ("import socket,sys\nfor p in sys.argv[1:]:\n    s = socket.socket()\n    s.settimeout(3)\n"
             "    try:\n        s.connect(('127.0.0.1', int(p))); s.sendall(b'ping'); print(p, 'open')\n"
             "    except OSError as e:\n        print(p, 'closed', e.errno)\n")
    try:
        res = box.sandbox.run([sys.executable, "-I", "-c", probe, str(allowed.getsockname()[1]),
                               str(other.getsockname()[1])], 30)
        assert f"{allowed.getsockname()[1]} open" in res.output, res.output
        assert f"{other.getsockname()[1]} closed" in res.output, res.output
        allowed.settimeout(5)
        conn, _ = allowed.accept()  # the relayed connection reached the real listener on the host
        assert conn.recv(4) == b"ping"
        conn.close()
    finally:
        allowed.close()
        other.close()


def test_tools_refused_without_a_sandbox(tmp_path, monkeypatch):
    monkeypatch.setenv("GT_EXT_BWRAP", str(tmp_path / "no-bwrap"))
    (tmp_path / "w").mkdir()
    runner = ToolRunner(tmp_path / "w")
    assert "bubblewrap" in (runner.unavailable() or "")
    res = runner.run({"name": "Bash", "input": {"command": "touch ran.txt"}})
    assert res.refused and "no sandbox" in res.output
    assert not (tmp_path / "w" / "ran.txt").exists()


def test_memory_and_file_size_limits(box):
    box.policy.memory_mb, box.policy.file_mb = 512, 1
    res = box.sandbox.run([sys.executable, "-I", "-c", "b = bytearray(1 << 30); print('allocated')"], 60)
    assert "allocated" not in res.output and "MemoryError" in res.output
    res = _raw(box, "head -c 3000000 /dev/zero > big.bin; echo rc=$?")
    assert (box.work / "big.bin").stat().st_size <= 1 << 20 and "rc=0" not in res.output


def test_town_settings_shape_the_policy(tmp_path):
    import json

    from gt_ext.errors import ConfigError
    from gt_ext.serve.agentcfg import load_agent_settings

    town = tmp_path / "town"
    (town / "settings").mkdir(parents=True)
    (town / "demo" / "refinery" / "rig").mkdir(parents=True)
    work = town / "demo" / "witness"
    work.mkdir(parents=True)
    (town / "settings" / "gt-ext.json").write_text(json.dumps({"agent": {
        "sandbox": {"deny": ["{town}/secrets.txt"], "ports": [4242]},
        "roles": {"refinery": {"sandbox": {"write": ["{rig}/refinery/rig"], "network": "host", "unhide": [".ssh"],
                                           "env": ["DEPLOY_KEY_PATH"]}}}}}))
    settings = load_agent_settings(town)
    environ = {"HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin", "DEPLOY_KEY_PATH": "/k"}
    witness = build_policy(work, AgentEnv(role="witness", rig="demo", root=str(town)), settings, environ)
    refinery = build_policy(work, AgentEnv(role="refinery", rig="demo", root=str(town)), settings, environ)
    assert witness.network == "loopback" and 4242 in witness.ports
    assert town / "secrets.txt" in witness.deny and tmp_path / "home" / ".ssh" in witness.deny
    assert "DEPLOY_KEY_PATH" not in witness.env
    assert refinery.network == "host" and town / "demo" / "refinery" / "rig" in refinery.write
    assert tmp_path / "home" / ".ssh" not in refinery.deny and refinery.env["DEPLOY_KEY_PATH"] == "/k"

    (town / "settings" / "gt-ext.json").write_text(json.dumps({"agent": {"sandbox": {"netwrok": "host"}}}))
    with pytest.raises(ConfigError, match="agent.sandbox.netwrok"):
        load_agent_settings(town)
