"""The command guard refuses what Gas Town forbids and lets ordinary work through."""

from __future__ import annotations

import pytest

from gt_ext.serve.guard import check


@pytest.mark.parametrize(
    "cmd",
    [
        "pkill -f claude",
        "killall node",
        "sleep 1; pkill python",
        "echo hi && /usr/bin/killall x",
        "git push --force origin main",
        "git push -f",
        "git push origin +main",
        "git push --force-with-lease",
        "git push origin :feature",
        "git -C /tmp push --force",
        "rm -rf /",
        "rm -rf ../other-rig",
        "rm ~/notes.txt",
        "cd . && rm -rf /etc/passwd",
        "bash -c 'pkill gt'",
        "sh -c \"git push -f\"",
        "env FOO=1 pkill x",
        "sudo rm x",
        "kill -9 -1",
        "find / -name '*.log' -delete",
        "git clean -fdx /",
        "echo x | xargs rm -rf /var",
        "timeout 5 killall y",
        "rm -rf .",
        "dd if=/dev/zero of=/dev/sda",
        "git reset --hard origin/main",
    ],
)
def test_refused(cmd, tmp_path):
    reason = check(cmd, tmp_path)
    assert reason and reason.startswith("refused"), (cmd, reason)


@pytest.mark.parametrize(
    "cmd",
    [
        "bd list --json",
        "bd create 'Fix the thing' -p 1 --json",
        "gt hook",
        "git push origin feature-x",
        "git status && git diff",
        "rm -rf build/",
        "rm notes.txt tmp/*.o",
        "find . -name '*.pyc' -delete",
        "kill 12345",
        "git clean -fd",
        "python -m pytest -q",
        "echo 'pkill is forbidden'",
        "git reset --hard HEAD~1",
    ],
)
def test_allowed(cmd, tmp_path):
    assert check(cmd, tmp_path) is None, cmd


def test_unparseable_and_empty(tmp_path):
    assert "cannot parse" in check("echo 'unterminated", tmp_path)
    assert check("   ", tmp_path) == "empty command"
