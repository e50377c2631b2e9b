"""Stopping child processes that lead their own process group (started with `start_new_session=True`
or `os.setsid`): the stage servers, the local Dolt server, a sling side's agent.

One rule for all of them: SIGTERM to every live group (each leader gets to shut down cleanly: close
its transcript, flush its checkpoint, stop its daemons), wait for the leaders up to a shared grace
period, then SIGKILL whatever is left of every group (a leader that ignored SIGTERM, and children it
left behind, such as hivemind's p2p daemons), and reap the leaders.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterable


def stop_groups(procs: Iterable[subprocess.Popen], grace_s: float = 15.0) -> None:
    """SIGTERM each process's group, wait up to `grace_s` (all together) for the leaders to exit,
    then SIGKILL each group and reap its leader. Groups already gone are skipped."""
    procs = list(procs)
    for p in procs:
        if p.poll() is None:
            _signal_group(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        _signal_group(p.pid, signal.SIGKILL)
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:  # unkillable (D state): nothing more a caller can do
            pass


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass
