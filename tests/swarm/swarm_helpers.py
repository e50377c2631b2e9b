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


# Fast, small, deterministic training for tests on two busy cores. lr 0.01: at 0.02 even one
# process with a 12-row batch overshoots (val 10.66 -> 11.11 at step 4) and a 3-peer run could end
# above where it started; 0.01 falls steadily at batch 4 and 12 (10.77 -> ~10.48 in 6 steps).
TEST_SETS = [
    "base_model=tiny-llama", "threads=1", "data.batch_size=4", "data.pack=false", "data.max_length=96",
    "optim.lr=0.01", "optim.warmup_steps=0", "optim.grad_clip=0", "eval_every=2", "checkpoint_every=3",
    "lora.r=4",
]


def peer_args(corpus: Path, out: Path, key: Path, steps: int, *extra: str, sets: list[str] | None = None) -> list[str]:
    """Command line of one test peer."""
    args = [GT_EXT, "swarm", "start", "--role", "witness", "--corpus", str(corpus), "--out", str(out),
            "--swarm-key", str(key), "--matchmaking-time", "2", "--averaging-timeout", "20"]
    # Config overrides as `gt-ext train` takes them: KEY=VALUE arguments.
    return args + list(extra) + [f"max_steps={steps}", *TEST_SETS, *(sets or [])]


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

    def fork(self, name: str, corpus: Path, out: Path, key_path: Path | None, steps: int,
             sets: list[str] | None = None, resume: bool = False, stop_after: int | None = None,
             **settings: object) -> None:
        """Fork a peer that runs `run_peer` (the CLI's code path) in its own process group.
        `stop_after=N` makes it die (exit 1) right after global step N, as a crash would.

        Forking the already-imported test process saves the ~1 min torch/transformers import
        per peer on busy machines; the subprocess tests cover the real command line."""
        import multiprocessing as mp

        def child() -> None:
            os.setsid()  # own group: killpg reaps the peer with its p2pd and averager children
            fd = os.open(self.tmp / f"{name}.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            # pytest's capture objects do not write to fd 1/2: point Python's streams at the log.
            sys.stdout = os.fdopen(1, "w", buffering=1)
            sys.stderr = os.fdopen(2, "w", buffering=1)
            import logging

            logging.basicConfig(level=logging.INFO, stream=sys.stderr, force=True,
                                format="%(asctime)s %(levelname)s %(name)s: %(message)s")
            # hivemind's own handler still writes to the parent's (pytest-captured) stderr: point it
            # at this log, so each averaging round, and a failed one, shows in the peer's log.
            for h in logging.getLogger("hivemind").handlers:
                if isinstance(h, logging.StreamHandler):
                    h.setStream(sys.stderr)
            code = 1
            try:
                from gt_ext.swarm.auth import SwarmKey
                from gt_ext.swarm.peer import SwarmSettings, run_peer
                from gt_ext.train.config import load_config

                cfg = load_config(None, TEST_SETS + [f"max_steps={steps}"] + list(sets or []))
                st = SwarmSettings(**{"matchmaking_time": 5.0, "averaging_timeout": 30.0, **settings})
                key = SwarmKey.load(key_path) if key_path else None
                def crash(step: int, _row: dict) -> None:
                    if stop_after is not None and step >= stop_after:
                        raise RuntimeError(f"crash drill after step {step}")

                info = run_peer(corpus, "witness", out, cfg, st, key, resume=resume, callbacks=[crash])
                print("PEER DONE", info["status"], flush=True)
                code = 0
            except BaseException:
                import traceback

                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)

        p = mp.get_context("fork").Process(target=child, daemon=False)
        p.start()
        self.procs[name] = _Forked(p)

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


class _Forked:
    """Popen-like view of a forked peer (pid, poll, wait, returncode)."""

    def __init__(self, proc: object):
        self.proc = proc
        self.pid = proc.pid

    @property
    def returncode(self) -> int | None:
        return self.proc.exitcode

    def poll(self) -> int | None:
        return self.proc.exitcode

    def wait(self, timeout: float | None = None) -> int:
        self.proc.join(timeout)
        if self.proc.exitcode is None:
            raise subprocess.TimeoutExpired("forked peer", timeout)
        return self.proc.exitcode


def run_json(run: Path) -> dict:
    """A run folder's run.json."""
    return json.loads((run / "run.json").read_text())


def adapter(run: Path) -> dict:
    """The saved LoRA tensors of a run."""
    from safetensors.torch import load_file

    return load_file(str(run / "adapter" / "adapter_model.safetensors"))


def rel_diff(a: dict, b: dict) -> float:
    """||a - b|| / ||a|| over all adapter tensors."""

    num = sum(float((a[k] - b[k]).pow(2).sum()) for k in a)
    den = sum(float(a[k].pow(2).sum()) for k in a)
    return (num / max(den, 1e-30)) ** 0.5
