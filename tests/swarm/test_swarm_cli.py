"""`gt-ext swarm` as a user runs it: keygen, bad input, and two real peers from two command lines."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from swarm_helpers import GT_EXT, Peers, peer_args

from gt_ext.cli import main


def test_keygen_writes_private_key_and_refuses_overwrite(tmp_path: Path, capsys):
    key = tmp_path / "swarm.key"
    assert main(["swarm", "keygen", "--out", str(key)]) == 0
    assert os.stat(key).st_mode & 0o777 == 0o600
    out = capsys.readouterr().out
    assert "fingerprint" in out and key.read_text().strip() not in out
    assert main(["swarm", "keygen", "--out", str(key)]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra, message",
    [
        ([], "no swarm key"),
        (["--swarm-key", "/nonexistent/swarm.key"], "does not exist"),
        (["--insecure-open-swarm", "--listen", "localhost"], "--listen"),
        (["--insecure-open-swarm", "--initial-peers", "/ip4/127.0.0.1/tcp/1"], "/p2p/"),
        (["--insecure-open-swarm", "--shard", "3/2"], "--shard"),
    ],
)
def test_start_bad_input_is_one_line_exit_2(tmp_path: Path, corpus: Path, capsys, monkeypatch, extra, message):
    monkeypatch.delenv("GT_SWARM_KEY_FILE", raising=False)
    rc = main(["swarm", "start", "--role", "witness", "--corpus", str(corpus), "--out", str(tmp_path / "run"), *extra])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run" / "run.json").exists()  # nothing half-written


def test_start_unknown_role_and_missing_corpus(tmp_path: Path, corpus: Path, capsys):
    assert main(["swarm", "start", "--role", "bogus", "--corpus", str(corpus), "--insecure-open-swarm"]) == 2
    assert "unknown role" in capsys.readouterr().err
    assert main(["swarm", "start", "--role", "witness", "--corpus", str(tmp_path / "nope"), "--insecure-open-swarm"]) == 2
    assert "not found" in capsys.readouterr().err


def test_status_needs_a_run_or_peers(tmp_path: Path, capsys):
    assert main(["swarm", "status"]) == 2
    assert "status needs" in capsys.readouterr().err
    assert main(["swarm", "status", "--run", str(tmp_path)]) == 2
    assert "no swarm.json" in capsys.readouterr().err


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_two_terminals_train_then_status_and_export(tmp_path: Path, corpus: Path, swarm_key: Path, peers: Peers):
    """Two `gt-ext swarm start` processes train together; `status` sees both; `export` takes the run."""
    a, b = tmp_path / "a", tmp_path / "b"
    peers.start("a", peer_args(corpus, a, swarm_key, 8, "--min-peers", "2"))
    addrs = peers.wait_file(a / "swarm.json", "a", timeout=300)["addrs"]
    peers.start("b", peer_args(corpus, b, swarm_key, 8, "--min-peers", "2", "--initial-peers", addrs[0]))
    # Status starts alongside the second peer: both pay the same start-up, so status finds the
    # swarm alive (peer a waits for b before training).
    env = {k: v for k, v in os.environ.items() if k != "GT_SWARM_KEY_FILE"}
    status = [GT_EXT, "swarm", "status", "--run", str(a), "--json"]
    with_key = subprocess.Popen(status + ["--swarm-key", str(swarm_key)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    without_key = subprocess.Popen(status, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                   start_new_session=True)
    try:
        out, err = with_key.communicate(timeout=300)
        assert with_key.returncode == 0, err[-2000:]
        table = json.loads(out)["peers"]
        assert table and all("state" in m and "loss" in m for m in table.values()), table
        # Without the key, status learns nothing about the swarm.
        out2, _ = without_key.communicate(timeout=300)
        assert without_key.returncode != 0 or json.loads(out2)["peers"] == {}
    finally:
        for p in (with_key, without_key):
            if p.poll() is None:
                os.killpg(p.pid, 9)
                p.wait(10)
    for name in ("a", "b"):
        assert peers.wait(name, 400) == 0, peers.log(name)[-3000:]
    info = json.loads((a / "run.json").read_text())
    assert info["status"] == "done" and info["metrics"]["steps"] == 8
    exp = subprocess.run([GT_EXT, "export", str(a), "--to", str(tmp_path / "exp")], capture_output=True, text=True,
                         timeout=400)
    assert exp.returncode == 0, exp.stderr[-2000:]
    assert (tmp_path / "exp" / "adapter" / "adapter_model.safetensors").is_file()
