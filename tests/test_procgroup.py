"""gt_ext.procgroup.stop_groups: SIGTERM first, SIGKILL what is left of each group, leaders reaped."""

from __future__ import annotations

import signal
import subprocess

import psutil

from gt_ext.procgroup import stop_groups


def _group_leader(script: str) -> subprocess.Popen:
    p = subprocess.Popen(["bash", "-c", script], start_new_session=True, stdout=subprocess.PIPE, text=True)
    p.child_pid = int(p.stdout.readline())  # type: ignore[attr-defined]
    return p


def test_term_then_leftover_children_killed():
    # The leader exits on SIGTERM; its child (same group) ignores SIGTERM and would outlive it.
    p = _group_leader("trap 'exit 0' TERM; (trap '' TERM; exec sleep 1000) & echo $!; wait")
    child = psutil.Process(p.child_pid)
    stop_groups([p], grace_s=5)
    assert p.returncode == 0  # the leader took the clean path (SIGTERM handler), not SIGKILL
    child.wait(5)
    assert not child.is_running()


def test_leader_ignoring_term_is_killed_after_grace():
    p = _group_leader("trap '' TERM; echo $$; while :; do sleep 0.1; done")
    stop_groups([p], grace_s=0.5)
    assert p.returncode == -signal.SIGKILL


def test_already_exited_and_shared_grace():
    done = subprocess.Popen(["true"], start_new_session=True)
    done.wait()
    a = _group_leader("trap '' TERM; echo $$; while :; do sleep 0.1; done")
    b = _group_leader("trap '' TERM; echo $$; while :; do sleep 0.1; done")
    stop_groups([done, a, b], grace_s=0.5)
    assert done.returncode == 0
    assert a.returncode == b.returncode == -signal.SIGKILL
