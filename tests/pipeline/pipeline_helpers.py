"""Real node0 stage servers on 127.0.0.1 for the pipeline tests, each in its own process group,
all reaped at the end (pass or fail)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from gt_ext.procgroup import stop_groups

REPO = Path(__file__).resolve().parents[2]


def node0_path() -> Path:
    """$NODE0_PATH, else the upstream snapshot next to the repository (../shared/upstream/node0)."""
    return Path(os.environ.get("NODE0_PATH") or REPO.parent / "shared" / "upstream" / "node0")


class Stages:
    """Starts `gt-ext pipeline stage` processes and stops them (SIGTERM, then SIGKILL of the group)."""

    def __init__(self, tmp: Path):
        self.tmp = Path(tmp)
        self.procs: dict[str, subprocess.Popen] = {}
        self.ready: dict[str, dict] = {}
        self.ready_files: dict[str, Path] = {}
        self.argv: dict[str, tuple[list[str], dict[str, str]]] = {}

    def start(self, name: str, run: str, layers: str, key: Path | None, overrides: list[str],
              initial_peers: list[str] | None = None, extra: list[str] | None = None) -> None:
        ready = self.tmp / f"{name}.ready.json"
        ready.unlink(missing_ok=True)
        argv = [sys.executable, "-m", "gt_ext.cli", "pipeline", "stage", "--run", run, "--layers", layers,
                "--ready-file", str(ready), "--node0", str(node0_path()), *overrides, *(extra or [])]
        argv += ["--swarm-key", str(key)] if key else ["--insecure-open-swarm"]
        for p in initial_peers or []:
            argv += ["--initial-peers", p]
        env = {**os.environ, "GT_EXT_LOG": os.environ.get("GT_EXT_LOG", "INFO"), "OMP_NUM_THREADS": "1"}
        log = open(self.tmp / f"{name}.log", "w")
        self.procs[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                                            start_new_session=True, cwd=REPO)
        self.ready_files[name] = ready
        self.argv[name] = (argv, env)

    def restart(self, name: str) -> None:
        """Start a (dead) stage again with the same command line."""
        argv, env = self.argv[name]
        self.ready_files[name].unlink(missing_ok=True)
        log = open(self.tmp / f"{name}.log", "a")
        self.procs[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                                            start_new_session=True, cwd=REPO)

    def wait(self, name: str, timeout: float = 180.0) -> dict:
        """The stage's ready file (addresses), once it serves; fails with its log tail otherwise."""
        deadline = time.monotonic() + timeout
        path = self.ready_files[name]
        while time.monotonic() < deadline:
            if path.is_file():
                self.ready[name] = json.loads(path.read_text())
                return self.ready[name]
            if self.procs[name].poll() is not None:
                break
            time.sleep(0.2)
        raise AssertionError(f"stage {name} did not come up:\n{self.log_tail(name)}")

    def log_tail(self, name: str, n: int = 40) -> str:
        """The stage log's last lines, without hivemind's per-refresh progress chatter."""
        p = self.tmp / f"{name}.log"
        if not p.is_file():
            return ""
        noise = ("samples for epoch", "Found no active peers")
        lines = [line for line in p.read_text(errors="replace").splitlines() if not any(x in line for x in noise)]
        return "\n".join(lines[-n:])

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Signal a stage's whole process group (kill -9 by default)."""
        proc = self.procs[name]
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        if sig == signal.SIGKILL:
            proc.wait(timeout=30)

    def leftovers(self, timeout: float = 15.0) -> list[tuple[int, str]]:
        """(pid, name) of live processes still in a stage's process group (each stage runs in its
        own: task pools, handlers, averagers, p2p daemons), waiting up to `timeout` for them to go
        (killed orphans are reaped by init a moment later)."""
        import psutil

        groups = {proc.pid for proc in self.procs.values()}
        deadline = time.monotonic() + timeout
        while True:
            left = [(p.info["pid"], p.info["name"]) for p in psutil.process_iter(["pid", "name", "status"])
                    if p.info["status"] != psutil.STATUS_ZOMBIE and _pgid(p.info["pid"]) in groups]
            if not left or time.monotonic() > deadline:
                return left
            time.sleep(0.2)

    def close(self) -> None:
        stop_groups(self.procs.values(), grace_s=15)  # whatever is left of a group (averagers, daemons) goes too


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None
