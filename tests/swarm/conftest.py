"""Swarm test helpers: a small role corpus and peer processes that are always reaped.

Every peer runs as `.venv/bin/gt-ext swarm start ...` in its own process group; `Peers.close()`
kills each group (SIGKILL) at teardown, so no p2pd or averager child outlives a test.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

GT_EXT = str(Path(sys.executable).parent / "gt-ext")

_VERBS = ["check", "nudge", "list", "close", "review", "patrol"]
_THINGS = ["polecat", "bead", "convoy", "rig", "merge queue", "hook"]


def write_corpus(root: Path, role: str = "witness", task: str = "patrol", n_train: int = 48, n_val: int = 8) -> Path:
    """A tiny exported corpus (layout of CONTRACTS.md) with learnable, repetitive answers."""
    rng = random.Random(7)
    for split, n in (("train", n_train), ("val", n_val)):
        d = root / "sft" / role / task
        d.mkdir(parents=True, exist_ok=True)
        with open(d / f"{split}.jsonl", "w") as f:
            for i in range(n):
                verb, thing = rng.choice(_VERBS), rng.choice(_THINGS)
                msgs = [
                    {"role": "system", "content": f"You are the {role}."},
                    {"role": "user", "content": f"Please {verb} the {thing} number {i % 5}."},
                    {"role": "assistant", "content": f"OK. I will {verb} the {thing}. Running bd list --json now."},
                ]
                f.write(json.dumps({"id": f"{split}-{i}", "role": role, "task": task, "messages": msgs,
                                    "provenance": {"source": "sample"}}) + "\n")
    (root / "manifest.json").write_text(json.dumps({"corpus_hash": "test", "counts": {}, "files": {}}))
    return root


# Fast, small, deterministic training for tests on two busy cores.
TEST_SETS = [
    "base_model=tiny-llama", "threads=1", "data.batch_size=4", "data.pack=false", "data.max_length=96",
    "optim.lr=0.02", "optim.warmup_steps=0", "optim.grad_clip=0", "eval_every=2", "checkpoint_every=3",
    "lora.r=4",
]


def peer_args(corpus: Path, out: Path, key: Path, steps: int, *extra: str, sets: list[str] | None = None) -> list[str]:
    """Command line of one test peer."""
    args = [GT_EXT, "swarm", "start", "--role", "witness", "--corpus", str(corpus), "--out", str(out),
            "--swarm-key", str(key), "--matchmaking-time", "2", "--averaging-timeout", "20",
            "--set", f"max_steps={steps}"]
    for s in TEST_SETS + list(sets or []):
        args += ["--set", s]
    return args + list(extra)


class Peers:
    """Started peer processes; `close()` SIGKILLs every process group that is still alive."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, args: list[str]) -> subprocess.Popen:
        log = open(self.tmp / f"{name}.log", "w")
        env = dict(os.environ, GT_EXT_LOG="INFO", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
        p = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.procs[name] = p
        return p

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")

    def wait_file(self, path: Path, name: str, timeout: float = 90) -> dict:
        """Wait (bounded) for a JSON file a peer writes; fail with the peer's log tail."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if path.is_file():
                return json.loads(path.read_text())
            if self.procs[name].poll() is not None:
                pytest.fail(f"peer {name} exited early ({self.procs[name].returncode}):\n{self.log(name)[-3000:]}")
            time.sleep(0.2)
        pytest.fail(f"peer {name} did not write {path.name} in {timeout:.0f} s:\n{self.log(name)[-3000:]}")

    def wait_step(self, run: Path, name: str, step: int, timeout: float = 120) -> None:
        """Wait until a peer logged global step `step` in metrics.jsonl."""
        deadline = time.monotonic() + timeout
        m = run / "metrics.jsonl"
        while time.monotonic() < deadline:
            if m.is_file() and any(json.loads(x)["step"] >= step for x in m.read_text().splitlines() if x.strip()):
                return
            if self.procs[name].poll() is not None:
                pytest.fail(f"peer {name} exited early:\n{self.log(name)[-3000:]}")
            time.sleep(0.2)
        pytest.fail(f"peer {name} did not reach step {step} in {timeout:.0f} s:\n{self.log(name)[-3000:]}")

    def wait(self, name: str, timeout: float = 180) -> int:
        try:
            return self.procs[name].wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"peer {name} did not finish in {timeout:.0f} s:\n{self.log(name)[-3000:]}")

    def kill9(self, name: str) -> None:
        os.killpg(self.procs[name].pid, signal.SIGKILL)
        self.procs[name].wait(10)

    def close(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                pass


@pytest.fixture
def peers(tmp_path: Path) -> Iterator[Peers]:
    """Peer processes reaped at teardown (pass or fail)."""
    ps = Peers(tmp_path)
    try:
        yield ps
    finally:
        ps.close()


@pytest.fixture
def swarm_key(tmp_path: Path) -> Path:
    """A fresh swarm key file."""
    from gt_ext.swarm.auth import SwarmKey

    p = tmp_path / "swarm.key"
    SwarmKey.generate().save(p)
    return p


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """A small witness/patrol corpus."""
    return write_corpus(tmp_path / "corpus")
